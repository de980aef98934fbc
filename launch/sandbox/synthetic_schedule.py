"""One synthetic patient's visit schedule and lab/vital trajectories: the chart builders' base."""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from launch.sandbox import synthetic_catalog as cat
from launch.sandbox.synthetic_fhir import _TZ, Resource, _age, _clinician, _egfr, _ref, _weekday

if TYPE_CHECKING:
    from launch.sandbox.synthetic import PatientPlan

_ORDER = (
    "Encounter",
    "Condition",
    "AllergyIntolerance",
    "Observation",
    "MedicationRequest",
    "Immunization",
    "Procedure",
    "DocumentReference",
    "Binary",
)


@dataclass
class _Visit:
    moment: dt.datetime
    kind: str  # annual | followup | telehealth | acute
    clinician: cat.Clinician
    org: dict[str, str]
    episode: tuple[str, str, str, str | None] | None = None
    id: str = ""
    values: dict[str, float] = field(default_factory=dict)
    plan: list[str] = field(default_factory=list)
    condition_id: str | None = None

    @property
    def date(self) -> dt.date:
        return self.moment.date()

    @property
    def scheduled(self) -> bool:
        return self.kind in ("annual", "followup")


@dataclass
class _Course:
    drug: str
    start: int  # visit index
    reason: str | None  # condition key
    stop: int | None = None
    stop_reason: str | None = None
    replaces: _Course | None = None
    last_order: str | None = None


@dataclass
class _Series:
    start: float
    end: float
    noise: float
    change: dt.date  # flat at `start` until this date, then linear to `end` at the last visit


class _ChartBase:
    """One patient's chart state, visit schedule and value trajectories; random choices use `rng`."""

    _changes: dict[str, int | None]  # visit index of each planned change; set by build()

    def __init__(
        self, plan: PatientPlan, rng: random.Random, today: dt.date, history_scale: float = 1.0
    ) -> None:
        self.plan, self.rng, self.today = plan, rng, today
        self.history_scale = history_scale
        self.num = f"{plan.index:04d}"
        self.female = plan.gender == "female"
        self.counts: dict[str, int] = {}
        self.visits = self._schedule()
        self.first_moment = self.visits[0].moment - dt.timedelta(days=3)
        self.referenced_medications: list[tuple[str, str]] = []
        self.problems = list(plan.problems)
        self.condition_ids: dict[str, str] = {}
        self.onsets: dict[str, dt.date] = {}
        self.history: dict[str, list[tuple[dt.date, float]]] = {}
        self.series: dict[str, _Series] = {}
        self.courses: list[_Course] = []
        self.renewals: dict[int, list[str]] = {}
        self.allergies: list[cat.Allergy] = []
        self.past_problems: list[tuple[str, str, dt.date]] = []  # display, status, abated
        # Depression treated to remission stays on the list as "remission" (on maintenance).
        remits = "depression" in plan.problems and plan.index % 8 == 0
        self.remission = {"depression"} if remits else set()  # Conditions in "remission"
        self.out: dict[str, list[Resource]] = {t: [] for t in _ORDER}

    @property
    def patient_ref(self) -> dict[str, str]:
        return _ref("Patient", self.plan.id)

    def _id(self, prefix: str, width: int = 3) -> str:
        n = self.counts[prefix] = self.counts.get(prefix, 0) + 1
        return f"{prefix}-{self.num}-{n:0{width}d}"

    # -- schedule and trajectories ----------------------------------------------------------

    def _moment(self, day: dt.date) -> dt.datetime:
        at = dt.time(self.rng.randint(8, 15), self.rng.choice((0, 15, 30, 45)))
        return dt.datetime.combine(day, at, tzinfo=_TZ)

    def _schedule(self) -> list[_Visit]:
        rng, plan, today = self.rng, self.plan, self.today
        start = today - dt.timedelta(days=int(rng.randint(850, 1095) * self.history_scale))
        cadence = (84, 98) if plan.diabetic else (90, 120) if plan.problems else (150, 200)
        days: list[dt.date] = []
        day = today - dt.timedelta(days=rng.randint(6, 30))
        while day >= start:
            days.append(_weekday(day))
            day -= dt.timedelta(days=rng.randint(*cadence))
        days.reverse()
        pcp, visits, last_annual = _clinician(plan.pcp), [], None
        for i, day in enumerate(days):
            kind = "followup"
            if last_annual is None or (day - last_annual).days >= 330:
                kind, last_annual = "annual", day
            elif not plan.diabetic and 0 < i < len(days) - 1 and rng.random() < 0.15:
                kind = "telehealth"
            clinician, org = pcp, cat.CLINIC
            if kind == "followup" and plan.diabetic and i % 4 == 2:
                clinician, org = _clinician("prac-05"), cat.SPECIALTY_CLINIC
            elif (
                kind == "followup" and plan.distinctive.key in ("afib", "chf", "cad") and i % 4 == 3
            ):
                clinician, org = _clinician("prac-06"), cat.SPECIALTY_CLINIC
            visits.append(_Visit(self._moment(day), kind, clinician, org))
        for episode in rng.sample(cat.ACUTE_EPISODES, rng.randint(1, 3)):
            for _ in range(20):  # after the first scheduled visit, at least a week from others
                offset = rng.randint(20, (today - days[0]).days - 16)
                day = _weekday(days[0] + dt.timedelta(days=offset))
                if all(abs((day - v.date).days) > 7 for v in visits):
                    visits.append(
                        _Visit(
                            self._moment(day), "acute", _clinician("prac-04"), cat.CLINIC, episode
                        )
                    )
                    break
        visits.sort(key=lambda v: v.moment)
        for visit in visits:
            visit.id = self._id("enc")
        return visits

    def _visit_on_or_after(self, day: dt.date) -> int:
        """Index of the first scheduled visit on or after `day`, never the first or last visit."""
        inner = [
            i for i, v in enumerate(self.visits) if v.scheduled and 0 < i < len(self.visits) - 1
        ]
        if not inner:
            return len(self.visits) // 2
        return next((i for i in inner if self.visits[i].date >= day), inner[-1])

    def _change_points(self) -> dict[str, int | None]:
        first, today = self.visits[0].date, self.today
        span = (self.visits[-1].date - first).days

        def at(fraction: float) -> int:
            return self._visit_on_or_after(first + dt.timedelta(days=int(span * fraction)))

        points: dict[str, int | None] = {"htn": at(0.35), "hld": at(0.5), "dep": at(0.25)}
        if self.plan.a1c_trend == "improving":
            points["dm"] = self._visit_on_or_after(today - dt.timedelta(days=520))
        elif self.plan.a1c_trend == "worsening":
            points["dm"] = self._visit_on_or_after(today - dt.timedelta(days=330))
            second = self._visit_on_or_after(today - dt.timedelta(days=160))
            points["dm2"] = second if second > points["dm"] else None
        return points

    def _last_scheduled(self) -> int:
        return max(i for i, v in enumerate(self.visits) if v.scheduled)

    def _creatinine_for(self, egfr: float) -> float:
        age = _age(self.plan.birth_date, self.today)
        creatinine = 0.5
        while _egfr(creatinine, age, self.female) > egfr:
            creatinine += 0.01
        return creatinine

    def _init_series(self) -> None:
        plan, u = self.plan, self.rng.uniform
        first = self.visits[0].date
        changes = self._changes

        def put(
            key: str,
            start: float,
            end: float | None = None,
            noise: float = 0.0,
            change: int | dt.date | None = None,
        ) -> None:
            on = self.visits[change].date if isinstance(change, int) else change or first
            self.series[key] = _Series(start, start if end is None else end, noise, on)

        trend = plan.a1c_trend
        if trend == "improving":
            put("a1c", u(8.7, 9.6), u(6.6, 7.0), 0.12, changes["dm"])
        elif trend == "worsening":
            put("a1c", u(6.7, 7.1), u(8.8, 9.5), 0.12, self.today - dt.timedelta(days=540))
        elif trend == "stable":
            level = u(6.8, 7.3)
            put("a1c", level, level + u(-0.1, 0.1), 0.15)
        elif "prediabetes" in self.problems:
            put("a1c", u(5.8, 6.0), u(6.0, 6.3), 0.1)
        else:
            put("a1c", u(5.0, 5.4), None, 0.1)
        put("glucose", u(100, 115) if "prediabetes" in self.problems else u(82, 96), None, 5)
        if "htn" in self.problems:
            put("sbp", u(146, 158), u(122, 132), 5, changes["htn"])
        else:
            put("sbp", u(110, 126), None, 6)
        if "hld" in self.problems and (plan.index // 3) % 3 != 2:
            put("ldl", u(128, 152), u(72, 92), 6, changes["hld"])
        else:
            put("ldl", u(88, 112), None, 7)
        put("hdl", u(38, 62), None, 3)
        put("tg", u(140, 220) if plan.diabetic else u(80, 150), None, 15)
        if "ckd3" in self.problems:
            put(
                "creatinine", self._creatinine_for(u(50, 56)), self._creatinine_for(u(40, 46)), 0.04
            )
        elif plan.distinctive.key == "kidney_transplant":
            put("creatinine", self._creatinine_for(u(55, 62)), None, 0.05)
        else:
            put("creatinine", self._creatinine_for(u(72, 98)), None, 0.04)
        ckd = "ckd3" in self.problems
        put("bun", u(22, 32) if ckd else u(10, 19), None, 2)
        put("sodium", u(137, 142), None, 1.5)
        put("potassium", u(4.3, 4.8) if ckd else u(3.9, 4.5), None, 0.2)
        put("hgb", u(12.3, 14.2) if self.female else u(13.5, 15.8), None, 0.4)
        put("wbc", u(5.0, 8.5), None, 0.8)
        put("plt", u(190, 330), None, 25)
        put("uacr", u(60, 180) if ckd else u(8, 25), None, 5)
        put("phq9", u(14, 18), u(1, 3) if self.remission else u(4, 7), 1.2, changes["dep"])
        put("phq2", 0.4, None, 0.45)
        put("hr", u(72, 92) if plan.distinctive.key == "afib" else u(62, 84), None, 5)
        put("rr", 15, None, 2.4)
        put("temp", 36.8, None, 0.3)
        low_o2 = plan.distinctive.key in ("copd", "sarcoidosis")
        put("spo2", 92.5 if low_o2 else 97.5, None, 1.4)
        self.height = u(152, 172) if self.female else u(166, 190)
        bmi = u(29, 37) if plan.diabetic else u(22, 32)
        if bmi >= 30:
            self.problems.append("obesity")
        weight = bmi * (self.height / 100) ** 2
        drift = {"improving": -u(3, 6), "worsening": u(1, 4)}.get(trend or "", u(-2, 2))
        put("weight", weight, weight + drift, 0.8)
        put("height", self.height, None, 0.3)
        lab, dist = plan.distinctive.lab, plan.distinctive
        if lab:
            noise = 0.3 if lab == "inr" else abs(dist.lab_end - dist.lab_start) * 0.08
            put(lab, dist.lab_start, dist.lab_end, noise)

    def _value(self, key: str, day: dt.date) -> float:
        series = self.series[key]
        span = (self.visits[-1].date - series.change).days
        frac = min(max((day - series.change).days / span, 0.0), 1.0) if span > 0 else 1.0
        noise = self.rng.uniform(-series.noise, series.noise)
        return series.start + (series.end - series.start) * frac + noise

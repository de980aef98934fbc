"""Deterministic synthetic patient charts for the sandbox EHR, as FHIR R4 resource dicts.

`generate_patients(n, seed, today)` returns shared Practitioner, Organization and Medication
resources, then for each patient a Patient with two to three years of ambulatory care:
Encounter, Observation (labs, vital signs, surveys), Condition, MedicationRequest (started,
renewed, dose-changed, switched, stopped), AllergyIntolerance, Immunization, Procedure, and
clinical notes as DocumentReference whose text is inline base64 or a separate Binary.
Every date is relative to `today`; the same arguments always give the same resources.

FHIR R4: https://hl7.org/fhir/R4/patient.html, encounter.html, observation.html,
condition.html, medicationrequest.html, medication.html, allergyintolerance.html,
immunization.html, procedure.html, documentreference.html, binary.html
"""

from __future__ import annotations

import base64
import datetime as dt
import random
from dataclasses import dataclass, field
from typing import Any, Literal

from launch.sandbox import synthetic_catalog as cat

Resource = dict[str, Any]
Trend = Literal["improving", "worsening", "stable"]
TRENDS: tuple[Trend, ...] = ("improving", "worsening", "stable")
_TZ = dt.timezone(dt.timedelta(hours=-5))  # clinic local time, written with its offset

__all__ = [
    "PatientPlan",
    "codes_unique_to_one_patient",
    "generate_patients",
    "plan_patients",
]


@dataclass(frozen=True)
class PatientPlan:
    """Who a synthetic patient is and what their chart is meant to show."""

    index: int  # 1-based
    id: str
    given: str
    family: str
    gender: str
    birth_date: dt.date
    mrn: str
    phone: str
    address: tuple[str, str, str, str]  # line, city, state, postal code
    pcp: str  # Practitioner id
    problems: tuple[str, ...]  # keys of synthetic_catalog.PROBLEMS (chronic)
    a1c_trend: Trend | None  # None: not diabetic
    distinctive: (
        cat.Distinctive
    )  # only this patient has it (for n_patients <= len(cat.DISTINCTIVE))

    @property
    def name(self) -> str:
        return f"{self.given} {self.family}"

    @property
    def diabetic(self) -> bool:
        return self.a1c_trend is not None


def plan_patients(
    n_patients: int = 20, seed: int = 7, today: dt.date | None = None
) -> list[PatientPlan]:
    """The patients `generate_patients` makes with the same arguments, without their charts."""
    today = today or dt.date.today()
    rng = random.Random(f"chartcite-plan-{seed}")
    families, female_names, male_names = (
        list(cat.FAMILY),
        list(cat.GIVEN_FEMALE),
        list(cat.GIVEN_MALE),
    )
    for names_list in (families, female_names, male_names):
        rng.shuffle(names_list)
    plans: list[PatientPlan] = []
    names: set[tuple[str, str]] = set()
    n_diabetic = 0
    for k in range(n_patients):
        distinctive = cat.DISTINCTIVE[k % len(cat.DISTINCTIVE)]
        gender = distinctive.gender or rng.choice(("female", "male"))
        diabetic = k % 5 in (0, 1, 2)
        trend: Trend | None = TRENDS[n_diabetic % 3] if diabetic else None
        d_idx = n_diabetic
        n_diabetic += diabetic
        low_age = max(distinctive.min_age, 45 if diabetic else 32)
        age = rng.randint(low_age, min(low_age + 24, 88))
        birth = dt.date(today.year - age, rng.randint(1, 12), rng.randint(1, 28))
        given_pool = female_names if gender == "female" else male_names
        n_same = sum(p.gender == gender for p in plans)
        family = families[k % len(families)]
        given = given_pool[n_same % len(given_pool)]
        while (given, family) in names:  # only once the name lists wrap around
            given, family = rng.choice(given_pool), rng.choice(families)
        names.add((given, family))
        town = rng.choice(cat.TOWNS)
        problems: list[str] = []
        if diabetic:
            problems.append("t2dm")
        elif k % 5 == 3:
            problems.append("prediabetes")
        if (diabetic and d_idx % 4 != 3) or (not diabetic and k % 2 == 0):
            problems.append("htn")
        if (diabetic and d_idx % 3 != 2) or k % 3 == 0:
            problems.append("hld")
        if diabetic and d_idx % 4 == 1:
            problems.append("ckd3")
        if k % 6 == 4:
            problems.append("asthma")
        if k % 4 == 3:
            problems.append("depression")
        if age >= 55 and k % 3 == 1:
            problems.append("oa_knee")
        area = ("413", "860", "508", "774")[(k // 100) % 4]
        plans.append(
            PatientPlan(
                index=k + 1,
                id=f"pat-{k + 1:04d}",
                given=given,
                family=family,
                gender=gender,
                birth_date=birth,
                mrn=str(7_000_000 + k * 7919 + rng.randint(0, 999)),
                phone=f"({area}) 555-01{k % 100:02d}",
                address=(f"{rng.randint(12, 980)} {rng.choice(cat.STREETS)}", *town),
                pcp=cat.PCP_IDS[k % len(cat.PCP_IDS)],
                problems=tuple(problems),
                a1c_trend=trend,
                distinctive=distinctive,
            )
        )
    return plans


def generate_patients(
    n_patients: int = 20, seed: int = 7, today: dt.date | None = None
) -> list[Resource]:
    """FHIR R4 resources for `n_patients` synthetic patients plus shared clinicians and clinics."""
    today = today or dt.date.today()
    created = dt.datetime.combine(today - dt.timedelta(days=1200), dt.time(9, 0), tzinfo=_TZ)
    shared: list[Resource] = [_practitioner(c, created) for c in cat.CLINICIANS]
    shared += [_organization(o, created) for o in (cat.CLINIC, cat.SPECIALTY_CLINIC)]
    medications: dict[str, Resource] = {}
    charts: list[Resource] = []
    for plan in plan_patients(n_patients, seed, today):
        builder = _ChartBuilder(plan, random.Random(f"chartcite-{seed}-{plan.index}"), today)
        charts.append(_patient(plan, builder.first_moment))
        charts += builder.build()
        for rxcui, display in builder.referenced_medications:
            medications.setdefault(rxcui, _medication(rxcui, display, created))
    return shared + [medications[k] for k in sorted(medications)] + charts


def codes_unique_to_one_patient(resources: list[Resource]) -> dict[str, list[str]]:
    """Map patient id → sorted `Type|system|code` keys found in no other patient's chart.

    Looks at Condition, Observation and AllergyIntolerance codes and MedicationRequest drugs
    (resolving `medicationReference` to the Medication's code).
    """
    med_codes = {
        f"Medication/{r['id']}": r["code"]["coding"][0]
        for r in resources
        if r["resourceType"] == "Medication"
    }
    owners: dict[str, set[str]] = {}
    for res in resources:
        rtype = res["resourceType"]
        if rtype in ("Condition", "Observation"):
            coding, subject = res["code"]["coding"][0], res["subject"]["reference"]
        elif rtype == "AllergyIntolerance":
            coding, subject = res["code"]["coding"][0], res["patient"]["reference"]
        elif rtype == "MedicationRequest":
            concept = res.get("medicationCodeableConcept")
            coding = (
                concept["coding"][0]
                if concept
                else med_codes[res["medicationReference"]["reference"]]
            )
            subject = res["subject"]["reference"]
        else:
            continue
        key = f"{rtype}|{coding['system']}|{coding['code']}"
        owners.setdefault(key, set()).add(subject.removeprefix("Patient/"))
    unique: dict[str, list[str]] = {}
    for key in sorted(owners):
        if len(owners[key]) == 1:
            unique.setdefault(next(iter(owners[key])), []).append(key)
    return unique


def _patient(plan: PatientPlan, created: dt.datetime) -> Resource:
    pcp = next(c for c in cat.CLINICIANS if c.id == plan.pcp)
    line, city, state, postal = plan.address
    return {
        "resourceType": "Patient",
        "id": plan.id,
        "meta": meta(created),
        "identifier": [
            {
                "use": "usual",
                "type": {
                    "coding": [
                        {
                            "system": cat.IDENTIFIER_TYPE,
                            "code": "MR",
                            "display": "Medical Record Number",
                        }
                    ],
                    "text": "MRN",
                },
                "system": cat.MRN_SYSTEM,
                "value": plan.mrn,
            }
        ],
        "active": True,
        "name": [
            {"use": "official", "text": plan.name, "family": plan.family, "given": [plan.given]}
        ],
        "telecom": [{"system": "phone", "value": plan.phone, "use": "home"}],
        "gender": plan.gender,
        "birthDate": plan.birth_date.isoformat(),
        "address": [
            {
                "use": "home",
                "line": [line],
                "city": city,
                "state": state,
                "postalCode": postal,
                "country": "US",
            }
        ],
        "generalPractitioner": [
            {"reference": f"Practitioner/{pcp.id}", "display": clinician_name(pcp)}
        ],
        "managingOrganization": {
            "reference": f"Organization/{cat.CLINIC['id']}",
            "display": cat.CLINIC["name"],
        },
    }


def clinician_name(c: cat.Clinician) -> str:
    """How notes and reference displays name a clinician."""
    return (
        f"Dr. {c.given} {c.family}"
        if c.suffix in ("MD", "DO")
        else f"{c.given} {c.family}, {c.suffix}"
    )


def _practitioner(c: cat.Clinician, created: dt.datetime) -> Resource:
    name: dict[str, Any] = {
        "use": "official",
        "family": c.family,
        "given": [c.given],
        "suffix": [c.suffix],
    }
    if c.suffix in ("MD", "DO"):
        name["prefix"] = ["Dr."]
    return {
        "resourceType": "Practitioner",
        "id": c.id,
        "meta": meta(created),
        "identifier": [{"system": cat.NPI, "value": c.npi}],
        "active": True,
        "name": [name],
        "telecom": [{"system": "phone", "value": cat.CLINIC["phone"], "use": "work"}],
        "qualification": [{"code": {"text": f"{c.suffix}, {c.specialty}"}}],
    }


def _organization(org: dict[str, str], created: dt.datetime) -> Resource:
    return {
        "resourceType": "Organization",
        "id": org["id"],
        "meta": meta(created),
        "identifier": [{"system": cat.NPI, "value": org["npi"]}],
        "active": True,
        "type": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/organization-type",
                        "code": "prov",
                        "display": "Healthcare Provider",
                    }
                ]
            }
        ],
        "name": org["name"],
        "telecom": [{"system": "phone", "value": org["phone"], "use": "work"}],
        "address": [
            {
                "line": [org["line"]],
                "city": org["city"],
                "state": org["state"],
                "postalCode": org["postalCode"],
                "country": "US",
            }
        ],
    }


def _medication(rxcui: str, display: str, created: dt.datetime) -> Resource:
    return {
        "resourceType": "Medication",
        "id": f"med-rx{rxcui}",
        "meta": {"versionId": "1", "lastUpdated": instant(created)},
        "code": {
            "coding": [{"system": cat.RXNORM, "code": rxcui, "display": display}],
            "text": display,
        },
        "status": "active",
    }


# --- one patient's chart ----------------------------------------------------------------------

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
_DERIVED = ("chol", "egfr", "glucose", "bmi")
_CATEGORY_DISPLAY = {"laboratory": "Laboratory", "vital-signs": "Vital Signs", "survey": "Survey"}
_FLAG_DISPLAY = {"H": "High", "L": "Low", "N": "Normal"}


def instant(moment: dt.datetime) -> str:
    """A FHIR instant/dateTime with seconds and the timezone offset."""
    return moment.isoformat(timespec="seconds")


def meta(moment: dt.datetime) -> dict[str, str]:
    """`Resource.meta` for a first version written at `moment`."""
    return {"versionId": "1", "lastUpdated": instant(moment)}


def _ref(rtype: str, rid: str, display: str | None = None) -> dict[str, str]:
    ref = {"reference": f"{rtype}/{rid}"}
    if display:
        ref["display"] = display
    return ref


def _concept(system: str, code: str, display: str, text: str | None = None) -> Resource:
    return {
        "coding": [{"system": system, "code": code, "display": display}],
        "text": text or display,
    }


def _quantity(value: float, unit: str) -> Resource:
    return {"value": value, "unit": unit, "system": cat.UCUM, "code": unit}


def _rounded(value: float, decimals: int) -> float:
    return round(value) if decimals == 0 else round(value, decimals)


def _age(birth: dt.date, on: dt.date) -> int:
    return on.year - birth.year - ((on.month, on.day) < (birth.month, birth.day))


def _egfr(creatinine: float, age: int, female: bool) -> float:
    """CKD-EPI 2021 creatinine equation (mL/min/1.73 m2)."""
    kappa, alpha = (0.7, -0.241) if female else (0.9, -0.302)
    ratio = creatinine / kappa
    value = 142 * min(ratio, 1) ** alpha * max(ratio, 1) ** -1.2 * 0.9938**age
    return value * 1.012 if female else value


def _weekday(day: dt.date) -> dt.date:
    return day - dt.timedelta(days=max(0, day.weekday() - 4))


def _clinician(cid: str) -> cat.Clinician:
    return next(c for c in cat.CLINICIANS if c.id == cid)


def _with_unit(text: str, unit: str) -> str:
    shown = cat.UNIT_TEXT.get(unit, unit)
    return f"{text} {shown}" if shown else text


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


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


class _ChartBuilder:
    """Builds one patient's chart from a plan; every random choice comes from `rng`."""

    def __init__(self, plan: PatientPlan, rng: random.Random, today: dt.date) -> None:
        self.plan, self.rng, self.today = plan, rng, today
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
        self.out: dict[str, list[Resource]] = {t: [] for t in _ORDER}

    @property
    def patient_ref(self) -> dict[str, str]:
        return _ref("Patient", self.plan.id)

    def _id(self, prefix: str, width: int = 3) -> str:
        n = self.counts[prefix] = self.counts.get(prefix, 0) + 1
        return f"{prefix}-{self.num}-{n:0{width}d}"

    def build(self) -> list[Resource]:
        """All of the patient's resources except the Patient itself."""
        self._changes = self._change_points()
        self._init_series()
        self._plan_courses()
        self._conditions()
        self._allergies()
        for course in self.courses:
            self._orders(course)
        self._immunizations()
        self._procedures()
        for i, visit in enumerate(self.visits):
            self._encounter(visit)
            if visit.kind != "telehealth":
                self._vitals(visit)
                self._labs(visit, i)
            self._note(visit, i)
        return [res for rtype in _ORDER for res in self.out[rtype]]

    # -- schedule and trajectories ----------------------------------------------------------

    def _moment(self, day: dt.date) -> dt.datetime:
        at = dt.time(self.rng.randint(8, 15), self.rng.choice((0, 15, 30, 45)))
        return dt.datetime.combine(day, at, tzinfo=_TZ)

    def _schedule(self) -> list[_Visit]:
        rng, plan, today = self.rng, self.plan, self.today
        start = today - dt.timedelta(days=rng.randint(850, 1095))
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
        put("phq9", u(14, 18), u(4, 7), 1.2, changes["dep"])
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

    # -- medications -----------------------------------------------------------------------

    def _add(
        self,
        drug: str,
        start: int,
        reason: str | None,
        stop: int | None = None,
        stop_reason: str | None = None,
        replaces: _Course | None = None,
    ) -> _Course:
        course = _Course(drug, start, reason, stop, stop_reason, replaces)
        self.courses.append(course)
        return course

    def _switch(self, old: str, new: str, at: int, reason: str, why: str) -> None:
        """Start `old` at the first visit, stop it at visit `at` and start `new` instead."""
        first = self._add(old, 0, reason, stop=at, stop_reason=why)
        self._add(new, at, reason, replaces=first)

    def _plan_courses(self) -> None:
        plan, changes, rng = self.plan, self._changes, self.rng
        if plan.diabetic:
            dm, dm2 = changes.get("dm"), changes.get("dm2")
            if plan.a1c_trend == "improving" and dm is not None:
                self._switch(
                    "metformin_1",
                    "metformin_2",
                    dm,
                    "t2dm",
                    "Dose increased because hemoglobin A1c above goal",
                )
                self._add(rng.choice(("canagliflozin", "liraglutide")), dm, "t2dm")
            else:
                self._add("metformin_1", 0, "t2dm")
            if plan.a1c_trend == "worsening" and dm is not None:
                first = self._add("canagliflozin", dm, "t2dm")
                if dm2 is not None:
                    first.stop, first.stop_reason = dm2, "Recurrent genital yeast infections"
                    self._add("liraglutide", dm2, "t2dm", replaces=first)
                self._add("glargine", self._last_scheduled(), "t2dm")
            if _age(plan.birth_date, self.today) >= 50 and plan.index % 2 == 0:
                self._add("aspirin_81", 0, None)
        if "htn" in self.problems:
            at, variant = changes["htn"] or 1, plan.index % 3
            if variant == 0:
                self._switch(
                    "lisinopril_10",
                    "lisinopril_20",
                    at,
                    "htn",
                    "Dose increased because blood pressure above goal",
                )
            elif variant == 1:
                self._switch(
                    "lisinopril_10",
                    "losartan_50",
                    at,
                    "htn",
                    "Persistent dry cough on ACE inhibitor",
                )
            else:
                self._switch(
                    "amlodipine_2_5",
                    "amlodipine_5",
                    at,
                    "htn",
                    "Dose increased because blood pressure above goal",
                )
                self._add("hctz_25", 0, "htn")
        if "hld" in self.problems:
            at, variant = changes["hld"] or 1, (plan.index // 3) % 3
            if variant == 0:
                self._switch(
                    "atorvastatin_20",
                    "atorvastatin_40",
                    at,
                    "hld",
                    "Dose increased because LDL cholesterol above goal",
                )
            elif variant == 1:
                self._switch(
                    "simvastatin_20", "rosuvastatin_5", at, "hld", "Muscle aches on simvastatin"
                )
            else:
                self._add("atorvastatin_20", 0, "hld")
        if "depression" in self.problems:
            self._switch(
                "sertraline_50",
                "sertraline_100",
                changes["dep"] or 1,
                "depression",
                "Partial response; dose increased",
            )
        if "asthma" in self.problems:
            self._add("fluticasone", 0, "asthma")
            self._add("albuterol", 0, "asthma")
        if "oa_knee" in self.problems:
            if "ckd3" in self.problems:
                self._switch(
                    "naproxen_220",
                    "acetaminophen_325",
                    1,
                    "oa_knee",
                    "NSAID stopped because of chronic kidney disease",
                )
            else:
                self._add("naproxen_220", 0, "oa_knee")
        for drug in plan.distinctive.drugs:
            self._add(drug, 0, "distinctive")
        for i, visit in enumerate(self.visits):
            if visit.episode and visit.episode[3]:
                self._add(visit.episode[3], i, visit.episode[0])

    def _orders(self, course: _Course) -> None:
        drug = cat.DRUGS[course.drug]
        authored = [course.start]
        if drug.days is None:
            for i in range(course.start + 1, course.stop or len(self.visits)):
                gap = (self.visits[i].date - self.visits[authored[-1]].date).days
                if self.visits[i].kind != "acute" and gap >= 330:
                    authored.append(i)
                    self.renewals.setdefault(i, []).append(drug.name)
        prior = course.replaces.last_order if course.replaces else None
        for n, i in enumerate(authored):
            visit = self.visits[i]
            written = visit.moment + dt.timedelta(minutes=20)
            last = n == len(authored) - 1
            if drug.days:
                status, ended = "completed", written + dt.timedelta(days=drug.days)
            elif not last:
                status, ended = "completed", self.visits[authored[n + 1]].moment
            elif course.stop is not None:
                status, ended = "stopped", self.visits[course.stop].moment
            else:
                status, ended = "active", None
            order_id = self._id("medrx")
            self.out["MedicationRequest"].append(
                self._order(order_id, course, drug, visit, written, status, ended, prior)
            )
            prior = order_id
        course.last_order = prior

    def _order(
        self,
        order_id: str,
        course: _Course,
        drug: cat.Drug,
        visit: _Visit,
        written: dt.datetime,
        status: str,
        ended: dt.datetime | None,
        prior: str | None,
    ) -> Resource:
        repeat: Resource = {
            "frequency": drug.frequency,
            "period": drug.period,
            "periodUnit": drug.period_unit,
        }
        supply = drug.days or 90
        if drug.days:
            repeat["boundsDuration"] = {
                "value": drug.days,
                "unit": "days",
                "system": cat.UCUM,
                "code": "d",
            }
        validity = {"start": instant(written)}
        if ended is not None:
            validity["end"] = instant(ended)
        order: Resource = {
            "resourceType": "MedicationRequest",
            "id": order_id,
            "meta": meta(ended if ended is not None else written),
            "status": status,
            "intent": "order",
            "category": [
                _concept(
                    "http://terminology.hl7.org/CodeSystem/medicationrequest-category",
                    "outpatient",
                    "Outpatient",
                )
            ],
        }
        if status == "stopped" and course.stop_reason:
            order["statusReason"] = {"text": course.stop_reason}
        if self.counts["medrx"] % 5 == 3:
            order["medicationReference"] = _ref("Medication", f"med-rx{drug.rxcui}", drug.display)
            if (drug.rxcui, drug.display) not in self.referenced_medications:
                self.referenced_medications.append((drug.rxcui, drug.display))
        else:
            order["medicationCodeableConcept"] = _concept(cat.RXNORM, drug.rxcui, drug.display)
        order |= {
            "subject": self.patient_ref,
            "encounter": _ref("Encounter", visit.id),
            "authoredOn": instant(written),
            "requester": _ref("Practitioner", visit.clinician.id, clinician_name(visit.clinician)),
        }
        reason_id = self.condition_ids.get(course.reason or "")
        if reason_id:
            order["reasonReference"] = [_ref("Condition", reason_id)]
        order["dosageInstruction"] = [
            {
                "sequence": 1,
                "text": drug.sig,
                "timing": {"repeat": repeat},
                "asNeededBoolean": drug.prn,
                "doseAndRate": [{"doseQuantity": {"value": drug.dose, "unit": drug.dose_unit}}],
            }
        ]
        order["dispenseRequest"] = {
            "validityPeriod": validity,
            "numberOfRepeatsAllowed": 0 if drug.days else 3,
            "expectedSupplyDuration": {
                "value": supply,
                "unit": "days",
                "system": cat.UCUM,
                "code": "d",
            },
        }
        if prior:
            order["priorPrescription"] = _ref("MedicationRequest", prior)
        return order

    def _active_courses(self, i: int) -> list[_Course]:
        """Courses the patient is taking when visit `i` starts (at the first visit: all started)."""
        day = self.visits[i].date
        taking = []
        for c in self.courses:
            began = c.start < i or c.start == i == 0
            ended = c.stop is not None and c.stop < i
            drug = cat.DRUGS[c.drug]
            short_over = (
                drug.days is not None and (day - self.visits[c.start].date).days > drug.days
            )
            if began and not ended and not short_over:
                taking.append(c)
        return taking

    def _medication_changes(self, i: int) -> list[str]:
        lines = []
        for c in self.courses:
            drug = cat.DRUGS[c.drug]
            if c.stop == i:
                why = (c.stop_reason or "changed")[0].lower() + (c.stop_reason or "changed")[1:]
                new = next((n for n in self.courses if n.replaces is c), None)
                if new is None:
                    lines.append(f"Stopped {drug.name}: {c.stop_reason}.")
                elif new.drug.split("_")[0] == c.drug.split("_")[0]:
                    lines.append(f"Changed {drug.name} to {cat.DRUGS[new.drug].name} ({why}).")
                else:
                    lines.append(
                        f"Stopped {drug.name} ({why}); started {cat.DRUGS[new.drug].name}: "
                        f"{cat.DRUGS[new.drug].sig}."
                    )
            elif c.start == i and c.replaces is None and i > 0:
                lines.append(f"Started {drug.name}: {drug.sig}.")
        if self.renewals.get(i):
            lines.append(f"Prescriptions renewed: {_join(self.renewals[i])}.")
        return lines

    # -- conditions and allergies ------------------------------------------------------------

    def _condition(
        self,
        key: str,
        problem: cat.Problem,
        onset: dt.date,
        recorded: dt.datetime,
        visit: _Visit | None = None,
    ) -> str:
        cid = self._id("cond", 2)
        resolved = visit is not None
        res: Resource = {
            "resourceType": "Condition",
            "id": cid,
            "meta": meta(recorded),
            "clinicalStatus": _concept(
                cat.COND_CLINICAL,
                "resolved" if resolved else "active",
                "Resolved" if resolved else "Active",
            ),
            "verificationStatus": _concept(cat.COND_VERIFICATION, "confirmed", "Confirmed"),
            "category": [
                _concept(cat.COND_CATEGORY, "encounter-diagnosis", "Encounter Diagnosis")
                if resolved
                else _concept(cat.COND_CATEGORY, "problem-list-item", "Problem List Item")
            ],
            "code": _concept(cat.SNOMED, problem.code, problem.display),
            "subject": self.patient_ref,
        }
        if visit is not None:
            res["encounter"] = _ref("Encounter", visit.id)
        res["onsetDateTime"] = onset.isoformat()
        if visit is not None:
            res["abatementDateTime"] = (visit.date + dt.timedelta(days=14)).isoformat()
        res["recordedDate"] = instant(recorded)
        res["recorder"] = _ref("Practitioner", self.plan.pcp)
        self.out["Condition"].append(res)
        self.condition_ids[key] = cid
        self.onsets[key] = onset
        return cid

    def _conditions(self) -> None:
        first = self.visits[0]
        keyed = [(k, cat.PROBLEMS[k]) for k in self.problems]
        keyed.append(("distinctive", self.plan.distinctive.condition))
        for key, problem in keyed:
            if key == "obesity":
                onset = first.date
            else:
                onset = first.date - dt.timedelta(days=self.rng.randint(200, 3650))
            recorded = dt.datetime.combine(
                max(onset, first.date - dt.timedelta(days=3650)), dt.time(10, 0), tzinfo=_TZ
            )
            self._condition(key, problem, onset, recorded)
        for visit in self.visits:
            if visit.episode:
                onset = visit.date - dt.timedelta(days=self.rng.randint(2, 12))
                visit.condition_id = self._condition(
                    visit.episode[0],
                    cat.PROBLEMS[visit.episode[0]],
                    onset,
                    visit.moment + dt.timedelta(minutes=30),
                    visit,
                )

    def _allergies(self) -> None:
        drugs = {c.drug for c in self.courses}
        pool = [
            a
            for a in cat.ALLERGIES
            if not (a.code == "1191" and "aspirin_81" in drugs)
            and not (a.code == "7980" and "amox_clav" in drugs)
        ]
        chosen = self.rng.sample(pool, self.rng.choice((0, 0, 1, 1, 2)))
        if self.plan.distinctive.key == "peanut":
            chosen.append(cat.PEANUT_ALLERGY)
        self.allergies = chosen
        recorded = self.visits[0].moment + dt.timedelta(minutes=15)
        for allergy in chosen:
            self.out["AllergyIntolerance"].append(
                {
                    "resourceType": "AllergyIntolerance",
                    "id": self._id("alg", 2),
                    "meta": meta(recorded),
                    "clinicalStatus": _concept(cat.ALLERGY_CLINICAL, "active", "Active"),
                    "verificationStatus": _concept(
                        cat.ALLERGY_VERIFICATION, "confirmed", "Confirmed"
                    ),
                    "type": "allergy",
                    "category": [allergy.category],
                    "criticality": allergy.criticality,
                    "code": _concept(allergy.system, allergy.code, allergy.display),
                    "patient": self.patient_ref,
                    "recordedDate": instant(recorded),
                    "recorder": _ref("Practitioner", self.plan.pcp),
                    "reaction": [
                        {
                            "manifestation": [_concept(cat.SNOMED, *allergy.manifestation)],
                            "severity": "severe" if allergy.criticality == "high" else "mild",
                        }
                    ],
                }
            )

    # -- immunizations and procedures --------------------------------------------------------

    def _immunize(self, key: str, visit: _Visit | None, day: dt.date | None = None) -> None:
        code, display = cat.VACCINES[key]
        if visit is not None:
            when = visit.moment + dt.timedelta(minutes=40)
        else:
            when = dt.datetime.combine(day or self.today, dt.time(11, 0), tzinfo=_TZ)
        res: Resource = {
            "resourceType": "Immunization",
            "id": self._id("imm", 2),
            "meta": meta(when),
            "status": "completed",
            "vaccineCode": _concept(cat.CVX, code, display),
            "patient": self.patient_ref,
        }
        if visit is not None:
            res["encounter"] = _ref("Encounter", visit.id)
        res["occurrenceDateTime"] = instant(when)
        res["primarySource"] = visit is not None
        if visit is None:
            res["reportOrigin"] = _concept(
                "http://terminology.hl7.org/CodeSystem/immunization-origin",
                "record",
                "Written Record",
                "Pharmacy record",
            )
        res["lotNumber"] = (
            f"{self.rng.choice('ABCDEFGHJKLMNPRSTUVWXYZ')}{self.rng.randint(1000, 9999)}"
        )
        res["doseQuantity"] = _quantity(0.5, "mL")
        if visit is not None:
            res["performer"] = [{"actor": _ref("Practitioner", visit.clinician.id)}]
            visit.plan.append(f"{display} vaccine (CVX {code}) given today.")
        self.out["Immunization"].append(res)

    def _immunizations(self) -> None:
        plan, rng = self.plan, self.rng
        first, today = self.visits[0].date, self.today
        for year in range(first.year, today.year + 1):
            key = ("flu_140", "flu_141", "flu_150")[year % 3]
            season = [
                v
                for v in self.visits
                if v.kind != "telehealth" and dt.date(year, 9, 1) <= v.date <= dt.date(year, 12, 31)
            ]
            if season:
                self._immunize(key, season[0])
            else:
                day = dt.date(year, 10, rng.randint(1, 28))
                if first <= day <= today - dt.timedelta(days=3):
                    self._immunize(key, None, day)
        annuals = [v for v in self.visits if v.kind == "annual"]
        if plan.index % 3 == 0:
            self._immunize("tdap", annuals[0])
        elif plan.index % 3 == 1:
            self._immunize("td", annuals[0])
        age = _age(plan.birth_date, today)
        if age >= 65 or plan.diabetic:
            self._immunize("pcv13", annuals[-1])
            if age >= 65 and len(annuals) > 1 and plan.index % 2:
                self._immunize("ppsv23", annuals[0])
        if plan.index % 5 != 4:
            day = dt.date(today.year - 1, 10, rng.randint(1, 28))
            if day >= first:
                self._immunize("covid_208" if plan.index % 2 else "covid_207", None, day)

    def _procedure(self, key: str, visit: _Visit | None, day: dt.date | None = None) -> None:
        code, display = cat.PROCEDURES[key]
        if visit is not None:
            when = visit.moment + dt.timedelta(minutes=30)
        else:
            when = dt.datetime.combine(day or self.today, dt.time(9, 30), tzinfo=_TZ)
        res: Resource = {
            "resourceType": "Procedure",
            "id": self._id("proc", 2),
            "meta": meta(when),
            "status": "completed",
            "code": _concept(cat.SNOMED, code, display),
            "subject": self.patient_ref,
        }
        if visit is not None:
            res["encounter"] = _ref("Encounter", visit.id)
            res["performer"] = [{"actor": _ref("Practitioner", visit.clinician.id)}]
        res["performedDateTime"] = instant(when)
        self.out["Procedure"].append(res)

    def _procedures(self) -> None:
        plan, latest = self.plan, self.today - dt.timedelta(days=2)
        age = _age(plan.birth_date, self.today)
        annuals = [v for v in self.visits if v.kind == "annual"]
        for visit in annuals:
            self._procedure("med_rec", visit)
            self._procedure("depression_screen", visit)
            if plan.diabetic:
                self._procedure("foot_exam", visit)
                visit.plan.append(
                    "Diabetic foot exam done; monofilament sensation intact. "
                    "Referred for annual diabetic retinal exam."
                )
                if visit.date + dt.timedelta(days=21) <= latest:
                    self._procedure("retinal_exam", None, visit.date + dt.timedelta(days=21))
            if self.female and age >= 50 and visit.date + dt.timedelta(days=10) <= latest:
                self._procedure("mammography", None, visit.date + dt.timedelta(days=10))
                visit.plan.append("Screening mammogram ordered.")
        for visit in self.visits:
            if visit.episode and visit.episode[0] == "bronchitis":
                self._procedure("chest_xray", visit)
                visit.plan.append("Chest X-ray today: no infiltrate.")
        if "htn" in self.problems:
            self._procedure("ecg", annuals[0])
            annuals[0].plan.append("ECG today: normal sinus rhythm.")
        if "asthma" in self.problems or plan.distinctive.key in ("copd", "sarcoidosis"):
            self._procedure("spirometry", annuals[-1])
        if plan.distinctive.key == "chf":
            self._procedure("echo", annuals[0])
            annuals[0].plan.append("Echocardiogram: ejection fraction 35-40%.")
        if age >= 50 and plan.index % 3 == 0:
            self._procedure("colonoscopy", None, self.visits[0].date + dt.timedelta(days=100))

    # -- encounters and measurements ---------------------------------------------------------

    def _encounter(self, visit: _Visit) -> None:
        virtual = visit.kind == "telehealth"
        code, display = cat.ENCOUNTER_TYPES[visit.kind]
        res: Resource = {
            "resourceType": "Encounter",
            "id": visit.id,
            "meta": meta(visit.moment + dt.timedelta(hours=2)),
            "status": "finished",
            "class": {
                "system": cat.ACT_CODE,
                "code": "VR" if virtual else "AMB",
                "display": "virtual" if virtual else "ambulatory",
            },
            "type": [_concept(cat.SNOMED, code, display)],
            "subject": self.patient_ref,
            "participant": [
                {
                    "type": [_concept(cat.PARTICIPATION, "PPRF", "primary performer")],
                    "individual": _ref(
                        "Practitioner", visit.clinician.id, clinician_name(visit.clinician)
                    ),
                }
            ],
            "period": {
                "start": instant(visit.moment),
                "end": instant(visit.moment + dt.timedelta(minutes=20 if virtual else 30)),
            },
        }
        reason = visit.episode[0] if visit.episode else None
        if visit.kind in ("followup", "telehealth") and self.plan.problems:
            reason = self.plan.problems[0]
        if reason:
            problem = cat.PROBLEMS[reason]
            res["reasonCode"] = [_concept(cat.SNOMED, problem.code, problem.display)]
        if visit.condition_id:
            res["diagnosis"] = [{"condition": _ref("Condition", visit.condition_id), "rank": 1}]
        res["serviceProvider"] = _ref("Organization", visit.org["id"], visit.org["name"])
        self.out["Encounter"].append(res)

    def _observation_base(self, visit: _Visit, category: str, code: Resource) -> Resource:
        vital = category == "vital-signs"
        taken = visit.moment + dt.timedelta(minutes=5 if vital else 25)
        issued = taken + dt.timedelta(minutes=5 if vital else 180)
        return {
            "resourceType": "Observation",
            "id": self._id("obs", 4),
            "meta": meta(issued),
            "status": "final",
            "category": [_concept(cat.OBS_CATEGORY, category, _CATEGORY_DISPLAY[category])],
            "code": code,
            "subject": self.patient_ref,
            "encounter": _ref("Encounter", visit.id),
            "effectiveDateTime": instant(taken),
            "issued": instant(issued),
        }

    def _observation(self, visit: _Visit, lab: cat.Lab, value: float) -> Resource:
        res = self._observation_base(
            visit, lab.category, _concept(cat.LOINC, lab.loinc, lab.display)
        )
        res["valueQuantity"] = _quantity(value, lab.unit)
        if lab.low is not None or lab.high is not None:
            flag = "N"
            if lab.high is not None and value > lab.high:
                flag = "H"
            elif lab.low is not None and value < lab.low:
                flag = "L"
            res["interpretation"] = [_concept(cat.INTERPRETATION, flag, _FLAG_DISPLAY[flag])]
            bounds: Resource = {}
            if lab.low is not None:
                bounds["low"] = _quantity(lab.low, lab.unit)
            if lab.high is not None:
                bounds["high"] = _quantity(lab.high, lab.unit)
            res["referenceRange"] = [bounds]
        return res

    def _measure(self, visit: _Visit, key: str, value: float | None = None) -> float:
        lab = cat.LABS[key]
        raw = self._value(key, visit.date) if value is None else value
        result = _rounded(raw, lab.decimals)
        visit.values[key] = result
        self.history.setdefault(key, []).append((visit.date, result))
        self.out["Observation"].append(self._observation(visit, lab, result))
        return result

    def _vitals(self, visit: _Visit) -> None:
        systolic = _rounded(self._value("sbp", visit.date), 0)
        diastolic = _rounded(systolic * 0.56 + self.rng.uniform(4, 12), 0)
        visit.values |= {"sbp": systolic, "dbp": diastolic}
        self.history.setdefault("sbp", []).append((visit.date, systolic))
        panel = self._observation_base(visit, "vital-signs", _concept(cat.LOINC, *cat.BP_PANEL))
        panel["component"] = [
            {
                "code": _concept(cat.LOINC, *cat.BP_SYSTOLIC),
                "valueQuantity": _quantity(systolic, "mm[Hg]"),
            },
            {
                "code": _concept(cat.LOINC, *cat.BP_DIASTOLIC),
                "valueQuantity": _quantity(diastolic, "mm[Hg]"),
            },
        ]
        self.out["Observation"].append(panel)
        self._measure(visit, "hr")
        self._measure(visit, "rr")
        febrile = visit.episode is not None and visit.episode[0] in ("sinusitis", "bronchitis")
        self._measure(visit, "temp", self.rng.uniform(37.6, 38.3) if febrile else None)
        self._measure(visit, "spo2", min(self._value("spo2", visit.date), 100))
        if visit.kind == "annual" or "height" not in self.history:
            self._measure(visit, "height")
        weight = self._measure(visit, "weight")
        self._measure(visit, "bmi", weight / (self.height / 100) ** 2)

    def _labs(self, visit: _Visit, i: int) -> None:
        plan = self.plan
        keys: list[str] = []
        if visit.kind == "annual":
            keys += [*cat.LIPID_PANEL, *cat.BASIC_PANEL, *cat.CBC_PANEL]
            if plan.diabetic or "prediabetes" in self.problems or plan.index % 2 == 0:
                keys.append("a1c")
            if plan.diabetic:
                keys.append("uacr")
            if "depression" not in self.problems:
                keys.append("phq2")
        elif visit.kind == "followup":
            if plan.diabetic:
                keys.append("a1c")
            if "htn" in self.problems or (plan.diabetic and i % 2):
                keys += ["creatinine", "egfr", "potassium"]
            if "hld" in self.problems and (i % 2 == 0 or i == self._changes["hld"]):
                keys += list(cat.LIPID_PANEL)
        if visit.scheduled:
            if "depression" in self.problems:
                keys.append("phq9")
            if plan.distinctive.lab:
                keys.append(plan.distinctive.lab)
        keys = sorted(dict.fromkeys(keys), key=lambda k: k in _DERIVED)
        for key in keys:
            self._measure(visit, key, self._derived(key, visit))

    def _derived(self, key: str, visit: _Visit) -> float | None:
        v, u = visit.values, self.rng.uniform
        if key == "chol":
            return v["ldl"] + v["hdl"] + v["tg"] / 5
        if key == "egfr":
            return _egfr(v["creatinine"], _age(self.plan.birth_date, visit.date), self.female)
        if key == "glucose" and self.plan.diabetic:
            a1c = v.get("a1c", self._value("a1c", visit.date))
            return 28.7 * a1c - 46.7 + u(-12, 12)
        if key == "phq2":
            return max(0.0, self._value("phq2", visit.date))
        return None

    # -- clinical notes ----------------------------------------------------------------------

    def _latest(self, key: str, before: dt.date) -> tuple[dt.date, float] | None:
        earlier = [entry for entry in self.history.get(key, []) if entry[0] <= before]
        return earlier[-1] if earlier else None

    def _assessment(self, visit: _Visit) -> list[str]:
        lines: list[str] = []
        values, day = visit.values, visit.date
        for key in self.problems:
            problem = cat.PROBLEMS[key]
            text = problem.display
            if key == "t2dm":
                a1c = self._latest("a1c", day)
                earlier = [e for e in self.history.get("a1c", []) if e[0] < (a1c or (day,))[0]]
                if a1c and earlier:
                    delta = a1c[1] - earlier[-1][1]
                    status = (
                        "improving"
                        if delta < -0.3
                        else "worsening, above goal"
                        if delta > 0.3
                        else "stable"
                    )
                    text += (
                        f": hemoglobin A1c {a1c[1]} % on {a1c[0]}, previously "
                        f"{earlier[-1][1]} % on {earlier[-1][0]} ({status}; goal below 7.0 %)"
                    )
                elif a1c:
                    text += f": hemoglobin A1c {a1c[1]} % on {a1c[0]}"
            elif key == "prediabetes" and "a1c" in values:
                text += f": hemoglobin A1c {values['a1c']} %; lifestyle counseling given"
            elif key == "htn" and "sbp" in values:
                goal = "at goal" if values["sbp"] < 135 else "above goal"
                text += f": blood pressure {values['sbp']}/{values['dbp']} mmHg, {goal}"
            elif key == "hld":
                ldl = self._latest("ldl", day)
                text += f": LDL cholesterol {ldl[1]} mg/dL on {ldl[0]}" if ldl else ": on statin"
            elif key == "ckd3":
                egfr = self._latest("egfr", day)
                text += f": eGFR {egfr[1]} mL/min/1.73m2 on {egfr[0]}" if egfr else ""
            elif key == "depression" and "phq9" in values:
                text += f": PHQ-9 score {values['phq9']}"
            elif key == "obesity" and "bmi" in values:
                text += f": BMI {values['bmi']} kg/m2; diet and exercise counseling"
            elif key == "asthma":
                text += ": well controlled, rescue inhaler needed less than twice a week"
            elif key == "oa_knee":
                text += ": intermittent knee pain, walking daily"
            lines.append(text)
        dist = self.plan.distinctive
        text = f"{dist.condition.display}: {dist.assessment}"
        if dist.lab and (latest := self._latest(dist.lab, day)):
            lab = cat.LABS[dist.lab]
            text += f"; {_with_unit(f'{lab.label} {latest[1]}', lab.unit)} on {latest[0]}"
        lines.append(text)
        return lines

    def _note_text(self, visit: _Visit, i: int, title: str) -> str:
        plan = self.plan
        age = _age(plan.birth_date, visit.date)
        noun, pronoun, their = ("woman", "She", "her") if self.female else ("man", "He", "his")
        chronic = [cat.PROBLEMS[k].short for k in self.problems] + [
            plan.distinctive.condition.short
        ]
        history = _join(chronic)
        sections: list[tuple[str, str]] = []
        if visit.episode:
            problem = cat.PROBLEMS[visit.episode[0]]
            sections.append(("Chief complaint", visit.episode[1]))
            hpi = (
                f"{plan.name} is a {age}-year-old {noun} who {visit.episode[2]}. "
                f"Past history includes {history}."
            )
            sections.append(("History of present illness", hpi))
        else:
            reason = {
                "annual": "Annual physical examination and chronic disease follow-up.",
                "telehealth": "Telehealth follow-up by video.",
            }.get(visit.kind, f"Follow-up of {_join(chronic[:2])}.")
            sections.append(("Chief complaint", reason))
            hpi = (
                f"{plan.name} is a {age}-year-old {noun} seen for follow-up of {history}. "
                f"{pronoun} reports taking {their} medications as prescribed and has no new "
                "complaints."
            )
            sections.append(("History of present illness", hpi))
        if i == 0:
            past = [
                f"- {cat.PROBLEMS[k].display if k in cat.PROBLEMS else plan.distinctive.condition.display}"
                f" (since {self.onsets[k].year})"
                for k in [*self.problems, "distinctive"]
            ]
            sections.append(("Past medical history", "\n".join(past)))
            sections.append(
                (
                    "Social history",
                    "Lives in "
                    + plan.address[1]
                    + ", "
                    + plan.address[2]
                    + ". Never smoker. Alcohol: rarely.",
                )
            )
        meds = [
            f"- {cat.DRUGS[c.drug].name}: {cat.DRUGS[c.drug].sig}" for c in self._active_courses(i)
        ]
        sections.append(("Current medications", "\n".join(meds) or "None."))
        allergies = "; ".join(f"{a.display} ({a.manifestation[1].lower()})" for a in self.allergies)
        sections.append(("Allergies", allergies or "No known drug allergies."))
        values = visit.values
        if "sbp" in values:
            vitals = (
                f"BP {values['sbp']}/{values['dbp']} mmHg, heart rate {values['hr']}/min, "
                f"respiratory rate {values['rr']}/min, temperature {values['temp']} C, "
                f"SpO2 {values['spo2']} %, weight {values['weight']} kg, "
                f"BMI {values['bmi']} kg/m2."
            )
            sections.append(("Vital signs", vitals))
        results = [
            _with_unit(f"{cat.LABS[k].label} {values[k]}", cat.LABS[k].unit)
            for k in cat.LABS
            if k in values and cat.LABS[k].category != "vital-signs"
        ]
        if results:
            sections.append(("Results", f"Drawn {visit.date}: " + "; ".join(results) + "."))
        if visit.episode:
            problem = cat.PROBLEMS[visit.episode[0]]
            sections.append(("Assessment", f"1. {problem.display}."))
        else:
            sections.append(
                (
                    "Assessment",
                    "\n".join(f"{n}. {line}." for n, line in enumerate(self._assessment(visit), 1)),
                )
            )
        plan_lines = self._medication_changes(i) + visit.plan
        if visit.episode:
            plan_lines.append(
                "Fluids and rest. Return if symptoms worsen or do not improve within 7 days."
            )
            follow_up = "As needed."
        else:
            if not self._medication_changes(i):
                plan_lines.insert(0, "Continue current medications.")
            if plan.diabetic:
                plan_lines.append("Repeat hemoglobin A1c in 3 months.")
            follow_up = "Return in 3 months." if plan.diabetic else "Return in 4 months."
        sections.append(("Plan", "\n".join(f"- {line}" for line in plan_lines)))
        sections.append(("Follow-up", follow_up))
        header = [
            title.upper(),
            f"Patient: {plan.name}    DOB: {plan.birth_date}    MRN: {plan.mrn}",
            f"Date of service: {visit.date}    Clinician: {clinician_name(visit.clinician)}    "
            + f"Location: {visit.org['name']}",
        ]
        body = [f"{name}:\n{text}" for name, text in sections]
        signed = f"Electronically signed by {clinician_name(visit.clinician)} on {visit.date}."
        return "\n".join(header) + "\n\n" + "\n\n".join(body) + "\n\n" + signed + "\n"

    def _note(self, visit: _Visit, i: int) -> None:
        loinc, title = (
            ("34117-2", "History and physical note") if i == 0 else ("11506-3", "Progress note")
        )
        text = self._note_text(visit, i, title)
        data = base64.b64encode(text.encode("utf-8")).decode("ascii")
        written = visit.moment + dt.timedelta(minutes=90)
        doc_id = self._id("doc")
        attachment: Resource = {"contentType": "text/plain", "language": "en-US"}
        if self.counts["doc"] % 4 == 2:
            binary_id = self._id("bin")
            attachment["url"] = f"Binary/{binary_id}"
            self.out["Binary"].append(
                {
                    "resourceType": "Binary",
                    "id": binary_id,
                    "meta": meta(written),
                    "contentType": "text/plain",
                    "securityContext": self.patient_ref,
                    "data": data,
                }
            )
        else:
            attachment["data"] = data
        attachment |= {
            "size": len(text.encode("utf-8")),
            "title": title,
            "creation": instant(written),
        }
        end = visit.moment + dt.timedelta(minutes=20 if visit.kind == "telehealth" else 30)
        self.out["DocumentReference"].append(
            {
                "resourceType": "DocumentReference",
                "id": doc_id,
                "meta": meta(written),
                "status": "current",
                "docStatus": "final",
                "type": _concept(cat.LOINC, loinc, title),
                "category": [_concept(cat.DOC_CATEGORY, "clinical-note", "Clinical Note")],
                "subject": self.patient_ref,
                "date": instant(written),
                "author": [
                    _ref("Practitioner", visit.clinician.id, clinician_name(visit.clinician))
                ],
                "custodian": _ref("Organization", visit.org["id"], visit.org["name"]),
                "description": f"{title}, {visit.date}",
                "content": [{"attachment": attachment}],
                "context": {
                    "encounter": [_ref("Encounter", visit.id)],
                    "period": {"start": instant(visit.moment), "end": instant(end)},
                },
            }
        )

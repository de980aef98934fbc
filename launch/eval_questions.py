"""The evaluation question set: phrasings × charts, with ground truth read from the raw FHIR resources.

A phrasing (``data/eval/phrasings.jsonl``, hand-written) is a template with slots ("last {lab}?");
the generator fills the slots from one chart and computes what a right answer must cite straight
from that chart's FHIR resources (codes, dates, values, statuses), never from chartcite's own
projections. The codes behind the slot words are data (``data/eval/slots.jsonl``). Charts are the
sandbox's generated patients (fixed seed and clock) and, when present, the Synthea sample.

FHIR R4: https://hl7.org/fhir/R4/observation.html (effective[x], component),
medicationrequest.html, condition.html (clinicalStatus), allergyintolerance.html,
immunization.html (vaccineCode, CVX), procedure.html (performed[x]), encounter.html (class, period),
documentreference.html (context.encounter), patient.html (birthDate, gender).
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import random
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from launch.eval_charts import Chart, ChartView, Item, fmt_number, months_before

DATA = Path(__file__).parent / "data" / "eval"
PHRASINGS = DATA / "phrasings.jsonl"
SLOTS = DATA / "slots.jsonl"
SEED = 11
PER_PHRASING = 3
WINDOWS = ("since_month", "in_year", "between", "last_n_months", "last_n_years", "this_year")
KIND_NAMES = (
    "latest_lab",
    "lab_series",
    "first_lab",
    "extreme_lab",
    "absent_lab",
    "latest_bp",
    "bp_series",
    "med_ever",
    "med_absent",
    "active_meds",
    "condition_ever",
    "condition_absent",
    "active_conditions",
    "resolved_conditions",
    "condition_onset",
    "allergies",
    "allergy_absent",
    "immunization_group",
    "immunization_absent",
    "procedures_in_period",
    "procedure_absent",
    "encounter_count",
    "last_encounter",
    "latest_note_plan",
    "demographics",
)
MONTHS = [
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
]
MARGIN = dt.timedelta(days=7)  # no result this close to a window's edge: time zones never decide


class EvalDataError(ValueError):
    """A phrasing, slot or question file is malformed; the message names the line."""


@dataclass(frozen=True)
class Phrasing:
    id: str
    kind: str
    template: str
    slots: tuple[str, ...]
    split: str
    window: str | None = None
    pick: str | None = None
    asks: str | None = None
    visit_type: str | None = None


def read_jsonl(path: Path) -> Iterable[tuple[int, dict[str, Any]]]:
    """(line number, object) for every non-blank line; ``EvalDataError`` names a bad one."""
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise EvalDataError(f"{path.name} line {n}: not JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise EvalDataError(f"{path.name} line {n}: not a JSON object")
        yield n, row


def load_phrasings(path: Path = PHRASINGS) -> list[Phrasing]:
    """Every phrasing, checked: a known kind, a split, slots that match the template."""
    out: list[Phrasing] = []
    for n, row in read_jsonl(path):
        try:
            p = Phrasing(
                id=str(row["id"]),
                kind=str(row["kind"]),
                template=str(row["template"]),
                slots=tuple(row["slots"]),
                split=str(row["split"]),
                window=row.get("window"),
                pick=row.get("pick"),
                asks=row.get("asks"),
                visit_type=row.get("visit_type"),
            )
        except (KeyError, TypeError) as exc:
            raise EvalDataError(f"{path.name} line {n}: missing or bad field {exc}") from None
        if p.kind not in KIND_NAMES or p.split not in ("public", "heldout"):
            raise EvalDataError(f"{path.name} line {n}: unknown kind or split")
        if set(re.findall(r"\{(\w+)\}", p.template)) != set(p.slots):
            raise EvalDataError(f"{path.name} line {n}: slots do not match the template")
        if p.window is not None and p.window not in WINDOWS:
            raise EvalDataError(f"{path.name} line {n}: unknown window {p.window!r}")
        out.append(p)
    return out


def load_slots(path: Path = SLOTS) -> dict[str, list[dict[str, Any]]]:
    """The slot lexicon by table (labs, drugs, conditions, allergens, vaccines, procedures, …)."""
    tables: dict[str, list[dict[str, Any]]] = {}
    for _, row in read_jsonl(path):
        tables.setdefault(str(row["table"]), []).append(row)
    return tables


@dataclass
class Truth:
    """What a right answer cites and says."""

    required: list[str] = field(default_factory=list)
    allowed: list[str] = field(default_factory=list)
    values: list[str] = field(default_factory=list)
    none: bool = False

    def as_json(self) -> dict[str, Any]:
        req = sorted(set(self.required))
        return {
            "required": req,
            "allowed": sorted(set(self.allowed) - set(req)),
            "values": self.values,
            "none": self.none,
        }


Made = tuple[dict[str, str], Truth]


# -- windows -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    start: dt.datetime | None
    end: dt.datetime | None  # exclusive

    def holds(self, at: dt.datetime) -> bool:
        return (self.start is None or at >= self.start) and (self.end is None or at < self.end)


def _clear(items: list[Item], edges: Iterable[dt.datetime | None]) -> bool:
    return all(e is None or abs(i.at - e) > MARGIN for i in items for e in edges)


def _render_date(d: dt.date, style: int) -> str:
    if style == 0:
        return d.isoformat()
    if style == 1:
        return f"{d.month}/{d.day}/{d.year}"
    return f"{MONTHS[d.month - 1][:3]} {d.day} {d.year}"


def _windows(name: str, items: list[Item], now: dt.datetime, rng: random.Random) -> list[Any]:
    """Candidate (slots, window) pairs of one kind of window for these items."""
    utc = dt.UTC
    out: list[tuple[dict[str, str], Window]] = []
    if name == "since_month":
        months = sorted({(i.at.year, i.at.month) for i in items})
        for y, m in months[1:]:
            start = dt.datetime(y, m, 1, tzinfo=utc)
            word = MONTHS[m - 1]
            word = rng.choice([word, word.capitalize(), word[:3]])
            out.append(({"month": word, "year": str(y)}, Window(start, None)))
    elif name == "in_year":
        for y in sorted({i.at.year for i in items}):
            out.append(
                (
                    {"year": str(y)},
                    Window(dt.datetime(y, 1, 1, tzinfo=utc), dt.datetime(y + 1, 1, 1, tzinfo=utc)),
                )
            )
    elif name == "between":
        cuts = [items[0].at - dt.timedelta(days=30)]
        cuts += [a.at + (b.at - a.at) / 2 for a, b in itertools.pairwise(items)]
        cuts += [min(items[-1].at + dt.timedelta(days=30), now)]
        for i, lo in enumerate(cuts):
            for hi in cuts[i + 1 :]:
                d1, d2 = lo.date(), hi.date()
                start = dt.datetime.combine(d1, dt.time(), utc)
                end = dt.datetime.combine(d2 + dt.timedelta(days=1), dt.time(), utc)
                style = rng.randrange(3)
                slots = {"date1": _render_date(d1, style), "date2": _render_date(d2, style)}
                out.append((slots, Window(start, end)))
    elif name in ("last_n_months", "last_n_years"):
        ns = (3, 6, 12, 18, 24) if name == "last_n_months" else (1, 2, 3, 5)
        for n in ns:
            months = n if name == "last_n_months" else 12 * n
            out.append(({"n": str(n)}, Window(months_before(now, months), None)))
    elif name == "this_year":
        out.append(({}, Window(dt.datetime(now.year, 1, 1, tzinfo=utc), None)))
    return out


def pick_window(
    ph: Phrasing, items: list[Item], now: dt.datetime, rng: random.Random, least: int
) -> tuple[dict[str, str], list[Item]] | None:
    """Slots and the items inside a window the phrasing names, or all items without one."""
    if ph.window is None:
        return ({}, items) if len(items) >= max(least, 1) else None
    if not items and least > 0:
        return None
    good = []
    for slots, w in _windows(ph.window, items, now, rng) if items else []:
        inside = [i for i in items if w.holds(i.at)]
        if len(inside) >= least and _clear(items, (w.start, w.end if w.end != now else None)):
            good.append((slots, inside, len(inside) < len(items)))
    if ph.window == "this_year" and not items:
        good = [(s, [], False) for s, _ in _windows("this_year", [], now, rng)]
    if not good:
        return None
    narrowing = [g for g in good if g[2]] or good  # prefer windows that leave something out
    slots, inside, _ = rng.choice(narrowing)
    return slots, inside


# -- the kinds -----------------------------------------------------------------------------------


class Maker:
    """Fills one phrasing's slots from one chart and computes the truth, or says it cannot."""

    def __init__(self, view: ChartView, slots: dict[str, list[dict[str, Any]]]) -> None:
        self.v = view
        self.t = slots

    def make(self, ph: Phrasing, rng: random.Random) -> Made | None:
        made: Made | None = getattr(self, ph.kind)(ph, rng)
        if made is None:
            return None
        filled, truth = made
        filled.update(self.v.pronouns)
        return {k: filled[k] for k in ph.slots}, truth

    # labs
    def _labs(self, least: int) -> list[tuple[dict[str, Any], list[Item]]]:
        out = []
        for lab in self.t["labs"]:
            items = self.v.lab_items(set(lab["loinc"]))
            if len(items) >= least:
                out.append((lab, items))
        return out

    def latest_lab(self, ph: Phrasing, rng: random.Random) -> Made | None:
        return self._one_lab(rng, lambda items: items[-1])

    def first_lab(self, ph: Phrasing, rng: random.Random) -> Made | None:
        return self._one_lab(rng, lambda items: items[0])

    def _one_lab(self, rng: random.Random, chosen: Callable[[list[Item]], Item]) -> Made | None:
        options = []
        for lab, items in self._labs(1):
            it = chosen(items)
            if sum(i.at == it.at for i in items) == 1:
                options.append((lab, items, it))
        if not options:
            return None
        lab, items, it = rng.choice(options)
        truth = Truth([it.ref], [i.ref for i in items], [fmt_number(it.value)])
        return {"lab": rng.choice(lab["say"])}, truth

    def extreme_lab(self, ph: Phrasing, rng: random.Random) -> Made | None:
        options = []
        for lab, items in self._labs(3):
            best = (max if ph.pick == "max" else min)(i.value for i in items)
            top = [i for i in items if i.value == best]
            if len(top) == 1:
                options.append((lab, items, top[0]))
        if not options:
            return None
        lab, items, it = rng.choice(options)
        truth = Truth([it.ref], [i.ref for i in items], [fmt_number(it.value)])
        return {"lab": rng.choice(lab["say"])}, truth

    def lab_series(self, ph: Phrasing, rng: random.Random) -> Made | None:
        options = []
        for lab, items in self._labs(2):
            picked = pick_window(ph, items, self.v.now, rng, 2)
            if picked is not None:
                options.append((lab, picked))
        if not options:
            return None
        lab, (slots, inside) = rng.choice(options)
        return {"lab": rng.choice(lab["say"]), **slots}, Truth([i.ref for i in inside])

    def absent_lab(self, ph: Phrasing, rng: random.Random) -> Made | None:
        absent = [
            lab
            for lab in self.t["labs"]
            if not self.v.lab_items(set(lab["loinc"]), valued=False)
            and not self.v.mentions(lab["say"], "Observation")
        ]
        if not absent:
            return None
        lab = rng.choice(absent)
        return {"lab": rng.choice(lab["say"])}, Truth(none=True)

    # blood pressure
    def latest_bp(self, ph: Phrasing, rng: random.Random) -> Made | None:
        panels = self.v.bp_items(self.t["bp"][0])
        if not panels or sum(p.at == panels[-1].at for p in panels) > 1:
            return None
        last = panels[-1]
        extra = self.v.bp_parts(self.t["bp"][0], {last.at})
        return {}, Truth([last.ref], extra, [str(last.value)])

    def bp_series(self, ph: Phrasing, rng: random.Random) -> Made | None:
        panels = self.v.bp_items(self.t["bp"][0])
        picked = pick_window(ph, panels, self.v.now, rng, 2)
        if picked is None:
            return None
        slots, inside = picked
        extra = self.v.bp_parts(self.t["bp"][0], {p.at for p in inside})
        return slots, Truth([p.ref for p in inside], extra)

    # medications
    def med_ever(self, ph: Phrasing, rng: random.Random) -> Made | None:
        options = [(d, rx) for d in self.t["drugs"] if (rx := self.v.med_requests(d["match"]))]
        if not options:
            return None
        drug, rx = rng.choice(options)
        truth = Truth([i.ref for i in rx], self.v.medications_of(rx))
        return {"drug": rng.choice(drug["say"])}, truth

    def med_absent(self, ph: Phrasing, rng: random.Random) -> Made | None:
        absent = [
            d
            for d in self.t["drugs"]
            if not self.v.med_requests(d["match"]) and not self.v.mentions(d["say"] + d["match"])
        ]
        if not absent:
            return None
        return {"drug": rng.choice(rng.choice(absent)["say"])}, Truth(none=True)

    def active_meds(self, ph: Phrasing, rng: random.Random) -> Made | None:
        active = [i for i in self.v.med_requests(None) if i.res.get("status") == "active"]
        if not active:
            return {}, Truth(none=True)
        return {}, Truth([i.ref for i in active], self.v.medications_of(active))

    # conditions
    def _conditions(self) -> list[tuple[dict[str, Any], list[Item]]]:
        return [
            (c, items) for c in self.t["conditions"] if (items := self.v.conditions(c["snomed"]))
        ]

    def condition_ever(self, ph: Phrasing, rng: random.Random) -> Made | None:
        options = self._conditions()
        if not options:
            return None
        cond, items = rng.choice(options)
        return {"condition": rng.choice(cond["say"])}, Truth([i.ref for i in items])

    def condition_absent(self, ph: Phrasing, rng: random.Random) -> Made | None:
        absent = [
            c
            for c in self.t["conditions"]
            if not self.v.conditions(c["snomed"]) and not self.v.mentions(c["say"])
        ]
        if not absent:
            return None
        return {"condition": rng.choice(rng.choice(absent)["say"])}, Truth(none=True)

    def active_conditions(self, ph: Phrasing, rng: random.Random) -> Made | None:
        active = [
            i for i in self.v.conditions(None) if i.status in ("active", "recurrence", "relapse")
        ]
        problems = [i.ref for i in active if not i.finding]
        if not active:
            return {}, Truth(none=True)
        if not problems:
            return None
        return {}, Truth(problems, [i.ref for i in active])

    def resolved_conditions(self, ph: Phrasing, rng: random.Random) -> Made | None:
        done = [
            i for i in self.v.conditions(None) if i.status in ("resolved", "inactive", "remission")
        ]
        return {}, (Truth([i.ref for i in done]) if done else Truth(none=True))

    def condition_onset(self, ph: Phrasing, rng: random.Random) -> Made | None:
        options = []
        for cond, items in self._conditions():
            dated = [i for i in items if i.res.get("onsetDateTime") or i.res.get("onsetPeriod")]
            if dated and sum(i.at == dated[0].at for i in dated) == 1:
                options.append((cond, items, dated[0]))
        if not options:
            return None
        cond, items, first = rng.choice(options)
        onset = first.res.get("onsetDateTime") or first.res["onsetPeriod"].get("start", "")
        truth = Truth([first.ref], [i.ref for i in items], [str(onset)[:10]])
        return {"condition": rng.choice(cond["say"])}, truth

    # allergies
    def allergies(self, ph: Phrasing, rng: random.Random) -> Made | None:
        items = self.v.allergies()
        if not items:
            return {}, Truth(none=True)
        active = [i.ref for i in items if i.status in ("active", "")]
        return {}, Truth(active, [i.ref for i in items])

    def allergy_absent(self, ph: Phrasing, rng: random.Random) -> Made | None:
        absent = [a for a in self.t["allergens"] if not self.v.mentions(a["say"] + a["match"])]
        if not absent:
            return None
        return {"allergen": rng.choice(rng.choice(absent)["say"])}, Truth(none=True)

    # immunizations
    def immunization_group(self, ph: Phrasing, rng: random.Random) -> Made | None:
        options = []
        for vac in self.t["vaccines"]:
            items = self.v.immunizations(vac["cvx"])
            if not items:
                continue
            picked = pick_window(ph, items, self.v.now, rng, 0)
            if picked is None:
                continue
            slots, inside = picked
            if ph.pick == "latest":
                last = items[-1]
                if sum(i.at == last.at for i in items) > 1:
                    continue
                truth = Truth([last.ref], [i.ref for i in items], [last.date])
            elif inside:
                truth = Truth([i.ref for i in inside])
            else:
                truth = Truth(none=True)
            options.append(({"vaccine": rng.choice(vac["say"]), **slots}, truth))
        return rng.choice(options) if options else None

    def immunization_absent(self, ph: Phrasing, rng: random.Random) -> Made | None:
        absent = [v for v in self.t["vaccines"] if not self.v.immunizations(v["cvx"])]
        if not absent:
            return None
        return {"vaccine": rng.choice(rng.choice(absent)["say"])}, Truth(none=True)

    # procedures
    def procedures_in_period(self, ph: Phrasing, rng: random.Random) -> Made | None:
        picked = pick_window(ph, self.v.procedures(None), self.v.now, rng, 1)
        if picked is None:
            return None
        slots, inside = picked
        return slots, Truth([i.ref for i in inside])

    def procedure_absent(self, ph: Phrasing, rng: random.Random) -> Made | None:
        absent = [
            p
            for p in self.t["procedures"]
            if not self.v.procedures(p["match"]) and not self.v.mentions(p["say"] + p["match"])
        ]
        if not absent:
            return None
        return {"procedure": rng.choice(rng.choice(absent)["say"])}, Truth(none=True)

    # encounters and notes
    def encounter_count(self, ph: Phrasing, rng: random.Random) -> Made | None:
        classes = None
        if ph.visit_type:
            classes = next(v["class"] for v in self.t["visit_types"] if v["key"] == ph.visit_type)
        every = self.v.encounters(None)
        picked = pick_window(ph, every, self.v.now, rng, 0)
        if picked is None:
            return None
        slots, inside = picked
        inside = [
            i for i in inside if classes is None or i.res.get("class", {}).get("code") in classes
        ]
        if not inside:
            return slots, Truth(none=True)
        return slots, Truth([i.ref for i in inside], values=[str(len(inside))])

    def last_encounter(self, ph: Phrasing, rng: random.Random) -> Made | None:
        every = self.v.encounters(None)
        if not every or sum(i.at == every[-1].at for i in every) > 1:
            return None
        last = every[-1]
        return {}, Truth([last.ref], self.v.notes_of(last.ref), [last.date])

    def latest_note_plan(self, ph: Phrasing, rng: random.Random) -> Made | None:
        notes = self.v.notes()
        if not notes or sum(n.at == notes[-1].at for n in notes) > 1:
            return None
        last = notes[-1]
        if not self.v.has_plan(last.res):
            return None
        return {}, Truth([last.ref], self.v.encounters_of(last.res))

    # demographics
    def demographics(self, ph: Phrasing, rng: random.Random) -> Made | None:
        p = self.v.patient
        birth = str(p.get("birthDate", ""))
        ref = f"Patient/{p['id']}"
        if ph.asks == "dob" and len(birth) == 10:
            return {}, Truth([ref], values=[birth])
        alive = not p.get("deceasedDateTime") and not p.get("deceasedBoolean")
        if ph.asks == "age" and len(birth) == 10 and alive:
            born, today = dt.date.fromisoformat(birth), self.v.now.date()
            age = today.year - born.year - ((today.month, today.day) < (born.month, born.day))
            return {}, Truth([ref], values=[str(age)])
        if ph.asks == "sex" and p.get("gender"):
            return {}, Truth([ref], values=[str(p["gender"])])
        family = next((n.get("family") for n in p.get("name", []) if n.get("family")), None)
        if ph.asks == "name" and family:
            return {}, Truth([ref], values=[str(family)])
        return None


# -- the set -------------------------------------------------------------------------------------


def generate_questions(
    phrasings: list[Phrasing],
    charts: list[Chart],
    *,
    seed: int = SEED,
    per_phrasing: int = PER_PHRASING,
    slots: dict[str, list[dict[str, Any]]] | None = None,
) -> list[dict[str, Any]]:
    """``per_phrasing`` questions per phrasing, on charts taken in turn from each source."""
    tables = slots or load_slots()
    makers = {(c.source, c.patient_id): Maker(ChartView(c), tables) for c in charts}
    sources = sorted(
        {c.source for c in charts}, key=lambda s: min(c.order for c in charts if c.source == s)
    )
    by_source = {s: [c for c in charts if c.source == s] for s in sources}
    out: list[dict[str, Any]] = []
    for ph in phrasings:
        prng = random.Random(f"chartcite-eval-{seed}-{ph.id}")
        used: set[tuple[str, str]] = set()
        for k in range(per_phrasing):
            ordered = sources[k % len(sources) :] + sources[: k % len(sources)]
            found = None
            for src in ordered:
                pool = [c for c in by_source[src] if (c.source, c.patient_id) not in used]
                prng.shuffle(pool)
                for chart in pool:
                    rng = random.Random(f"chartcite-eval-{seed}-{ph.id}-{chart.patient_id}")
                    made = makers[(chart.source, chart.patient_id)].make(ph, rng)
                    if made is not None:
                        found = (chart, made)
                        break
                if found:
                    break
            if found is None:
                break
            chart, (filled, truth) = found
            used.add((chart.source, chart.patient_id))
            out.append(
                {
                    "qid": f"{ph.id}-{k + 1}",
                    "phrasing": ph.id,
                    "kind": ph.kind,
                    "split": ph.split,
                    "source": chart.source,
                    "iss": chart.iss,
                    "chart": chart.origin,
                    "patient": chart.patient_id,
                    "chart_digest": chart.digest,
                    "question": ph.template.format(**filled),
                    "now": chart.now.isoformat(),
                    "expected": truth.as_json(),
                }
            )
    return out

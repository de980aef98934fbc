"""The evaluation's charts and an independent reading of their raw FHIR resources.

A chart is one patient's compartment (``Patient/$everything``: the Patient, its clinical
resources, the Medications they reference, the Binaries of its notes) from the sandbox generator
(fixed seed and clock, so the same ids every time) or from the Synthea sample. ``ChartView`` reads
the ground truth from those dicts by code system, date and status — never through chartcite's
normalisation or facts — so the score measures the answer path against the record itself.

FHIR R4: https://hl7.org/fhir/R4/patient-operation-everything.html, datatypes.html#dateTime,
observation.html#gr-comp (BP components by LOINC), condition.html#9.2.3.5 (clinicalStatus),
documentreference.html, binary.html
"""

from __future__ import annotations

import base64
import calendar
import datetime as dt
import hashlib
import io
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from launch.sandbox import SandboxStore, generate_patients, load_fhir_dir
from smart_app.ehrs import source_key

Resource = dict[str, Any]
SANDBOX_ISS = "https://eval.chartcite.invalid/sandbox/fhir"
SYNTHEA_ISS = "https://eval.chartcite.invalid/synthea/fhir"
TODAY = dt.date(2026, 12, 1)  # the sandbox charts' clock: fixed, so the ids and dates never move
SANDBOX_SEED = 7
_GONE = {"entered-in-error", "cancelled", "not-done", "refuted"}
_TAGS = ("(finding)", "(situation)", "(person)", "(observable entity)", "(qualifier value)")
_PLAN = re.compile(r"(?im)^[\s#*>-]*(assessment\s*(and|&|/)\s*plan|a/p|plan)\b")


@dataclass
class Chart:
    source: str
    iss: str
    origin: dict[str, Any]  # how to rebuild it: generator parameters, or "synthea"
    patient_id: str
    resources: list[Resource]
    now: dt.datetime
    order: int = 0  # sources in a fixed order: the sandbox first

    @property
    def digest(self) -> str:
        """Fingerprint of the chart's resources: a question file names the charts it was made on."""
        text = json.dumps(self.resources, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class Item:
    """One resource with the time that orders it (and, for results, its value)."""

    ref: str
    at: dt.datetime
    raw: str
    res: Resource
    value: Any = None
    status: str = ""
    finding: bool = False

    @property
    def date(self) -> str:
        return self.raw[:10]


def when(value: Any) -> dt.datetime | None:
    """A FHIR date/dateTime/instant as an aware datetime (partial dates at their start, UTC)."""
    if not isinstance(value, str) or not re.match(r"^\d{4}", value):
        return None
    text = value
    if len(text) == 4:
        text += "-01-01"
    elif len(text) == 7:
        text += "-01"
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def months_before(now: dt.datetime, months: int) -> dt.datetime:
    y, m = divmod(now.year * 12 + now.month - 1 - months, 12)
    day = min(now.day, calendar.monthrange(y, m + 1)[1])
    return now.replace(year=y, month=m + 1, day=day)


def fmt_number(v: Any) -> str:
    """A quantity as a person writes it: 7.2, 140 (not 140.0)."""
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def _codes(concept: Any) -> list[dict[str, Any]]:
    return list(concept.get("coding") or []) if isinstance(concept, dict) else []


def _texts(concept: Any) -> list[str]:
    if not isinstance(concept, dict):
        return []
    out = [str(c.get("display", "")) for c in _codes(concept)]
    return [t for t in [*out, str(concept.get("text", ""))] if t]


def _binary_ids(doc: Resource) -> list[str]:
    urls = [str(c.get("attachment", {}).get("url", "")) for c in doc.get("content", [])]
    return [u.split("Binary/", 1)[1] for u in urls if "Binary/" in u]


def chart_resources(store: SandboxStore, patient_id: str) -> list[Resource]:
    """$everything for one patient plus the Binaries its notes point at."""
    chart = store.everything(patient_id)
    for r in list(chart):
        if r["resourceType"] == "DocumentReference":
            chart += [b for i in _binary_ids(r) if (b := store.get("Binary", i)) is not None]
    return chart


def sandbox_charts(
    patients: int = 20, seed: int = SANDBOX_SEED, today: dt.date = TODAY
) -> list[Chart]:
    """The sandbox generator's patients on a fixed clock (the answers' ``now``: that day, 17:00Z)."""
    store = SandboxStore(generate_patients(n_patients=patients, seed=seed, today=today))
    origin = {
        "generator": "sandbox",
        "seed": seed,
        "patients": patients,
        "today": today.isoformat(),
    }
    now = dt.datetime.combine(today, dt.time(17), dt.UTC)
    return [
        Chart(
            source_key(SANDBOX_ISS),
            SANDBOX_ISS,
            origin,
            str(p["id"]),
            chart_resources(store, str(p["id"])),
            now,
        )
        for p in store.patients()
    ]


def synthea_charts(path: Path) -> list[Chart]:
    """The Synthea patients; ``now`` is the first of the month after the last encounter."""
    store = SandboxStore(load_fhir_dir(path))
    starts = [
        t
        for e in store.of_type("Encounter")
        if (t := when((e.get("period") or {}).get("start"))) is not None
    ]
    last = max(starts, default=dt.datetime(2025, 1, 1, tzinfo=dt.UTC))
    y, m = divmod(last.year * 12 + last.month, 12)
    now = dt.datetime(y, m + 1, 1, 12, tzinfo=dt.UTC)
    return [
        Chart(
            source_key(SYNTHEA_ISS),
            SYNTHEA_ISS,
            {"generator": "synthea"},
            str(p["id"]),
            chart_resources(store, str(p["id"])),
            now,
            order=1,
        )
        for p in store.patients()
    ]


def _word(term: str) -> re.Pattern[str]:
    return re.compile(rf"(?<![a-z0-9]){re.escape(term.lower())}(?![a-z0-9])")


def _stem(term: str) -> re.Pattern[str]:
    """A word starting with ``term`` ("mammograph" finds "Mammography", "electrocardiograph"
    finds "Electrocardiographic")."""
    return re.compile(rf"(?<![a-z0-9]){re.escape(term.lower())}")


@dataclass
class ChartView:
    """Ground-truth questions over one chart's raw resources, all bounded by ``chart.now``."""

    chart: Chart
    by_type: dict[str, list[Resource]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for r in self.chart.resources:
            self.by_type.setdefault(r["resourceType"], []).append(r)
        self.patient = next(p for p in self.by_type["Patient"] if p["id"] == self.chart.patient_id)
        self.now = self.chart.now
        self.meds = {f"Medication/{m['id']}": m for m in self.by_type.get("Medication", [])}
        self.binaries = {b["id"]: b for b in self.by_type.get("Binary", [])}
        female = self.patient.get("gender") == "female"
        male = self.patient.get("gender") == "male"
        self.pronouns = {
            "he": "she" if female else "he" if male else "they",
            "his": "her" if female else "his" if male else "their",
            "him": "her" if female else "him" if male else "them",
        }
        self.vocab: dict[str, list[str]] = {}
        for rtype, rows in self.by_type.items():
            if rtype in ("Patient", "DocumentReference", "Binary"):
                continue
            texts = self.vocab.setdefault(rtype, [])
            for r in rows:
                for key in ("code", "vaccineCode", "medicationCodeableConcept", "type"):
                    value = r.get(key)
                    for concept in value if isinstance(value, list) else [value]:
                        texts += [t.lower() for t in _texts(concept)]

    def _items(self, rtype: str, times: Iterable[str]) -> list[Item]:
        out = []
        for r in self.by_type.get(rtype, []):
            if r.get("status") in _GONE:
                continue
            raw = next((t for t in (self._path(r, p) for p in times) if t), None)
            at = when(raw)
            if at is None or at > self.now:
                continue
            out.append(Item(f"{rtype}/{r['id']}", at, str(raw), r))
        return sorted(out, key=lambda i: (i.at, i.ref))

    @staticmethod
    def _path(r: Resource, path: str) -> Any:
        node: Any = r
        for part in path.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        return node

    def mentions(self, terms: Iterable[str], rtype: str | None = None) -> bool:
        """Whether any term starts a word of any coded display/text in the chart (or one type's);
        generous on purpose: an "absent" concept must be really absent."""
        pats = [_stem(t) for t in terms]
        texts = self.vocab.get(rtype, []) if rtype else [t for v in self.vocab.values() for t in v]
        return any(p.search(t) for p in pats for t in texts)

    _OBS_TIMES = ("effectiveDateTime", "effectiveInstant", "effectivePeriod.start", "issued")

    def lab_items(self, loinc: set[str], *, valued: bool = True) -> list[Item]:
        out = []
        for i in self._items("Observation", self._OBS_TIMES):
            if not {c.get("code") for c in _codes(i.res.get("code"))} & loinc:
                continue
            value = (i.res.get("valueQuantity") or {}).get("value")
            if valued and not isinstance(value, int | float):
                continue
            i.value = value
            out.append(i)
        return out

    def bp_items(self, bp: dict[str, Any]) -> list[Item]:
        out = []
        for i in self.lab_items(set(bp["panel"]), valued=False):
            parts = {}
            for comp in i.res.get("component", []):
                for c in _codes(comp.get("code")):
                    v = (comp.get("valueQuantity") or {}).get("value")
                    if c.get("code") in (bp["systolic"], bp["diastolic"]) and v is not None:
                        parts[c["code"]] = fmt_number(v)
            if len(parts) == 2:
                i.value = f"{parts[bp['systolic']]}/{parts[bp['diastolic']]}"
                out.append(i)
        return out

    def bp_parts(self, bp: dict[str, Any], times: set[dt.datetime]) -> list[str]:
        """Stand-alone systolic/diastolic Observations taken with these panels (may be cited)."""
        parts = self.lab_items({bp["systolic"], bp["diastolic"]}, valued=False)
        return [i.ref for i in parts if i.at in times]

    def _drug_texts(self, rx: Resource) -> list[str]:
        texts = _texts(rx.get("medicationCodeableConcept"))
        ref = str((rx.get("medicationReference") or {}).get("reference", ""))
        contained = {f"#{c.get('id')}": c for c in rx.get("contained", [])}
        med = contained.get(ref) or self.meds.get(ref)
        if med is not None:
            texts += _texts(med.get("code"))
        return [t.lower() for t in texts]

    def med_requests(self, match: list[str] | None) -> list[Item]:
        every = self._items("MedicationRequest", ("authoredOn",))
        if match is None:
            return every
        pats = [_word(m) for m in match]
        return [i for i in every if any(p.search(t) for p in pats for t in self._drug_texts(i.res))]

    def medications_of(self, items: list[Item]) -> list[str]:
        refs = [(i.res.get("medicationReference") or {}).get("reference") for i in items]
        return [r for r in refs if r in self.meds]

    def conditions(self, snomed: list[str] | None) -> list[Item]:
        out = []
        times = ("onsetDateTime", "onsetPeriod.start", "recordedDate")
        for i in self._items("Condition", times):
            ver = [c.get("code") for c in _codes(i.res.get("verificationStatus"))]
            if set(ver) & _GONE:
                continue
            codes = {c.get("code") for c in _codes(i.res.get("code"))}
            if snomed is not None and not codes & set(snomed):
                continue
            i.status = next((str(c.get("code")) for c in _codes(i.res.get("clinicalStatus"))), "")
            i.finding = any(t.strip().endswith(_TAGS) for t in _texts(i.res.get("code")))
            out.append(i)
        return out

    def allergies(self) -> list[Item]:
        out = []
        for i in self._items(
            "AllergyIntolerance", ("recordedDate", "onsetDateTime", "meta.lastUpdated")
        ):
            ver = {c.get("code") for c in _codes(i.res.get("verificationStatus"))}
            if ver & _GONE:
                continue
            i.status = next((str(c.get("code")) for c in _codes(i.res.get("clinicalStatus"))), "")
            out.append(i)
        return out

    def immunizations(self, cvx: list[str]) -> list[Item]:
        return [
            i
            for i in self._items("Immunization", ("occurrenceDateTime", "recorded"))
            if i.res.get("status", "completed") == "completed"
            and {c.get("code") for c in _codes(i.res.get("vaccineCode"))} & set(cvx)
        ]

    def procedures(self, match: list[str] | None) -> list[Item]:
        every = self._items("Procedure", ("performedDateTime", "performedPeriod.start"))
        if match is None:
            return every
        pats = [_stem(m) for m in match]
        return [
            i
            for i in every
            if any(p.search(t.lower()) for p in pats for t in _texts(i.res.get("code")))
        ]

    def encounters(self, classes: list[str] | None) -> list[Item]:
        return [
            i
            for i in self._items("Encounter", ("period.start",))
            if i.res.get("status") != "planned"
            and (classes is None or (i.res.get("class") or {}).get("code") in classes)
        ]

    def notes(self) -> list[Item]:
        return self._items("DocumentReference", ("date", "context.period.start"))

    def notes_of(self, encounter_ref: str) -> list[str]:
        return [n.ref for n in self.notes() if encounter_ref in self.encounters_of(n.res)]

    @staticmethod
    def encounters_of(doc: Resource) -> list[str]:
        refs = (doc.get("context") or {}).get("encounter") or []
        return [str(r.get("reference")) for r in refs if r.get("reference")]

    def note_text(self, doc: Resource) -> str:
        """The note's text as read from its attachments (inline or Binary), tags dropped."""
        parts = []
        for content in doc.get("content", []):
            att = content.get("attachment") or {}
            data, ctype = att.get("data"), str(att.get("contentType", ""))
            url = str(att.get("url", ""))
            if data is None and "Binary/" in url:
                binary = self.binaries.get(url.split("Binary/", 1)[1]) or {}
                data, ctype = binary.get("data"), str(binary.get("contentType", ctype))
            if not data:
                continue
            raw = base64.b64decode(data)
            if "pdf" in ctype:
                from pypdf import PdfReader

                text = "\n".join(p.extract_text() or "" for p in PdfReader(io.BytesIO(raw)).pages)
            else:
                text = raw.decode("utf-8", errors="replace")
                if "iso-8859-1" in ctype.lower() or "latin" in ctype.lower():
                    text = raw.decode("latin-1")
            if "html" in ctype:
                text = re.sub(r"(?is)<(script|style)\b.*?</\1>", "", text)
                text = re.sub(r"(?i)<br\s*/?>|</(p|div|h\d|li)>", "\n", text)
                text = re.sub(r"<[^>]+>", "", text)
            parts.append(text)
        return "\n".join(parts)

    def has_plan(self, doc: Resource) -> bool:
        return bool(_PLAN.search(self.note_text(doc)))

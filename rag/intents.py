"""Question understanding: which kinds of chart data, which lab concepts, which time window.

Deterministic and pure. Lab concepts map to LOINC codes; a question may also name a lab by words
of its display text, which ``match_displays`` resolves against the patient's own codes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

KIND_TYPES = {
    "labs": "Observation",
    "vitals": "Observation",
    "medications": "MedicationRequest",
    "conditions": "Condition",
    "allergies": "AllergyIntolerance",
    "immunizations": "Immunization",
    "procedures": "Procedure",
    "encounters": "Encounter",
    "notes": "DocumentReference",
}

_KIND_PATTERNS = {
    "medications": r"medication|medicine|\bdrugs?\b|prescri|\bmeds?\b|\brx\b|taking|pharmac|dose|dosage",
    "conditions": r"condition|diagnos|problem|disease|comorbid|medical history|\bdx\b",
    "allergies": r"allerg|intoleran|adverse reaction",
    "immunizations": r"immuni[sz]|vaccin|\bshots?\b",
    "procedures": r"procedure|surger|surgical|operation|operated",
    "encounters": r"\bvisits?\b|encounter|appointment|admission|admitted|seen in clinic",
    "notes": r"\bnotes?\b|\bplan\b|follow[- ]?up|documented|assessment|narrative|\bsaid\b|counsel",
    "labs": r"\blabs?\b|laborator|test results?|\bresults?\b|\bvalues?\b|\blevels?\b",
    "vitals": r"vital",
}

# LOINC codes per named concept (FHIR R4 vital-signs profile codes, common chemistry panels).
LAB_CONCEPTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "hba1c": (
        r"\bhb\s?a1c\b|\ba1c\b|hemoglobin a1c|haemoglobin a1c|glycated|glycosylated",
        ("4548-4", "17856-6", "4549-2", "59261-8"),
    ),
    "blood_pressure": (
        r"blood pressure|\bbp\b|systolic|diastolic",
        ("85354-9", "55284-4", "8480-6", "8462-4"),
    ),
    "bmi": (r"\bbmi\b|body mass", ("39156-5",)),
    "weight": (r"\bweight\b|\bweigh", ("29463-7", "3141-9")),
    "height": (r"\bheight\b", ("8302-2",)),
    "lipids": (
        r"lipid|cholesterol",
        ("2093-3", "18262-6", "13457-7", "2089-1", "2085-9", "2571-8"),
    ),
    "ldl": (r"\bldl\b", ("18262-6", "13457-7", "2089-1")),
    "hdl": (r"\bhdl\b", ("2085-9",)),
    "triglycerides": (r"triglycer", ("2571-8",)),
    "egfr": (
        r"\begfr\b|\bgfr\b|glomerular|kidney function|renal function",
        ("33914-3", "62238-1", "98979-8", "48642-3", "48643-1"),
    ),
    "creatinine": (r"creatinine", ("2160-0", "38483-4")),
    "glucose": (r"glucose|blood sugar", ("2339-0", "2345-7")),
    "heart_rate": (r"heart rate|pulse", ("8867-4",)),
}

_UNITS = {"day": 1, "week": 7, "month": 30.44, "year": 365.25}
_NUMBERS = {
    "one": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "twelve": 12,
    "eighteen": 18,
}
_WINDOW = re.compile(
    r"\b(?:last|past|previous|recent)\s+(?:(\d{1,3}|one|two|three|four|five|six|twelve|eighteen)\s+)?"
    r"(day|week|month|year)s?\b"
)
_SINCE = re.compile(r"\bsince\s+((?:19|20)\d{2})\b")
_IN_YEAR = re.compile(r"\b(?:in|during)\s+((?:19|20)\d{2})\b")
_GENERIC_WORDS = frozenset(
    [
        "blood",
        "serum",
        "plasma",
        "total",
        "mass",
        "volume",
        "moles",
        "level",
        "count",
        "panel",
        "ratio",
        "method",
        "calculated",
        "automated",
        "presence",
        "measured",
        "urine",
        "body",
        "with",
        "from",
        "that",
        "this",
        "have",
        "what",
        "which",
        "were",
        "there",
        "tablet",
        "tablets",
        "oral",
        "capsule",
        "injection",
        "daily",
        "release",
        "extended",
        "hour",
        "disorder",
        "finding",
        "chronic",
        "acute",
        "history",
        "patient",
        "patients",
        "does",
        "done",
        "given",
        "taking",
        "prescribed",
        "medication",
        "medications",
        "condition",
        "conditions",
        "about",
        "show",
        "tell",
        "list",
        "ever",
        "been",
        "last",
        "latest",
        "most",
        "recent",
        "current",
        "result",
        "results",
        "value",
        "values",
        "test",
        "tests",
        "level",
        "levels",
        "lab",
        "labs",
        "trend",
    ]
)
# Words that say nothing about the chart; kept out of the full-text query.
_STOP_TERMS = frozenset(
    [
        "the",
        "and",
        "for",
        "was",
        "were",
        "what",
        "which",
        "who",
        "when",
        "how",
        "has",
        "have",
        "had",
        "does",
        "did",
        "any",
        "this",
        "that",
        "with",
        "patient",
        "patients",
        "patient's",
        "show",
        "tell",
        "list",
        "give",
        "please",
        "about",
        "from",
        "over",
        "last",
        "past",
    ]
)
_LATEST = re.compile(
    r"\b(latest|most recent|newest|current(?:ly)?|last)\b(?!\s+(?:\d+|one|two|three|four|five|six|"
    r"twelve|eighteen)?\s*(?:days?|weeks?|months?|years?)\b)"
)


@dataclass(frozen=True)
class Intent:
    kinds: frozenset[str]
    lab_codes: frozenset[str] = frozenset()
    lab_names: tuple[str, ...] = ()
    since: datetime | None = None
    until: datetime | None = None
    terms: tuple[str, ...] = field(default=())
    latest: bool = False
    """The question asks for the most recent item (``latest BP``, ``last visit``), not a series."""

    @property
    def resource_types(self) -> frozenset[str]:
        return frozenset(KIND_TYPES[k] for k in self.kinds)


def terms(question: str) -> tuple[str, ...]:
    """Lower-case alphanumeric terms of 3+ characters (safe to put in a tsquery)."""
    return tuple(
        dict.fromkeys(
            t
            for t in re.findall(r"[a-z0-9]+", question.lower())
            if len(t) >= 3 and t not in _STOP_TERMS
        )
    )


def time_window(question: str, now: datetime) -> tuple[datetime | None, datetime | None]:
    q = question.lower()
    if m := _WINDOW.search(q):
        n_raw = m.group(1)
        n = int(n_raw) if n_raw and n_raw.isdigit() else _NUMBERS.get(n_raw or "one", 1)
        return now - timedelta(days=n * _UNITS[m.group(2)]), None
    if m := _SINCE.search(q):
        return datetime(int(m.group(1)), 1, 1, tzinfo=UTC), None
    if m := _IN_YEAR.search(q):
        year = int(m.group(1))
        return datetime(year, 1, 1, tzinfo=UTC), datetime(year, 12, 31, 23, 59, 59, tzinfo=UTC)
    return None, None


def parse_question(question: str, now: datetime) -> Intent:
    q = question.lower()
    kinds = {kind for kind, pattern in _KIND_PATTERNS.items() if re.search(pattern, q)}
    names, codes = [], set()
    for name, (pattern, loincs) in LAB_CONCEPTS.items():
        if re.search(pattern, q):
            names.append(name)
            codes.update(loincs)
    if codes:
        kinds.add("labs")
    since, until = time_window(question, now)
    latest = since is None and _LATEST.search(q) is not None
    return Intent(
        frozenset(kinds), frozenset(codes), tuple(names), since, until, terms(question), latest
    )


def match_displays(question: str, codes: list[dict[str, object]]) -> set[str]:
    """Codes whose display shares a distinctive word with the question (``potassium``, ``ferritin``)."""
    words = {t for t in terms(question) if not t.isdigit() and t not in _GENERIC_WORDS}
    hits = set()
    for row in codes:
        display = str(row.get("display") or "").lower()
        display_words = {
            w for w in re.findall(r"[a-z0-9]+", display) if len(w) >= 3
        } - _GENERIC_WORDS
        if row.get("code") and words & display_words:
            hits.add(str(row["code"]))
    return hits

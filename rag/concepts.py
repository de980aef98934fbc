"""Concept resolution: the words of a question → the coded concepts this patient actually has.

Three sources, most trusted first:

(a) the curated lexicon (``rag/data/lexicon.jsonl``: abbreviations, lay terms, brands → codes and
    display words, each entry with its source). A mention is a whole-word match of an entry's term;
    overlapping mentions keep the longest ("ldl cholesterol" beats "cholesterol", "blood pressure"
    beats "pressure"), and a few typos are forgiven.
(b) the structure of code displays: a chart code belongs to the lexicon entry that lists it, else to
    the entry whose display words occur, whole-word, in the display's component (a LOINC long name's
    text before the first ``[``); a urine specimen never stands in for a blood test. Each chart code
    belongs to at most one entry, the most specific, so "cholesterol" never picks up LDL.
(c) for words the lexicon does not know, the chart's own display words, and then embedding
    similarity against the concepts the patient has (embedded once per concept at index time).

A mention that resolves to nothing in this chart is reported, so the answer can abstain and say
what it looked for. Pure except for :func:`similar_concepts`'s query.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

import numpy as np
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from fhir_adapters import AccessFilter, visible_sql
from rag.repository import vector_literal

#: Which resource type an entry of each lexicon kind is looked up in.
KIND_RESOURCE = {
    "lab": "Observation",
    "vital": "Observation",
    "panel": "Observation",
    "condition": "Condition",
    "medication": "MedicationRequest",
    "immunization": "Immunization",
    "allergy": "AllergyIntolerance",
    "procedure": "Procedure",
}
#: What a missing item is called in a notice ("No TSH (thyrotropin) result in this record.").
KIND_NOUN = {
    "lab": "result",
    "vital": "measurement",
    "panel": "result",
    "condition": "diagnosis",
    "medication": "prescription",
    "immunization": "immunization",
    "allergy": "allergy",
    "procedure": "procedure",
}
_WORD = re.compile(r"[a-z0-9]+")
_URINE = re.compile(r"\burine\b|\burin\b")


@dataclass(frozen=True)
class Entry:
    id: str
    kind: str
    label: str
    terms: tuple[str, ...]
    codes: frozenset[str]
    words: tuple[str, ...]
    members: tuple[str, ...] = ()
    source: str = ""

    @property
    def resource_type(self) -> str:
        return KIND_RESOURCE[self.kind]


@dataclass(frozen=True)
class Mention:
    """A span of the question that names a lexicon entry."""

    entry: Entry
    text: str
    start: int
    end: int


def normalize(text_: str) -> str:
    """Lower case, apostrophes dropped, every other non-alphanumeric run a single space."""
    return " ".join(_WORD.findall(text_.lower().replace("'", "")))


def _phrase_re(phrase: str, plural: bool = False) -> str:
    """Whole words; with ``plural`` the last word may take an -s/-es ("statins", "a1cs")."""
    body = r"\s+".join(re.escape(w) for w in phrase.split())
    return r"(?<![a-z0-9])" + body + (r"(?:e?s)?" if plural else "") + r"(?![a-z0-9])"


def contains_phrase(text_: str, phrase: str) -> bool:
    """Does ``phrase`` (normalized) occur in ``text_`` as whole words?"""
    return re.search(_phrase_re(phrase), normalize(text_)) is not None


def display_component(display: str, system: str | None = None) -> tuple[str, str]:
    """A display's (component, specimen): for a LOINC long name, the text before the first ``[``
    and the system after `` in ``; other displays are their own component."""
    low = display.lower()
    if "[" in low:
        component, _, rest = low.partition("[")
        specimen = rest.split("]", 1)[-1]
        specimen = specimen.split(" in ", 1)[1] if " in " in specimen else ""
        return normalize(component), normalize(specimen)
    component, _, specimen = low.partition(" in ")
    if system == "http://loinc.org" and specimen:
        return normalize(component), normalize(specimen)
    return normalize(low), ""


@dataclass
class Lexicon:
    entries: dict[str, Entry]
    _by_term: dict[str, str] = field(init=False)
    _pattern: re.Pattern[str] = field(init=False)
    _single_terms: list[str] = field(init=False)
    _word_index: list[tuple[str, re.Pattern[str], str]] = field(init=False)
    _claims: dict[tuple[str, str | None, str | None, str], str | None] = field(init=False)
    _phrases_of: dict[str, list[tuple[str, re.Pattern[str]]]] = field(init=False)
    #: Every word of every term and display word: a question word here is never a typo.
    vocabulary: frozenset[str] = field(init=False)
    _prefixed: dict[str, list[str]] = field(init=False)

    def __post_init__(self) -> None:
        self._claims = {}
        self._by_term = {}
        for e in self.entries.values():
            for t in e.terms:
                self._by_term.setdefault(normalize(t), e.id)
        terms = sorted(self._by_term, key=lambda t: (-len(t), t))
        self._pattern = re.compile(
            "|".join(f"(?:{_phrase_re(t, plural=len(t) >= 3)})" for t in terms if t)
        )
        self._single_terms = [t for t in terms if " " not in t and len(t) >= 5]
        # Display words, and for drugs the brand terms too ("Lipitor 10 MG Oral Tablet").
        phrases = {
            (normalize(w), e.id)
            for e in self.entries.values()
            for w in (*e.words, *(e.terms if e.kind == "medication" else ()))
            if len(normalize(w)) >= 3
        }
        self._word_index = sorted(
            ((p, re.compile(_phrase_re(p)), eid) for p, eid in phrases),
            key=lambda x: (-len(x[0]), x[2]),
        )
        self._phrases_of = {}
        for phrase, pattern, eid in self._word_index:
            self._phrases_of.setdefault(eid, []).append((phrase, pattern))
        self.vocabulary = frozenset(
            w
            for e in self.entries.values()
            for t in (*e.terms, *e.words)
            for w in normalize(t).split()
        )
        # "covid" → the entries with a longer term starting with it ("covid vaccine", "covid test").
        self._prefixed = {}
        for t, eid in self._by_term.items():
            words = t.split()
            for n in range(1, len(words)):
                ids = self._prefixed.setdefault(" ".join(words[:n]), [])
                if eid not in ids:
                    ids.append(eid)

    def _term_entry(self, matched: str) -> str:
        if matched in self._by_term:
            return self._by_term[matched]
        singular = matched[:-2] if matched[:-2] in self._by_term else matched[:-1]
        return self._by_term[singular]

    @classmethod
    def from_rows(cls, rows: Iterable[dict[str, Any]]) -> Lexicon:
        entries = {}
        for r in rows:
            entries[r["id"]] = Entry(
                id=r["id"],
                kind=r["kind"],
                label=r.get("label") or r["id"],
                terms=tuple(r.get("terms") or ()),
                codes=frozenset(r.get("codes") or ()),
                words=tuple(r.get("words") or ()),
                members=tuple(r.get("members") or ()),
                source=r.get("source") or "",
            )
        return cls(entries)

    def mentions(self, question: str) -> list[Mention]:
        """Lexicon entries the question names: whole words, longest first, then typos."""
        q = normalize(question)
        found: list[Mention] = []
        for m in self._pattern.finditer(q):
            entry = self.entries[self._term_entry(m.group(0))]
            found.append(Mention(entry, m.group(0), m.start(), m.end()))
        taken = [(m.start, m.end) for m in found]
        for w in _WORD.finditer(q):
            word = w.group(0)
            if len(word) < 6 or any(s <= w.start() < e for s, e in taken) or word in _COMMON:
                continue
            close = difflib.get_close_matches(word, self._single_terms, n=1, cutoff=0.86)
            if close:
                entry = self.entries[self._by_term[close[0]]]
                found.append(Mention(entry, word, w.start(), w.end()))
        return sorted(found, key=lambda m: m.start)

    def extensions(self, mention_text: str) -> list[Entry]:
        """Entries one of whose terms is ``mention_text`` followed by more words ("covid" →
        "covid vaccine", "covid test"): what the mention may stand for when a kind word follows."""
        return [self.entries[e] for e in self._prefixed.get(normalize(mention_text), ())]

    def claim(
        self, resource_type: str, system: str | None, code: str | None, display: str
    ) -> str | None:
        """The one entry a chart code belongs to (by code, else by the longest display words)."""
        key = (resource_type, system, code, display)
        if key not in self._claims:
            if len(self._claims) > 50_000:
                self._claims.clear()  # bounded: chart vocabularies are far smaller
            self._claims[key] = _claim(self, resource_type, system, code, display)
        return self._claims[key]

    def covers(
        self, entry: Entry, resource_type: str, system: str | None, code: str | None, display: str
    ) -> bool:
        """Does a mention of ``entry`` take in this chart code? Its own and its members' codes; a
        code the entry lists; and a code claimed by a narrower entry through the same display
        word ("statin" takes the atorvastatin orders, "cholesterol" never takes LDL)."""
        if resource_type != entry.resource_type:
            return False
        claimed = self.claim(resource_type, system, code, display)
        if claimed in self.expand(entry) or (code is not None and code in entry.codes):
            return True
        if claimed is None:
            return False
        component, _ = display_component(display, system)
        target = component if resource_type == "Observation" else normalize(display)
        narrower = (
            None
            if resource_type == "MedicationRequest"
            else {normalize(w) for w in self.entries[claimed].words}
        )
        return any(
            (narrower is None or phrase in narrower) and pattern.search(target)
            for phrase, pattern in self._phrases_of.get(entry.id, ())
        )

    def expand(self, entry: Entry) -> set[str]:
        """An entry and, for a panel, its members (recursively)."""
        out, todo = set(), [entry.id]
        while todo:
            eid = todo.pop()
            if eid in out or eid not in self.entries:
                continue
            out.add(eid)
            todo.extend(self.entries[eid].members)
        return out


def _claim(
    lex: Lexicon, resource_type: str, system: str | None, code: str | None, display: str
) -> str | None:
    by_code = [
        e
        for e in lex.entries.values()
        if code and code in e.codes and e.resource_type == resource_type
    ]
    if by_code:
        # A code listed by a panel and by a member belongs to the member (the specific one).
        by_code.sort(key=lambda e: (e.kind == "panel", len(e.codes), e.id))
        return by_code[0].id
    component, specimen = display_component(display, system)
    if not component:
        return None
    target = component if resource_type == "Observation" else normalize(display)
    for phrase, pattern, eid in lex._word_index:
        if lex.entries[eid].resource_type != resource_type or not pattern.search(target):
            continue
        if _URINE.search(specimen) and not _URINE.search(phrase):
            continue  # urine hemoglobin is not hemoglobin
        return eid
    return None


@cache
def lexicon() -> Lexicon:
    """The packaged lexicon (read once)."""
    raw = resources.files("rag").joinpath("data/lexicon.jsonl").read_text(encoding="utf-8")
    return Lexicon.from_rows(json.loads(line) for line in raw.splitlines() if line.strip())


def wordset(text_: str) -> frozenset[str]:
    """A set of whitespace-separated words (vocabulary lists kept readable)."""
    return frozenset(text_.split())


# Words that are never a clinical name on their own (question vocabulary, time, grammar).
_COMMON = wordset(
    """
    a about above after again against all also am an and any anything are as at be been before
    being below between both but by can could current currently date dates did do does doing done
    down during each earliest ever every few first for from further had has have having he her here
    hers herself him himself his how i if in into is it its itself just last latest list lowest
    highest max maximum me min minimum more most my myself newest no nor not now of off on once only
    or other our ours out over own patient patients pt pts same she should show so some such than
    that the their theirs them then there these they this those through to too under until up very
    was we were what when where which while who whom why will with would you your yours recent
    recently previous previously prior past ago since days day weeks week months month years year
    today yesterday tell give please many much value values result results level levels reading
    readings number numbers trend trends change changes changed history hx record records chart
    charted documented noted any was were get got taken take taking takes took on off start started
    stop stopped active inactive resolved still yet now currently again ever never whats what's
    status dose doses dosage check checked time times visit visits seen see last next new old
    january february march april may june july august september october november december jan feb
    mar apr jun jul aug sep sept oct nov dec since year's recorded measured measurement measurements
    lab labs test tests tested testing panel result shot shots vaccine vaccines vaccinated
    vaccination vaccinations immunization immunizations immunized medication medications medicine
    medicines meds med drug drugs prescribed prescription prescriptions rx condition conditions
    problem problems diagnosis diagnoses diagnosed dx disease diseases disorder allergy allergies
    allergic procedure procedures surgery surgeries operation encounter encounters appointment
    appointments admission admissions note notes plan assessment had have high low highest lowest
    first earliest initial oldest she he her his they them patient's kind type types ok yes okay
    does did done been being show shown list listed all every each any some most recent mostly
    blood serum plasma total mass volume moles count ratio method calculated automated presence
    urine body tablet tablets oral capsule injection release extended hour finding
    longer anymore
    """
)

#: The words above: never a clinical name on their own.
QUESTION_WORDS = _COMMON


def content_words(question: str, covered: Sequence[tuple[int, int]]) -> list[str]:
    """Words of the (normalized) question outside ``covered`` spans that could name something."""
    q = normalize(question)
    return [
        m.group(0)
        for m in _WORD.finditer(q)
        if not any(s <= m.start() < e for s, e in covered)
        and m.group(0) not in _COMMON
        and len(m.group(0)) >= 3
        and not m.group(0).isdigit()
    ]


def display_words(display: str) -> set[str]:
    return set(_WORD.findall(display.lower()))


async def similar_concepts(
    conn: AsyncConnection,
    access: AccessFilter,
    query_vector: np.ndarray,
    resource_types: Sequence[str],
    *,
    threshold: float,
    limit: int = 5,
) -> list[tuple[str, float]]:
    """The patient's concept texts (``Observation: Potassium ...``) most similar to a mention.

    One statement: the patient's distinct concepts (btree range on the chunk key), exact cosine
    similarity against each concept's shared embedding."""
    allowed = sorted(set(resource_types) & access.resource_types)
    if not allowed:
        return []
    visible, params = visible_sql(access, "k", types=allowed, id_column="resource_id")
    rows = await conn.execute(
        text(
            f"""
            SELECT c.text, 1 - (c.embedding <=> CAST(:q AS vector)) AS sim
            FROM concept c
            WHERE c.id IN (
                SELECT DISTINCT k.concept_id FROM chunk k
                WHERE k.source = :src AND k.patient_id = :pid
                  AND {visible} AND k.concept_id IS NOT NULL)
            ORDER BY sim DESC LIMIT :limit
            """
        ),
        {
            **params,
            "q": vector_literal(query_vector),
            "src": access.source,
            "pid": access.patient_id,
            "limit": limit,
        },
    )
    return [(r.text, float(r.sim)) for r in rows if r.sim >= threshold]

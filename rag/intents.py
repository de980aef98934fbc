"""Question understanding: which kinds of chart data, which named concepts, which operator, which
time window.

Deterministic and pure: the clock is an argument (tests fix it). Named concepts come from the
clinical lexicon (``rag.concepts``); what they resolve to in one chart is decided in ``rag.ask``.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from rag.concepts import (
    QUESTION_WORDS,
    Lexicon,
    Mention,
    content_words,
    lexicon,
    normalize,
    wordset,
)

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
    "patient": "Patient",
}
#: The kind of chart data a lexicon entry of each kind is.
ENTRY_KIND = {
    "lab": "labs",
    "panel": "labs",
    "vital": "vitals",
    "condition": "conditions",
    "medication": "medications",
    "immunization": "immunizations",
    "allergy": "allergies",
    "procedure": "procedures",
}

#: "is pt male or female", "is she female?": the patient's sex, not a word to look up.
_SEX_QUESTION = (
    r"\b(?:fe)?male or (?:fe)?male\b|\b(?:man|boy) or (?:a )?(?:woman|girl)\b|\bm or f\b|"
    r"^(?:is|was) (?:the )?(?:pt|patient|she|he|they) (?:a )?(?:fe)?male\b"
)
_KIND_PATTERNS = {
    "medications": r"medication|medicine|\bdrugs?\b|prescri|\bmeds?\b|\brx\b|taking|pharmac|"
    r"\bdose\b|dosage|\bon any\b",
    "conditions": r"condition|diagnos|problem|disease|comorbid|medical history|\bdx\b|\bpmh\b|"
    r"\b(?:medical|health|ongoing|active|current|chronic) issues\b",
    "allergies": r"allerg|intoleran|adverse reaction|\bnkda\b",
    "immunizations": r"immuni[sz]|vaccin|\bshots?\b|\bjabs?\b|\bvaxx?\b",
    "procedures": r"procedure|\bprocs?\b|surger|surgical|operation|operated",
    "encounters": r"\bvisits?\b|encounter|appointment|\bappts?\b|admission|admitted|seen in clinic|"
    r"\bseen\b|\ber\b|\bed visit|hospitali[sz]|\bc[ao]me in\b",
    "notes": r"\bnotes?\b|\bplan\b|\ba/p\b|\ba&p\b|follow[- ]?up|documented|\bassessment\b|narrative|\bsaid\b|"
    r"\bsays?\b|\bmention(?:s|ed)?\b|\bdiscuss(?:ed)?\b|recommend|counsel|\bdecided?\b",
    "labs": r"\blabs?\b|laborator|test results?|\bresults?\b|\bvalues?\b|\blevels?\b|bloodwork|"
    r"blood work",
    "vitals": r"vital",
    "patient": r"date of birth|\bdob\b|birth ?day|born|how old|\bage\b|\bsex\b|gender|"
    r"\bmrn\b|medical record number|patient'?s name|\bname\b|" + _SEX_QUESTION,
}
_PATIENT_FIELDS = {
    "birth_date": r"date of birth|\bdob\b|birth ?day|born",
    "age": r"how old|\bage\b",
    "sex": r"\bsex\b|gender|" + _SEX_QUESTION,
    "mrn": r"\bmrn\b|medical record number",
    "name": r"\bname\b",
}

_UNITS = {"day": 1, "week": 7, "month": 30.44, "year": 365.25}
_NUMBERS = {
    "a": 1,
    "one": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
    "ten": 10,
    "eleven": 11,
    "twelve": 12,
    "eighteen": 18,
    "twenty": 20,
    "thirty": 30,
}
_NUM = r"\d{1,3}|" + "|".join(_NUMBERS)
_WINDOW = re.compile(
    rf"\b(?:last|past|previous|recent|prior|within(?: the)?(?: last| past)?)\s+(?:({_NUM})\s+)?"
    r"(day|week|month|year|yr|mo)s?\b"
)
_AGO = re.compile(rf"\b({_NUM})\s+(day|week|month|year|yr|mo)s?\s+ago\b")
_MONTHS = {
    m: i + 1
    for i, names in enumerate(
        [
            ("january", "jan"),
            ("february", "feb"),
            ("march", "mar"),
            ("april", "apr"),
            ("may",),
            ("june", "jun"),
            ("july", "jul"),
            ("august", "aug"),
            ("september", "sep", "sept"),
            ("october", "oct"),
            ("november", "nov"),
            ("december", "dec"),
        ]
    )
    for m in names
}
_MONTH = "|".join(sorted(_MONTHS, key=len, reverse=True))
_YEAR = r"(?:19|20)\d{2}"
# A date as clinicians type it: 2022-09-24, 2022/09/24, 9/24/2022, Sept 24 2022, Sept 2022, 2022.
_DATE = (
    rf"(?:{_YEAR}[-/]\d{{1,2}}(?:[-/]\d{{1,2}})?|\d{{1,2}}/\d{{1,2}}/{_YEAR}|"
    rf"(?:{_MONTH})\.?\s+(?:\d{{1,2}}(?:st|nd|rd|th)?,?\s+)?{_YEAR}|{_YEAR})"
)
_SINCE = re.compile(rf"\b(?:since|after|from|starting)\s+({_DATE})(?!\d)")
_BEFORE = re.compile(rf"\b(?:before|until|prior to|up to)\s+({_DATE})(?!\d)")
_BETWEEN = re.compile(rf"\bbetween\s+({_DATE})\s+(?:and|to|-)\s+({_DATE})(?!\d)")
_FROM_TO = re.compile(rf"\bfrom\s+({_DATE})\s+(?:to|until|through|-)\s+({_DATE})(?!\d)")
_IN = re.compile(rf"\b(?:in|during|for|of)\s+((?:(?:{_MONTH})\.?\s+)?{_YEAR})(?!\d)")
_THIS_YEAR = re.compile(r"\bthis (year|yr)\b")

_LATEST = re.compile(
    rf"\b(latest|most recent|newest|last|recent)\b(?!\s+(?:{_NUM})?\s*(?:days?|weeks?|months?|years?|"
    r"yrs?|mos?)\b)"
)
_FIRST = re.compile(r"\b(first|earliest|initial|oldest|original|baseline)\b")
_HIGHEST = re.compile(r"\b(highest|max|maximum|peak|largest|worst)\b")
_LOWEST = re.compile(r"\b(lowest|min|minimum|smallest|nadir)\b")
_COUNTED = (
    r"visits?|encounters?|appointments?|appts?|admissions?|hospitali[sz]ations?|procedures?|"
    r"procs?|surger(?:y|ies)|prescriptions?|orders?|vaccines?|vaccinations?|shots?|"
    r"immuni[sz]ations?|notes?"
)
_COUNT = re.compile(
    r"\bhow many\b|\bnumber of\b|#\s*of\b|\bcount\b|\bhow often\b|\bin total\b|"
    # "total visits last 3 months" (but "total cholesterol" is a lab)
    rf"\btotal\s+(?:number of\s+)?(?:[a-z]+\s+)?(?:{_COUNTED})\b"
)
#: Words that ask for a series of results rather than the current value ("a1c?" is the latest).
_SERIES = re.compile(
    r"\b(trends?|trending|all|every|each|history|hx|series|readings|values|results|levels|"
    r"over time|changed?|changes|graph|chart|log|dates|since|ever)\b|\bhow ha(?:s|ve)\b"
)
_EMERGENCY = re.compile(r"\b(er|ed|emergency|a&e|urgent care)\b")
#: Office visits: Encounter.class AMB (v3 ActCode "ambulatory").
_AMBULATORY = re.compile(r"\b(office|clinic|outpatient|ambulatory)\b")
_EXISTS = re.compile(
    r"^(?:has|have|had|is|was|were|does|did|do|any|ever|hx|h/o|known)\b|\bany (?:history|hx) of\b|"
    r"\bhistory of\b|\bhx of\b|\bh/o\b|\bknown\b|\btried\b|\bon file\b|"
    r"\bever (?:been|had|have|tried|taken|received|gotten|got|diagnosed|prescribed|on|done)\b|"
    r"\bis (?:she|he|they|the patient|pt) on\b|\bon (?:a|an|any)\b"
)
_ACTIVE = re.compile(
    r"\b(active|current|currently|ongoing|still|now|present|presently|open)\b|\bis (?:she|he|pt|"
    r"the patient) on\b|\btaking\b"
)
_UNIT_AHEAD = rf"(?!\s+(?:{_NUM})?\s*(?:days?|weeks?|months?|years?|yrs?|mos?)\b)"
_RESOLVED = re.compile(
    # "in the past", "past 6 months", "previous year" are times, not a status ("any losartan in
    # the past" asks whether it was ever prescribed).
    rf"\b(resolved|former|inactive|old|healed)\b|(?<!in the )\b(?:past|previous|prior)\b{_UNIT_AHEAD}|"
    r"\bno longer\b|\bnot (?:active|current)\b"
)
#: A list question that wants everything, not just what is current.
_ALL = re.compile(
    r"\b(all|every|ever|history|hx|pmh|previous(?:ly)?|prior|past|lifetime|any)\b|\bh/o\b|"
    r"\b(?:been|were) prescribed\b"
)
_SECTIONS = {
    "plan": r"\bplan\b|\ba/p\b|\ba&p\b|\ba and p\b|next steps|\bdecided?\b",
    "assessment": r"\bassessment\b|impression",
    "subjective": r"\bsubjective\b|\bhpi\b|history of present illness|chief complaint|\bcc\b",
    "medications": r"\bmedications? (?:section|list) in the note\b",
}

# Words that say nothing about the chart; kept out of the full-text query.
_STOP_TERMS = wordset(
    "the and for was were what which who when how has have had does did any this that with "
    "patient patients patient's show tell list give please about from over last past"
)


@dataclass(frozen=True)
class Intent:
    kinds: frozenset[str]
    mentions: tuple[Mention, ...] = ()
    #: Content words outside every lexicon mention ("sarcoidosis", "zolpidem"): maybe a name.
    words: tuple[str, ...] = ()
    since: datetime | None = None
    until: datetime | None = None
    terms: tuple[str, ...] = field(default=())
    #: "latest", "first", "highest", "lowest" or None (every matching item).
    op: str | None = None
    #: A lab/vital question without an operator, window or series word ("bp?", "whats her a1c")
    #: asks for the current value.
    series: bool = True
    #: Emergency visits only ("how many ER visits").
    emergency: bool = False
    #: Office (ambulatory) visits only ("how many office visits").
    ambulatory: bool = False
    count: bool = False
    exists: bool = False
    #: "active" / "resolved" for problems and medications, else None.
    status: str | None = None
    #: ``status`` is "active" only because a bare list was asked for ("meds", "problem list").
    current_list: bool = False
    section: str | None = None
    patient_fields: frozenset[str] = frozenset()

    @property
    def latest(self) -> bool:
        return self.op == "latest"

    @property
    def resource_types(self) -> frozenset[str]:
        return frozenset(KIND_TYPES[k] for k in self.kinds)

    @property
    def lab_codes(self) -> frozenset[str]:
        return frozenset(
            c
            for m in self.mentions
            if m.entry.resource_type == "Observation"
            for c in m.entry.codes
        )


def terms(question: str) -> tuple[str, ...]:
    """Lower-case alphanumeric terms of 3+ characters (safe to put in a tsquery)."""
    return tuple(
        dict.fromkeys(
            t
            for t in re.findall(r"[a-z0-9]+", question.lower())
            if len(t) >= 3 and t not in _STOP_TERMS
        )
    )


def parse_date(text: str, *, end: bool = False) -> datetime | None:
    """A typed date → the first (or, with ``end``, the last) instant it covers, UTC."""
    t = text.lower().strip().replace(",", " ")
    try:
        if m := re.fullmatch(rf"({_YEAR})[-/](\d{{1,2}})(?:[-/](\d{{1,2}}))?", t):
            y, mo, d = int(m.group(1)), int(m.group(2)), m.group(3)
            return _span(y, mo, int(d) if d else None, end)
        if m := re.fullmatch(rf"(\d{{1,2}})/(\d{{1,2}})/({_YEAR})", t):
            return _span(int(m.group(3)), int(m.group(1)), int(m.group(2)), end)
        if m := re.fullmatch(
            rf"({_MONTH})\.?\s+(?:(\d{{1,2}})(?:st|nd|rd|th)?\s+)?({_YEAR})", " ".join(t.split())
        ):
            d = m.group(2)
            return _span(int(m.group(3)), _MONTHS[m.group(1)], int(d) if d else None, end)
        if re.fullmatch(_YEAR, t):
            return _span(int(t), None, None, end)
    except ValueError:
        return None
    return None


def _span(year: int, month: int | None, day: int | None, end: bool) -> datetime:
    if not end:
        return datetime(year, month or 1, day or 1, tzinfo=UTC)
    if day is not None and month is not None:
        start = datetime(year, month, day, tzinfo=UTC)
        return start + timedelta(days=1) - timedelta(microseconds=1)
    if month is not None:
        nxt = datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=UTC)
        return nxt - timedelta(microseconds=1)
    return datetime(year, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)


def _count(raw: str | None) -> int:
    if not raw:
        return 1
    return int(raw) if raw.isdigit() else _NUMBERS.get(raw, 1)


def _unit(raw: str) -> float:
    return _UNITS[{"yr": "year", "mo": "month"}.get(raw, raw)]


def time_window(question: str, now: datetime) -> tuple[datetime | None, datetime | None]:
    q = " ".join(question.lower().split())
    if m := _BETWEEN.search(q) or _FROM_TO.search(q):
        return parse_date(m.group(1)), parse_date(m.group(2), end=True)
    if m := _WINDOW.search(q):
        return now - timedelta(days=_count(m.group(1)) * _unit(m.group(2))), None
    if m := _AGO.search(q):
        return now - timedelta(days=_count(m.group(1)) * _unit(m.group(2))), None
    since = parse_date(m.group(1)) if (m := _SINCE.search(q)) else None
    until = parse_date(m.group(1), end=False) if (m := _BEFORE.search(q)) else None
    if until is not None:
        until -= timedelta(microseconds=1)  # "before 2023" excludes 2023
    if since or until:
        return since, until
    if _THIS_YEAR.search(q):
        return datetime(now.year, 1, 1, tzinfo=UTC), None
    if m := _IN.search(q):
        return parse_date(m.group(1)), parse_date(m.group(1), end=True)
    return None, None


def _operator(q: str, windowed: bool) -> str | None:
    if _HIGHEST.search(q):
        return "highest"
    if _LOWEST.search(q):
        return "lowest"
    if _FIRST.search(q):
        return "first"
    if not windowed and _LATEST.search(q):
        return "latest"
    return None


def correct_typos(question: str, lex: Lexicon) -> str:
    """The question with misspelt or mis-pluralised type and question words put right
    ("procedrues" → "procedures", "allergys" → "allergies", "lastest" → "latest").

    Only words no lexicon term, display word or question word spells are touched, and only towards
    :data:`_TYPE_WORDS`: a clinical name the lexicon does not know is left for the chart to match.
    """

    def fix(m: re.Match[str]) -> str:
        word = m.group(0)
        low = word.lower()
        if len(low) < 5 or len(low) > 25 or low in lex.vocabulary or low in _KNOWN:
            return word
        if low.endswith("ys") and (plural := low[:-2] + "ies") in _TYPE_WORDS:
            return plural  # "allergys", "surgerys"
        close = difflib.get_close_matches(low, _TYPE_WORDS, n=1, cutoff=0.86)
        # A typo keeps its first letter ("mission" is not a mangled "admission").
        return close[0] if close and close[0][0] == low[0] else word

    return re.sub(r"[A-Za-z]+", fix, question)


def _mask_dates(q: str) -> str:
    """Dates blanked out (same length), so "oct 3 2026" never names retinal OCT."""
    return _DATE_SPAN.sub(lambda m: " " * len(m.group(0)), q)


def _kind_word_near(kind: str, q: str, start: int, end: int) -> bool:
    """Does a word of ``kind`` ("vax", "shot", "test") stand right after or before a mention?"""
    pattern = _KIND_PATTERNS.get(kind)
    if pattern is None:
        return False
    return any(
        m.start() <= end + _NEAR and m.end() >= start - _NEAR
        for m in re.finditer(pattern, q)
        if m.start() >= end or m.end() <= start
    )


def _retarget(mentions: list[Mention], q: str, lex: Lexicon) -> list[Mention]:
    """A mention followed by a kind word of another kind names that kind's entry: "covid vax" is
    the COVID-19 vaccine (an entry with the term "covid vaccine"), not the disease."""
    out = []
    for m in mentions:
        own = ENTRY_KIND[m.entry.kind]
        if not _kind_word_near(own, q, m.start, m.end):
            others = [
                e
                for e in lex.extensions(m.text)
                if ENTRY_KIND[e.kind] != own
                and _kind_word_near(ENTRY_KIND[e.kind], q, m.start, m.end)
            ]
            if len({e.id for e in others}) == 1:
                m = Mention(others[0], m.text, m.start, m.end)
        out.append(m)
    return out


_NOW_PHRASES = re.compile(r"\b(?:right now|at the moment|at present|these days)\b", re.IGNORECASE)


def _counts(q: str, masked: str, mentions: tuple[Mention, ...]) -> bool:
    """A count question — but "count" inside a named item ("white count") is not one."""
    m = _COUNT.search(q)
    if m is None:
        return False
    if m.group(0) == "count" and any("count" in masked[x.start : x.end] for x in mentions):
        return _COUNT.search(q, m.end()) is not None
    return True


def parse_question(question: str, now: datetime, lex: Lexicon | None = None) -> Intent:
    lex = lex or lexicon()
    question = _NOW_PHRASES.sub("now", question)  # "right now" is a time, not a body side
    question = correct_typos(question, lex)
    q = " ".join(question.lower().split())
    kinds = {kind for kind, pattern in _KIND_PATTERNS.items() if re.search(pattern, q)}
    masked = normalize(_mask_dates(normalize(question)))
    mentions = tuple(_retarget(lex.mentions(masked), masked, lex))
    for m in mentions:
        kinds.add(ENTRY_KIND[m.entry.kind])
    patient_fields = frozenset(f for f, p in _PATIENT_FIELDS.items() if re.search(p, q))
    if "patient" in kinds and not patient_fields:
        kinds.discard("patient")
    section = next((s for s, p in _SECTIONS.items() if re.search(p, q)), None)
    if section and "notes" in kinds:
        kinds.discard("encounters")  # "the plan at the last visit" is a note, not the visit
    covered = [(m.start, m.end) for m in mentions]
    words = tuple(w for w in content_words(masked, covered) if w not in _KIND_WORDS)
    if patient_fields == {"name"} and (kinds - {"patient"} or words):
        patient_fields = frozenset()  # "the name of her statin" is not the patient's name
        kinds.discard("patient")
    since, until = time_window(question, now)
    op = _operator(q, since is not None or until is not None)
    status = None
    if _RESOLVED.search(q) and not re.search(r"\bprevious(?:ly)? prescribed\b", q):
        status = "resolved"
    if _ACTIVE.search(q) and not re.search(r"\bno longer\b|\bnot (?:active|current)", q):
        status = "active"
    current_list = (
        status is None and not mentions and since is None and until is None and not _ALL.search(q)
    )
    if current_list:
        status = "active"  # "meds", "problem list": the current list, said so in a notice
    if "allergies" in kinds and not re.search(r"\bmed(?:ication)?s\b|prescri|\brx\b", q):
        kinds.discard("medications")  # "drug allergies", "allergic to asa?" ask about allergies
    return Intent(
        kinds=frozenset(kinds),
        mentions=mentions,
        words=words,
        since=since,
        until=until,
        terms=terms(question),
        op=op,
        count=_counts(q, masked, mentions),
        series=bool(_SERIES.search(q)) or since is not None or until is not None,
        emergency=_EMERGENCY.search(q) is not None,
        ambulatory=_AMBULATORY.search(q) is not None,
        exists=_EXISTS.search(q) is not None,
        status=status,
        current_list=current_list,
        section=section,
        patient_fields=patient_fields,
    )


# Words the kind patterns consume (not names of chart items).
_KIND_WORDS = wordset(
    normalize(
        "vitals vital signs bloodwork work laboratory laboratories reaction reactions adverse "
        "issues issue health ongoing presently still "
        "intolerance intolerances history medical comorbidities comorbidity surgical operated "
        "operations pharmacy narrative counseling counselling followup follow steps impression "
        "subjective hpi complaint chief birth born birthday old age sex gender mrn name number "
        "shows screening visit emergency er ed room hospital hospitalized hospitalization "
        "admitted clinic office jab jabs immunised immunized pmh nkda dob yr yrs mo mos ago "
        "within through starting file pls appt appts come came decide decided tried baseline "
        "peak office reading procs proc vax vaxx known given drawn ordered male female man woman "
        "boy girl outpatient ambulatory total say says mention mentioned discuss discussed recommend "
        "recommended recommendation"
    )
)

#: Type and question words a typo of which is put right (what the kind and operator patterns read).
_TYPE_WORDS = sorted(
    wordset(
        """
        procedure procedures surgery surgeries surgical operation operations medication medications
        medicine medicines prescribed prescription prescriptions allergy allergies allergic
        intolerance intolerances immunization immunizations immunisations vaccine vaccines
        vaccination vaccinations vaccinated condition conditions diagnosis diagnoses diagnosed
        problem problems disease diseases encounter encounters visits appointment appointments
        admission admissions admitted hospitalization hospitalizations hospitalized notes
        assessment laboratory results vitals latest recent earliest highest lowest history
        previous previously currently active resolved birthday gender
        """
    )
)
# Ordinary question words that are near a type word but are not a typo of one.
_KNOWN = (
    frozenset(_TYPE_WORDS)
    | _KIND_WORDS
    | QUESTION_WORDS
    | wordset("visitor visitors latent operating operative")
)
#: How far (characters) a kind word may stand from a mention to retarget it ("covid vax").
_NEAR = 12
_DATE_SPAN = re.compile(rf"(?<![a-z0-9])(?:{_DATE})(?![a-z0-9])")

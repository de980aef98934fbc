"""Extractive answer composition: templated statements from structured facts and retrieved text.

Pure. Every fact statement names the resources it rests on; the validator checks them afterwards.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from rag.answer import CitationInfo, Statement
from rag.chunking import (
    components,
    fact_sentence,
    fact_value,
    fmt_date,
    split_sections,
)
from rag.intents import Intent
from rag.repository import Hit

KIND_LABEL = {
    "medications": "Medications",
    "conditions": "Problems and conditions",
    "allergies": "Allergies",
    "immunizations": "Immunizations",
    "procedures": "Procedures",
    "encounters": "Encounters",
    "notes": "Clinical notes",
    "labs": "Lab results",
    "vitals": "Vital signs",
    "patient": "Patient details",
}
#: What a missing item of a kind is called in a notice.
KIND_NOUN = {
    "medications": "prescription",
    "conditions": "diagnosis",
    "allergies": "allergy",
    "immunizations": "immunization",
    "procedures": "procedure",
    "encounters": "encounter",
    "notes": "note",
    "labs": "result",
    "vitals": "measurement",
}
_ACTIVE_CONDITION = frozenset({"active", "recurrence", "relapse"})
_RESOLVED_CONDITION = frozenset({"resolved", "inactive", "remission"})


def ref(resource_type: str, resource_id: str) -> str:
    return f"{resource_type}/{resource_id}"


def citation_for_fact(fact: dict[str, Any]) -> CitationInfo:
    date: datetime | None = fact.get("date")
    end: datetime | None = fact.get("end_date")
    return CitationInfo(
        resource_type=fact["resource_type"],
        id=fact["id"],
        display=fact.get("display"),
        date=date.date().isoformat() if date else None,
        value=fact_value(fact),
        status=fact.get("status"),
        end_date=end.date().isoformat() if end else None,
    )


def _primary_value(fact: dict[str, Any]) -> float | None:
    comps = components(fact)  # systolic first for blood pressure
    if comps and comps[0].get("value") is not None:
        return float(comps[0]["value"])
    v = fact.get("value_num")
    return float(v) if v is not None else None


def trend_word(first: float, last: float) -> str:
    change = last - first
    if abs(change) <= max(0.05 * abs(first), 1e-9):
        return "stable"
    return "increasing" if change > 0 else "decreasing"


def lab_statements(
    facts: Sequence[dict[str, Any]], window_text: str, *, name: str | None = None
) -> list[Statement]:
    """One statement per result (value + date, citing it) and a trend statement per test
    (``name``: one series under that name, e.g. HbA1c recorded under two LOINC codes)."""
    by_test: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for f in facts:
        by_test[name or f.get("display") or f.get("code") or "Result"].append(f)
    out: list[Statement] = []
    for test, series in by_test.items():
        series = sorted(series, key=lambda f: (f.get("date") is None, f.get("date"), f["id"]))
        for f in series:
            value = fact_value(f)
            if value is None:
                continue
            out.append(
                Statement(
                    text=f"{test}: {value} on {fmt_date(f.get('date'))}.",
                    citations=[ref("Observation", f["id"])],
                )
            )
        numeric = [(f, v) for f in series if (v := _primary_value(f)) is not None]
        if len(numeric) >= 2:
            (f0, v0), (f1, v1) = numeric[0], numeric[-1]
            paired = len(components(f0)) >= 2  # blood pressure: the trend follows systolic
            word = trend_word(v0, v1) + (" (systolic)" if paired else "")
            out.append(
                Statement(
                    text=(
                        f"{test} trend{window_text}: {word}, from {fact_value(f0)} on "
                        f"{fmt_date(f0.get('date'))} to {fact_value(f1)} on "
                        f"{fmt_date(f1.get('date'))} across {len(numeric)} results."
                    ).replace("  ", " "),
                    citations=[ref("Observation", f["id"]) for f, _ in numeric],
                )
            )
    return out


_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def best_sentence(text: str, terms: Sequence[str]) -> str:
    """The sentence of a chunk sharing most terms with the question (ties: the earliest)."""
    sentences = [s.strip() for s in _SENTENCE.split(text) if len(s.strip()) > 3]
    if not sentences:
        return text.strip()
    wanted = {t for t in terms if len(t) >= 4}

    def overlap(s: str) -> int:
        return len(wanted & set(re.findall(r"[a-z0-9]+", s.lower())))

    best = max(sentences[1:] or sentences, key=overlap)
    return best if len(best) <= 400 else best[:397] + "..."


def note_statements(hits: Sequence[Hit], terms: Sequence[str], limit: int = 3) -> list[Statement]:
    """Quote the best sentence of the top note chunks that matched the question's words."""
    out: list[Statement] = []
    seen: set[str] = set()
    for h in hits:
        if h.kind != "note" or h.resource_id in seen or h.fts_rank is None:
            continue
        seen.add(h.resource_id)
        title = h.text.split(". ", 1)[0]
        out.append(
            Statement(
                text=f'{title}: "{best_sentence(h.text, terms)}"',
                citations=[ref(h.resource_type, h.resource_id)],
            )
        )
        if len(out) >= limit:
            break
    return out


MIN_SIMILARITY = 0.55  # all-MiniLM-L6-v2 cosine; unrelated clinical sentences score ~0.1-0.45


def hit_statements(hits: Sequence[Hit], terms: Sequence[str], limit: int = 5) -> list[Statement]:
    """Fallback for questions no intent matched: retrieved facts and note sentences that match the
    question's words, or are semantically close to it; weak vector-only neighbours are not facts."""
    out: list[Statement] = []
    seen: set[str] = set()
    for h in hits:
        key = ref(h.resource_type, h.resource_id)
        if key in seen or (h.fts_rank is None and (h.similarity or 0) < MIN_SIMILARITY):
            continue
        seen.add(key)
        if h.kind == "note":
            text = f'{h.text.split(". ", 1)[0]}: "{best_sentence(h.text, terms)}"'
        else:
            text = h.text.rstrip(".") + "."
        out.append(Statement(text=text, citations=[key]))
        if len(out) >= limit:
            break
    return out


def access_notice(kinds: Sequence[str]) -> Statement:
    labels = ", ".join(KIND_LABEL[k].lower() for k in kinds)
    return Statement(
        kind="notice",
        text=(
            f"{labels.capitalize()} are outside this session's access (the EHR did not grant that scope), "
            "so they were not searched."
        ),
    )


def empty_notice(kinds: Sequence[str], window_text: str, words: Sequence[str] = ()) -> Statement:
    labels = ", ".join(KIND_LABEL[k].lower() for k in kinds) or (
        f'"{" ".join(words)}"' if words else "matching data"
    )
    return Statement(
        kind="notice", text=f"No {labels} found in this patient's synced record{window_text}."
    )


def window_text(intent: Intent) -> str:
    if intent.since and intent.until:
        return f" between {fmt_date(intent.since)} and {fmt_date(intent.until)}"
    if intent.since:
        return f" since {fmt_date(intent.since)}"
    return ""


def _by_date(facts: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(facts, key=lambda f: (f.get("date") is None, f.get("date"), f["id"]))


def _pick(series: list[dict[str, Any]], op: str | None) -> list[dict[str, Any]]:
    """The items an operator selects from a date-ordered series (all of them without one)."""
    if not series or op is None:
        return series
    if op == "latest":
        return series[-1:]
    if op == "first":
        return series[:1]
    valued = [(f, v) for f in series if (v := _primary_value(f)) is not None]
    if not valued:
        return series[-1:]
    pick = max if op == "highest" else min
    target = pick(v for _, v in valued)
    return [f for f, v in valued if v == target][-1:]


def by_category(facts: Sequence[dict[str, Any]], kinds: set[str]) -> list[dict[str, Any]]:
    """Unnamed "labs"/"vitals": the latest result of each code of the asked category."""
    if kinds == {"vitals"}:
        facts = [f for f in facts if f.get("category") == "vital-signs"]
    elif kinds == {"labs"}:
        facts = [f for f in facts if f.get("category") != "vital-signs"]
    return latest_per_code(facts)


def latest_per_code(facts: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    latest: dict[str, dict[str, Any]] = {}
    for f in _by_date(facts):
        latest[f.get("code") or f["id"]] = f
    return list(latest.values())


_OP_WORD = {"latest": "most recent", "first": "first", "highest": "highest", "lowest": "lowest"}


def observation_statements(
    facts: Sequence[dict[str, Any]], named: dict[str, str], intent: Intent, window: str
) -> tuple[list[dict[str, Any]], list[Statement]]:
    """Lab and vital results: per named concept, what the operator selects (every value and a
    trend without one); unnamed questions get the latest result of each code."""
    if not named:
        return list(facts), lab_statements(facts, window)
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for f in _by_date(facts):
        groups[named.get(f.get("code") or "", f.get("display") or "Result")].append(f)
    chosen: list[dict[str, Any]] = []
    out: list[Statement] = []
    for label, series in groups.items():
        if intent.count:
            chosen += series
            out.append(
                Statement(
                    text=f"{label}: {len(series)} result{'s' * (len(series) != 1)}{window}.",
                    citations=[ref("Observation", f["id"]) for f in series],
                )
            )
            continue
        op = intent.op or (None if intent.series else "latest")  # "bp?": the current value
        picked = _pick(series, op)
        chosen += picked
        prefix = _OP_WORD.get(op or "")
        if prefix:
            for f in picked:
                out.append(
                    Statement(
                        text=f"{label}, {prefix}{window}: {fact_value(f)} on "
                        f"{fmt_date(f.get('date'))} ({f.get('display') or 'result'}).",
                        citations=[ref("Observation", f["id"])],
                    )
                )
        else:
            out += lab_statements(picked, window, name=label)
    return chosen, out


_STATUS_ORDER = {"active": 0, "on-hold": 1, "draft": 2, "stopped": 3, "completed": 4}


def _group(
    kind: str, facts: Sequence[dict[str, Any]], named: dict[str, str]
) -> dict[str, list[dict[str, Any]]]:
    """Medications by product, immunizations by vaccine group when one was named, else by display."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for f in _by_date(facts):
        label = named.get(f.get("code") or "") if kind == "immunizations" else None
        groups[label or f.get("display") or "Unnamed item"].append(f)
    return groups


def _refs(facts: Sequence[dict[str, Any]]) -> list[str]:
    return [ref(f["resource_type"], f["id"]) for f in facts]


def _filter_status(
    kind: str, facts: list[dict[str, Any]], status: str | None
) -> list[dict[str, Any]]:
    if status is None:
        return facts
    if kind == "medications":
        if status == "active":
            return [f for f in facts if f.get("status") == "active"]
        return [f for f in facts if f.get("status") != "active"]
    if kind == "conditions":
        wanted = _ACTIVE_CONDITION if status == "active" else _RESOLVED_CONDITION
        return [f for f in facts if f.get("status") in wanted]
    if kind == "allergies" and status == "active":
        return [f for f in facts if f.get("status") in (None, "active")]
    return facts


def _is_emergency(f: dict[str, Any]) -> bool:
    return (f.get("category") or "").upper() == "EMER" or "emergency" in (
        f.get("display") or ""
    ).lower()


def kind_statements(
    kind: str,
    facts: list[dict[str, Any]],
    named: dict[str, str],
    intent: Intent,
    window: str,
) -> tuple[list[dict[str, Any]], list[Statement]]:
    """Medications, problems, allergies, immunizations, procedures and encounters."""
    lead: list[Statement] = []
    filtered = _filter_status(kind, facts, intent.status)
    if not filtered and facts and named and kind == "medications" and intent.status:
        # "Is she on atorvastatin?" with only stopped orders (or "did she use to take it?" with
        # only active ones): say so, and show them.
        text = (
            "No active order of it; earlier orders follow."
            if intent.status == "active"
            else "No stopped or completed order of it; current orders follow."
        )
        lead.append(Statement(kind="notice", text=text))
    else:
        facts = filtered
    if kind == "encounters" and intent.emergency:
        facts = [f for f in facts if _is_emergency(f)]
    elif kind == "encounters" and intent.ambulatory:
        facts = [f for f in facts if (f.get("category") or "").upper() == "AMB"]
    if kind == "encounters" or (kind == "procedures" and not named):
        return _listing(kind, facts, intent, window)
    groups = _group(kind, facts, named)
    chosen: list[dict[str, Any]] = []
    out: list[Statement] = []
    if intent.count and kind != "conditions":
        chosen = [f for g in groups.values() for f in g]
        if chosen:
            names = ", ".join(groups)
            out.append(
                Statement(
                    text=f"{len(groups)} {KIND_LABEL[kind].lower()} ({len(chosen)} records)"
                    f"{window}: {names}.",
                    citations=_refs(chosen),
                )
            )
        return chosen, out
    ordered = sorted(
        groups.items(),
        key=lambda kv: (_STATUS_ORDER.get(kv[1][-1].get("status") or "", 5), kv[0]),
    )
    for name, series in ordered:
        picked = _pick(series, intent.op) if intent.op in ("latest", "first") else series
        chosen += picked
        out.append(Statement(text=_group_sentence(kind, name, picked), citations=_refs(picked)))
    if intent.current_list and kind in ("medications", "conditions") and out:
        what = "active medication orders" if kind == "medications" else "active problems"
        lead.append(
            Statement(
                kind="notice",
                text=f"Showing {what} only; ask for all {KIND_LABEL[kind].lower()} to include "
                "stopped, completed or resolved ones.",
            )
        )
    return chosen, out + lead


def _group_sentence(kind: str, name: str, series: list[dict[str, Any]]) -> str:
    last = series[-1]
    first = series[0]
    status = last.get("status") or "unknown status"
    if kind == "medications":
        dose = (last.get("detail") or {}).get("dosage")
        dose_text = f" ({dose})" if dose else ""
        if len(series) == 1:
            return f"{name} — {status}; prescribed {fmt_date(last.get('date'))}{dose_text}."
        return (
            f"{name}: {len(series)} orders, first prescribed {fmt_date(first.get('date'))}, "
            f"last prescribed {fmt_date(last.get('date'))}; latest order {status}{dose_text}."
        )
    if kind == "conditions":
        ended = f"; resolved {fmt_date(last['end_date'])}" if last.get("end_date") else ""
        if len(series) == 1:
            return f"{name} — {status}; onset {fmt_date(last.get('date'))}{ended}."
        return (
            f"{name} — {status}; {len(series)} episodes, first onset {fmt_date(first.get('date'))}, "
            f"latest onset {fmt_date(last.get('date'))}{ended}."
        )
    if kind == "immunizations":
        if len(series) == 1:
            return f"{name}: given {fmt_date(last.get('date'))} ({status})."
        return (
            f"{name}: {len(series)} doses, first {fmt_date(first.get('date'))}, most recent "
            f"{fmt_date(last.get('date'))}."
        )
    if len(series) == 1:
        return fact_sentence(last) + "."
    dates = ", ".join(fmt_date(f.get("date")) for f in series)
    return f"{name}: {len(series)} records ({dates})."


def _listing(
    kind: str, facts: list[dict[str, Any]], intent: Intent, window: str
) -> tuple[list[dict[str, Any]], list[Statement]]:
    """Encounters and procedures: the one an operator picks, a count, or each (dated)."""
    series = _by_date(facts)
    if not series:
        return [], []
    if intent.op in ("latest", "first"):
        picked = _pick(series, intent.op)
        return picked, [
            Statement(text=fact_sentence(f) + ".", citations=_refs([f])) for f in picked
        ]
    out: list[Statement] = []
    if intent.count or len(series) > 12:
        label = KIND_LABEL[kind].lower() if len(series) != 1 else KIND_NOUN[kind]
        if kind == "encounters" and (intent.emergency or intent.ambulatory):
            label = ("emergency " if intent.emergency else "office (ambulatory) ") + label
        out.append(
            Statement(
                text=f"{len(series)} {label}{window}, from {fmt_date(series[0].get('date'))} to "
                f"{fmt_date(series[-1].get('date'))}.",
                citations=_refs(series),
            )
        )
        if intent.count:
            return series, out
        shown = series[-5:]
        out[0] = Statement(
            text=out[0].text[:-1] + "; the 5 most recent follow.", citations=out[0].citations
        )
    else:
        shown = series
    out += [Statement(text=fact_sentence(f) + ".", citations=_refs([f])) for f in shown]
    return series, out


def patient_statements(
    patient: dict[str, Any], fields: frozenset[str], now: datetime
) -> list[Statement]:
    """Demographics from the Patient resource (only the fields asked for, or all of them)."""
    cite = [f"Patient/{patient['id']}"]
    wanted = fields or frozenset({"name", "birth_date", "age", "sex", "mrn"})
    out: list[Statement] = []
    birth = patient.get("birthDate")
    if "name" in wanted and (names := patient.get("name")):
        n = names[0]
        full = n.get("text") or " ".join([*(n.get("given") or []), n.get("family") or ""]).strip()
        if full:
            out.append(Statement(text=f"Name: {full}.", citations=cite))
    if "birth_date" in wanted and birth:
        out.append(Statement(text=f"Date of birth: {birth}.", citations=cite))
    if "age" in wanted and birth and len(birth) >= 10:
        try:
            born = datetime.fromisoformat(birth[:10])
        except ValueError:
            born = None
        if born is not None:
            years = now.year - born.year - ((now.month, now.day) < (born.month, born.day))
            deceased = patient.get("deceasedDateTime") or patient.get("deceasedBoolean")
            suffix = " (deceased)" if deceased else ""
            out.append(
                Statement(text=f"Age: {years} years (born {birth}){suffix}.", citations=cite)
            )
    if "sex" in wanted and patient.get("gender"):
        out.append(Statement(text=f"Administrative sex: {patient['gender']}.", citations=cite))
    if "mrn" in wanted:
        for ident in patient.get("identifier") or []:
            codes = {c.get("code") for c in (ident.get("type") or {}).get("coding") or []}
            if "MR" in codes and ident.get("value"):
                out.append(Statement(text=f"MRN: {ident['value']}.", citations=cite))
                break
    return out


def latest_note_statements(
    notes: Sequence[dict[str, Any]], intent: Intent
) -> tuple[list[dict[str, Any]], list[Statement]]:
    """The most recent note by date (not the best search hit), and the section asked for."""
    dated = [n for n in _by_date(notes) if n.get("value_text")]
    if not dated:
        return [], []
    note = dated[-1]
    title = f"{note.get('display') or 'Clinical note'} of {fmt_date(note.get('date'))}"
    sections = split_sections(note["value_text"])
    wanted = intent.section or "plan"
    section = next(
        (s for s in sections if s.lower().startswith(wanted) and ":" in s[: len(wanted) + 20]), None
    )
    if section is None:
        body = " ".join(sections[:2])
        text = f'{title} (the most recent note; it has no {wanted} section): "{_clip(body)}"'
    else:
        text = f'{title} (the most recent note), {section.split(":", 1)[0]}: "{_clip(section.split(":", 1)[1].strip())}"'
    return [note], [Statement(text=text, citations=[ref("DocumentReference", note["id"])])]


def _clip(text: str, limit: int = 600) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def unmatched_name(words: str) -> str:
    """What a notice says was looked for when a name matched no coded item of any kind."""
    return f'coded problem, medication, result, allergy, immunization, procedure or visit matching "{words}"'


def missing_notice(looked_for: str, window_text: str) -> Statement:
    """A named item this chart does not have: what was looked for, and nothing cited."""
    return Statement(kind="notice", text=f"No {looked_for} in this record{window_text}.")

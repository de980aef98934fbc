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
from rag.chunking import components, fact_sentence, fact_value, fmt_date, fmt_number
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
}


def ref(resource_type: str, resource_id: str) -> str:
    return f"{resource_type}/{resource_id}"


def citation_for_fact(fact: dict[str, Any]) -> CitationInfo:
    date: datetime | None = fact.get("date")
    return CitationInfo(
        resource_type=fact["resource_type"],
        id=fact["id"],
        display=fact.get("display"),
        date=date.date().isoformat() if date else None,
        value=fact_value(fact),
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


def lab_statements(facts: Sequence[dict[str, Any]], window_text: str) -> list[Statement]:
    """One statement per result (value + date, citing it) and a trend statement per test."""
    by_test: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for f in facts:
        by_test[f.get("display") or f.get("code") or "Result"].append(f)
    out: list[Statement] = []
    for name, series in by_test.items():
        series = sorted(series, key=lambda f: (f.get("date") is None, f.get("date"), f["id"]))
        for f in series:
            value = fact_value(f)
            if value is None:
                continue
            out.append(
                Statement(
                    text=f"{name}: {value} on {fmt_date(f.get('date'))}.",
                    citations=[ref("Observation", f["id"])],
                )
            )
        numeric = [(f, v) for f in series if (v := _primary_value(f)) is not None]
        if len(numeric) >= 2:
            (f0, v0), (f1, v1) = numeric[0], numeric[-1]
            unit = (components(f0) or [{}])[0].get("unit") or f0.get("unit") or ""
            out.append(
                Statement(
                    text=(
                        f"{name} trend{window_text}: {trend_word(v0, v1)}, from {fmt_number(v0)} {unit} "
                        f"on {fmt_date(f0.get('date'))} to {fmt_number(v1)} {unit} on "
                        f"{fmt_date(f1.get('date'))} across {len(numeric)} results."
                    ).replace("  ", " "),
                    citations=[ref("Observation", f["id"]) for f, _ in numeric],
                )
            )
    return out


_STATUS_ORDER = {"active": 0, "on-hold": 1, "draft": 2, "stopped": 3, "completed": 4}


def medication_statements(facts: Sequence[dict[str, Any]]) -> list[Statement]:
    ordered = sorted(
        facts,
        key=lambda f: (
            _STATUS_ORDER.get(f.get("status") or "", 5),
            -(f["date"].timestamp() if f.get("date") else 0),
            f["id"],
        ),
    )
    out = []
    for f in ordered:
        dose = f.get("detail", {}).get("dosage")
        out.append(
            Statement(
                text=(
                    f"{f.get('display') or 'Unnamed medication'} — {f.get('status') or 'unknown status'}; "
                    f"prescribed {fmt_date(f.get('date'))}" + (f" ({dose})" if dose else "") + "."
                ),
                citations=[ref("MedicationRequest", f["id"])],
            )
        )
    return out


def simple_statements(facts: Sequence[dict[str, Any]]) -> list[Statement]:
    return [
        Statement(text=fact_sentence(f) + ".", citations=[ref(f["resource_type"], f["id"])])
        for f in sorted(facts, key=lambda f: (f.get("date") is None, f.get("date"), f["id"]))
    ]


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


def note_statements(
    hits: Sequence[Hit], terms: Sequence[str], limit: int = 3, *, latest: bool = False
) -> list[Statement]:
    """Quote the best sentence of the top note chunks that matched the question's words
    (with ``latest``, only the most recent matching note)."""
    out: list[Statement] = []
    seen: set[str] = set()
    if latest:
        dated = [
            h for h in hits if h.kind == "note" and h.fts_rank is not None and h.date is not None
        ]
        hits = sorted(dated, key=lambda h: (h.date, h.score), reverse=True)
        limit = 1
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


def empty_notice(kinds: Sequence[str], window_text: str) -> Statement:
    labels = ", ".join(KIND_LABEL[k].lower() for k in kinds) or "matching data"
    return Statement(
        kind="notice", text=f"No {labels} found in this patient's synced record{window_text}."
    )


def window_text(intent: Intent) -> str:
    if intent.since and intent.until:
        return f" between {fmt_date(intent.since)} and {fmt_date(intent.until)}"
    if intent.since:
        return f" since {fmt_date(intent.since)}"
    return ""

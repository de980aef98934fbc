"""Chunking: one readable sentence per structured fact, notes split by section (never across notes).

Structured chunks share a *concept* (the code's display text), embedded once for every patient;
narrative chunks are embedded one by one. Pure functions, no I/O.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

SECTION = re.compile(r"^\s*([A-Z][A-Za-z /&()-]{2,60}):\s*(.*)$")
MD_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.+?)\s*#*\s*$")
MAX_CHARS = 900


@dataclass(frozen=True)
class ChunkDraft:
    id: str
    resource_type: str
    resource_id: str
    encounter_id: str | None
    date: datetime | None
    kind: str  # "fact" | "note"
    text: str
    concept_text: str | None  # set for facts: the shared, embedded-once concept

    @property
    def content_hash(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()


def chunk_id(resource_type: str, resource_id: str, n: int) -> str:
    return hashlib.sha256(f"{resource_type}/{resource_id}#{n}".encode()).hexdigest()[:32]


def fmt_date(value: datetime | None) -> str:
    return value.date().isoformat() if value else "an unknown date"


def fmt_number(value: float) -> str:
    """A number as recorded, never rounded: ``142`` (whole values from 20 up), ``7.0``, ``0.85``,
    ``142.56``."""
    if value == int(value) and abs(value) >= 20:
        return str(int(value))
    return repr(float(value))


SYSTOLIC, DIASTOLIC = "8480-6", "8462-4"


def components(fact: dict[str, Any]) -> list[dict[str, Any]]:
    """A fact's components in reading order: systolic before diastolic by LOINC code, whatever
    order the EHR listed them in (real panels often list diastolic first); others as recorded."""
    comps = list(fact.get("detail", {}).get("components") or [])
    rank = {SYSTOLIC: 0, DIASTOLIC: 1}
    if any(c.get("code") in rank for c in comps):
        comps.sort(key=lambda c: rank.get(c.get("code"), 2))
    return comps


def fact_value(fact: dict[str, Any]) -> str | None:
    """A fact's value as text: ``7.2 %``, ``142/88 mm[Hg]``, or a coded/text value."""
    comps = components(fact)
    if len(comps) >= 2 and all(c.get("value") is not None for c in comps[:2]):
        unit = comps[0].get("unit") or ""
        return f"{fmt_number(comps[0]['value'])}/{fmt_number(comps[1]['value'])} {unit}".strip()
    if fact.get("value_num") is not None:
        return f"{fmt_number(fact['value_num'])} {fact.get('unit') or ''}".strip()
    if fact.get("resource_type") == "Observation":
        return fact.get("value_text")
    return None


def fact_sentence(fact: dict[str, Any]) -> str:
    """One readable sentence for a structured fact (``Hemoglobin A1c 7.2 % on 2024-03-01``)."""
    rtype = fact["resource_type"]
    name = fact.get("display") or "Unnamed item"
    when = fmt_date(fact.get("date"))
    status = fact.get("status")
    detail = fact.get("detail") or {}
    if rtype == "Observation":
        value = fact_value(fact)
        return f"{name} {value} on {when}" if value else f"{name} recorded on {when}"
    if rtype == "MedicationRequest":
        dose = f"; {detail['dosage']}" if detail.get("dosage") else ""
        return f"Medication {name} ({status}), prescribed {when}{dose}"
    if rtype == "Condition":
        return f"Condition {name} ({status or 'unknown status'}), onset {when}"
    if rtype == "AllergyIntolerance":
        reactions = ", ".join(detail.get("reactions") or [])
        return f"Allergy to {name} ({status or 'unknown status'})" + (
            f", reaction: {reactions}" if reactions else ""
        )
    if rtype == "Immunization":
        return f"Immunization {name} ({status}) on {when}"
    if rtype == "Procedure":
        return f"Procedure {name} ({status}) on {when}"
    if rtype == "Encounter":
        reasons = ", ".join(detail.get("reasons") or [])
        return f"Encounter {name} on {when}" + (f" for {reasons}" if reasons else "")
    return f"{rtype} {name} on {when}"


def split_sections(text: str) -> list[str]:
    """Split a note into sections at ``Heading:`` lines and Markdown ``#`` headings; long sections
    at sentence boundaries."""
    sections: list[list[str]] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        if heading := MD_HEADING.match(line):
            sections.append([f"{heading.group(1).strip()}:"])
            continue
        if SECTION.match(line) or not sections:
            sections.append([line.strip()])
        else:
            sections[-1].append(line.strip())
    out: list[str] = []
    for sec in sections:
        body = " ".join(sec)
        while len(body) > MAX_CHARS:
            cut = body.rfind(". ", 0, MAX_CHARS)
            cut = cut + 1 if cut > MAX_CHARS // 3 else MAX_CHARS
            out.append(body[:cut].strip())
            body = body[cut:].strip()
        if body:
            out.append(body)
    return out


def chunks_for_fact(fact: dict[str, Any]) -> list[ChunkDraft]:
    """Drafts for one fact: a note becomes section chunks; anything else one sentence."""
    rtype, rid = fact["resource_type"], fact["id"]
    if rtype == "DocumentReference":
        text = fact.get("value_text") or ""
        title = f"{fact.get('display') or 'Clinical note'} of {fmt_date(fact.get('date'))}"
        return [
            ChunkDraft(
                chunk_id(rtype, rid, i),
                rtype,
                rid,
                fact.get("encounter_id"),
                fact.get("date"),
                "note",
                f"{title}. {section}",
                None,
            )
            for i, section in enumerate(split_sections(text))
        ]
    concept = fact.get("display") or rtype
    return [
        ChunkDraft(
            chunk_id(rtype, rid, 0),
            rtype,
            rid,
            fact.get("encounter_id"),
            fact.get("date"),
            "fact",
            fact_sentence(fact),
            f"{rtype}: {concept}",
        )
    ]

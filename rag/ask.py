"""Answer a question about one patient: intent → structured facts + hybrid retrieval → compose →
validate citations → persist. Extractive (no LLM) in this module.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from fhir_adapters import AccessFilter, existing_refs, fact_codes, list_facts
from rag import compose
from rag import repository as repo
from rag.answer import AnswerBody, CitationInfo, Statement
from rag.citations import cited_refs, validate_statements
from rag.embeddings import Embedder
from rag.intents import KIND_TYPES, Intent, match_displays, parse_question

VITAL_CODES = frozenset(
    {"85354-9", "55284-4", "8480-6", "8462-4", "39156-5", "29463-7", "8302-2", "8867-4"}
)


NAMED_KINDS = {
    "medications": "MedicationRequest",
    "conditions": "Condition",
    "allergies": "AllergyIntolerance",
    "immunizations": "Immunization",
    "procedures": "Procedure",
}


def latest_per_code(facts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The most recent fact of each code (facts arrive oldest first)."""
    latest: dict[str, dict[str, Any]] = {}
    for f in facts:
        latest[f.get("code") or f["id"]] = f
    return list(latest.values())


async def _observations(
    conn: AsyncConnection, access: AccessFilter, question: str, intent: Intent
) -> list[dict[str, Any]]:
    """Lab/vital facts the question names (by concept or display words), else the latest of each."""
    codes = set(intent.lab_codes)
    codes |= match_displays(question, await fact_codes(conn, access, "Observation"))
    if not codes:
        facts = await list_facts(
            conn, access, "Observation", since=intent.since, until=intent.until
        )
        want_vitals, want_labs = "vitals" in intent.kinds, "labs" in intent.kinds
        facts = [
            f
            for f in facts
            if (f.get("code") in VITAL_CODES) == want_vitals or (want_labs and want_vitals)
        ]
        return latest_per_code(facts)
    facts = await list_facts(
        conn, access, "Observation", codes=sorted(codes), since=intent.since, until=intent.until
    )
    return latest_per_code(facts) if intent.latest else facts


async def _named(conn: AsyncConnection, access: AccessFilter, question: str) -> dict[str, set[str]]:
    """Chart items the question names by their display words (``warfarin``, ``sarcoidosis``)."""
    named: dict[str, set[str]] = {}
    for kind, rtype in NAMED_KINDS.items():
        if access.allows(rtype) and (
            codes := match_displays(question, await fact_codes(conn, access, rtype))
        ):
            named[kind] = codes
    return named


async def answer_question(
    conn: AsyncConnection,
    embedder: Embedder,
    access: AccessFilter,
    question: str,
    *,
    now: datetime | None = None,
    chart_notice: str | None = None,
) -> AnswerBody:
    """Compose, validate and persist an extractive answer; the caller commits.

    ``chart_notice`` says the stored copy of the chart is incomplete or still syncing; it is
    appended as a notice so no answer looks complete when its source is not.
    """
    started = time.perf_counter()
    now = now or datetime.now(UTC)
    intent = parse_question(question, now)
    window = compose.window_text(intent)
    named = await _named(conn, access, question)
    intent = replace(intent, kinds=intent.kinds | named.keys())

    denied = sorted(k for k in intent.kinds if not access.allows(KIND_TYPES[k]))
    wanted = [k for k in sorted(intent.kinds) if k not in denied]
    statements: list[Statement] = []
    evidence: dict[str, CitationInfo] = {}

    def cite(facts: list[dict[str, Any]]) -> None:
        for f in facts:
            evidence[compose.ref(f["resource_type"], f["id"])] = compose.citation_for_fact(f)

    qvec_task = asyncio.ensure_future(asyncio.to_thread(embedder.embed, [question]))
    empty_kinds: list[str] = []
    if "labs" in wanted or "vitals" in wanted:
        facts = await _observations(conn, access, question, intent)
        cite(facts)
        statements += compose.lab_statements(facts, window)
        if not facts:
            empty_kinds.append("labs")
    for kind in wanted:
        if kind in ("labs", "vitals", "notes"):
            continue
        rtype = KIND_TYPES[kind]
        windowed = kind in ("encounters", "procedures", "immunizations")
        facts = await list_facts(
            conn,
            access,
            rtype,
            since=intent.since if windowed else None,
            until=intent.until if windowed else None,
            codes=sorted(named[kind]) if kind in named else None,
        )
        if intent.latest:
            facts = (
                ([f for f in facts if f.get("status") == "active"] or facts)
                if kind == "medications"
                else facts[-1:]
            )
        cite(facts)
        if kind == "medications":
            statements += compose.medication_statements(facts)
        else:
            statements += compose.simple_statements(facts)
        if not facts:
            empty_kinds.append(kind)

    qvec = (await qvec_task)[0]
    hits = await repo.hybrid_search(conn, access, query_vector=qvec, terms=intent.terms)
    for h in hits:
        evidence.setdefault(
            compose.ref(h.resource_type, h.resource_id),
            CitationInfo(
                resource_type=h.resource_type,
                id=h.resource_id,
                display=h.text[:120],
                date=h.date.date().isoformat() if h.date else None,
            ),
        )
    if "notes" in wanted:
        statements += compose.note_statements(hits, intent.terms, latest=intent.latest)
    elif not wanted and not denied:
        statements += compose.hit_statements(hits, intent.terms)

    stored = await existing_refs(conn, access, cited_refs(statements))
    checked = validate_statements(
        statements, retrieved=set(evidence), stored=stored, allowed_types=access.resource_types
    )
    kept = checked.kept
    if denied:
        kept.append(compose.access_notice(denied))
    if empty_kinds:
        kept.append(compose.empty_notice(empty_kinds, window))
    if not any(s.kind == "fact" for s in kept) and not denied and not empty_kinds:
        kept.append(compose.empty_notice([], window))
    if chart_notice:
        kept.append(Statement(kind="notice", text=chart_notice))

    cited = {c for s in kept for c in s.citations}
    # Structured facts straight from the projections are the strongest evidence; quoted or
    # retrieved text alone is weaker; nothing found means no confidence at all.
    facts = [s for s in kept if s.kind == "fact"]
    from_projections = any(
        not c.startswith("DocumentReference/") for s in facts for c in s.citations
    )
    confidence = 0.0 if not facts else (0.9 if wanted and from_projections else 0.5)
    answer_id = uuid.uuid4()
    body = AnswerBody(
        answer_id=str(answer_id),
        patient=f"Patient/{access.patient_id}",
        question=question,
        statements=kept,
        citations={c: evidence[c] for c in sorted(cited)},
        confidence=confidence,
        removed_statements=checked.removed,
        retrieved=len(evidence),
        latency_ms=round((time.perf_counter() - started) * 1000, 1),
    )
    await repo.save_answer(conn, access, answer_id, body.model_dump(mode="json"))
    return body

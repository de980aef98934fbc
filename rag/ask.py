"""Answer a question about one patient: intent → concepts resolved against this chart's own codes →
structured facts (+ hybrid retrieval for narrative questions) → compose → validate citations →
persist. Extractive (no LLM) in this module.

A question that names something (a lab, a drug, a vaccine group) is answered from exactly what it
names; when the chart has none of it, the answer cites nothing of that type and says what was looked
for. It never falls back to "everything of that type".
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from fhir_adapters import AccessFilter, existing_refs, fact_codes, get_resource, list_facts
from rag import compose, concepts
from rag import repository as repo
from rag.answer import AnswerBody, CitationInfo, Statement
from rag.citations import cited_refs, validate_statements
from rag.concepts import (
    KIND_NOUN,
    KIND_RESOURCE,
    Entry,
    Lexicon,
    display_words,
    lexicon,
    similar_concepts,
)
from rag.embeddings import Embedder
from rag.intents import ENTRY_KIND, KIND_TYPES, Intent, parse_question

#: all-MiniLM-L6-v2 cosine between a mention and a concept text above which they are taken to name
#: the same thing. Calibrated by ``scripts/calibrate_concepts.py`` on the generated and Synthea
#: displays (lexicon terms against displays of their own vs other entries): 0.85 is the lowest
#: threshold with precision >= 0.99 (0.994, recall 0.04); 0.70 had precision 0.91. A concept this
#: misses falls back to abstaining, which is safe; a wrong one would be a wrong answer.
CONCEPT_SIMILARITY = 0.85
_STRUCTURED = (
    "labs",
    "vitals",
    "medications",
    "conditions",
    "allergies",
    "immunizations",
    "procedures",
    "encounters",
)


@dataclass
class Resolution:
    """What the question's names are in this chart, per kind."""

    #: kind → code → group label (the lexicon entry's label, else the chart display).
    named: dict[str, dict[str, str]] = field(default_factory=lambda: defaultdict(dict))
    #: (kind, what was looked for) that matched nothing in this chart.
    missing: list[tuple[str, str]] = field(default_factory=list)


def _rows_for(lex: Lexicon, entry: Entry, codes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        r
        for r in codes
        if r["code"]
        and lex.covers(entry, r["resource_type"], r["code_system"], r["code"], r["display"] or "")
    ]


def _allergy_rows(lex: Lexicon, entry: Entry, codes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Allergies to what a non-allergy entry names: its codes, or its words/terms in the display."""
    phrases = [concepts.normalize(p) for p in (*entry.words, *entry.terms) if len(p) >= 3]
    return [
        r
        for r in codes
        if r["resource_type"] == "AllergyIntolerance"
        and r["code"]
        and (
            r["code"] in entry.codes
            or any(concepts.contains_phrase(r["display"] or "", p) for p in phrases)
        )
    ]


async def _resolve(
    conn: AsyncConnection,
    embedder: Embedder,
    access: AccessFilter,
    intent: Intent,
    lex: Lexicon,
    codes: list[dict[str, Any]],
) -> Resolution:
    res = Resolution()
    for m in intent.mentions:
        kind = ENTRY_KIND[m.entry.kind]
        if "allergies" in intent.kinds and m.entry.kind != "allergy":
            # "allergic to asa?": the drug (or food) named is looked for among the allergies.
            kind, rows = "allergies", _allergy_rows(lex, m.entry, codes)
            if not rows:
                res.missing.append((kind, f"{m.entry.label} allergy"))
                continue
            for r in rows:
                res.named[kind][r["code"]] = r["display"] or m.entry.label
            continue
        rows = _rows_for(lex, m.entry, codes)
        if not rows:
            noun, label = KIND_NOUN[m.entry.kind], m.entry.label
            res.missing.append((kind, label if label.endswith(noun) else f"{label} {noun}"))
            continue
        for r in rows:
            claimed = lex.claim(r["resource_type"], r["code_system"], r["code"], r["display"] or "")
            group = lex.entries.get(claimed or "", m.entry)
            res.named[kind][r["code"]] = group.label if group.kind != "panel" else r["display"]
    if intent.mentions or not intent.words:
        return res
    # Words the lexicon does not know ("sarcoidosis"): the chart's own displays, then similarity.
    kinds = [k for k in intent.kinds if k in _STRUCTURED] or list(_STRUCTURED)
    types = {KIND_TYPES[k] for k in kinds}
    words = set(intent.words)
    scored = [
        (len(words & display_words(r["display"] or "")), r)
        for r in codes
        if r["resource_type"] in types and r["code"]
    ]
    best = max((s for s, _ in scored), default=0)
    hits = [r for s, r in scored if s == best and s > 0]
    if not hits:
        qvec = (await asyncio.to_thread(embedder.embed, [" ".join(intent.words)]))[0]
        similar = {
            t.split(": ", 1)[-1]
            for t, _ in await similar_concepts(
                conn, access, qvec, sorted(types), threshold=CONCEPT_SIMILARITY
            )
        }
        hits = [r for r in codes if r["resource_type"] in types and r["display"] in similar]
    for r in hits:
        kind = next(k for k in kinds if KIND_TYPES[k] == r["resource_type"])
        res.named[kind][r["code"]] = r["display"] or r["code"]
    what = " ".join(intent.words)
    if not hits and set(kinds) != set(_STRUCTURED):
        for k in kinds:
            res.missing.append((k, what + " " + compose.KIND_NOUN[k]))
    elif not hits and not intent.kinds & {"notes", "patient"}:
        # "known cirrhosis?": a name that is nothing in this chart. Abstain and say so; quoting
        # notes that share a word ("No Known Allergies") would answer a question nobody asked.
        res.missing.append(("any", compose.unmatched_name(what)))
    return res


@dataclass(frozen=True)
class Composed:
    """An extractive answer before it is stored, with the retrieval set it was drawn from."""

    body: AnswerBody
    #: The retrieval set: every resource the answer could cite (ref → what it is).
    evidence: dict[str, CitationInfo]
    #: Full text of retrieved narrative chunks (ref → text; ``CitationInfo.display`` is cut).
    texts: dict[str, str]


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
    composed = await compose_answer(
        conn, embedder, access, question, now=now, chart_notice=chart_notice
    )
    body = composed.body
    await repo.save_answer(conn, access, uuid.UUID(body.answer_id), body.model_dump(mode="json"))
    return body


async def compose_answer(
    conn: AsyncConnection,
    embedder: Embedder,
    access: AccessFilter,
    question: str,
    *,
    now: datetime | None = None,
    chart_notice: str | None = None,
) -> Composed:
    """``answer_question`` without storing: the answer and its retrieval set (the LLM path
    gives the model this evidence and falls back to this answer)."""
    started = time.perf_counter()
    now = now or datetime.now(UTC)
    lex = lexicon()
    intent = parse_question(question, now, lex)
    window = compose.window_text(intent)
    codes = await fact_codes(conn, access, {*KIND_RESOURCE.values(), "Encounter"})
    res = await _resolve(conn, embedder, access, intent, lex, codes)
    missing_kinds = {k for k, _ in res.missing}
    kinds = set(intent.kinds) | set(res.named)
    if (
        "labs" in kinds
        and "vitals" in kinds
        and res.named.get("vitals")
        and not res.named.get("labs")
    ):
        kinds.discard("labs")  # "BP results": the vital, not every lab

    denied = sorted(k for k in kinds if not access.allows(KIND_TYPES[k]))
    wanted = [k for k in sorted(kinds) if k not in denied]
    statements: list[Statement] = []
    evidence: dict[str, CitationInfo] = {}
    texts: dict[str, str] = {}
    empty_kinds: list[str] = []

    def cite(facts: list[dict[str, Any]]) -> None:
        for f in facts:
            evidence[compose.ref(f["resource_type"], f["id"])] = compose.citation_for_fact(f)

    async def facts_of(kind: str, windowed: bool = True) -> list[dict[str, Any]] | None:
        """The facts a kind's part of the answer rests on; ``None``: named, but not in this chart."""
        named = res.named.get(kind) or (res.named.get("labs") if kind == "vitals" else None)
        if not named and kind in missing_kinds:
            return None
        return await list_facts(
            conn,
            access,
            KIND_TYPES[kind],
            codes=sorted(named) if named else None,
            since=intent.since if windowed else None,
            until=intent.until if windowed else None,
            limit=2000,
        )

    observations_done = False
    for kind in wanted:
        if kind in ("notes", "patient"):
            continue
        if kind in ("labs", "vitals"):
            if observations_done:
                continue
            observations_done = True
            obs_kinds = {k for k in ("labs", "vitals") if k in wanted}
            named = {**res.named.get("labs", {}), **res.named.get("vitals", {})}
            if not named and obs_kinds <= missing_kinds:
                continue
            facts = await list_facts(
                conn,
                access,
                "Observation",
                codes=sorted(named) if named else None,
                since=intent.since,
                until=intent.until,
                limit=5000,
            )
            if not named:
                facts = compose.by_category(facts, obs_kinds)
            chosen, stmts = compose.observation_statements(facts, named, intent, window)
        else:
            # A window belongs to medications/problems only when they are all that was asked
            # ("HbA1c over 18 months, and which medications were prescribed": every order).
            alone = len([k for k in wanted if k not in ("notes", "patient")]) == 1
            windowed = kind in ("encounters", "procedures", "immunizations") or (
                alone and kind in ("medications", "conditions")
            )
            facts = await facts_of(kind, windowed=windowed)
            if facts is None:
                continue
            chosen, stmts = compose.kind_statements(
                kind, facts, res.named.get(kind, {}), intent, window
            )
        cite(chosen)
        statements += stmts
        if not chosen and kind == "encounters" and intent.emergency:
            res.missing.append((kind, "emergency encounter"))
        elif not chosen and kind == "encounters" and intent.ambulatory:
            res.missing.append((kind, "office (ambulatory) visit"))
        elif not chosen and kind not in missing_kinds:
            empty_kinds.append(kind)

    if "patient" in wanted:
        patient = await get_resource(conn, access, "Patient", access.patient_id)
        if patient is not None:
            stmts = compose.patient_statements(patient, intent.patient_fields, now)
            evidence[f"Patient/{access.patient_id}"] = CitationInfo(
                resource_type="Patient", id=access.patient_id, display="Patient"
            )
            statements += stmts

    narrative = "notes" in wanted and not (intent.latest or intent.section)
    if "notes" in wanted and not narrative:
        notes = await list_facts(conn, access, "DocumentReference", limit=5000)
        chosen, stmts = compose.latest_note_statements(notes, intent)
        cite(chosen)
        statements += stmts
        if not chosen:
            empty_kinds.append("notes")
    if narrative or (not wanted and not denied and not res.missing):
        qvec = (await asyncio.to_thread(embedder.embed, [question]))[0]
        hits = await repo.hybrid_search(conn, access, query_vector=qvec, terms=intent.terms)
        for h in hits:
            texts.setdefault(compose.ref(h.resource_type, h.resource_id), h.text)
            evidence.setdefault(
                compose.ref(h.resource_type, h.resource_id),
                CitationInfo(
                    resource_type=h.resource_type,
                    id=h.resource_id,
                    display=h.text[:120],
                    date=h.date.date().isoformat() if h.date else None,
                ),
            )
        if narrative:
            statements += compose.note_statements(hits, intent.terms)
        else:
            statements += compose.hit_statements(hits, intent.terms)

    stored = await existing_refs(conn, access, cited_refs(statements))
    checked = validate_statements(
        statements, retrieved=set(evidence), stored=stored, allowed_types=access.resource_types
    )
    kept = checked.kept
    if intent.exists and res.named and any(s.kind == "fact" for s in kept):
        first = next(i for i, s in enumerate(kept) if s.kind == "fact")
        kept[first] = Statement(text="Yes: " + kept[first].text, citations=kept[first].citations)
    if denied:
        kept.append(compose.access_notice(denied))
    for _, looked_for in res.missing:
        kept.append(compose.missing_notice(looked_for, window))
    if empty_kinds:
        kept.append(compose.empty_notice(empty_kinds, window))
    if (
        not any(s.kind == "fact" for s in kept)
        and not denied
        and not empty_kinds
        and not res.missing
    ):
        kept.append(compose.empty_notice([], window, intent.words))
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
    return Composed(body=body, evidence=evidence, texts=texts)

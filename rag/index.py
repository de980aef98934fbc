"""Index a patient's facts: chunk, embed concepts once and narratives one by one.

Runs at sync time, so nothing on the ask path has to chunk or embed chart data. What to index is read
from Postgres, never from a list handed over by the fetch: every fact whose ``indexed_hash`` differs
from its ``source_hash`` (no chunks yet, or chunks of another version) is (re)chunked. Work is
committed in batches, each batch's chunks and ``indexed_hash`` together, so a crash keeps what was
done and the next sync picks up the rest. Structured facts go first (their concepts are embedded
once for every patient), notes last. Unchanged chunk text keeps its embedding.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from fhir_adapters import AccessFilter
from fhir_adapters.repository import mark_indexed, unindexed_facts
from rag import repository as repo
from rag.chunking import ChunkDraft, chunks_for_fact
from rag.embeddings import Embedder

Progress = Callable[[int, int], Awaitable[None]]
FACTS_PER_BATCH = 200
NOTES_PER_BATCH = 8


@dataclass(frozen=True)
class IndexResult:
    facts: int
    chunks: int
    embedded_chunks: int
    new_concepts: int


def concept_id(model_id: str, text: str) -> str:
    return hashlib.sha256(f"{model_id}\n{text}".encode()).hexdigest()[:40]


async def _embed(embedder: Embedder, texts: list[str]) -> Any:
    return await asyncio.to_thread(embedder.embed, texts)


def _batches(facts: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    structured = [f for f in facts if f["resource_type"] != "DocumentReference"]
    notes = [f for f in facts if f["resource_type"] == "DocumentReference"]
    return [
        structured[i : i + FACTS_PER_BATCH] for i in range(0, len(structured), FACTS_PER_BATCH)
    ] + [notes[i : i + NOTES_PER_BATCH] for i in range(0, len(notes), NOTES_PER_BATCH)]


async def index_patient(
    engine: AsyncEngine,
    embedder: Embedder,
    access: AccessFilter,
    *,
    progress: Progress | None = None,
) -> IndexResult:
    """(Re)build the chunks of every fact of one patient that is not indexed at its version."""
    async with engine.connect() as conn:
        facts = await unindexed_facts(conn, access)
    done = chunks = embedded = concepts = 0
    if progress is not None and facts:
        await progress(0, len(facts))
    for batch in _batches(facts):
        c, e, n = await _index_batch(engine, embedder, access, batch)
        chunks, embedded, concepts = chunks + c, embedded + e, concepts + n
        done += len(batch)
        if progress is not None:
            await progress(done, len(facts))
    return IndexResult(facts=done, chunks=chunks, embedded_chunks=embedded, new_concepts=concepts)


async def _index_batch(
    engine: AsyncEngine, embedder: Embedder, access: AccessFilter, facts: Sequence[dict[str, Any]]
) -> tuple[int, int, int]:
    refs = [(f["resource_type"], f["id"]) for f in facts]
    drafts: list[ChunkDraft] = [d for f in facts for d in chunks_for_fact(f)]
    concepts = {
        concept_id(embedder.model_id, d.concept_text): d.concept_text
        for d in drafts
        if d.concept_text is not None
    }
    async with engine.connect() as conn:
        existing = await repo.chunk_hashes(conn, access, refs)
        known = await repo.known_concepts(conn, list(concepts))
    new_concepts = [(cid, txt) for cid, txt in concepts.items() if cid not in known]
    if new_concepts:
        vectors = await _embed(embedder, [t for _, t in new_concepts])
        async with engine.begin() as conn:
            await repo.add_concepts(
                conn,
                [
                    {"id": cid, "text": t, "model_id": embedder.model_id, "embedding": v}
                    for (cid, t), v in zip(new_concepts, vectors, strict=True)
                ],
            )
    rows: list[tuple[ChunkDraft, str | None, Any]] = []
    to_embed: list[ChunkDraft] = []
    for d in drafts:
        if d.concept_text is not None:
            rows.append((d, concept_id(embedder.model_id, d.concept_text), None))
        elif (prev := existing.get(d.id)) and prev[0] == d.content_hash and prev[1] is not None:
            rows.append((d, None, prev[1]))
        else:
            to_embed.append(d)
    for i in range(0, len(to_embed), 64):
        part = to_embed[i : i + 64]
        vectors = await _embed(embedder, [d.text for d in part])
        rows.extend((d, None, v) for d, v in zip(part, vectors, strict=True))
    hashes = {(f["resource_type"], f["id"]): f["source_hash"] for f in facts}
    async with engine.begin() as conn:
        await repo.replace_chunks(conn, access, refs, rows, hashes)
        await mark_indexed(conn, access, [(t, i, h) for (t, i), h in hashes.items()])
    return len(rows), len(to_embed), len(new_concepts)

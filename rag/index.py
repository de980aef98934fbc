"""Index a patient's changed resources: chunk, embed concepts once and narratives one by one.

Runs at sync time, so nothing on the ask path has to chunk or embed chart data. Unchanged chunk
text (same content hash) keeps its embedding; a concept already embedded is never embedded again.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from fhir_adapters import AccessFilter, list_facts
from rag import repository as repo
from rag.chunking import ChunkDraft, chunks_for_fact
from rag.embeddings import Embedder

Progress = Callable[[int, int], Awaitable[None]]


@dataclass(frozen=True)
class IndexResult:
    chunks: int
    embedded_chunks: int
    new_concepts: int


def concept_id(model_id: str, text: str) -> str:
    return hashlib.sha256(f"{model_id}\n{text}".encode()).hexdigest()[:40]


async def _embed(embedder: Embedder, texts: list[str]) -> Any:
    return await asyncio.to_thread(embedder.embed, texts)


async def index_patient(
    engine: AsyncEngine,
    embedder: Embedder,
    access: AccessFilter,
    changed: Sequence[tuple[str, str]],
    *,
    progress: Progress | None = None,
) -> IndexResult:
    """(Re)build the chunks of the ``changed`` resources of one patient."""
    changed_set = set(changed)
    types = sorted({t for t, _ in changed_set if access.allows(t)})
    async with engine.connect() as conn:
        facts = [
            f
            for t in types
            for f in await list_facts(conn, access, t, limit=100_000)
            if (f["resource_type"], f["id"]) in changed_set
        ]
        refs = [(f["resource_type"], f["id"]) for f in facts]
        existing = await repo.chunk_hashes(conn, access, refs)
        drafts: list[ChunkDraft] = [d for f in facts for d in chunks_for_fact(f)]
        concepts = {
            concept_id(embedder.model_id, d.concept_text): d.concept_text
            for d in drafts
            if d.concept_text is not None
        }
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
    batch = 64
    for i in range(0, len(to_embed), batch):
        part = to_embed[i : i + batch]
        vectors = await _embed(embedder, [d.text for d in part])
        rows.extend((d, None, v) for d, v in zip(part, vectors, strict=True))
        if progress is not None:
            await progress(min(i + batch, len(to_embed)), len(to_embed))
    async with engine.begin() as conn:
        await repo.replace_chunks(conn, access, refs, rows)
    return IndexResult(
        chunks=len(rows), embedded_chunks=len(to_embed), new_concepts=len(new_concepts)
    )

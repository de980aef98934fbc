"""All SQL of the index: concepts, chunks, hybrid retrieval (one statement) and answers.

Every chart query takes an ``AccessFilter``: one patient, allowed types. Per-patient vector search
is an exact scan over the patient's rows (btree on ``(source, patient_id)``), never an ANN index.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from sqlalchemy import delete, insert, select, text, tuple_
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from fhir_adapters import AccessFilter, existing_refs, visible_sql
from rag.chunking import ChunkDraft
from rag.tables import Answer, Chunk, Concept

_concept = Concept.__table__  # type: ignore[attr-defined]
_chunk = Chunk.__table__  # type: ignore[attr-defined]
_answer = Answer.__table__  # type: ignore[attr-defined]


def vector_literal(vec: np.ndarray) -> str:
    return "[" + ",".join(f"{x:.7g}" for x in vec.tolist()) + "]"


async def known_concepts(conn: AsyncConnection, ids: Sequence[str]) -> set[str]:
    if not ids:
        return set()
    rows = await conn.execute(select(_concept.c.id).where(_concept.c.id.in_(list(ids))))
    return {r.id for r in rows}


async def add_concepts(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
    if rows:
        await conn.execute(pg_insert(_concept).values(list(rows)).on_conflict_do_nothing())


async def chunk_hashes(
    conn: AsyncConnection, access: AccessFilter, refs: Sequence[tuple[str, str]]
) -> dict[str, tuple[str, Any]]:
    """Existing chunks of these resources: ``{chunk id: (content_hash, embedding)}``."""
    if not refs:
        return {}
    rows = await conn.execute(
        select(_chunk.c.id, _chunk.c.content_hash, _chunk.c.embedding).where(
            _chunk.c.source == access.source,
            _chunk.c.patient_id == access.patient_id,
            tuple_(_chunk.c.resource_type, _chunk.c.resource_id).in_(list(refs)),
        )
    )
    return {r.id: (r.content_hash, r.embedding) for r in rows}


async def replace_chunks(
    conn: AsyncConnection,
    access: AccessFilter,
    refs: Sequence[tuple[str, str]],
    drafts: Sequence[tuple[ChunkDraft, str | None, Any]],
    source_hashes: dict[tuple[str, str], str] | None = None,
) -> None:
    """Replace the chunks of ``refs`` with ``(draft, concept_id, embedding)`` rows.

    ``source_hashes`` gives each resource's fact ``source_hash``, recorded on its chunks.
    """
    hashes = source_hashes or {}
    if refs:
        await conn.execute(
            delete(_chunk).where(
                _chunk.c.source == access.source,
                _chunk.c.patient_id == access.patient_id,
                tuple_(_chunk.c.resource_type, _chunk.c.resource_id).in_(list(refs)),
            )
        )
    rows = [
        {
            "source": access.source,
            "patient_id": access.patient_id,
            "id": d.id,
            "resource_type": d.resource_type,
            "resource_id": d.resource_id,
            "encounter_id": d.encounter_id,
            "date": d.date,
            "kind": d.kind,
            "text": d.text,
            "content_hash": d.content_hash,
            "source_hash": hashes.get((d.resource_type, d.resource_id)),
            "concept_id": concept_id,
            "embedding": emb,
        }
        for d, concept_id, emb in drafts
    ]
    if rows:
        await conn.execute(insert(_chunk), rows)


# ``{visible}``: ``fhir_adapters.visible_sql`` on the chunk ``c`` (types and category restrictions).
_HYBRID = """
WITH q AS (
    SELECT CAST(:qvec AS vector) AS v,
           CASE WHEN :qtext = '' THEN NULL ELSE to_tsquery('english', :qtext) END AS tq
),
vec AS (
    SELECT c.id, row_number() OVER (ORDER BY COALESCE(c.embedding, k.embedding) <=> q.v) AS r,
           1 - (COALESCE(c.embedding, k.embedding) <=> q.v) AS similarity
    FROM chunk c LEFT JOIN concept k ON k.id = c.concept_id, q
    WHERE c.source = :src AND c.patient_id = :pid AND {visible}
    ORDER BY COALESCE(c.embedding, k.embedding) <=> q.v
    LIMIT :k
),
fts AS (
    SELECT c.id, row_number() OVER (ORDER BY ts_rank_cd(c.tsv, q.tq) DESC, c.id) AS r
    FROM chunk c, q
    WHERE c.source = :src AND c.patient_id = :pid AND {visible}
      AND c.tsv @@ q.tq
    ORDER BY ts_rank_cd(c.tsv, q.tq) DESC, c.id
    LIMIT :k
)
SELECT c.id, c.resource_type, c.resource_id, c.encounter_id, c.date, c.kind, c.text,
       vec.r AS vec_rank, fts.r AS fts_rank, vec.similarity,
       COALESCE(1.0 / (:rrf_k + vec.r), 0) + COALESCE(1.0 / (:rrf_k + fts.r), 0) AS score
FROM (SELECT id FROM vec UNION SELECT id FROM fts) hits
JOIN chunk c ON c.source = :src AND c.patient_id = :pid AND c.id = hits.id
LEFT JOIN vec ON vec.id = hits.id
LEFT JOIN fts ON fts.id = hits.id
ORDER BY score DESC, c.id
LIMIT :n
"""


@dataclass(frozen=True)
class Hit:
    id: str
    resource_type: str
    resource_id: str
    encounter_id: str | None
    date: datetime | None
    kind: str
    text: str
    vec_rank: int | None
    fts_rank: int | None
    similarity: float | None
    score: float


async def hybrid_search(
    conn: AsyncConnection,
    access: AccessFilter,
    *,
    query_vector: np.ndarray,
    terms: Sequence[str],
    types: Sequence[str] | None = None,
    k: int = 40,
    n: int = 12,
    rrf_k: int = 60,
) -> list[Hit]:
    """Exact vector + full-text search inside one patient, fused by reciprocal rank, one statement."""
    allowed = sorted(access.resource_types if types is None else set(types) & access.resource_types)
    if not allowed:
        return []
    visible, params = visible_sql(access, "c", types=allowed, id_column="resource_id")
    rows = await conn.execute(
        text(_HYBRID.format(visible=visible)),
        {
            **params,
            "qvec": vector_literal(query_vector),
            "qtext": " | ".join(terms),
            "src": access.source,
            "pid": access.patient_id,
            "k": k,
            "n": n,
            "rrf_k": rrf_k,
        },
    )
    return [Hit(**dict(r)) for r in rows.mappings()]


async def save_answer(
    conn: AsyncConnection, access: AccessFilter, answer_id: uuid.UUID, body: dict[str, Any]
) -> None:
    await conn.execute(
        insert(_answer).values(
            id=answer_id,
            source=access.source,
            patient_id=access.patient_id,
            created_at=datetime.now(UTC),
            body=body,
        )
    )


async def get_answer(
    conn: AsyncConnection, access: AccessFilter, answer_id: uuid.UUID
) -> dict[str, Any] | None:
    """A persisted answer of the filter's patient, unchanged; ``None`` when it cites a resource
    this filter does not show (another session's answer with wider scopes is not re-readable)."""
    body: dict[str, Any] | None = await conn.scalar(
        select(_answer.c.body).where(
            _answer.c.source == access.source,
            _answer.c.patient_id == access.patient_id,
            _answer.c.id == answer_id,
        )
    )
    if body is None:
        return None
    refs = {
        (rtype, rid)
        for c in body.get("citations") or {}
        for rtype, _, rid in [str(c).partition("/")]
    }
    if any(not access.allows(t) for t, _ in refs):
        return None
    restricted = {(t, i) for t, i in refs if access.restricted(t) is not None}
    if restricted - await existing_refs(conn, access, restricted):
        return None
    return body


# The tutorial pattern, for ``chartcite bench ask`` only: chunks copied with their vectors into
# one table with a global HNSW index and no (source, patient_id) btree, searched with
# ``WHERE patient_id = … ORDER BY embedding <=> q LIMIT k``. The table is TEMP: it lives on the
# bench's own connection and goes with it, so the real schema is never touched.
_NAIVE_TABLE = "bench_naive_chunk"
# A temp table's pages live in the session's temp_buffers (8 MB by default): without room there
# the naive side would pay for disk reads, not for its design.
_NAIVE_TEMP_BUFFERS = "2GB"


async def copy_naive_chunks(conn: AsyncConnection, access: AccessFilter) -> int:
    """Copy one patient's chunks (each with its vector) into the naive table; HNSW indexes them."""
    visible, params = visible_sql(access, "c", id_column="resource_id")
    await conn.execute(text(f"SET temp_buffers = '{_NAIVE_TEMP_BUFFERS}'"))
    await conn.execute(
        text(
            f"CREATE TEMP TABLE IF NOT EXISTS {_NAIVE_TABLE} "
            "(patient_id text NOT NULL, id text NOT NULL, embedding vector(384) NOT NULL)"
        )
    )
    await conn.execute(
        text(
            f"CREATE INDEX IF NOT EXISTS {_NAIVE_TABLE}_hnsw ON {_NAIVE_TABLE} "
            "USING hnsw (embedding vector_cosine_ops)"
        )
    )
    result = await conn.execute(
        text(
            f"""
INSERT INTO {_NAIVE_TABLE}
SELECT c.patient_id, c.id, COALESCE(c.embedding, k.embedding)
FROM chunk c LEFT JOIN concept k ON k.id = c.concept_id
WHERE c.source = :src AND c.patient_id = :pid AND {visible}
  AND COALESCE(c.embedding, k.embedding) IS NOT NULL
"""
        ),
        {"src": access.source, "pid": access.patient_id, **params},
    )
    return int(result.rowcount or 0)


_NAIVE_SEARCH = text(
    f"SELECT id, 1 - (embedding <=> CAST(:qvec AS vector)) AS similarity FROM {_NAIVE_TABLE} "
    "WHERE patient_id = :pid ORDER BY embedding <=> CAST(:qvec AS vector) LIMIT :k"
)


async def naive_plan(
    conn: AsyncConnection,
    access: AccessFilter,
    query_vector: np.ndarray,
    *,
    iterative_scan: str,
    use_index: bool = True,
) -> str:
    """``SET LOCAL hnsw.iterative_scan`` (and, without ``use_index``, no index scans: the exact
    sequential scan) for this transaction; returns the naive query's plan."""
    if iterative_scan not in ("off", "relaxed_order", "strict_order"):
        raise ValueError(f"unknown hnsw.iterative_scan {iterative_scan!r}")
    await conn.execute(text(f"SET LOCAL hnsw.iterative_scan = {iterative_scan}"))
    await conn.execute(text(f"SET LOCAL enable_indexscan = {'on' if use_index else 'off'}"))
    params = {"pid": access.patient_id, "qvec": vector_literal(query_vector), "k": 5}
    plan = await conn.execute(text(f"EXPLAIN (COSTS OFF) {_NAIVE_SEARCH.text}"), params)
    # Node lines only: the detail lines (Order By, Filter) repeat the vector literal.
    lines = [str(r[0]) for r in plan]
    return " -> ".join(ln.strip().removeprefix("-> ") for ln in lines if ":" not in ln)


async def naive_search(
    conn: AsyncConnection, access: AccessFilter, query_vector: np.ndarray, *, k: int = 5
) -> list[tuple[str, float]]:
    """``(chunk id, similarity)`` of the naive query (filtered global HNSW): maybe fewer than k."""
    rows = await conn.execute(
        _NAIVE_SEARCH, {"pid": access.patient_id, "qvec": vector_literal(query_vector), "k": k}
    )
    return [(r.id, float(r.similarity)) for r in rows]

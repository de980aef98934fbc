"""All SQL over the FHIR store. Every read of patient data takes a required ``AccessFilter``."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import fields
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Text, and_, func, insert, or_, select, text, tuple_, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import array
from sqlalchemy.ext.asyncio import AsyncConnection

from fhir_adapters.access import AccessFilter
from fhir_adapters.normalize import Fact, canonical_json, parse_date
from fhir_adapters.tables import ClinicalFact, FhirResource, Quarantine, SyncRun

_res = FhirResource.__table__  # type: ignore[attr-defined]
_fact = ClinicalFact.__table__  # type: ignore[attr-defined]
_sync = SyncRun.__table__  # type: ignore[attr-defined]
_quar = Quarantine.__table__  # type: ignore[attr-defined]


def _now() -> datetime:
    return datetime.now(UTC)


def _patient(table: Any, access: AccessFilter) -> Any:
    """The (EHR source, patient) condition every patient-scoped statement starts with."""
    return and_(table.c.source == access.source, table.c.patient_id == access.patient_id)


# -- what an access filter shows: the one predicate every read of patient data uses ------------


def _category_path(codings: Iterable[tuple[str | None, str]]) -> tuple[str, dict[str, str]]:
    """A jsonpath (and its variables) true when a resource's ``category`` has one of ``codings``.

    ``$.category[*]`` also walks a single CodeableConcept (Procedure: lax mode wraps it), and a
    code-only coding also matches a bare-code category (AllergyIntolerance). The codes and systems
    travel as jsonpath variables, never in the path text."""
    conds: list[str] = []
    variables: dict[str, str] = {}
    for i, (system, code) in enumerate(sorted(codings, key=lambda c: (c[0] or "", c[1]))):
        variables[f"c{i}"] = code
        if system is None:
            conds.append(f"@ == $c{i} || exists(@.coding[*] ? (@.code == $c{i}))")
        else:
            variables[f"s{i}"] = system
            conds.append(f"exists(@.coding[*] ? (@.code == $c{i} && @.system == $s{i}))")
    return "$.category[*] ? (" + " || ".join(f"({c})" for c in conds) + ")", variables


def visible_sql(
    access: AccessFilter,
    alias: str,
    *,
    types: Iterable[str] | None = None,
    id_column: str = "id",
    raw: bool = False,
    key: str = "vis",
) -> tuple[str, dict[str, Any]]:
    """The SQL condition (and its bind parameters) for the rows of ``alias`` that ``access`` shows.

    ``alias`` names a row with ``source, patient_id, resource_type`` and the resource id in
    ``id_column`` (``clinical_fact``: ``id``; ``chunk``: ``resource_id``); ``raw``: it is the
    ``fhir_resource`` row itself. A row is shown when its type is allowed (and among ``types``)
    and, for a type the filter restricts by category, its raw resource (the stored FHIR JSON, read
    through the primary key) has a matching ``category`` coding. Rows stored by a broader session
    of the same patient are hidden by this, whatever the sync stored. ``key`` prefixes the
    parameter names (two uses in one statement need two keys). The (source, patient) condition is
    the caller's, as everywhere."""
    allowed = access.resource_types if types is None else access.resource_types & set(types)
    restricted = sorted(t for t in allowed if access.restricted(t) is not None)
    params: dict[str, Any] = {f"{key}_open": sorted(allowed - set(restricted))}
    parts = [f"{alias}.resource_type = ANY(CAST(:{key}_open AS text[]))"]
    for i, rtype in enumerate(restricted):
        path, variables = _category_path(access.restricted(rtype) or ())
        params |= {f"{key}_t{i}": rtype, f"{key}_p{i}": path, f"{key}_j{i}": json.dumps(variables)}
        match = f"jsonb_path_exists({{}}.content, CAST(:{key}_p{i} AS jsonpath), CAST(:{key}_j{i} AS jsonb), true)"
        if raw:
            cond = match.format(alias)
        else:
            cond = (
                f"EXISTS (SELECT 1 FROM fhir_resource {key}_r WHERE {key}_r.source = {alias}.source"
                f" AND {key}_r.patient_id = {alias}.patient_id"
                f" AND {key}_r.resource_type = {alias}.resource_type"
                f" AND {key}_r.id = {alias}.{id_column} AND {match.format(f'{key}_r')})"
            )
        parts.append(f"({alias}.resource_type = :{key}_t{i} AND {cond})")
    return "(" + " OR ".join(parts) + ")", params


def _visible(table: Any, access: AccessFilter, **kw: Any) -> Any:
    """``visible_sql`` as a SQLAlchemy condition on a table of this module."""
    name = table.name
    sql, params = visible_sql(access, name, raw=name == "fhir_resource", **kw)
    return text(sql).bindparams(**params)


async def stored_hashes(
    conn: AsyncConnection, access: AccessFilter, keys: Sequence[tuple[str, str]] | None = None
) -> dict[tuple[str, str], str]:
    """``{(type, id): content_hash}`` of the stored versions among ``keys`` (``None``: all of the
    patient's, in one query)."""
    if keys is not None and not keys:
        return {}
    stmt = select(_res.c.resource_type, _res.c.id, _res.c.content_hash).where(
        _patient(_res, access)
    )
    if keys is not None:
        stmt = stmt.where(tuple_(_res.c.resource_type, _res.c.id).in_(list(keys)))
    rows = await conn.execute(stmt)
    return {(r.resource_type, r.id): r.content_hash for r in rows}


# One statement per batch: the rows go as arrays, a version whose hash is stored is left alone
# (``WHERE ... IS DISTINCT FROM``), and RETURNING names what was written. ``stored`` reads the
# table as it was before the statement (a data-modifying CTE's effects are invisible to the rest
# of its statement), which tells a new resource from a changed one.
_UPSERT_RESOURCES = text(
    """
WITH batch AS (
  SELECT * FROM unnest(CAST(:types AS text[]), CAST(:ids AS text[]), CAST(:versions AS text[]),
                       CAST(:updated AS timestamptz[]), CAST(:hashes AS text[]),
                       CAST(:contents AS text[]))
    AS b(resource_type, id, version_id, last_updated, content_hash, content)
), written AS (
  INSERT INTO fhir_resource
    (source, patient_id, resource_type, id, version_id, last_updated, content_hash, content,
     synced_at)
  SELECT :source, :patient_id, resource_type, id, version_id, last_updated, content_hash,
         CAST(content AS jsonb), :synced_at
  FROM batch
  ON CONFLICT (source, patient_id, resource_type, id) DO UPDATE SET
    version_id = EXCLUDED.version_id, last_updated = EXCLUDED.last_updated,
    content_hash = EXCLUDED.content_hash, content = EXCLUDED.content,
    synced_at = EXCLUDED.synced_at
  WHERE fhir_resource.content_hash IS DISTINCT FROM EXCLUDED.content_hash
  RETURNING resource_type, id
)
SELECT w.resource_type, w.id, stored.id IS NOT NULL AS existed
FROM written w
LEFT JOIN fhir_resource stored
  ON stored.source = :source AND stored.patient_id = :patient_id
 AND stored.resource_type = w.resource_type AND stored.id = w.id
"""
)


async def store_resources(
    conn: AsyncConnection,
    access: AccessFilter,
    items: Sequence[tuple[dict[str, Any], str]],
    texts: dict[tuple[str, str], str] | None = None,
) -> dict[tuple[str, str], str]:
    """Upsert (resource, content_hash) pairs; returns ``{(type, id): "new"|"changed"|"same"}``.

    Idempotent: a resource whose content hash is unchanged is not rewritten. ``texts`` are the
    resources' JSON where the caller has it (Postgres parses it; no second ``json.dumps``).
    """
    if not items:
        return {}
    given = texts or {}
    # One row per key, the last one winning (as a sequence of upserts would end).
    latest = {(r["resourceType"], r["id"]): (r, digest) for r, digest in items}
    metas = [r.get("meta") or {} for r, _ in latest.values()]
    rows = await conn.execute(
        _UPSERT_RESOURCES,
        {
            "source": access.source,
            "patient_id": access.patient_id,
            "synced_at": _now(),
            "types": [k[0] for k in latest],
            "ids": [k[1] for k in latest],
            "versions": [m.get("versionId") for m in metas],
            "updated": [parse_date(m.get("lastUpdated")) for m in metas],
            "hashes": [digest for _, digest in latest.values()],
            "contents": [given.get(k) or canonical_json(r) for k, (r, _) in latest.items()],
        },
    )
    outcome = dict.fromkeys(latest, "same")
    for r in rows:
        outcome[(r.resource_type, r.id)] = "changed" if r.existed else "new"
    return outcome


#: Every ``Fact`` field after the key, each a ``clinical_fact`` column.
_fact_names = [f.name for f in fields(Fact) if f.name not in ("resource_type", "id")]
_fact_json = {n for n in _fact_names if isinstance(_fact.c[n].type, postgresql.JSONB)}


def _array_type(column: str) -> str:
    """The Postgres array type a fact column's values are sent as (JSONB goes as JSON text)."""
    if column in _fact_json:
        return "text[]"
    return f"{_fact.c[column].type.compile(dialect=postgresql.dialect())}[]"


# One statement per batch, the rows as arrays. A re-projected fact is re-indexed (its text may
# have changed with the same raw version, e.g. a note whose Binary could be read this time).
_UPSERT_FACTS = text(
    f"""
INSERT INTO clinical_fact (source, patient_id, resource_type, id, {", ".join(_fact_names)})
SELECT :source, :patient_id, resource_type, id,
       {", ".join(f"CAST({n} AS jsonb)" if n in _fact_json else n for n in _fact_names)}
FROM unnest(CAST(:resource_type AS text[]), CAST(:id AS text[]),
            {", ".join(f"CAST(:{n} AS {_array_type(n)})" for n in _fact_names)})
  AS f(resource_type, id, {", ".join(_fact_names)})
ON CONFLICT (source, patient_id, resource_type, id) DO UPDATE SET
  {", ".join(f"{n} = EXCLUDED.{n}" for n in _fact_names)}, indexed_hash = NULL
"""
)


async def store_facts(conn: AsyncConnection, access: AccessFilter, facts: Sequence[Fact]) -> None:
    if not facts:
        return
    # One row per key, the last one winning (as a sequence of upserts would end).
    latest = list({(f.resource_type, f.id): f for f in facts}.values())
    params: dict[str, Any] = {"source": access.source, "patient_id": access.patient_id}
    for name in ("resource_type", "id", *_fact_names):
        params[name] = [getattr(f, name) for f in latest]
    for name in _fact_json:
        params[name] = [json.dumps(v) for v in params[name]]
    await conn.execute(_UPSERT_FACTS, params)


async def quarantine(
    conn: AsyncConnection, access: AccessFilter, *, sync_id: uuid.UUID, resource: Any, reason: str
) -> None:
    """Record that a resource was set aside: its type, id and the reason, never its content."""
    item = resource if isinstance(resource, dict) else {}
    rtype, rid = item.get("resourceType"), item.get("id")
    await conn.execute(
        insert(_quar).values(
            source=access.source,
            patient_id=access.patient_id,
            sync_id=sync_id,
            resource_type=rtype[:64] if isinstance(rtype, str) else None,
            resource_id=rid[:64] if isinstance(rid, str) else None,
            reason=reason,
            created_at=_now(),
        )
    )


async def get_resources(
    conn: AsyncConnection, access: AccessFilter, resource_type: str
) -> list[dict[str, Any]]:
    """All stored resources of one type for the filter's patient (type must be allowed)."""
    if not access.allows(resource_type):
        return []
    rows = await conn.execute(
        select(_res.c.content).where(
            _patient(_res, access),
            _res.c.resource_type == resource_type,
            _visible(_res, access, types=[resource_type]),
        )
    )
    return [r.content for r in rows]


async def get_resources_by_id(
    conn: AsyncConnection, access: AccessFilter, resource_type: str, ids: Iterable[str]
) -> dict[str, dict[str, Any]]:
    """``{id: resource}`` of the stored resources of one type among ``ids``."""
    wanted = sorted(set(ids))
    if not wanted or not access.allows(resource_type):
        return {}
    rows = await conn.execute(
        select(_res.c.id, _res.c.content).where(
            _patient(_res, access),
            _res.c.resource_type == resource_type,
            _res.c.id.in_(wanted),
            _visible(_res, access, types=[resource_type]),
        )
    )
    return {r.id: r.content for r in rows}


async def get_resource(
    conn: AsyncConnection, access: AccessFilter, resource_type: str, resource_id: str
) -> dict[str, Any] | None:
    if not access.allows(resource_type):
        return None
    return await conn.scalar(
        select(_res.c.content).where(
            _patient(_res, access),
            _res.c.resource_type == resource_type,
            _res.c.id == resource_id,
            _visible(_res, access, types=[resource_type]),
        )
    )


async def existing_refs(
    conn: AsyncConnection, access: AccessFilter, refs: Iterable[tuple[str, str]]
) -> set[tuple[str, str]]:
    """Which of ``(type, id)`` are stored for this patient and of an allowed type."""
    wanted = [(t, i) for t, i in set(refs) if access.allows(t)]
    if not wanted:
        return set()
    rows = await conn.execute(
        select(_res.c.resource_type, _res.c.id).where(
            _patient(_res, access),
            tuple_(_res.c.resource_type, _res.c.id).in_(wanted),
            _visible(_res, access),
        )
    )
    return {(r.resource_type, r.id) for r in rows}


async def list_facts(
    conn: AsyncConnection,
    access: AccessFilter,
    resource_type: str,
    *,
    codes: Sequence[str] | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 500,
) -> list[dict[str, Any]]:
    """Facts of one type for the patient, oldest first, optionally by code and time window."""
    if not access.allows(resource_type):
        return []
    conds = [
        _patient(_fact, access),
        _fact.c.resource_type == resource_type,
        _visible(_fact, access, types=[resource_type]),
    ]
    if codes is not None:
        conds.append(_fact.c.code.in_(list(codes)))
    if since is not None:
        if resource_type in ("MedicationRequest", "Condition"):
            # Started earlier but still open (or ended inside the window): overlaps the window.
            conds.append(
                or_(_fact.c.date >= since, _fact.c.end_date >= since, _fact.c.end_date.is_(None))
            )
        else:
            undated = and_(_fact.c.date.is_(None), _fact.c.end_date.is_(None))
            conds.append(or_(_fact.c.date >= since, undated))
    if until is not None:
        conds.append(or_(_fact.c.date <= until, _fact.c.date.is_(None)))
    rows = await conn.execute(
        select(_fact)
        .where(*conds)
        .order_by(_fact.c.date.asc().nulls_first(), _fact.c.id)
        .limit(limit)
    )
    return [dict(r) for r in rows.mappings()]


async def fact_codes(
    conn: AsyncConnection, access: AccessFilter, resource_types: Iterable[str]
) -> list[dict[str, Any]]:
    """Distinct ``(resource_type, code_system, code)`` of the patient's facts of these types (those
    the access allows), with a display and a count (one index range scan)."""
    allowed = sorted(t for t in set(resource_types) if access.allows(t))
    if not allowed:
        return []
    rows = await conn.execute(
        select(
            _fact.c.resource_type,
            _fact.c.code_system,
            _fact.c.code,
            func.min(_fact.c.display).label("display"),
            func.count().label("n"),
        )
        .where(
            _patient(_fact, access),
            _fact.c.resource_type.in_(allowed),
            _visible(_fact, access, types=allowed),
        )
        .group_by(_fact.c.resource_type, _fact.c.code_system, _fact.c.code)
    )
    return [dict(r) for r in rows.mappings()]


def run_types(access: AccessFilter) -> list[str]:
    """What a run reads, as recorded on it: a type, or ``Type?category=…`` for a restricted one
    (so a later run of a broader session never takes a narrow run as having covered the type)."""
    out = []
    for rtype in sorted(access.resource_types):
        codings = access.restricted(rtype)
        if codings is None:
            out.append(rtype)
        else:
            values = sorted(f"{sys}|{code}" if sys else code for sys, code in codings)
            out.append(f"{rtype}?category={','.join(values)}")
    return out


def _run_view(run: dict[str, Any], access: AccessFilter) -> dict[str, Any]:
    """A run as this filter may see it: per-type counts and errors of a type the filter restricts
    are shown only for runs made with the same restriction (a broader session's run counted
    resources this filter hides)."""
    recorded = set(run.get("types") or ())
    own = dict(zip(sorted(access.resource_types), run_types(access), strict=True))
    hidden = {t for t in access.categories if own[t] not in recorded}
    if not hidden:
        return run
    view = dict(run)
    for key in ("counts", "errors"):
        if isinstance(view.get(key), dict):
            view[key] = {k: v for k, v in view[key].items() if k not in hidden}
    return view


async def create_sync_run(
    conn: AsyncConnection,
    access: AccessFilter,
    *,
    session_id: str | None,
    sync_id: uuid.UUID | None = None,
    mode: str = "full",
) -> uuid.UUID:
    sync_id = sync_id or uuid.uuid4()
    now = _now()
    await conn.execute(
        insert(_sync).values(
            id=sync_id,
            source=access.source,
            patient_id=access.patient_id,
            session_id=session_id,
            status="running",
            phase="queued",
            mode=mode,
            types=run_types(access),
            counts={},
            errors={},
            quarantined=0,
            started_at=now,
            heartbeat_at=now,
        )
    )
    return sync_id


async def update_sync_run(
    conn: AsyncConnection, access: AccessFilter, sync_id: uuid.UUID, **values: Any
) -> None:
    await conn.execute(
        update(_sync).where(_patient(_sync, access), _sync.c.id == sync_id).values(**values)
    )


async def get_sync_run(
    conn: AsyncConnection, access: AccessFilter, sync_id: uuid.UUID
) -> dict[str, Any] | None:
    row = (
        (await conn.execute(select(_sync).where(_patient(_sync, access), _sync.c.id == sync_id)))
        .mappings()
        .one_or_none()
    )
    return _run_view(dict(row), access) if row else None


async def latest_sync_run(
    conn: AsyncConnection,
    access: AccessFilter,
    *,
    status: str | None = None,
    answerable: bool = False,
    mode: str | None = None,
) -> dict[str, Any] | None:
    """The patient's newest run (of a status; or whose facts were stored: ``answerable``)."""
    conds = [_patient(_sync, access)]
    if status is not None:
        conds.append(_sync.c.status == status)
    if mode is not None:
        conds.append(_sync.c.mode == mode)
    if answerable:
        conds.append(_sync.c.answerable_at.is_not(None))
    row = (
        (
            await conn.execute(
                select(_sync).where(*conds).order_by(_sync.c.started_at.desc()).limit(1)
            )
        )
        .mappings()
        .one_or_none()
    )
    return _run_view(dict(row), access) if row else None


async def lock_patient(conn: AsyncConnection, access: AccessFilter) -> None:
    """Serialise run bookkeeping of one patient until this transaction ends."""
    await conn.execute(
        select(
            func.pg_advisory_xact_lock(
                func.hashtextextended(f"sync\n{access.source}\n{access.patient_id}", 0)
            )
        )
    )


async def close_dead_runs(
    conn: AsyncConnection,
    *,
    lease_seconds: float,
    access: AccessFilter | None = None,
    keep: Iterable[uuid.UUID] = (),
) -> list[dict[str, Any]]:
    """Close ``running`` runs whose heartbeat is older than the lease as ``failed``; returns them.

    ``keep``: runs something else vouches for (the app's sync job queue resumes its own runs on
    another worker instead; see ``smart_app/sync_queue.py``). What is left are runs nobody will
    finish: an import that died, a run of an older version.
    """
    cutoff = func.now() - func.make_interval(0, 0, 0, 0, 0, 0, lease_seconds)
    conds = [
        _sync.c.status == "running",
        or_(_sync.c.heartbeat_at.is_(None), _sync.c.heartbeat_at < cutoff),
    ]
    if access is not None:
        conds.append(_patient(_sync, access))
    if kept := list(keep):
        conds.append(_sync.c.id.not_in(kept))
    rows = await conn.execute(
        update(_sync)
        .where(*conds)
        .values(
            status="failed",
            phase="finished",
            error="interrupted: the process running this sync stopped",
            finished_at=_now(),
        )
        .returning(_sync.c.source, _sync.c.patient_id, _sync.c.id, _sync.c.phase)
    )
    return [dict(r) for r in rows.mappings()]


# -- reconciling derived rows with the raw store ---------------------------------------------------

_STALE = """
SELECT r.resource_type, r.id
FROM fhir_resource r
LEFT JOIN clinical_fact f
  ON f.source = r.source AND f.patient_id = r.patient_id
 AND f.resource_type = r.resource_type AND f.id = r.id
WHERE r.source = :src AND r.patient_id = :pid AND {visible}
  AND (f.id IS NULL OR f.source_hash IS DISTINCT FROM r.content_hash OR f.incomplete IS NOT NULL)
ORDER BY r.resource_type, r.id
"""


async def stale_resources(
    conn: AsyncConnection, access: AccessFilter, types: Iterable[str]
) -> list[tuple[str, str]]:
    """Raw resources whose fact is missing, from another version, or known to be incomplete."""
    allowed = sorted(t for t in set(types) if access.allows(t))
    if not allowed:
        return []
    visible, params = visible_sql(access, "r", types=allowed, raw=True)
    rows = await conn.execute(
        text(_STALE.format(visible=visible)),
        {"src": access.source, "pid": access.patient_id, **params},
    )
    return [(r.resource_type, r.id) for r in rows]


async def get_resources_by_key(
    conn: AsyncConnection, access: AccessFilter, keys: Sequence[tuple[str, str]]
) -> list[tuple[dict[str, Any], str]]:
    """``(content, content_hash)`` of stored resources by ``(type, id)``."""
    wanted = [(t, i) for t, i in keys if access.allows(t)]
    if not wanted:
        return []
    rows = await conn.execute(
        select(_res.c.content, _res.c.content_hash).where(
            _patient(_res, access),
            tuple_(_res.c.resource_type, _res.c.id).in_(wanted),
            _visible(_res, access),
        )
    )
    return [(r.content, r.content_hash) for r in rows]


async def invalidate_dependents(
    conn: AsyncConnection,
    access: AccessFilter,
    *,
    medications: Sequence[str],
    binaries: Sequence[str],
) -> int:
    """Mark facts built from these Medications / Binaries stale (a new version arrived)."""
    if not medications and not binaries:
        return 0
    conds = []
    if medications:
        conds.append(_fact.c.detail["medication_id"].astext.in_(list(medications)))
    if binaries:
        conds.append(_fact.c.detail["binary_ids"].has_any(array(list(binaries), type_=Text)))
    result = await conn.execute(
        update(_fact).where(_patient(_fact, access), or_(*conds)).values(source_hash=None)
    )
    return result.rowcount or 0


async def tombstone(
    conn: AsyncConnection,
    access: AccessFilter,
    types: Iterable[str],
    seen: Iterable[tuple[str, str]],
) -> list[tuple[str, str]]:
    """Delete stored resources of ``types`` that a complete pull did not return; returns them.

    Only what the pull could have returned: of a type the filter restricts by category, the
    resources of other categories (stored by a broader session) are not this pull's to remove."""
    kinds = sorted(set(types))
    if not kinds:
        return []
    keep = sorted(set(seen))
    visible, params = visible_sql(access, "r", types=kinds, raw=True)
    rows = await conn.execute(
        text(
            f"""
DELETE FROM fhir_resource r
WHERE r.source = :src AND r.patient_id = :pid AND {visible}
  AND NOT EXISTS (
    SELECT 1 FROM unnest(CAST(:kt AS text[]), CAST(:ki AS text[])) AS k(t, i)
    WHERE k.t = r.resource_type AND k.i = r.id)
RETURNING r.resource_type, r.id
"""
        ),
        {
            "src": access.source,
            "pid": access.patient_id,
            "kt": [t for t, _ in keep],
            "ki": [i for _, i in keep],
            **params,
        },
    )
    return sorted((r.resource_type, r.id) for r in rows)


async def delete_orphans(conn: AsyncConnection, access: AccessFilter) -> tuple[int, int]:
    """Drop facts whose raw resource is gone, and chunks whose fact is gone: ``(facts, chunks)``."""
    params = {"src": access.source, "pid": access.patient_id}
    facts = await conn.execute(
        text(
            """
DELETE FROM clinical_fact f
WHERE f.source = :src AND f.patient_id = :pid AND NOT EXISTS (
  SELECT 1 FROM fhir_resource r WHERE r.source = f.source AND r.patient_id = f.patient_id
    AND r.resource_type = f.resource_type AND r.id = f.id)
"""
        ),
        params,
    )
    chunks = await conn.execute(
        text(
            """
DELETE FROM chunk c
WHERE c.source = :src AND c.patient_id = :pid AND NOT EXISTS (
  SELECT 1 FROM clinical_fact f WHERE f.source = c.source AND f.patient_id = c.patient_id
    AND f.resource_type = c.resource_type AND f.id = c.resource_id)
"""
        ),
        params,
    )
    return facts.rowcount or 0, chunks.rowcount or 0


async def chart_health(conn: AsyncConnection, access: AccessFilter) -> dict[str, Any]:
    """What the derived store still lacks: incomplete facts by type and reason, unindexed facts."""
    rows = await conn.execute(
        select(_fact.c.resource_type, _fact.c.incomplete, func.count().label("n"))
        .where(_patient(_fact, access), _fact.c.incomplete.is_not(None), _visible(_fact, access))
        .group_by(_fact.c.resource_type, _fact.c.incomplete)
    )
    incomplete: dict[str, dict[str, int]] = {}
    for r in rows:
        incomplete.setdefault(r.resource_type, {})[r.incomplete] = r.n
    unindexed = await conn.scalar(
        select(func.count())
        .select_from(_fact)
        .where(_patient(_fact, access), _needs_index(access), _visible(_fact, access))
    )
    return {"incomplete": incomplete, "unindexed": int(unindexed or 0)}


# The patient is repeated as values inside the subquery (not only correlated), so that on a
# distributed database the subquery routes to the patient's shard too.
_NO_CHUNKS = text(
    """NOT EXISTS (SELECT 1 FROM chunk c WHERE c.source = :nc_source
    AND c.patient_id = :nc_patient AND c.resource_type = clinical_fact.resource_type
    AND c.resource_id = clinical_fact.id)
  AND (clinical_fact.resource_type <> 'DocumentReference'
    OR coalesce(btrim(clinical_fact.value_text), '') <> '')"""
)


def _needs_index(access: AccessFilter) -> Any:
    """Not indexed at its version, or indexed but its chunks are gone (and it should have some)."""
    return or_(
        _fact.c.source_hash.is_(None),
        _fact.c.indexed_hash.is_distinct_from(_fact.c.source_hash),
        _NO_CHUNKS.bindparams(nc_source=access.source, nc_patient=access.patient_id),
    )


async def unindexed_facts(conn: AsyncConnection, access: AccessFilter) -> list[dict[str, Any]]:
    """Facts whose chunks are missing or were built from another version (notes last)."""
    rows = await conn.execute(
        select(_fact)
        .where(
            _patient(_fact, access),
            _fact.c.source_hash.is_not(None),
            _needs_index(access),
            _visible(_fact, access),
        )
        .order_by(
            (_fact.c.resource_type == "DocumentReference").asc(), _fact.c.resource_type, _fact.c.id
        )
    )
    return [dict(r) for r in rows.mappings() if access.allows(r["resource_type"])]


async def mark_indexed(
    conn: AsyncConnection, access: AccessFilter, items: Sequence[tuple[str, str, str]]
) -> None:
    """Record that ``(type, id, source_hash)``'s chunks are built (only if still that version)."""
    if not items:
        return
    await conn.execute(
        text(
            """
UPDATE clinical_fact f SET indexed_hash = k.h
FROM unnest(CAST(:kt AS text[]), CAST(:ki AS text[]), CAST(:kh AS text[])) AS k(t, i, h)
WHERE f.source = :src AND f.patient_id = :pid AND f.resource_type = k.t AND f.id = k.i
  AND f.source_hash = k.h
"""
        ),
        {
            "src": access.source,
            "pid": access.patient_id,
            "kt": [t for t, _, _ in items],
            "ki": [i for _, i, _ in items],
            "kh": [h for _, _, h in items],
        },
    )

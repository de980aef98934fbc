"""All SQL over the FHIR store. Every read of patient data takes a required ``AccessFilter``."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, func, insert, or_, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from fhir_adapters.access import AccessFilter
from fhir_adapters.normalize import Fact, parse_date
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


async def store_resources(
    conn: AsyncConnection, access: AccessFilter, items: Sequence[tuple[dict[str, Any], str]]
) -> dict[tuple[str, str], str]:
    """Upsert (resource, content_hash) pairs; returns ``{(type, id): "new"|"changed"|"same"}``.

    Idempotent: a resource whose content hash is unchanged is not rewritten.
    """
    if not items:
        return {}
    keys = [(r["resourceType"], r["id"]) for r, _ in items]
    known = {
        (row.resource_type, row.id): row.content_hash
        for row in await conn.execute(
            select(_res.c.resource_type, _res.c.id, _res.c.content_hash).where(
                _patient(_res, access),
                tuple_(_res.c.resource_type, _res.c.id).in_(keys),
            )
        )
    }
    outcome: dict[tuple[str, str], str] = {}
    rows = []
    for resource, digest in items:
        key = (resource["resourceType"], resource["id"])
        before = known.get(key)
        outcome[key] = "same" if before == digest else ("changed" if before else "new")
        if before != digest:
            meta = resource.get("meta") or {}
            rows.append(
                {
                    "source": access.source,
                    "patient_id": access.patient_id,
                    "resource_type": key[0],
                    "id": key[1],
                    "version_id": meta.get("versionId"),
                    "last_updated": parse_date(meta.get("lastUpdated")),
                    "content_hash": digest,
                    "content": resource,
                    "synced_at": _now(),
                }
            )
    if rows:
        stmt = pg_insert(_res).values(rows)
        await conn.execute(
            stmt.on_conflict_do_update(
                index_elements=["source", "patient_id", "resource_type", "id"],
                set_={
                    c: stmt.excluded[c]
                    for c in ("version_id", "last_updated", "content_hash", "content", "synced_at")
                },
            )
        )
    return outcome


async def store_facts(conn: AsyncConnection, access: AccessFilter, facts: Sequence[Fact]) -> None:
    if not facts:
        return
    key = ("source", "patient_id", "resource_type", "id")
    rows = [{"source": access.source, "patient_id": access.patient_id, **asdict(f)} for f in facts]
    stmt = pg_insert(_fact).values(rows)
    cols = [c.name for c in _fact.c if c.name not in key]
    await conn.execute(
        stmt.on_conflict_do_update(
            index_elements=list(key),
            set_={c: stmt.excluded[c] for c in cols},
        )
    )


async def quarantine(
    conn: AsyncConnection, access: AccessFilter, *, sync_id: uuid.UUID, resource: Any, reason: str
) -> None:
    content = resource if isinstance(resource, dict) else {"value": repr(type(resource))}
    await conn.execute(
        insert(_quar).values(
            source=access.source,
            patient_id=access.patient_id,
            sync_id=sync_id,
            resource_type=content.get("resourceType")
            if isinstance(content.get("resourceType"), str)
            else None,
            resource_id=content.get("id") if isinstance(content.get("id"), str) else None,
            reason=reason,
            content=content,
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
        select(_res.c.content).where(_patient(_res, access), _res.c.resource_type == resource_type)
    )
    return [r.content for r in rows]


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
    conds = [_patient(_fact, access), _fact.c.resource_type == resource_type]
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
    conn: AsyncConnection, access: AccessFilter, resource_type: str
) -> list[dict[str, Any]]:
    """Distinct (code, display) of a type for the patient, with counts."""
    if not access.allows(resource_type):
        return []
    rows = await conn.execute(
        select(
            _fact.c.code_system,
            _fact.c.code,
            func.min(_fact.c.display).label("display"),
            func.count().label("n"),
        )
        .where(_patient(_fact, access), _fact.c.resource_type == resource_type)
        .group_by(_fact.c.code_system, _fact.c.code)
    )
    return [dict(r) for r in rows.mappings()]


async def create_sync_run(
    conn: AsyncConnection, access: AccessFilter, *, session_id: str | None
) -> uuid.UUID:
    sync_id = uuid.uuid4()
    await conn.execute(
        insert(_sync).values(
            id=sync_id,
            source=access.source,
            patient_id=access.patient_id,
            session_id=session_id,
            status="running",
            phase="queued",
            counts={},
            quarantined=0,
            started_at=_now(),
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
    return dict(row) if row else None


async def latest_sync_run(
    conn: AsyncConnection, access: AccessFilter, *, status: str | None = None
) -> dict[str, Any] | None:
    conds = [_patient(_sync, access)]
    if status is not None:
        conds.append(_sync.c.status == status)
    row = (
        (
            await conn.execute(
                select(_sync).where(*conds).order_by(_sync.c.started_at.desc()).limit(1)
            )
        )
        .mappings()
        .one_or_none()
    )
    return dict(row) if row else None


async def fail_stale_runs(conn: AsyncConnection, *, older_than: datetime) -> int:
    """Mark runs left 'running' by a crashed process as failed (called at startup)."""
    result = await conn.execute(
        update(_sync)
        .where(_sync.c.status == "running", _sync.c.started_at < older_than)
        .values(
            status="failed",
            error="interrupted: the server stopped during the sync",
            finished_at=_now(),
        )
    )
    return result.rowcount or 0

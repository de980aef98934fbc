"""The sync job queue in Postgres: any app process claims a job, holds it by a lease, finishes it.

One ``sync_job`` row per sync run (same id). A job is *open* until ``finished_at`` is set, and
*claimable* when nobody holds it:

- its lease ran out (``lease_until`` in the past, or never set: queued, or released at shutdown);
- or its owner is gone before the lease ran out: the owner holds the job's advisory lock on a
  session of its own (``locked``), and Postgres drops that lock with the connection when the
  process dies, however it died — so a claimer that can take the lock knows the owner is dead.

Claims take the candidate rows ``FOR UPDATE SKIP LOCKED``: two workers never claim the same job
and never wait on each other. A claim bumps ``attempts``; the owner's every later write (lease
extension, finish, release) is fenced on ``(lease_owner, attempts)``, so a worker that lost its
job (lease expired while it was stalled, then claimed elsewhere) learns it on its next beat and
stops without writing the outcome. A job claimed more than ``max_attempts`` times is given up.

The table is global (a plain table on the Citus coordinator): it is small and every worker
polls it; the run it drives (``sync_run``) lives with the patient's data.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from fhir_adapters import AccessFilter
from smart_app.tables import SyncJob

_job = SyncJob.__table__  # type: ignore[attr-defined]


class LeaseLost(RuntimeError):
    """This worker no longer holds the job (another worker claimed it)."""


@dataclass(frozen=True)
class Job:
    id: uuid.UUID
    source: str
    patient_id: str
    session_hash: str
    mode: str
    since: datetime | None
    attempts: int

    def __repr__(self) -> str:  # no session hash in logs or tracebacks
        return f"Job(id={self.id}, mode={self.mode!r}, attempts={self.attempts})"


def _key(job_id: uuid.UUID) -> Any:
    return func.hashtextextended(f"sync-job\n{job_id}", 0)


def _lease(seconds: float) -> Any:
    return func.now() + func.make_interval(0, 0, 0, 0, 0, 0, seconds)


def _fenced(job: Job, owner: str) -> Any:
    return (
        (_job.c.id == job.id)
        & (_job.c.lease_owner == owner)
        & (_job.c.attempts == job.attempts)
        & _job.c.finished_at.is_(None)
    )


async def enqueue(
    conn: AsyncConnection,
    access: AccessFilter,
    *,
    job_id: uuid.UUID,
    session_hash: str,
    mode: str,
    since: datetime | None,
) -> None:
    await conn.execute(
        _job.insert().values(
            id=job_id,
            source=access.source,
            patient_id=access.patient_id,
            session_hash=session_hash,
            mode=mode,
            since=since,
            created_at=func.now(),
            attempts=0,
            locked=False,
        )
    )


async def open_job_ids(conn: AsyncConnection, access: AccessFilter | None = None) -> set[uuid.UUID]:
    """Jobs not finished yet (of one patient, or all): their runs are the queue's to close."""
    query = select(_job.c.id).where(_job.c.finished_at.is_(None))
    if access is not None:
        query = query.where(_job.c.source == access.source, _job.c.patient_id == access.patient_id)
    return set((await conn.execute(query)).scalars())


async def claim(
    conn: AsyncConnection,
    owner: str,
    *,
    lease_seconds: float,
    limit: int,
    only: uuid.UUID | None = None,
) -> list[Job]:
    """Claim up to ``limit`` claimable jobs (oldest first) inside the caller's transaction."""
    scope = [_job.c.finished_at.is_(None)] + ([_job.c.id == only] if only is not None else [])
    expired = or_(_job.c.lease_until.is_(None), _job.c.lease_until < func.now())
    rows = await conn.execute(
        select(_job.c.id)
        .where(*scope, expired)
        .order_by(_job.c.created_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    picked: list[uuid.UUID] = list(rows.scalars())
    if len(picked) < limit:
        # Leased, but is the owner alive? Its session lock is gone with its connection if not;
        # taking the lock here (until commit) also keeps a new owner from taking it meanwhile.
        held = await conn.execute(
            select(_job.c.id)
            .where(*scope, _job.c.locked, ~expired)
            .order_by(_job.c.created_at)
            .limit(16)
        )
        dead = [
            job_id
            for job_id in held.scalars()
            if await conn.scalar(select(func.pg_try_advisory_xact_lock(_key(job_id))))
        ]
        if dead:
            rows = await conn.execute(
                select(_job.c.id)
                .where(_job.c.id.in_(dead), _job.c.finished_at.is_(None))
                .order_by(_job.c.created_at)
                .limit(limit - len(picked))
                .with_for_update(skip_locked=True)
            )
            picked += list(rows.scalars())
    if not picked:
        return []
    claimed = await conn.execute(
        update(_job)
        .where(_job.c.id.in_(picked))
        .values(
            lease_owner=owner,
            lease_until=_lease(lease_seconds),
            attempts=_job.c.attempts + 1,
            locked=False,
        )
        .returning(*[_job.c[name] for name in Job.__dataclass_fields__])
    )
    return sorted((Job(**r) for r in claimed.mappings()), key=lambda j: picked.index(j.id))


async def hold(holder: AsyncConnection, job: Job, owner: str) -> bool:
    """Take the job's advisory lock on ``holder`` (an AUTOCOMMIT connection kept for the run), and
    say so on the job; ``False`` when a stalled earlier owner still holds it (the lease alone
    then protects the job)."""
    if not await holder.scalar(select(func.pg_try_advisory_lock(_key(job.id)))):
        return False
    result = await holder.execute(update(_job).where(_fenced(job, owner)).values(locked=True))
    return bool(result.rowcount)


async def unhold(holder: AsyncConnection, job: Job) -> None:
    await holder.execute(select(func.pg_advisory_unlock(_key(job.id))))


async def extend(conn: AsyncConnection, job: Job, owner: str, *, lease_seconds: float) -> None:
    """Extend the lease; ``LeaseLost`` when the job is not this worker's any more."""
    result = await conn.execute(
        update(_job).where(_fenced(job, owner)).values(lease_until=_lease(lease_seconds))
    )
    if not result.rowcount:
        raise LeaseLost("the sync job was claimed by another worker")


async def finish(conn: AsyncConnection, job: Job, owner: str) -> None:
    """Close the job in the caller's transaction (with the run's outcome); ``LeaseLost``
    (the caller rolls back) when it is not this worker's any more."""
    result = await conn.execute(
        update(_job)
        .where(_fenced(job, owner))
        .values(finished_at=func.now(), lease_until=None, locked=False)
    )
    if not result.rowcount:
        raise LeaseLost("the sync job was claimed by another worker")


async def give_up(conn: AsyncConnection, job_id: uuid.UUID) -> None:
    await conn.execute(
        update(_job)
        .where(_job.c.id == job_id, _job.c.finished_at.is_(None))
        .values(finished_at=func.now(), lease_until=None, locked=False)
    )


async def release(conn: AsyncConnection, job: Job, owner: str) -> bool:
    """Hand the job back (graceful shutdown): claimable at once, the attempt not counted."""
    result = await conn.execute(
        update(_job)
        .where(_fenced(job, owner))
        .values(lease_owner=None, lease_until=None, locked=False, attempts=_job.c.attempts - 1)
    )
    return bool(result.rowcount)


async def prune(conn: AsyncConnection, *, older_than_days: float = 7.0) -> int:
    """Delete jobs finished long ago (their runs keep the outcome); returns how many."""
    cutoff = func.now() - func.make_interval(0, 0, 0, 0, 0, 0, older_than_days * 86400)
    result = await conn.execute(
        _job.delete().where(_job.c.finished_at.is_not(None), _job.c.finished_at < cutoff)
    )
    return int(result.rowcount or 0)


async def job_state(conn: AsyncConnection, job_id: uuid.UUID) -> dict[str, Any] | None:
    """The job's queue columns (for tests and diagnostics; no session hash)."""
    columns = ("attempts", "lease_owner", "lease_until", "locked", "finished_at")
    query = select(*[_job.c[name] for name in columns]).where(_job.c.id == job_id)
    row = (await conn.execute(query)).mappings().one_or_none()
    return dict(row) if row else None

"""All SQL of the SMART app: launch state, sessions and the audit chain. The caller commits."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    DateTime,
    Text,
    column,
    delete,
    func,
    insert,
    select,
    table,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from smart_app.audit import GENESIS, AuditRecord, chain_hash
from smart_app.audit_anchor import Checkpoint
from smart_app.tables import AppSession, AuditEvent, LaunchState

_launch = LaunchState.__table__  # type: ignore[attr-defined]
_session = AppSession.__table__  # type: ignore[attr-defined]
_audit = AuditEvent.__table__  # type: ignore[attr-defined]
_checkpoint = table(
    "audit_checkpoint",
    column("seq", BigInteger),
    column("row_count", BigInteger),
    column("head_seq", BigInteger),
    column("head_hash", Text),
    column("signed_at", DateTime(timezone=True)),
    column("key_id", Text),
    column("prev_signature", Text),
    column("signature", Text),
)  # migration 0005; append-only like audit_event
_AUDIT_LOCK = 0x636861727463  # pg_advisory_xact_lock key: one writer extends the chain at a time


def now() -> datetime:
    return datetime.now(UTC)


async def save_launch_state(conn: AsyncConnection, *, ttl_seconds: int, **values: Any) -> None:
    t = now()
    await conn.execute(
        insert(_launch).values(
            created_at=t, expires_at=t + timedelta(seconds=ttl_seconds), **values
        )
    )
    # Housekeeping: drop states that expired more than a day ago.
    await conn.execute(delete(_launch).where(_launch.c.expires_at < t - timedelta(days=1)))


async def consume_launch_state(conn: AsyncConnection, state_hash: str) -> tuple[str, Any]:
    """Mark a state used, atomically. Returns ("ok"|"unknown"|"used"|"expired", row)."""
    t = now()
    row = (
        await conn.execute(
            update(_launch)
            .where(_launch.c.state_hash == state_hash, _launch.c.used_at.is_(None))
            .values(used_at=t)
            .returning(*_launch.c)
        )
    ).one_or_none()
    if row is None:
        exists = await conn.scalar(
            select(func.count()).select_from(_launch).where(_launch.c.state_hash == state_hash)
        )
        return ("used" if exists else "unknown"), None
    if row.expires_at < t:
        return "expired", row
    return "ok", row


async def create_session(conn: AsyncConnection, *, ttl_seconds: int, **values: Any) -> None:
    t = now()
    await conn.execute(
        insert(_session).values(
            created_at=t, expires_at=t + timedelta(seconds=ttl_seconds), **values
        )
    )


async def get_session(conn: AsyncConnection, id_hash: str) -> Any:
    return (
        await conn.execute(
            select(_session).where(_session.c.id_hash == id_hash, _session.c.expires_at > now())
        )
    ).one_or_none()


async def lock_session(conn: AsyncConnection, id_hash: str) -> Any:
    """The live session row, locked until the caller's transaction ends (one refresh at a time,
    across processes: refresh tokens rotate, a second concurrent refresh would fail)."""
    return (
        await conn.execute(
            select(_session)
            .where(_session.c.id_hash == id_hash, _session.c.expires_at > now())
            .with_for_update()
        )
    ).one_or_none()


async def update_session_tokens(conn: AsyncConnection, id_hash: str, **values: Any) -> None:
    await conn.execute(update(_session).where(_session.c.id_hash == id_hash).values(**values))


async def end_session(conn: AsyncConnection, id_hash: str) -> bool:
    """Delete a session (its encrypted tokens with it); ``True`` if there was one."""
    result = await conn.execute(delete(_session).where(_session.c.id_hash == id_hash))
    # Housekeeping: sessions past their expiry are gone too.
    await conn.execute(delete(_session).where(_session.c.expires_at < now()))
    return bool(result.rowcount)


async def upsert_bearer_session(conn: AsyncConnection, **values: Any) -> None:
    """The row behind an app's bearer token: created on first use, its expiry kept current."""
    t = now()
    stmt = pg_insert(_session).values(created_at=t, checked_at=t, kind="bearer", **values)
    await conn.execute(
        stmt.on_conflict_do_update(
            index_elements=[_session.c.id_hash],
            set_={"expires_at": stmt.excluded.expires_at, "checked_at": t},
        )
    )


async def lock_audit(conn: AsyncConnection) -> None:
    """Hold the chain's writer lock until the caller's transaction ends."""
    await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _AUDIT_LOCK})


async def append_audit(conn: AsyncConnection, record: AuditRecord) -> str:
    """Extend the chain by one record inside the caller's transaction; returns the new hash."""
    await lock_audit(conn)
    prev = await conn.scalar(select(_audit.c.hash).order_by(_audit.c.seq.desc()).limit(1))
    prev = prev or GENESIS
    recorded_at = now()
    digest = chain_hash(prev, record, recorded_at)
    await conn.execute(
        insert(_audit).values(
            recorded_at=recorded_at,
            action=record.action,
            outcome=record.outcome,
            actor=record.actor,
            client_id=record.client_id,
            source=record.source,
            patient_id=record.patient_id,
            detail=dict(record.detail),
            prev_hash=prev,
            hash=digest,
        )
    )
    return digest


async def iter_audit(
    conn: AsyncConnection,
    batch: int = 1000,
    *,
    after: int = 0,
    patient: tuple[str, str] | None = None,
) -> AsyncIterator[dict[str, Any]]:
    """Audit rows with ``seq > after`` in chain order, streamed in batches; ``patient``
    (source, patient id) keeps one patient's rows only."""
    last = after
    while True:
        query = select(_audit).where(_audit.c.seq > last)
        if patient is not None:
            query = query.where(_audit.c.source == patient[0], _audit.c.patient_id == patient[1])
        rows = (await conn.execute(query.order_by(_audit.c.seq).limit(batch))).mappings().all()
        if not rows:
            return
        for row in rows:
            yield dict(row)
        last = rows[-1]["seq"]


async def list_audit(
    conn: AsyncConnection, *, source: str, patient_id: str, limit: int = 100
) -> list[dict[str, Any]]:
    rows = (
        (
            await conn.execute(
                select(_audit)
                .where(_audit.c.source == source, _audit.c.patient_id == patient_id)
                .order_by(_audit.c.seq.desc())
                .limit(limit)
            )
        )
        .mappings()
        .all()
    )
    return [dict(r) for r in rows]


async def audit_head(conn: AsyncConnection) -> tuple[int, str] | None:
    """The newest audit row's (seq, hash), if any."""
    row = (
        await conn.execute(
            select(_audit.c.seq, _audit.c.hash).order_by(_audit.c.seq.desc()).limit(1)
        )
    ).one_or_none()
    return None if row is None else (int(row.seq), str(row.hash))


def _checkpoint_of(row: Any) -> Checkpoint:
    m = row._mapping
    return Checkpoint(**dict(m))


async def last_checkpoint(conn: AsyncConnection) -> Checkpoint | None:
    row = (
        await conn.execute(select(_checkpoint).order_by(_checkpoint.c.seq.desc()).limit(1))
    ).one_or_none()
    return None if row is None else _checkpoint_of(row)


async def list_checkpoints(conn: AsyncConnection) -> list[Checkpoint]:
    """Every checkpoint, oldest first."""
    rows = (await conn.execute(select(_checkpoint).order_by(_checkpoint.c.seq))).all()
    return [_checkpoint_of(r) for r in rows]


async def insert_checkpoint(conn: AsyncConnection, cp: Checkpoint) -> Checkpoint:
    """Store a signed checkpoint; returns it with its ``seq``."""
    values = {k: v for k, v in cp.__dict__.items() if k != "seq"}
    seq = await conn.scalar(insert(_checkpoint).values(**values).returning(_checkpoint.c.seq))
    return Checkpoint(**{**values, "seq": int(seq)})

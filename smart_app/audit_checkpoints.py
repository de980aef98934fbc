"""Writing and checking audit checkpoints against the database (see ``smart_app/audit_anchor.py``).

The app writes a checkpoint every ``every_rows`` new audit rows or ``every_seconds`` when there
are new rows, and once more at shutdown; ``chartcite audit checkpoint`` writes one on demand.
Before signing, the writer checks the rows since the previous checkpoint: they must start at the
previous head (same hash) and link and hash correctly, so a checkpoint never launders a chain
that was recomputed behind the app's back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from smart_app import repository as repo
from smart_app.audit import GENESIS, chain_hash, row_record
from smart_app.audit_anchor import (
    AuditKeyring,
    AuditReport,
    Checkpoint,
    sign,
    verify_with_checkpoints,
)

log = logging.getLogger(__name__)


class CheckpointRefused(RuntimeError):
    """The rows since the last checkpoint do not continue it: nothing is signed."""


async def write_checkpoint(conn: AsyncConnection, keyring: AuditKeyring) -> Checkpoint | None:
    """Sign and store the chain's current head inside the caller's transaction (the caller
    commits). ``None`` when nothing was appended since the last checkpoint."""
    await repo.lock_audit(conn)  # no append between reading the head and signing it
    last = await repo.last_checkpoint(conn)
    head = await repo.audit_head(conn)
    if head is None or (last is not None and last.head_seq == head[0]):
        return None
    prev_hash, count, after, pending_head = GENESIS, 0, 0, None
    if last is not None:
        prev_hash, count, after = last.head_hash, last.row_count, last.head_seq - 1
        pending_head = (last.head_seq, last.head_hash)
    moved = CheckpointRefused(
        "the record at the last checkpoint is missing or changed; run `chartcite audit verify`"
    )
    async for row in repo.iter_audit(conn, after=after):
        if pending_head is not None:  # first the previous checkpoint's head row, unchanged
            if (row["seq"], row["hash"]) != pending_head:
                raise moved
            pending_head = None
            continue
        if row["prev_hash"] != prev_hash or (
            chain_hash(prev_hash, row_record(row), row["recorded_at"]) != row["hash"]
        ):
            raise CheckpointRefused(
                f"the audit chain is broken at seq {row['seq']}; run `chartcite audit verify`"
            )
        prev_hash, count = row["hash"], count + 1
        head = (int(row["seq"]), str(row["hash"]))
    if pending_head is not None:
        raise moved
    unsigned = Checkpoint(
        row_count=count,
        head_seq=head[0],
        head_hash=head[1],
        signed_at=datetime.now(UTC),
        key_id=keyring.current_id,
        prev_signature=last.signature if last is not None else GENESIS,
    )
    return await repo.insert_checkpoint(conn, sign(keyring, unsigned))


async def verify_database(
    conn: AsyncConnection, keyring: AuditKeyring, anchor: list[Checkpoint] | None = None
) -> AuditReport:
    """The chain and every checkpoint (and an exported anchor file, when given)."""
    rows = [r async for r in repo.iter_audit(conn)]
    checkpoints = await repo.list_checkpoints(conn)
    return verify_with_checkpoints(rows, checkpoints, keyring, anchor)


@dataclass(frozen=True)
class CheckpointPolicy:
    every_rows: int = 100
    every_seconds: float = 60.0
    poll_seconds: float = 5.0


class CheckpointWriter:
    """The app's periodic checkpoints: a background task, plus a last one at shutdown."""

    def __init__(
        self, engine: AsyncEngine, keyring: AuditKeyring, policy: CheckpointPolicy
    ) -> None:
        self.engine = engine
        self.keyring = keyring
        self.policy = policy
        self._task: asyncio.Task[None] | None = None
        self._last_at = 0.0

    async def _due(self) -> bool:
        async with self.engine.connect() as conn:
            last = await repo.last_checkpoint(conn)
            head = await repo.audit_head(conn)
        if head is None or (last is not None and last.head_seq == head[0]):
            return False
        loop = asyncio.get_running_loop()
        if loop.time() - self._last_at >= self.policy.every_seconds:
            return True
        after = last.head_seq if last is not None else 0
        async with self.engine.connect() as conn:
            new = 0
            async for _ in repo.iter_audit(conn, after=after, batch=self.policy.every_rows):
                new += 1
                if new >= self.policy.every_rows:
                    return True
        return False

    async def checkpoint(self) -> Checkpoint | None:
        """Write one now (if there is anything new); a refusal is logged, never raised."""
        self._last_at = asyncio.get_running_loop().time()
        try:
            async with self.engine.begin() as conn:
                return await write_checkpoint(conn, self.keyring)
        except CheckpointRefused as exc:
            log.error("audit checkpoint refused: %s", exc)
            return None

    async def _run(self) -> None:
        self._last_at = asyncio.get_running_loop().time()
        while True:
            await asyncio.sleep(min(self.policy.poll_seconds, self.policy.every_seconds))
            try:
                if await self._due():
                    await self.checkpoint()
            except Exception:  # a database hiccup must not end the writer
                log.exception("audit checkpoint failed; retrying later")

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="audit-checkpoints")

    async def stop(self) -> None:
        """Stop the task and anchor whatever was appended since the last checkpoint."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        try:
            await self.checkpoint()
        except Exception:  # shutdown goes on; the next start anchors the rows
            log.exception("audit checkpoint at shutdown failed")

"""Sync jobs: pull the launched patient with the session's token, then index — on any app worker.

``POST /api/sync`` queues a job (``smart_app/sync_queue.py``) in the same transaction that creates
the run, and the process that queued it claims it at once. Every app process also polls the queue
(``sync_poll_seconds``) for jobs nobody holds: queued beyond its ``sync_concurrency``, handed back
at a graceful shutdown, or left by a worker that died (its lease ran out, or its database
connection — and with it the job's advisory lock — is gone). The claimer resumes the run: the same
run id, mode and plan, the session's token read (and refreshed) from Postgres; what the dead
worker already stored is skipped by hash and indexing continues where it stopped. Tokens are
decrypted only here and never logged.

The run ends ``done`` only if Postgres says the chart is whole: every source read to the end, no
fact incomplete (a note without readable text, a Medication that could not be read), nothing
quarantined and every fact indexed. Otherwise it is ``partial`` with the reasons per type in
``errors``. Structured facts are answerable as soon as they are stored (``answerable_at``); notes are
embedded after that, with progress.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from fhir_adapters import (
    AccessFilter,
    FhirAdapterError,
    FhirClient,
    Puller,
    close_dead_runs,
    update_sync_run,
)
from fhir_adapters import repository as store
from rag import index_patient
from smart_app import repository as repo
from smart_app import sync_queue as queue
from smart_app.audit import AuditRecord
from smart_app.errors import AppError
from smart_app.session import SessionContext, session_context
from smart_app.state import AppState
from smart_app.sync_queue import Job, LeaseLost
from smart_app.tokens import live_access_token

log = logging.getLogger("chartcite.sync")
PRUNE_EVERY_POLLS = 1000  # and at start: finished jobs older than a week are deleted


def chart_errors(
    result_errors: dict[str, str], quarantined: int, health: dict[str, Any]
) -> dict[str, str]:
    """Everything that keeps a chart from being whole, by resource type (empty: ``done``)."""
    errors = dict(result_errors)
    for rtype, reasons in sorted(health["incomplete"].items()):
        text = "; ".join(f"{n} {why}" for why, n in sorted(reasons.items()))
        errors[rtype] = f"{errors[rtype]}; {text}" if rtype in errors else text
    if quarantined:
        errors["quarantine"] = (
            f"{quarantined} resource(s) set aside (invalid, or not this patient's)"
        )
    if health["unindexed"]:
        errors["index"] = f"{health['unindexed']} fact(s) not indexed"
    return errors


async def audit_dead_runs(conn: AsyncConnection, closed: list[dict[str, Any]]) -> None:
    for run in closed:
        await repo.append_audit(
            conn,
            AuditRecord(
                "sync",
                "failed",
                actor="chartcite",
                source=run["source"],
                patient_id=run["patient_id"],
                detail={
                    "sync_id": str(run["id"]),
                    "reason": run.get("reason", "process stopped (lease or lock lost)"),
                },
            ),
        )


async def _close_failed(conn: AsyncConnection, job: Job, *, error: str, reason: str) -> None:
    """Close a job's run ``failed`` without running it (given up, or its session is gone)."""
    access = AccessFilter(job.source, job.patient_id, frozenset())
    now = datetime.now(UTC)
    await update_sync_run(
        conn,
        access,
        job.id,
        status="failed",
        phase="finished",
        error=error,
        finished_at=now,
        heartbeat_at=now,
    )
    run = {"source": job.source, "patient_id": job.patient_id, "id": job.id, "reason": reason}
    await audit_dead_runs(conn, [run])


class SyncJobs:
    """This process's share of the sync queue: claims jobs, runs them as asyncio tasks."""

    def __init__(self, state: AppState) -> None:
        self.state = state
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self._tasks: dict[uuid.UUID, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._stopping = False

    async def close_dead_runs(self) -> int:
        """Close runs nobody will finish (no open job: imports, older versions) at startup."""
        async with self.state.engine.begin() as conn:
            closed = await close_dead_runs(
                conn,
                lease_seconds=self.state.config.sync_lease_seconds,
                keep=await queue.open_job_ids(conn),
            )
            await audit_dead_runs(conn, closed)
        return len(closed)

    async def _plan(
        self, conn: AsyncConnection, session: SessionContext, full: bool
    ) -> tuple[str, datetime | None]:
        """``("incremental", since)`` when the last complete full run is recent and covered at
        least the types this session may read (scopes not widened); else ``("full", None)``."""
        if full:
            return "full", None
        last_full = await store.latest_sync_run(conn, session.access, status="done", mode="full")
        last = await store.latest_sync_run(conn, session.access, status="done")
        if last_full is None or last is None:
            return "full", None
        age = (datetime.now(UTC) - last_full["started_at"]).total_seconds()
        covered = set(last_full["types"]) >= set(session.access.resource_types) and set(
            last["types"]
        ) >= set(session.access.resource_types)
        if age >= self.state.config.sync_full_every_seconds or not covered:
            return "full", None
        if not await store.existing_refs(
            conn,
            session.access.widened_for_support(frozenset({"Patient"})),
            [("Patient", session.patient_id)],
        ):
            return "full", None  # the stored copy is gone (restored backup, manual cleanup)
        # A margin for clock skew between the EHR and us: re-reading a little is harmless.
        return "incremental", last["started_at"] - timedelta(minutes=5)

    async def start(self, session: SessionContext, *, full: bool = False) -> uuid.UUID:
        """Queue a sync of the session's patient (and claim it here), or return the running one."""
        sync_id = uuid.uuid4()
        async with self.state.engine.begin() as conn:
            await store.lock_patient(conn, session.access)
            closed = await close_dead_runs(
                conn,
                lease_seconds=self.state.config.sync_lease_seconds,
                access=session.access,
                keep=await queue.open_job_ids(conn, session.access),
            )
            await audit_dead_runs(conn, closed)
            running = await store.latest_sync_run(conn, session.access, status="running")
            if running is not None:
                return running["id"]  # type: ignore[no-any-return]
            mode, since = await self._plan(conn, session, full)
            await store.create_sync_run(
                conn, session.access, session_id=session.id_hash[:16], sync_id=sync_id, mode=mode
            )
            await queue.enqueue(
                conn,
                session.access,
                job_id=sync_id,
                session_hash=session.id_hash,
                mode=mode,
                since=since,
            )
            await repo.append_audit(
                conn,
                session.audit_record(
                    "sync", "started", sync_id=str(sync_id), mode=mode, scopes=str(session.scopes)
                ),
            )
        await self._claim(only=sync_id)  # no free slot here: it waits for any worker's poll
        return sync_id

    def start_worker(self) -> None:
        """Poll the queue in the background until ``shutdown``."""
        self._worker = asyncio.create_task(self._poll(), name="sync-queue")

    async def _poll(self) -> None:
        every = self.state.config.sync_poll_seconds
        polls = 0
        while not self._stopping:
            try:
                await self._claim()
                polls += 1
                if polls % PRUNE_EVERY_POLLS == 1:
                    async with self.state.engine.begin() as conn:
                        await queue.prune(conn)
            except Exception as exc:  # noqa: BLE001 - the queue is polled again; never fatal
                log.warning("sync queue poll failed (%s)", type(exc).__name__)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), every)
            self._wake.clear()

    async def _claim(self, only: uuid.UUID | None = None) -> None:
        free = self.state.config.sync_concurrency - len(self._tasks)
        if free <= 0 or self._stopping:
            return
        config = self.state.config
        async with self.state.engine.begin() as conn:
            jobs = await queue.claim(
                conn, self.owner, lease_seconds=config.sync_lease_seconds, limit=free, only=only
            )
            for job in [j for j in jobs if j.attempts > config.sync_max_attempts]:
                await self._give_up(conn, job)
        for job in jobs:
            if job.attempts <= config.sync_max_attempts:
                task = asyncio.create_task(self._hold_and_run(job), name=f"sync-{job.id}")
                self._tasks[job.id] = task
                task.add_done_callback(lambda _t, i=job.id: self._tasks.pop(i, None))

    async def _give_up(self, conn: AsyncConnection, job: Job) -> None:
        await queue.give_up(conn, job.id)
        error = f"interrupted: the workers running this sync stopped {job.attempts - 1} times"
        await _close_failed(conn, job, error=error, reason="gave up")

    async def wait_all(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    async def shutdown(self) -> None:
        """Stop polling; running syncs are handed back to the queue for another worker."""
        self._stopping = True
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        for task in list(self._tasks.values()):
            task.cancel()
        await self.wait_all()

    async def _hold_and_run(self, job: Job) -> None:
        """Run a claimed job holding its advisory lock on a connection of its own."""
        holder = await self.state.engine.connect()
        try:
            await holder.execution_options(isolation_level="AUTOCOMMIT")
            held = await queue.hold(holder, job, self.owner)
            try:
                await self._run_job(job)
            finally:
                if held:
                    with contextlib.suppress(Exception):
                        await queue.unhold(holder, job)
        except Exception as exc:  # noqa: BLE001 - the lease runs out and another worker resumes
            log.warning("sync %s stopped on this worker (%s)", job.id, type(exc).__name__)
        finally:
            await holder.close()

    async def _run_job(self, job: Job) -> None:
        st = self.state
        try:
            row, _ = await live_access_token(st, job.session_hash)
            session = session_context(row)
            if (session.source, session.patient_id) != (job.source, job.patient_id):
                raise AppError("the sync's session is for another patient")
        except AppError as exc:  # the session ended (logout, revoked): nobody can read with it
            async with st.engine.begin() as conn:
                await queue.finish(conn, job, self.owner)
                await _close_failed(conn, job, error=exc.message, reason=exc.code)
            return
        if job.attempts > 1:
            async with st.engine.begin() as conn:
                await repo.append_audit(
                    conn,
                    session.audit_record(
                        "sync",
                        "resumed",
                        sync_id=str(job.id),
                        attempt=job.attempts,
                        worker=self.owner.rsplit(":", 1)[0],
                    ),
                )
        await self._run(job, session)

    async def _access_token(self, session: SessionContext, *, force_refresh: bool = False) -> str:
        """A live token for the sync; the session ends (and the sync fails) when there is none."""
        _, token = await live_access_token(self.state, session.id_hash, force_refresh=force_refresh)
        return token

    async def _set(self, session: SessionContext, sync_id: uuid.UUID, **values: Any) -> None:
        async with self.state.engine.begin() as conn:
            await update_sync_run(
                conn, session.access, sync_id, heartbeat_at=datetime.now(UTC), **values
            )

    async def _beat(self, job: Job, session: SessionContext, run: asyncio.Task[Any]) -> bool:
        """Extend the job's lease every third of it; on ``LeaseLost`` cancel the run and return
        ``True`` (another worker has the job now: this one must not write its outcome)."""
        lease = self.state.config.sync_lease_seconds
        while True:
            await asyncio.sleep(max(0.5, lease / 3))
            try:
                async with self.state.engine.begin() as conn:
                    await queue.extend(conn, job, self.owner, lease_seconds=lease)
                    await update_sync_run(
                        conn, session.access, job.id, heartbeat_at=datetime.now(UTC)
                    )
            except LeaseLost:
                log.warning("sync %s was claimed by another worker: stopping here", job.id)
                run.cancel()
                return True
            except Exception as exc:  # noqa: BLE001 - a missed beat is retried, never fatal
                log.warning("sync heartbeat failed (%s)", type(exc).__name__)

    def _client(self, session: SessionContext, token: str) -> FhirClient:
        config = self.state.config

        async def refresh() -> str:
            return await self._access_token(session, force_refresh=True)

        return FhirClient(
            session.iss,
            token,
            aliases=config.aliases(session.iss),
            retry=config.fhir_retry,
            refresh=refresh,
        )

    async def _run(self, job: Job, session: SessionContext) -> None:
        st = self.state
        sync_id, since = job.id, job.since
        outcome, error, errors, counts, quarantined = "failed", None, {}, {}, 0
        handed_back = False
        this = asyncio.current_task()
        assert this is not None
        beat = asyncio.create_task(self._beat(job, session, this))
        try:
            async with self._client(session, await self._access_token(session)) as client:

                async def on_fetch(phase: str, c: dict[str, int], q: int) -> None:
                    await self._set(session, sync_id, phase=phase, counts=c, quarantined=q)

                puller = Puller(
                    st.engine,
                    client,
                    session.access,
                    sync_id,
                    page_size=st.config.sync_page_size,
                    progress=on_fetch,
                    validator=st.validator,
                )
                try:
                    result = await puller.run(since=since)
                    await self._set(
                        session,
                        sync_id,
                        phase="reading notes",
                        counts=dict(result.counts),
                        quarantined=result.quarantined,
                        answerable_at=datetime.now(UTC),
                    )
                    await puller.reconcile_notes()
                finally:
                    counts, quarantined = dict(puller.result.counts), puller.result.quarantined
                    counts.update({f"http_{k}": v for k, v in client.stats.items()})
                    counts.update(puller.result.timings)
                    errors = dict(puller.result.errors)
            await self._set(
                session,
                sync_id,
                phase="indexing",
                counts=counts,
                errors=errors,
                quarantined=quarantined,
            )
            if result.tombstoned:
                await self._audit_tombstones(session, sync_id, result.tombstoned)

            async def on_index(done: int, total: int) -> None:
                await self._set(session, sync_id, phase=f"indexing {done}/{total} facts")

            indexed = await index_patient(st.engine, st.embedder, session.access, progress=on_index)
            counts["facts_indexed"] = indexed.facts
            counts["chunks_indexed"] = indexed.chunks
            async with st.engine.connect() as conn:
                health = await store.chart_health(conn, session.access)
            errors = chart_errors(result.errors, quarantined, health)
            outcome = "partial" if errors else "done"
            error = "; ".join(f"{k}: {v}" for k, v in errors.items()) or None
        except (AppError, FhirAdapterError) as exc:
            error = exc.message
        except asyncio.CancelledError:
            # Lease lost (another worker resumes it) or this process stops (hand it back).
            handed_back = True
        except Exception as exc:  # noqa: BLE001 - a sync must end in a recorded state, whatever happened
            log.error("sync %s failed with %s", sync_id, type(exc).__name__)
            error = f"internal error ({type(exc).__name__})"
        finally:
            beat.cancel()
            lost = beat.done() and not beat.cancelled() and beat.result()
            if handed_back and not lost:
                await asyncio.shield(self._release(job, session))
            elif not handed_back:
                await asyncio.shield(
                    self._finish(job, session, outcome, error, errors, counts, quarantined)
                )

    async def _release(self, job: Job, session: SessionContext) -> None:
        """Hand the job back to the queue at shutdown: another worker resumes it at once."""
        try:
            async with self.state.engine.begin() as conn:
                if await queue.release(conn, job, self.owner):
                    await update_sync_run(conn, session.access, job.id, phase="queued")
                    await repo.append_audit(
                        conn,
                        session.audit_record("sync", "released", sync_id=str(job.id)),
                    )
        except Exception as exc:  # noqa: BLE001 - the lease runs out and another worker resumes
            log.warning("sync %s not handed back (%s)", job.id, type(exc).__name__)

    async def _audit_tombstones(
        self, session: SessionContext, sync_id: uuid.UUID, removed: list[tuple[str, str]]
    ) -> None:
        async with self.state.engine.begin() as conn:
            await repo.append_audit(
                conn,
                session.audit_record(
                    "sync",
                    "tombstoned",
                    sync_id=str(sync_id),
                    removed=[f"{t}/{i}" for t, i in removed],
                ),
            )

    async def _finish(
        self,
        job: Job,
        session: SessionContext,
        outcome: str,
        error: str | None,
        errors: dict[str, str],
        counts: dict[str, int],
        quarantined: int,
    ) -> None:
        try:
            async with self.state.engine.begin() as conn:
                await queue.finish(conn, job, self.owner)  # fenced: rolls back if not ours
                await update_sync_run(
                    conn,
                    session.access,
                    job.id,
                    status=outcome,
                    phase="finished",
                    error=error,
                    errors=errors,
                    counts=counts,
                    quarantined=quarantined,
                    heartbeat_at=datetime.now(UTC),
                    finished_at=datetime.now(UTC),
                )
                await repo.append_audit(
                    conn,
                    session.audit_record(
                        "sync",
                        outcome,
                        sync_id=str(job.id),
                        counts=counts,
                        quarantined=quarantined,
                        errors=sorted(errors),
                    ),
                )
        except LeaseLost:
            log.warning("sync %s was claimed by another worker: its outcome is theirs", job.id)

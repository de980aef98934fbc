"""Background sync jobs: pull the launched patient with the session's token, then index.

A run's status lives in Postgres (``sync_run``), so any worker can report progress. Tokens are
decrypted only here, refreshed when expired or rejected (once per request), and never logged.

A live run proves it is alive two ways: it holds an advisory lock on its own database connection
(Postgres drops it when the process dies, however it died), and it beats ``heartbeat_at`` every third
of the lease. ``close_dead_runs`` (at startup and before every new run of a patient) closes runs
that fail either test as ``failed`` and audits them, so a crash never leaves a patient stuck.

The run ends ``done`` only if Postgres says the chart is whole: every source read to the end, no
fact incomplete (a note without readable text, a Medication that could not be read), nothing
quarantined and every fact indexed. Otherwise it is ``partial`` with the reasons per type in
``errors``. Structured facts are answerable as soon as they are stored (``answerable_at``); notes are
embedded after that, with progress.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from fhir_adapters import FhirAdapterError, FhirClient, Puller, close_dead_runs, update_sync_run
from fhir_adapters import repository as store
from rag import index_patient
from smart_app import repository as repo
from smart_app.audit import AuditRecord
from smart_app.errors import AppError
from smart_app.session import SessionContext
from smart_app.state import AppState
from smart_app.tokens import live_access_token

log = logging.getLogger("chartcite.sync")


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
                    "reason": "process stopped (lease or lock lost)",
                },
            ),
        )


class SyncJobs:
    """Starts sync runs as asyncio tasks and keeps them referenced until they finish."""

    def __init__(self, state: AppState) -> None:
        self.state = state
        self._tasks: set[asyncio.Task[None]] = set()

    async def close_dead_runs(self) -> int:
        """Close every run whose process is gone (called at startup)."""
        async with self.state.engine.begin() as conn:
            closed = await close_dead_runs(conn, lease_seconds=self.state.config.sync_lease_seconds)
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
        """Start a sync for the session's patient, or return the one already running."""
        engine = self.state.engine
        sync_id = uuid.uuid4()
        lock = await engine.connect()
        try:
            await lock.execution_options(isolation_level="AUTOCOMMIT")
            await store.hold_run_lock(lock, sync_id)
            async with engine.begin() as conn:
                await store.lock_patient(conn, session.access)
                closed = await close_dead_runs(
                    conn,
                    lease_seconds=self.state.config.sync_lease_seconds,
                    access=session.access,
                )
                await audit_dead_runs(conn, closed)
                running = await store.latest_sync_run(conn, session.access, status="running")
                if running is not None:
                    await store.release_run_lock(lock, sync_id)
                    await lock.close()
                    return running["id"]  # type: ignore[no-any-return]
                mode, since = await self._plan(conn, session, full)
                await store.create_sync_run(
                    conn,
                    session.access,
                    session_id=session.id_hash[:16],
                    sync_id=sync_id,
                    mode=mode,
                )
                await repo.append_audit(
                    conn,
                    session.audit_record(
                        "sync",
                        "started",
                        sync_id=str(sync_id),
                        mode=mode,
                        scopes=str(session.scopes),
                    ),
                )
        except BaseException:
            await lock.close()
            raise
        task = asyncio.create_task(self._run(sync_id, session, lock, since), name=f"sync-{sync_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return sync_id

    async def wait_all(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def shutdown(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await self.wait_all()

    async def _access_token(self, session: SessionContext, *, force_refresh: bool = False) -> str:
        """A live token for the sync; the session ends (and the sync fails) when there is none."""
        _, token = await live_access_token(self.state, session.id_hash, force_refresh=force_refresh)
        return token

    async def _set(self, session: SessionContext, sync_id: uuid.UUID, **values: Any) -> None:
        async with self.state.engine.begin() as conn:
            await update_sync_run(
                conn, session.access, sync_id, heartbeat_at=datetime.now(UTC), **values
            )

    async def _beat(self, session: SessionContext, sync_id: uuid.UUID) -> None:
        every = max(0.5, self.state.config.sync_lease_seconds / 3)
        while True:
            await asyncio.sleep(every)
            try:
                await self._set(session, sync_id)
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

    async def _run(
        self,
        sync_id: uuid.UUID,
        session: SessionContext,
        lock: AsyncConnection,
        since: datetime | None = None,
    ) -> None:
        st = self.state
        outcome, error, errors, counts, quarantined = "failed", None, {}, {}, 0
        beat = asyncio.create_task(self._beat(session, sync_id))
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
            error = "interrupted: the server stopped during the sync"
        except Exception as exc:  # noqa: BLE001 - a sync must end in a recorded state, whatever happened
            log.error("sync %s failed with %s", sync_id, type(exc).__name__)
            error = f"internal error ({type(exc).__name__})"
        finally:
            beat.cancel()
            await asyncio.shield(
                self._finish(sync_id, session, lock, outcome, error, errors, counts, quarantined)
            )

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
        sync_id: uuid.UUID,
        session: SessionContext,
        lock: AsyncConnection,
        outcome: str,
        error: str | None,
        errors: dict[str, str],
        counts: dict[str, int],
        quarantined: int,
    ) -> None:
        try:
            async with self.state.engine.begin() as conn:
                await update_sync_run(
                    conn,
                    session.access,
                    sync_id,
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
                        sync_id=str(sync_id),
                        counts=counts,
                        quarantined=quarantined,
                        errors=sorted(errors),
                    ),
                )
        finally:
            try:
                await store.release_run_lock(lock, sync_id)
            finally:
                await lock.close()

"""Background sync jobs: pull the launched patient with the session's token, then index.

A run's status lives in Postgres (``sync_run``), so any worker can report progress. Tokens are
decrypted only here, refreshed when expired, and never logged.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from fhir_adapters import (
    FhirAdapterError,
    FhirClient,
    Puller,
    create_sync_run,
    latest_sync_run,
    update_sync_run,
)
from rag import index_patient
from smart_app import repository as repo
from smart_app.errors import AppError, NotAuthenticated
from smart_app.session import SessionContext
from smart_app.state import AppState

log = logging.getLogger("chartcite.sync")


class SyncJobs:
    """Starts sync runs as asyncio tasks and keeps them referenced until they finish."""

    def __init__(self, state: AppState) -> None:
        self.state = state
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, session: SessionContext) -> uuid.UUID:
        """Start a sync for the session's patient, or return the one already running."""
        engine = self.state.engine
        async with engine.begin() as conn:
            running = await latest_sync_run(conn, session.access, status="running")
            if running is not None and running["started_at"] > datetime.now(UTC) - timedelta(
                minutes=30
            ):
                return running["id"]  # type: ignore[no-any-return]
            sync_id = await create_sync_run(conn, session.access, session_id=session.id_hash[:16])
            await repo.append_audit(
                conn,
                session.audit_record(
                    "sync", "started", sync_id=str(sync_id), scopes=str(session.scopes)
                ),
            )
        task = asyncio.create_task(self._run(sync_id, session), name=f"sync-{sync_id}")
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

    async def _access_token(self, session: SessionContext) -> str:
        st = self.state
        async with st.engine.connect() as conn:
            row = await repo.get_session(conn, session.id_hash)
        if row is None:
            raise NotAuthenticated("the session expired during the sync", code="session_expired")
        expired = row.token_expires_at is not None and row.token_expires_at < datetime.now(
            UTC
        ) + timedelta(seconds=30)
        if not expired:
            return st.cipher.decrypt(row.access_token_enc, context=b"access")
        if row.refresh_token_enc is None:
            raise NotAuthenticated(
                "the EHR token expired and cannot be refreshed: launch again",
                code="session_expired",
            )
        conf = await st.smart.discover(row.iss)
        token = await st.smart.refresh(
            conf, st.config.client, st.cipher.decrypt(row.refresh_token_enc, context=b"refresh")
        )
        values: dict[str, Any] = {
            "access_token_enc": st.cipher.encrypt(token.access_token, context=b"access"),
            "token_expires_at": datetime.fromtimestamp(token.expires_at, UTC)
            if token.expires_at
            else None,
        }
        if token.refresh_token:
            values["refresh_token_enc"] = st.cipher.encrypt(token.refresh_token, context=b"refresh")
        async with st.engine.begin() as conn:
            await repo.update_session_tokens(conn, row.id_hash, **values)
        return token.access_token

    async def _set(self, session: SessionContext, sync_id: uuid.UUID, **values: Any) -> None:
        async with self.state.engine.begin() as conn:
            await update_sync_run(conn, session.access, sync_id, **values)

    async def _run(self, sync_id: uuid.UUID, session: SessionContext) -> None:
        st = self.state
        outcome, error, counts, quarantined = "failed", None, {}, 0
        try:
            client = FhirClient(session.iss, await self._access_token(session))

            async def on_fetch(phase: str, c: dict[str, int], q: int) -> None:
                await self._set(session, sync_id, phase=phase, counts=c, quarantined=q)

            puller = Puller(
                st.engine,
                client,
                session.access,
                sync_id,
                page_size=st.config.sync_page_size,
                progress=on_fetch,
            )
            result = await puller.run()
            counts, quarantined = dict(result.counts), result.quarantined

            async def on_index(done: int, total: int) -> None:
                await self._set(session, sync_id, phase=f"indexing {done}/{total} note chunks")

            await self._set(
                session, sync_id, phase="indexing", counts=counts, quarantined=quarantined
            )
            indexed = await index_patient(
                st.engine, st.embedder, session.access, result.changed, progress=on_index
            )
            counts["chunks_indexed"] = indexed.chunks
            outcome = "partial" if (quarantined or result.errors) else "done"
            error = "; ".join(result.errors) or None
        except (AppError, FhirAdapterError) as exc:
            error = exc.message
        except asyncio.CancelledError:
            error = "interrupted: the server stopped during the sync"
        except Exception as exc:  # noqa: BLE001 - a sync must end in a recorded state, whatever happened
            log.error("sync %s failed with %s", sync_id, type(exc).__name__)
            error = f"internal error ({type(exc).__name__})"
        finally:
            await asyncio.shield(
                self._finish(sync_id, session, outcome, error, counts, quarantined)
            )

    async def _finish(
        self,
        sync_id: uuid.UUID,
        session: SessionContext,
        outcome: str,
        error: str | None,
        counts: dict[str, int],
        quarantined: int,
    ) -> None:
        async with self.state.engine.begin() as conn:
            await update_sync_run(
                conn,
                session.access,
                sync_id,
                status=outcome,
                phase="finished",
                error=error,
                counts=counts,
                quarantined=quarantined,
                finished_at=datetime.now(UTC),
            )
            await repo.append_audit(
                conn,
                session.audit_record(
                    "sync", outcome, sync_id=str(sync_id), counts=counts, quarantined=quarantined
                ),
            )

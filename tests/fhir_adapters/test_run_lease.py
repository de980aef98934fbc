"""A running sync is alive only while its process holds its lock and beats its heartbeat."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from fhir_adapters import AccessFilter, close_dead_runs
from fhir_adapters import repository as repo
from launch.db import Database, create_engine, upgrade
from tests.conftest import scratch_database

A = AccessFilter("ehr-a", "p1", frozenset({"Observation"}))
B = AccessFilter("ehr-a", "p2", frozenset({"Observation"}))


def test_lock_and_lease_decide_which_runs_are_dead(database: Database) -> None:
    db = scratch_database(database, "lease")

    async def scenario() -> None:
        engine = create_engine(db, pool_size=3)
        await upgrade(engine)
        holder = await engine.connect()
        await holder.execution_options(isolation_level="AUTOCOMMIT")
        try:
            async with engine.begin() as conn:
                live = await repo.create_sync_run(conn, A, session_id=None)
                orphan = await repo.create_sync_run(conn, B, session_id=None)
            await repo.hold_run_lock(holder, live)
            # The live run holds its lock and beat just now; the other has nobody holding its lock.
            async with engine.begin() as conn:
                closed = await close_dead_runs(conn, lease_seconds=30)
            assert [r["id"] for r in closed] == [orphan]
            # A hung process: lock still held, but silent for longer than the lease.
            async with engine.begin() as conn:
                await repo.update_sync_run(
                    conn, A, live, heartbeat_at=datetime.now(UTC) - timedelta(seconds=31)
                )
                closed = await close_dead_runs(conn, lease_seconds=30, access=A)
            assert [r["id"] for r in closed] == [live]
            async with engine.connect() as conn:
                run = await repo.get_sync_run(conn, A, live)
            assert run is not None and run["status"] == "failed" and run["finished_at"]
            assert "stopped" in run["error"]
            # Closed runs stay closed: nothing left to close.
            async with engine.begin() as conn:
                assert await close_dead_runs(conn, lease_seconds=30) == []
        finally:
            await holder.close()
            await engine.dispose()

    asyncio.run(scenario())

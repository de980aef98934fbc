"""The sync job queue on a real PostgreSQL: SKIP LOCKED claims, leases, dead owners, fencing."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from fhir_adapters import AccessFilter, close_dead_runs
from fhir_adapters import repository as store
from launch.db import Database, create_engine, upgrade
from smart_app import sync_queue as queue
from tests.conftest import scratch_database

A = AccessFilter("ehr-a", "p1", frozenset({"Observation"}))
B = AccessFilter("ehr-a", "p2", frozenset({"Observation"}))


async def _engine(db: Database) -> AsyncEngine:
    engine = create_engine(db, pool_size=4)
    await upgrade(engine)
    return engine


async def _jobs(engine: AsyncEngine, *accesses: AccessFilter) -> list[uuid.UUID]:
    ids = []
    for access in accesses:
        job_id = uuid.uuid4()
        async with engine.begin() as conn:
            await store.create_sync_run(conn, access, session_id=None, sync_id=job_id)
            await queue.enqueue(
                conn, access, job_id=job_id, session_hash="h" * 64, mode="full", since=None
            )
        ids.append(job_id)
    return ids


def test_claims_skip_locked_rows_and_never_hand_one_job_to_two_workers(database: Database) -> None:
    db = scratch_database(database, "queue")

    async def scenario() -> None:
        engine = await _engine(db)
        first, second = await _jobs(engine, A, B)
        # Worker 1 claims inside an open transaction; worker 2 claims meanwhile: it must skip the
        # row worker 1 has locked (not wait for it, not take it) and get the other job.
        async with engine.begin() as one:
            got1 = await queue.claim(one, "w1", lease_seconds=30, limit=1)
            async with engine.begin() as two:
                got2 = await asyncio.wait_for(
                    queue.claim(two, "w2", lease_seconds=30, limit=1), timeout=5
                )
        assert [j.id for j in got1] == [first] and [j.id for j in got2] == [second]
        assert got1[0].attempts == got2[0].attempts == 1
        # Both leased: nothing is claimable by a third worker.
        async with engine.begin() as three:
            assert await queue.claim(three, "w3", lease_seconds=30, limit=5) == []
        await engine.dispose()

    asyncio.run(scenario())


def test_a_dead_owner_loses_its_job_before_the_lease_ends_and_is_fenced_out(
    database: Database,
) -> None:
    db = scratch_database(database, "queue")

    async def scenario() -> None:
        engine = await _engine(db)
        (job_id,) = await _jobs(engine, A)
        async with engine.begin() as conn:
            (job,) = await queue.claim(conn, "w1", lease_seconds=300, limit=1)
        holder = await engine.connect()
        await holder.execution_options(isolation_level="AUTOCOMMIT")
        assert await queue.hold(holder, job, "w1")
        # Alive and holding its lock, with a lease of 5 minutes: nobody else may claim it.
        async with engine.begin() as conn:
            assert await queue.claim(conn, "w2", lease_seconds=30, limit=1) == []
        # The owner's connection ends (its process was killed): claimable at once.
        await holder.invalidate()
        await holder.close()
        async with engine.begin() as conn:
            (taken,) = await queue.claim(conn, "w2", lease_seconds=30, limit=1)
        assert taken.id == job_id and taken.attempts == 2
        # The old owner, were it only stalled, is fenced: no lease extension, no finish.
        async with engine.begin() as conn:
            try:
                await queue.extend(conn, job, "w1", lease_seconds=30)
            except queue.LeaseLost:
                pass
            else:
                raise AssertionError("a fenced-out worker extended the lease")
        async with engine.begin() as conn:
            await queue.finish(conn, taken, "w2")
        async with engine.connect() as conn:
            state = await queue.job_state(conn, job_id)
        assert state is not None and state["finished_at"] is not None
        async with engine.begin() as conn:
            assert await queue.claim(conn, "w3", lease_seconds=30, limit=1) == []
        await engine.dispose()

    asyncio.run(scenario())


def test_an_expired_lease_is_claimable_and_a_release_is_claimable_at_once(
    database: Database,
) -> None:
    db = scratch_database(database, "queue")

    async def scenario() -> None:
        engine = await _engine(db)
        first, second = await _jobs(engine, A, B)
        async with engine.begin() as conn:
            one, two = await queue.claim(conn, "w1", lease_seconds=30, limit=2)
        assert (one.id, two.id) == (first, second)
        async with engine.begin() as conn:
            # No lock was taken (a pooler, say): only the lease protects the job.
            await conn.execute(
                text("UPDATE sync_job SET lease_until = now() - interval '1 s' WHERE id = :i"),
                {"i": first},
            )
            assert await queue.release(conn, two, "w1")
        async with engine.begin() as conn:
            got = await queue.claim(conn, "w2", lease_seconds=30, limit=5)
        # Expired: a new attempt; released: the attempt it was on is not counted again.
        assert {(j.id, j.attempts) for j in got} == {(first, 2), (second, 1)}
        await engine.dispose()

    asyncio.run(scenario())


def test_runs_without_an_open_job_are_closed_once_silent(database: Database) -> None:
    db = scratch_database(database, "queue")

    async def scenario() -> None:
        engine = await _engine(db)
        (queued,) = await _jobs(engine, A)
        async with engine.begin() as conn:
            orphan = await store.create_sync_run(conn, B, session_id=None)
            old = datetime.now(UTC) - timedelta(seconds=31)
            for access, run in ((A, queued), (B, orphan)):
                await store.update_sync_run(conn, access, run, heartbeat_at=old)
        async with engine.begin() as conn:
            closed = await close_dead_runs(
                conn, lease_seconds=30, keep=await queue.open_job_ids(conn)
            )
        # The queued run is the queue's (another worker resumes it); the orphan had nobody.
        assert [r["id"] for r in closed] == [orphan]
        async with engine.connect() as conn:
            assert (await store.get_sync_run(conn, A, queued))["status"] == "running"  # type: ignore[index]
        await engine.dispose()

    asyncio.run(scenario())


def test_finished_jobs_are_pruned_after_a_week_and_open_ones_never(database: Database) -> None:
    db = scratch_database(database, "queue")

    async def scenario() -> None:
        engine = await _engine(db)
        old, recent, still_open = await _jobs(engine, A, B, A)
        async with engine.begin() as conn:
            for job_id, days in ((old, 8), (recent, 1)):
                await conn.execute(
                    text("UPDATE sync_job SET finished_at = now() - make_interval(days => :d) "
                         "WHERE id = :i"),
                    {"d": days, "i": job_id},
                )  # fmt: skip
            assert await queue.prune(conn) == 1
        async with engine.connect() as conn:
            assert await queue.job_state(conn, old) is None
            assert await queue.job_state(conn, recent) is not None
            assert await queue.open_job_ids(conn) == {still_open}
        await engine.dispose()

    asyncio.run(scenario())

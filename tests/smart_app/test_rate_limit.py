"""Rate limits shared by app processes through Postgres (``smart_app/rate_limit.py``)."""

from __future__ import annotations

import asyncio

from launch.db import Database, create_engine, upgrade
from smart_app.rate_limit import RateLimiter, sliding_retry
from tests.conftest import scratch_database
from tests.integration.helpers import within_one_minute_window


def _limiter(shared: bool, per_minute: int = 10) -> RateLimiter:
    return RateLimiter(session_per_minute=per_minute, client_per_minute=0, shared=shared)


def test_two_processes_share_one_limit_through_postgres(database: Database) -> None:
    db = scratch_database(database, "rates")

    async def scenario() -> tuple[list[bool], list[bool]]:
        engine = create_engine(db, pool_size=2)
        await upgrade(engine)
        try:
            outcomes = {}
            for shared in (True, False):
                # Two limiters stand for two worker processes behind one address.
                workers = [_limiter(shared), _limiter(shared)]
                for w in workers:
                    w.bind(engine)
                who = f"session-{shared}".encode()
                outcomes[shared] = [
                    await workers[i % 2].hit("10.0.0.1", who) is None for i in range(30)
                ]
            return outcomes[True], outcomes[False]
        finally:
            await engine.dispose()

    within_one_minute_window(10)
    shared, separate = asyncio.run(scenario())
    assert shared == [True] * 10 + [False] * 20
    # The control: per-process windows let each worker allow the whole limit.
    assert sum(separate) == 20


def test_an_unreachable_database_falls_back_to_the_process_window() -> None:
    async def scenario() -> list[bool]:
        engine = create_engine(Database(url="postgresql+asyncpg://x@127.0.0.1:9/none"), pool_size=1)
        limiter = _limiter(True, per_minute=3)
        limiter.bind(engine)
        try:
            return [await limiter.hit("10.0.0.2", b"s") is None for _ in range(5)]
        finally:
            await engine.dispose()

    assert asyncio.run(scenario()) == [True, True, True, False, False]


def test_sliding_estimate_weighs_the_previous_minute() -> None:
    assert sliding_retry(hits=10, prev=0, elapsed=5, limit=10) is None
    assert sliding_retry(hits=11, prev=0, elapsed=5, limit=10) == 55
    # 20 in the previous minute, a quarter of it still inside the last 60 s: 5 + 5 = 10, allowed.
    assert sliding_retry(hits=5, prev=20, elapsed=45, limit=10) is None
    # 6 now: 11 > 10; it drops to 10 once 3 more seconds of the old minute have slid out.
    assert sliding_retry(hits=6, prev=20, elapsed=45, limit=10) == 3

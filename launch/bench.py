"""Shared parts of ``chartcite bench {ask,sync}``: percentiles and a demo served in-process.

The demo runs with embedded Postgres in a temporary folder, the sandbox EHR and the app on a free
loopback port; benchmarks talk to it over real HTTP, like a browser.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from launch.db import Database, create_engine, open_database, upgrade
from launch.sandbox import SandboxStore
from launch.server import BackgroundServer, build_demo, free_port, sandbox_store
from launch.settings import Settings


def pct(values: list[float], q: float) -> float:
    """The q-quantile (nearest rank) of ``values``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


@dataclass
class BenchDemo:
    settings: Settings
    store: SandboxStore
    database: Database
    start_seconds: float

    @property
    def base_url(self) -> str:
        return self.settings.base_url


@contextmanager
def served_demo(
    *, data: Path | None = None, patients: int = 20, store: SandboxStore | None = None
) -> Iterator[BenchDemo]:
    """Start the whole demo in-process on a fresh embedded database; tear it all down after."""
    with tempfile.TemporaryDirectory(prefix="ccb-", dir="/tmp") as tmp:
        t0 = time.perf_counter()
        settings = Settings(env="dev", data_dir=Path(tmp), port=free_port())
        database = open_database(settings)

        async def migrate() -> None:
            engine = create_engine(database, pool_size=1)
            await upgrade(engine)
            await engine.dispose()

        try:
            asyncio.run(migrate())
            store = store or sandbox_store(patients=patients, data=data)
            demo = build_demo(settings, store, database=database)
            server = BackgroundServer(demo.app, settings.host, settings.port)
            server.start()
            try:
                yield BenchDemo(demo.settings, store, database, time.perf_counter() - t0)
            finally:
                server.stop()
        finally:
            if database.embedded is not None:
                database.embedded.cleanup()

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

from launch.db import Database, open_database, upgrade_database
from launch.sandbox import SandboxStore
from launch.server import BackgroundServer, build_demo, free_port, sandbox_store
from launch.settings import UNLIMITED, Settings, scratch_settings


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
        settings = scratch_settings(Path(tmp), port=free_port(), **UNLIMITED)
        database = open_database(settings)

        try:
            asyncio.run(upgrade_database(database))
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


def _serve_ehr(port: int, app_base: str, client_id: str, patients: int, scale: float) -> None:
    """Child process: the sandbox EHR alone, as a separate server (for ``--separate-ehr``)."""
    import uvicorn

    from launch.sandbox import SandboxClient, SandboxConfig, create_sandbox_app

    store = sandbox_store(patients=patients, history_scale=scale)
    app = create_sandbox_app(
        SandboxConfig(
            base_url=f"http://127.0.0.1:{port}",
            app_launch_url=f"{app_base}/launch",
            clients=(SandboxClient(client_id=client_id, redirect_uris=(f"{app_base}/callback",)),),
        ),
        store,
    )
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


@contextmanager
def served_separately(*, patients: int, scale: float) -> Iterator[tuple[BenchDemo, str]]:
    """The app in-process and the sandbox EHR in its own process (its own CPU time and GIL).

    Yields the demo and the EHR's base URL (its launcher is ``{ehr}/launch?patient=``).
    """
    import multiprocessing

    import httpx2

    from launch.app import create_app

    with tempfile.TemporaryDirectory(prefix="ccb-", dir="/tmp") as tmp:
        t0 = time.perf_counter()
        app_port, ehr_port = free_port(), free_port()
        ehr = f"http://127.0.0.1:{ehr_port}"
        settings = scratch_settings(
            Path(tmp),
            port=app_port,
            iss_allowlist=[f"{ehr}/fhir"],
            **UNLIMITED,
        )
        child = multiprocessing.get_context("spawn").Process(
            target=_serve_ehr,
            args=(ehr_port, settings.base_url, settings.client_id, patients, scale),
            daemon=True,
        )
        child.start()
        database = open_database(settings)

        try:
            asyncio.run(upgrade_database(database))
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx2.get(f"{ehr}/fhir/metadata", timeout=1).status_code == 200:
                        break
                except httpx2.HTTPError:
                    pass
                if time.monotonic() > deadline or not child.is_alive():
                    raise RuntimeError("the sandbox EHR process did not start")
                time.sleep(0.1)
            store = sandbox_store(patients=patients, history_scale=scale)
            server = BackgroundServer(
                create_app(settings, database=database), "127.0.0.1", app_port
            )
            server.start()
            try:
                yield BenchDemo(settings, store, database, time.perf_counter() - t0), ehr
            finally:
                server.stop()
        finally:
            child.terminate()
            child.join(timeout=10)
            if database.embedded is not None:
                database.embedded.cleanup()

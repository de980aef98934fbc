"""``chartcite bench``: demo start time, sync time per patient, ask latency p50/p95 over N asks.

Runs the whole demo in-process (embedded Postgres in a temporary folder, sandbox EHR, app on a free
loopback port) and talks to it over real HTTP, like a browser.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from launch.demo_client import ask, launch_patient, sync_patient
from launch.server import BackgroundServer, build_demo, free_port, sandbox_store
from launch.settings import Settings

QUESTIONS = (
    "What was this patient's HbA1c trend over the last 18 months, and which medications were previously prescribed?",
    "What is the latest blood pressure?",
    "Which allergies does the patient have?",
    "What was the plan at the last visit?",
    "Has the patient had a flu vaccine?",
    "List the active problems.",
    "How has kidney function (eGFR) changed since 2024?",
    "What did the notes say about follow-up?",
    "Cholesterol and LDL results in the past year",
    "Any procedures in the last 3 years?",
)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def run_bench(*, asks: int = 50, patients: int = 3, data: Path | None = None) -> int:
    from launch.db import create_engine, open_database, upgrade

    with tempfile.TemporaryDirectory(prefix="ccb-", dir="/tmp") as tmp:
        t0 = time.perf_counter()
        settings = Settings(env="dev", data_dir=Path(tmp), port=free_port())
        database = open_database(settings)

        async def migrate() -> None:
            engine = create_engine(database, pool_size=1)
            await upgrade(engine)
            await engine.dispose()

        asyncio.run(migrate())
        store = sandbox_store(data=data)
        demo = build_demo(settings, store, database=database)
        server = BackgroundServer(demo.app, settings.host, settings.port)
        server.start()
        start_s = time.perf_counter() - t0
        print(f"demo start (embedded Postgres + migrations + model + sandbox): {start_s:.2f} s")
        try:
            clients = []
            for pid in [p["id"] for p in store.patients()][:patients]:
                client, resp = launch_patient(settings.base_url, pid)
                resp.raise_for_status()
                t = time.perf_counter()
                status = sync_patient(client)
                took = time.perf_counter() - t
                n = sum(v for k, v in status["counts"].items() if k[:1].isupper())
                print(
                    f"sync {pid}: {status['status']}, {n} resources, "
                    f"{status['counts'].get('chunks_indexed', 0)} chunks, {took:.2f} s"
                )
                clients.append(client)
            client_ms: list[float] = []
            server_ms: list[float] = []
            for i in range(asks):
                client = clients[i % len(clients)]
                t = time.perf_counter()
                resp = ask(client, QUESTIONS[i % len(QUESTIONS)])
                client_ms.append((time.perf_counter() - t) * 1000)
                resp.raise_for_status()
                server_ms.append(resp.json()["latency_ms"])
            print(
                f"ask over HTTP, {asks} asks: p50 {pct(client_ms, 0.5):.1f} ms, p95 {pct(client_ms, 0.95):.1f} ms, "
                f"mean {statistics.mean(client_ms):.1f} ms"
            )
            print(
                f"ask pipeline (server latency_ms): p50 {pct(server_ms, 0.5):.1f} ms, "
                f"p95 {pct(server_ms, 0.95):.1f} ms"
            )
            for c in clients:
                c.close()
        finally:
            server.stop()
            if database.embedded is not None:
                database.embedded.cleanup()
    return 0

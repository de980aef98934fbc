"""``chartcite bench sync``: launch and sync patients over HTTP, time per patient."""

from __future__ import annotations

import time
from pathlib import Path

from launch.bench import served_demo
from launch.demo_client import launch_patient, sync_patient


def run(*, patients: int = 3, data: Path | None = None) -> int:
    with served_demo(data=data) as demo:
        print(
            f"demo start (embedded Postgres + migrations + model + sandbox): {demo.start_seconds:.2f} s"
        )
        for pid in [p["id"] for p in demo.store.patients()][:patients]:
            client, resp = launch_patient(demo.base_url, pid)
            try:
                resp.raise_for_status()
                t = time.perf_counter()
                status = sync_patient(client)
                took = time.perf_counter() - t
            finally:
                client.close()
            n = sum(v for k, v in status["counts"].items() if k[:1].isupper())
            print(
                f"sync {pid}: {status['status']}, {n} resources, "
                f"{status['counts'].get('chunks_indexed', 0)} chunks, {took:.2f} s"
            )
    return 0

"""``chartcite bench sync``: launch and sync patients over real HTTP, and time what a clinician waits.

Per patient: EHR launch → first answered structured question (the launch, ``POST /api/sync``, polling
until the run is answerable, then ``POST /api/ask``), the fetch phase's throughput (HTTP, validation
and storage of every page; resources per second), and the time until every note is indexed. Then
p50/p95 over the patients. By default the sandbox EHR runs in the app's process, so fetch throughput
includes serving the pages under the same GIL; ``--separate-ehr`` runs it as its own server process,
as a real EHR is (it still shares the machine's two cores).
"""

from __future__ import annotations

import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx2

from launch.bench import pct, served_demo, served_separately
from launch.demo_client import launch_patient
from launch.server import sandbox_store

QUESTION = "What medications has this patient been prescribed?"


def _poll(client: httpx2.Client, sync_id: str, until: Any, timeout: float = 600) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        status: dict[str, Any] = client.get(f"/api/sync/{sync_id}").json()
        if until(status):
            return status
        if time.monotonic() > deadline:
            raise TimeoutError(f"sync {sync_id} did not finish in {timeout}s")
        time.sleep(0.05)  # a page polls far less often; faster polling would load the server


def _launch(base_url: str, pid: str, ehr: str | None) -> tuple[httpx2.Client, httpx2.Response]:
    if ehr is None:
        return launch_patient(base_url, pid)
    client = httpx2.Client(base_url=base_url, follow_redirects=True, timeout=30)
    return client, client.get(f"{ehr}/launch?{urlencode({'patient': pid})}")


def _one(base_url: str, pid: str, ehr: str | None = None) -> dict[str, Any]:
    t0 = time.perf_counter()
    client, resp = _launch(base_url, pid, ehr)
    try:
        resp.raise_for_status()
        launched = time.perf_counter()
        sync_id = client.post("/api/sync", json={}).json()["id"]
        _poll(client, sync_id, lambda s: s["answerable_at"] or s["status"] != "running")
        answer = client.post("/api/ask", json={"question": QUESTION})
        answer.raise_for_status()
        answered = time.perf_counter()
        final = _poll(client, sync_id, lambda s: s["status"] != "running")
        indexed = time.perf_counter()
    finally:
        client.close()
    counts = final["counts"]
    resources = sum(v for k, v in counts.items() if k[:1].isupper())
    received = resources + counts.get("skipped", 0) + final["quarantined"]
    fetch_s = counts.get("ms_fetch", 0) / 1000
    return {
        "pid": pid,
        "status": final["status"],
        "resources": resources,
        "received": received,
        "chunks": counts.get("chunks_indexed", 0),
        "launch_s": launched - t0,
        "first_answer_s": answered - t0,
        "fetch_s": fetch_s,
        "rate": resources / fetch_s if fetch_s else 0.0,
        "reconcile_s": counts.get("ms_reconcile", 0) / 1000,
        "indexed_s": indexed - t0,
    }


def run(
    *,
    patients: int = 3,
    data: Path | None = None,
    chart_scale: float = 1.0,
    separate_ehr: bool = False,
) -> int:
    if separate_ehr and data is not None:
        print("--separate-ehr works with generated charts only", file=sys.stderr)
        return 2
    store = None if data else sandbox_store(patients=max(patients, 1), history_scale=chart_scale)
    with ExitStack() as stack:
        ehr: str | None = None
        if separate_ehr:
            demo, ehr = stack.enter_context(
                served_separately(patients=max(patients, 1), scale=chart_scale)
            )
            print(f"sandbox EHR in its own process at {ehr}")
        else:
            demo = stack.enter_context(served_demo(data=data, store=store))
        print(
            f"demo start (embedded Postgres + migrations + model + sandbox): "
            f"{demo.start_seconds:.2f} s"
        )
        print(
            f"{'patient':>38} {'status':>7} {'res':>5} {'chunks':>6} {'launch→answer':>13} "
            f"{'fetch s':>7} {'res/s':>6} {'reconcile':>9} {'indexed':>8}"
        )
        rows = []
        for pid in [p["id"] for p in demo.store.patients()][:patients]:
            r = _one(demo.base_url, str(pid), ehr)
            rows.append(r)
            print(
                f"{r['pid']:>38} {r['status']:>7} {r['resources']:>5} {r['chunks']:>6} "
                f"{r['first_answer_s']:>12.2f}s {r['fetch_s']:>7.2f} {r['rate']:>6.0f} "
                f"{r['reconcile_s']:>8.2f}s {r['indexed_s']:>7.2f}s"
            )
    if not rows:
        print("no patients")
        return 1
    total_res = sum(r["resources"] for r in rows)
    total_fetch = sum(r["fetch_s"] for r in rows)
    print(
        f"\n{len(rows)} patients, {total_res} resources "
        f"(mean {total_res / len(rows):.0f}/chart); all done: "
        f"{sum(r['status'] == 'done' for r in rows)}/{len(rows)}"
    )
    for key, label in (
        ("first_answer_s", "launch → first answered structured question"),
        ("indexed_s", "launch → every note indexed"),
        ("fetch_s", "fetch + validate + store"),
    ):
        values = [r[key] for r in rows]
        print(f"  {label:<44} p50 {pct(values, 0.5):6.2f} s   p95 {pct(values, 0.95):6.2f} s")
    received = sum(r["received"] for r in rows)
    print(
        f"  fetch + validate + store throughput            {total_res / total_fetch:8.0f} "
        f"resources stored/s ({received / total_fetch:.0f} received/s incl. "
        f"{received - total_res} of types not stored)"
    )
    return 0

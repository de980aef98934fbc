"""``chartcite bench ask``: ask latency p50/p95 over N asks, over HTTP and as the server measured it."""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from launch.bench import pct, served_demo
from launch.demo_client import ask, launch_patient, sync_patient

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


def run(*, asks: int = 50, patients: int = 3, data: Path | None = None) -> int:
    with served_demo(data=data) as demo:
        print(
            f"demo start (embedded Postgres + migrations + model + sandbox): {demo.start_seconds:.2f} s"
        )
        clients = []
        try:
            for pid in [p["id"] for p in demo.store.patients()][:patients]:
                client, resp = launch_patient(demo.base_url, pid)
                clients.append(client)
                resp.raise_for_status()
                sync_patient(client)
            client_ms: list[float] = []
            server_ms: list[float] = []
            for i in range(asks):
                client = clients[i % len(clients)]
                t = time.perf_counter()
                resp = ask(client, QUESTIONS[i % len(QUESTIONS)])
                client_ms.append((time.perf_counter() - t) * 1000)
                resp.raise_for_status()
                server_ms.append(resp.json()["latency_ms"])
        finally:
            for c in clients:
                c.close()
    print(
        f"ask over HTTP, {asks} asks: p50 {pct(client_ms, 0.5):.1f} ms, "
        f"p95 {pct(client_ms, 0.95):.1f} ms, mean {statistics.mean(client_ms):.1f} ms"
    )
    print(
        f"ask pipeline (server latency_ms): p50 {pct(server_ms, 0.5):.1f} ms, "
        f"p95 {pct(server_ms, 0.95):.1f} ms"
    )
    return 0


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="chartcite bench ask", description=__doc__)
    p.add_argument("--asks", type=int, default=50)
    p.add_argument("--patients", type=int, default=3, help="patients to launch and sync")
    p.add_argument("--data", help="FHIR folder for the sandbox (e.g. Synthea output)")
    args = p.parse_args(argv)
    return run(asks=args.asks, patients=args.patients, data=Path(args.data) if args.data else None)

"""``chartcite demo`` as a user runs it: a subprocess that serves /healthz within 60 s, and stops
cleanly (PostgreSQL included) on Ctrl-C."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx2
import psutil

from launch.server import free_port


def test_demo_serves_within_60s_and_stops_cleanly() -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="ccd-", dir="/tmp"))
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "launch.cli",
            "demo",
            "--port",
            str(port),
            "--data-dir",
            str(data_dir),
            "--patients",
            "3",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(os.environ),
    )
    try:
        started = time.monotonic()
        ready = False
        while time.monotonic() - started < 60 and proc.poll() is None:
            try:
                ready = httpx2.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
            except httpx2.HTTPError:
                ready = False
            if ready:
                break
            time.sleep(0.25)
        assert ready, "chartcite demo did not serve /healthz within 60 s"
        patients = httpx2.get(f"http://127.0.0.1:{port}/ehr/patients", timeout=5).json()
        assert len(patients) == 3 and {"id", "name"} <= set(patients[0])
        postgres = [
            p
            for p in psutil.process_iter(["cmdline"])
            if str(data_dir) in " ".join(p.info["cmdline"] or [])
        ]
        assert postgres, "the embedded PostgreSQL should run in the data dir"
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out[-2000:]
    assert "chartcite demo ready" in out
    deadline = time.monotonic() + 15
    while (
        any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in postgres)
        and time.monotonic() < deadline
    ):
        time.sleep(0.2)
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in postgres), (
        "PostgreSQL left running"
    )
    shutil.rmtree(data_dir, ignore_errors=True)

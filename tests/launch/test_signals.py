"""`chartcite demo` under SIGTERM and SIGINT: the process ends and the embedded PostgreSQL it
started is stopped (a real subprocess, a real server)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from launch.server import free_port

ROOT = Path(__file__).resolve().parents[2]


def _postgres_for(data_dir: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        try:
            cmd = " ".join(proc.info["cmdline"] or [])
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if "postgres" in (proc.info["name"] or "") and str(data_dir) in cmd:
            found.append(proc)
    return found


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_demo_stops_its_postgres_on_signal(sig: signal.Signals) -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="cc-sig-", dir="/tmp"))
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "launch.cli", "demo", "--port", str(port), "--data-dir",
         str(data_dir), "--patients", "2"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=os.environ | {"PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 240
        output = []
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            output.append(line)
            if "demo ready" in line or proc.poll() is not None:
                break
        assert any("demo ready" in line for line in output), "".join(output)[-2000:]
        assert _postgres_for(data_dir), "the embedded PostgreSQL should be running"
        proc.send_signal(sig)
        rc = proc.wait(timeout=60)
        assert rc in (0, -sig, 128 + sig), rc
        deadline = time.monotonic() + 30
        while _postgres_for(data_dir) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not _postgres_for(data_dir), "the embedded PostgreSQL outlived chartcite"
        rest = proc.stdout.read()
        assert "Traceback" not in rest, rest[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()
        for pg in _postgres_for(data_dir):  # only the server of this test's own data dir
            pg.terminate()

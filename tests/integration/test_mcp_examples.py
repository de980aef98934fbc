"""The example agents (``examples/agents/``) as a user runs them: ``chartcite demo`` in a
subprocess, then the summary agent and the follow-up agent, each its own process with its own
sandbox EHR token, talking to ``/mcp`` with the official MCP client."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from launch.server import free_port

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "agents"


@pytest.fixture(scope="module")
def demo_server() -> Iterator[str]:
    data_dir = Path(tempfile.mkdtemp(prefix="ccx-", dir="/tmp"))
    port = free_port()
    cmd = [sys.executable, "-m", "launch.cli", "demo", "--port", str(port)]
    cmd += ["--data-dir", str(data_dir), "--patients", "3"]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dict(os.environ)
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx2.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx2.HTTPError:
                pass
            time.sleep(0.25)
        else:
            pytest.fail("chartcite demo did not start")
        yield base
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
        shutil.rmtree(data_dir, ignore_errors=True)
    assert proc.returncode == 0, out[-2000:]


def _agent(script: str, base: str, patient: str) -> dict[str, Any]:
    run = subprocess.run(
        [sys.executable, str(EXAMPLES / script), "--base-url", base, "--patient", patient],
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ),
    )
    assert run.returncode == 0, (run.stdout[-2000:], run.stderr[-2000:])
    result: dict[str, Any] = json.loads(run.stdout)
    return result


def test_two_agents_share_state_through_the_demo(demo_server: str) -> None:
    patient = str(httpx2.get(f"{demo_server}/ehr/patients", timeout=5).json()[0]["id"])
    first = _agent("summary_agent.py", demo_server, patient)
    second = _agent("followup_agent.py", demo_server, patient)
    assert second["read_summary"] == first["event_id"]  # agent 2 read agent 1's event
    assert first["statements"] > 0 and first["refs"]
    # What they left is visible over REST to a third client of the same patient, in the audit too.
    sys.path.insert(0, str(EXAMPLES))
    try:
        from chartcite_agent import sandbox_token
    finally:
        sys.path.remove(str(EXAMPLES))
    bearer = sandbox_token(demo_server, patient, "chartcite", "launch patient/*.rs")
    with httpx2.Client(
        base_url=demo_server, timeout=60, headers={"Authorization": f"Bearer {bearer}"}
    ) as c:
        events = c.get("/api/agent-events").json()["events"]
        audit = c.get("/api/audit", params={"limit": 1000}).json()["entries"]
    follow = next(e for e in events if e["id"] == second["event_id"])
    assert follow["payload"]["follows_event"] == first["event_id"]
    assert {e["agent"] for e in events} >= {"summary-agent", "followup-agent"}
    tools = {e["detail"]["tool"] for e in audit if e["action"] == "mcp_tool"}
    assert {"ask", "list_facts", "record_event", "list_events", "read_resource"} <= tools
    hashes = {e["hash"] for e in audit if e["action"] == "agent_event"}
    assert {e["audit_hash"] for e in events} <= hashes

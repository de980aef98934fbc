"""Two ``chartcite serve`` workers behind one address, on the 3-node local Citus cluster.

The deployment a health system would run, shrunk onto loopback: a coordinator and two Citus
workers (``launch/citus.py``), ``chartcite db upgrade --citus``, the sandbox EHR as a server of
its own, two app processes (``chartcite serve``, production settings, one token key) and a
round-robin load balancer in front of them (``tests/integration/balancer.py``: every request a
new connection, so consecutive requests land on different workers). Launch, sync, ask, isolation,
audit and rate limits are checked through the one address; then the worker running a sync is
killed by PID mid-fetch and the other one must finish that same run, with nothing lost.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import psutil
import pytest
from fastapi import FastAPI
from sqlalchemy import text

from launch.db import Database, create_engine
from launch.demo_client import ask, follow_launch, sync_patient
from launch.sandbox import (
    Fault,
    FaultInjector,
    FaultPlan,
    SandboxClient,
    SandboxConfig,
    SandboxStore,
    create_sandbox_app,
)
from launch.server import BackgroundServer, free_port_range, sandbox_store
from launch.settings import default_data_dir
from smart_app.ehrs import source_key
from tests.integration.balancer import RoundRobin
from tests.integration.helpers import (
    hba1c_patient,
    owner_of,
    stop_process,
    within_one_minute_window,
)
from tests.integration.test_citus import _REASON, Cluster, cluster  # noqa: F401

pytestmark = pytest.mark.skipif(_REASON is not None, reason=_REASON or "")

SESSION_LIMIT = 400  # requests per session per minute, on every worker together
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Worker:
    port: int
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        exe = Path(sys.executable).parent / "chartcite"
        with self.log.open("ab") as log:  # a file, not a pipe nobody drains
            self.proc = subprocess.Popen(
                [str(exe), "serve", "--port", str(self.port)],
                cwd=ROOT,
                env=self.env,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )

    def wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx2.get(f"http://127.0.0.1:{self.port}/readyz", timeout=1).status_code == 200:
                    return
            except httpx2.HTTPError:
                pass
            if self.proc.poll() is not None:
                err = self.log.read_text(errors="replace")[-2000:]
                raise AssertionError(f"worker on {self.port} exited: {err}")
            time.sleep(0.2)
        raise TimeoutError(f"worker on {self.port} did not become ready")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill9(self) -> None:
        children = psutil.Process(self.pid).children(recursive=True)
        os.kill(self.pid, signal.SIGKILL)
        assert self.proc is not None
        self.proc.wait(timeout=30)
        psutil.wait_procs(children, timeout=10)
        self.proc = None

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None


@dataclass
class Deployment:
    cluster: Cluster
    front: str
    ehr: str  # the sandbox EHR's base (…/ehr); its FHIR base is the iss
    store: SandboxStore
    faults: FaultPlan
    balancer: RoundRobin
    workers: list[Worker]
    env: dict[str, str] = field(default_factory=dict)

    def chartcite(self, *args: str) -> subprocess.CompletedProcess[str]:
        """A ``chartcite`` command with the workers' settings (their token and audit keys)."""
        exe = Path(sys.executable).parent / "chartcite"
        return subprocess.run(
            [str(exe), *args], capture_output=True, text=True, env=self.env, timeout=300,
            check=False,
        )  # fmt: skip

    @property
    def source(self) -> str:
        return source_key(f"{self.ehr}/fhir")

    def browser(self) -> httpx2.Client:
        """A client whose every request is a new connection: the balancer alternates workers."""
        return httpx2.Client(
            base_url=self.front,
            follow_redirects=False,
            timeout=60,
            limits=httpx2.Limits(max_keepalive_connections=0),
        )

    def launch(self, patient: str) -> httpx2.Client:
        client = self.browser()
        final = follow_launch(client, f"{self.ehr}/launch?patient={patient}")
        assert final.status_code == 200, final.text[:300]
        return client

    def sql(self, statement: str) -> list[Any]:
        """One statement on the coordinator as the owner, committed."""

        async def run() -> list[Any]:
            engine = create_engine(Database(url=self.cluster.url), pool_size=1)
            try:
                async with engine.begin() as conn:
                    result = await conn.execute(text(statement))
                    return list(result.all()) if result.returns_rows else []
            finally:
                await engine.dispose()

        return asyncio.run(run())


@pytest.fixture(scope="module")
def deployment(cluster: Cluster) -> Iterator[Deployment]:  # noqa: F811 - the imported fixture
    run = cluster.chartcite("db", "upgrade", "--dev", "--citus")
    assert run.returncode == 0, run.stderr[-2000:]
    base = free_port_range(4)
    ehr_port, front_port, *ports = range(base, base + 4)
    front, ehr = f"http://127.0.0.1:{front_port}", f"http://127.0.0.1:{ehr_port}/ehr"
    store = sandbox_store(patients=3)
    sandbox = create_sandbox_app(
        SandboxConfig(
            base_url=ehr,
            app_launch_url=f"{front}/launch",
            clients=(SandboxClient(client_id="chartcite", redirect_uris=(f"{front}/callback",)),),
            signing_key_path=cluster.data_dir / "sandbox-signing-key.json",
        ),
        store,
    )
    faults = FaultPlan()
    outer = FastAPI()
    outer.mount("/ehr", FaultInjector(sandbox, faults))
    ehr_server = BackgroundServer(outer, "127.0.0.1", ehr_port)
    ehr_server.start()
    model_dir = os.environ.get(
        "CHARTCITE_MODEL_DIR", str(default_data_dir() / "models" / "all-MiniLM-L6-v2")
    )
    env = {
        **os.environ,
        "CHARTCITE_ENV": "prod",
        "DATABASE_URL": cluster.url,
        "CHARTCITE_DATA_DIR": str(cluster.data_dir),
        "CHARTCITE_MODEL_DIR": model_dir,
        "CHARTCITE_TOKEN_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
        "CHARTCITE_EHRS": json.dumps([{"iss": f"{ehr}/fhir", "client_id": "chartcite"}]),
        "CHARTCITE_PUBLIC_URL": front,
        "CHARTCITE_SYNC_LEASE_SECONDS": "6",
        "CHARTCITE_SYNC_POLL_SECONDS": "0.3",
        "CHARTCITE_SYNC_PAGE_SIZE": "50",
        "CHARTCITE_EMBED_THREADS": "1",
        "CHARTCITE_RATE_LIMIT_SESSION_PER_MINUTE": str(SESSION_LIMIT),
        "CHARTCITE_RATE_LIMIT_CLIENT_PER_MINUTE": "0",
    }
    workers = [Worker(port, env, cluster.data_dir / f"worker-{port}.log") for port in ports]
    balancer = RoundRobin(front_port, [w.port for w in workers])
    try:
        for w in workers:
            w.start()
        for w in workers:
            w.wait_ready()
        balancer.start()
        yield Deployment(cluster, front, ehr, store, faults, balancer, workers, env)
    finally:
        balancer.stop()
        for w in workers:
            w.stop()
        ehr_server.stop()


def _served(dep: Deployment) -> dict[int, int]:
    return {w.port: dep.balancer.served[w.port] for w in dep.workers}


@pytest.fixture(scope="module")
def patient_a(deployment: Deployment) -> str:
    return hba1c_patient(deployment.store)


@pytest.fixture(scope="module")
def synced_a(deployment: Deployment, patient_a: str) -> Iterator[dict[str, Any]]:
    """Patient A launched, synced and asked through the balancer."""
    before = _served(deployment)
    start = len(deployment.balancer.log)
    client = deployment.launch(patient_a)
    hops = deployment.balancer.log[start:]
    status = sync_patient(client, full=True, poll=0.5)
    answer = ask(client, "What was the HbA1c trend, and which medications?").json()
    after = _served(deployment)
    yield {"client": client, "status": status, "answer": answer, "hops": hops,
           "served": {p: after[p] - before[p] for p in after}}  # fmt: skip
    client.close()


def test_launch_sync_and_ask_across_workers(
    deployment: Deployment, synced_a: dict[str, Any]
) -> None:
    # /launch and /callback went to different workers: the launch state is shared.
    assert len(set(synced_a["hops"][:2])) == 2, synced_a["hops"]
    assert all(n > 3 for n in synced_a["served"].values()), synced_a["served"]
    assert synced_a["status"]["status"] == "done", synced_a["status"]
    answer = synced_a["answer"]
    assert answer["statements"] and answer["citations"], answer
    client = synced_a["client"]
    stored = [client.get(f"/api/answers/{answer['answer_id']}").json() for _ in range(2)]
    assert all(s["statements"] == answer["statements"] for s in stored)  # from either worker
    job = deployment.sql(
        f"SELECT attempts, finished_at IS NOT NULL FROM sync_job WHERE id = '{synced_a['status']['id']}'"
    )
    assert [tuple(r) for r in job] == [(1, True)]


def test_patients_stay_apart_across_workers(
    deployment: Deployment, synced_a: dict[str, Any], patient_a: str
) -> None:
    other = next(str(p["id"]) for p in deployment.store.patients() if p["id"] != patient_a)
    with closing(deployment.launch(other)) as b:
        assert sync_patient(b, full=True, poll=0.5)["status"] == "done"
        answer = ask(b, "What was the HbA1c trend, and which medications?").json()
        cited = list(answer["citations"])
        assert cited and {owner_of(deployment.store, ref) for ref in cited} == {other}
        a_answer = synced_a["answer"]
        for _ in range(2):  # on both workers
            assert b.get(f"/api/answers/{a_answer['answer_id']}").status_code == 404
            a_ref = min(a_answer["citations"])
            assert b.get(f"/api/resources/{a_ref}").status_code in (403, 404)
        mismatch = b.get("/api/context", headers={"X-Chartcite-Patient": f"Patient/{patient_a}"})
        assert mismatch.status_code == 409


def test_audit_chain_holds_with_both_workers_writing_at_once(
    deployment: Deployment, synced_a: dict[str, Any], patient_a: str
) -> None:
    client = synced_a["client"]
    before = _served(deployment)
    questions = ["HbA1c", "active medications", "latest blood pressure", "allergies"] * 6

    def one(q: str) -> int:
        with httpx2.Client(
            base_url=deployment.front, timeout=60, headers=dict(client.headers),
            limits=httpx2.Limits(max_keepalive_connections=0),
        ) as c:  # fmt: skip
            return ask(c, q).status_code

    with ThreadPoolExecutor(6) as pool:
        codes = list(pool.map(one, questions))
    assert codes == [200] * len(questions)
    after = _served(deployment)
    assert all(after[p] - before[p] >= 6 for p in after), (before, after)
    asks = deployment.sql(
        f"SELECT count(*) FROM audit_event WHERE action = 'ask' AND patient_id = '{patient_a}'"
    )[0][0]
    assert asks >= len(questions)
    run = deployment.chartcite("audit", "verify")
    assert run.returncode == 0, run.stdout[-1000:] + run.stderr[-1000:]
    assert "audit chain OK" in run.stdout


def test_rate_limit_is_one_limit_for_all_workers(deployment: Deployment, patient_a: str) -> None:
    with closing(deployment.launch(patient_a)) as c:
        within_one_minute_window(20)  # 410 requests take ~4 s here
        before = _served(deployment)
        codes = [c.get("/api/context").status_code for _ in range(SESSION_LIMIT + 10)]
        after = _served(deployment)
    # Per-process windows would allow SESSION_LIMIT on each worker (2x as many).
    assert codes.count(200) == SESSION_LIMIT and codes[SESSION_LIMIT:] == [429] * 10
    assert all(after[p] - before[p] >= SESSION_LIMIT // 2 for p in after), (before, after)


def _store(dep: Deployment, patient: str) -> dict[str, set[Any]]:
    where = f"WHERE source = '{dep.source}' AND patient_id = '{patient}'"
    return {
        "resources": {tuple(r) for r in dep.sql(f"SELECT resource_type, id, content_hash FROM fhir_resource {where}")},
        "facts": {tuple(r) for r in dep.sql(f"SELECT resource_type, id, source_hash, indexed_hash FROM clinical_fact {where}")},
        "chunks": {tuple(r) for r in dep.sql(f"SELECT id, content_hash FROM chunk {where}")},
    }  # fmt: skip


def test_a_sync_whose_worker_is_killed_is_finished_by_the_other(deployment: Deployment) -> None:
    dep = deployment
    patient = max(str(p["id"]) for p in dep.store.patients())
    # Page 3 of $everything stalls: the run sits mid-fetch with pages 1-2 stored.
    dep.faults.set(Fault(kind="stall", path=r"\$everything.*_offset=100", seconds=60))
    with closing(dep.launch(patient)) as c:
        sync_id = c.post("/api/sync", json={"full": True}).json()["id"]
        deadline = time.monotonic() + 120
        while True:
            st = c.get(f"/api/sync/{sync_id}").json()
            if sum(v for k, v in st["counts"].items() if k[0].isupper()) >= 100:
                break
            assert st["status"] == "running" and time.monotonic() < deadline, st
            time.sleep(0.1)
        owner = dep.sql(f"SELECT lease_owner FROM sync_job WHERE id = '{sync_id}'")[0][0]
        victim = next(w for w in dep.workers if f":{w.pid}:" in owner)
        survivor = next(w for w in dep.workers if w is not victim)
        victim.kill9()  # mid-run: the job still held, its run not finished
        dep.faults.clear()
        while (st := c.get(f"/api/sync/{sync_id}").json())["status"] == "running":
            assert time.monotonic() < deadline + 120, st
            time.sleep(0.2)
        assert st["status"] == "done", st
        attempts, new_owner = dep.sql(
            f"SELECT attempts, lease_owner FROM sync_job WHERE id = '{sync_id}'"
        )[0]
        assert attempts == 2 and f":{survivor.pid}:" in new_owner
        trail = dep.sql(
            "SELECT outcome FROM audit_event WHERE action = 'sync' "
            f"AND detail->>'sync_id' = '{sync_id}' ORDER BY seq"
        )
        assert [r[0] for r in trail] == ["started", "resumed", "done"]
        resumed = _store(dep, patient)
        # Nothing lost: the same patient synced again from nothing is the reference.
        for table in ("chunk", "clinical_fact", "fhir_resource"):
            dep.sql(
                f"DELETE FROM {table} WHERE source = '{dep.source}' AND patient_id = '{patient}'"
            )
        assert sync_patient(c, full=True, poll=0.5)["status"] == "done"
        assert _store(dep, patient) == resumed
    run = dep.chartcite("audit", "verify")
    assert run.returncode == 0 and "audit chain OK" in run.stdout, run.stdout[-1000:] + run.stderr
    # Both workers sign checkpoints of the one chain, with the one key they share.
    assert "anchored by" in run.stdout, run.stdout

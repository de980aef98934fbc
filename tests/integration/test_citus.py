"""chartcite on a 3-node Citus cluster: ``db upgrade --citus`` and single-shard chart queries.

Builds Citus 14.0.1 from ``../shared/vendor/citus-14.0.1.tar.gz`` against a copy of the embedded
PostgreSQL 18 (``launch/citus.py``; reused once built), starts a coordinator and two workers on
loopback, runs the real app (sandbox EHR launch, sync, ask) against the coordinator, and EXPLAINs
the statements the app itself sent: every chart query must be routed to one shard
(``Task Count: 1``). Skips with the reason when the source or the build tools are absent.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.engine import Engine

from launch import citus
from launch.db import Database, create_engine, head_revision
from launch.demo_client import ask, launch_patient, sync_patient
from launch.server import BackgroundServer, build_demo, free_port, free_port_range, sandbox_store
from launch.settings import Settings, default_data_dir
from tests.integration.helpers import hba1c_patient

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("CHARTCITE_SHARED_DIR", REPO.parent / "shared"))
TARBALL = SHARED / "vendor" / f"citus-{citus.CITUS_VERSION}.tar.gz"
CACHE = Path(os.environ.get("CHARTCITE_CITUS_DIR", Path.home() / ".cache" / "chartcite" / "citus"))


def _why_not() -> str | None:
    if sys.platform != "linux":
        return "the local Citus cluster is built on Linux only"
    if citus.Layout(CACHE).citus_so.exists():
        return None
    if not TARBALL.exists():
        return f"Citus source not found at {TARBALL} (set CHARTCITE_SHARED_DIR)"
    can_apt = os.geteuid() == 0 and shutil.which("apt-get") is not None
    if (missing := citus.tools_missing()) and not can_apt:
        return f"build tools missing ({' '.join(missing)}) and not root to apt-get them"
    return None


_REASON = _why_not()
pytestmark = pytest.mark.skipif(_REASON is not None, reason=_REASON or "")


@dataclass
class Cluster:
    layout: citus.Layout
    port: int
    build_seconds: float
    data_dir: Path

    @property
    def url(self) -> str:
        return citus.coordinator_url(self.port)

    def chartcite(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, DATABASE_URL=self.url, CHARTCITE_DATA_DIR=str(self.data_dir))
        exe = Path(sys.executable).parent / "chartcite"
        return subprocess.run(
            [str(exe), *args], capture_output=True, text=True, env=env, timeout=300, check=False
        )


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    nodes = Path(tempfile.mkdtemp(prefix="cc-citus-", dir="/tmp"))
    data_dir = Path(tempfile.mkdtemp(prefix="cc-citus-dd-", dir="/tmp"))
    layout = citus.Layout(CACHE, nodes_root=nodes)
    started = time.monotonic()
    citus.build(TARBALL, layout)
    build_seconds = time.monotonic() - started
    port = free_port_range(3)
    try:
        citus.start(layout, base_port=port)
        yield Cluster(layout, port, build_seconds, data_dir)
    finally:
        citus.stop(layout)  # by postmaster PID
        shutil.rmtree(nodes, ignore_errors=True)
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def upgraded(cluster: Cluster) -> tuple[subprocess.CompletedProcess[str], ...]:
    runs = tuple(cluster.chartcite("db", "upgrade", "--dev", "--citus") for _ in range(2))
    for run in runs:
        assert run.returncode == 0, run.stderr[-2000:]
    return runs


def test_db_upgrade_citus_is_idempotent(upgraded: tuple[Any, ...]) -> None:
    first, second = upgraded
    assert "fhir_resource: distributed on patient_id" in first.stdout
    head = head_revision()
    assert f"database schema: {head} -> {head}" in second.stdout
    assert "citus: already distributed" in second.stdout
    assert "table(s) changed" not in second.stdout


def _query(cluster: Cluster, sql: str) -> list[Any]:
    async def run() -> list[Any]:
        engine = create_engine(Database(url=cluster.url), pool_size=1)
        try:
            async with engine.connect() as conn:
                return list((await conn.execute(text(sql))).all())
        finally:
            await engine.dispose()

    return asyncio.run(run())


def test_tables_are_placed_as_designed(cluster: Cluster, upgraded: Any) -> None:
    rows = _query(
        cluster,
        "SELECT table_name::text, citus_table_type, distribution_column, colocation_id "
        "FROM citus_tables",
    )
    placed = {r[0]: (r[1], r[2], r[3]) for r in rows}
    for table in citus.DISTRIBUTED:
        assert placed[table][:2] == ("distributed", "patient_id"), table
    assert len({placed[t][2] for t in citus.DISTRIBUTED}) == 1, "not co-located"
    assert placed["concept"][0] == "reference"
    for table in (*citus.COORDINATOR_LOCAL, *citus.CENTRAL_PATIENT):
        assert placed[table][0] == "local", table
    for table in citus.PLAIN_LOCAL:
        assert table not in placed, table
    workers = _query(cluster, "SELECT count(*) FROM citus_get_active_worker_nodes()")
    assert workers[0][0] == 2


@dataclass
class AppRun:
    statements: list[tuple[str, Any]]
    source: str
    patient_id: str


@pytest.fixture(scope="module")
def app_run(cluster: Cluster, upgraded: Any) -> Iterator[AppRun]:
    """Launch, sync and ask through the real app on the coordinator, recording its SQL."""
    port = free_port()
    settings = Settings(
        env="dev",
        data_dir=cluster.data_dir,
        port=port,
        database_url=cluster.url,
        model_dir=Path(
            os.environ.get(
                "CHARTCITE_MODEL_DIR", default_data_dir() / "models" / "all-MiniLM-L6-v2"
            )
        ),
    )
    store = sandbox_store(patients=3)
    built = build_demo(settings, store, database=Database(url=cluster.url))
    server = BackgroundServer(built.app, "127.0.0.1", port)
    statements: list[tuple[str, Any]] = []

    def record(_conn: Any, _cursor: Any, statement: str, params: Any, *_: Any) -> None:
        statements.append((statement, params))

    server.start()
    event.listen(Engine, "before_cursor_execute", record)
    pid = hba1c_patient(store)
    client, resp = launch_patient(settings.base_url, pid)
    try:
        assert resp.status_code == 200, resp.text[:300]
        status = sync_patient(client, full=True)
        assert status["status"] == "done", status
        answer = ask(client, "What was the HbA1c trend, and which medications?").json()
        assert answer.get("statements"), answer
        # A narrative question: hybrid retrieval over the chunks (vector + full text).
        narrative = ask(client, "What do the clinical notes say about shortness of breath?")
        assert narrative.status_code == 200, narrative.text[:300]
        assert client.get(f"/api/answers/{answer['answer_id']}").status_code == 200
        cited = sorted(answer["citations"])
        assert client.get(f"/api/resources/{cited[0]}").status_code == 200
        assert client.get("/api/audit").status_code == 200
        assert client.get(f"/api/sync/{status['id']}").status_code == 200
        note = {"agent": "summary-agent", "type": "summary", "payload": {"text": "ok"}}
        note["refs"] = cited[:1]
        assert client.post("/api/agent-events", json=note).status_code == 201
        assert client.get("/api/agent-events").json()["events"], "the event was not read back"
    finally:
        client.close()
        event.remove(Engine, "before_cursor_execute", record)
        server.stop()
    source = _query(cluster, "SELECT DISTINCT source FROM fhir_resource")[0][0]
    yield AppRun(statements, source, pid)


#: The chart queries, recognised in the statements the app sent.
CHART_QUERIES = {
    "hybrid fusion (exact vector + full text)": re.compile(r"UNION SELECT id FROM fts"),
    "structured facts": re.compile(r"\bFROM clinical_fact\b"),
    "answers": re.compile(r"\bFROM answer\b"),
    "resources": re.compile(r"\bFROM fhir_resource\b"),
    "audit reads": re.compile(r"\bFROM audit_event\b.*\bpatient_id\b", re.DOTALL),
    "sync runs": re.compile(r"\bFROM sync_run\b"),
    "agent events": re.compile(r"\bFROM agent_event\b"),
}
TASKS = re.compile(r"Task Count: (\d+)")
#: Sync-time "which facts still need chunks" checks (``fhir_adapters.repository._needs_index``):
#: their ``NOT EXISTS (SELECT 1 FROM chunk c …)`` subquery repeats the patient as values, so it
#: routes to the patient's shard like the outer query (a correlation on the column alone fanned
#: out to every shard). Checked on their own below.
INDEX_CHECK = re.compile(r"NOT EXISTS \(SELECT 1 FROM chunk c WHERE c\.source = ")


def _explain_all(cluster: Cluster, statements: list[tuple[str, Any]]) -> list[tuple[str, str]]:
    async def run() -> list[tuple[str, str]]:
        engine = create_engine(Database(url=cluster.url), pool_size=1)
        plans = []
        try:
            async with engine.connect() as conn:
                for sql, params in statements:
                    result = await conn.exec_driver_sql(f"EXPLAIN {sql}", tuple(params or ()))
                    plans.append((sql, "\n".join(r[0] for r in result)))
        finally:
            await engine.dispose()
        return plans

    return asyncio.run(run())


def _fanned_out(cluster: Cluster, statements: list[tuple[str, Any]], name: str) -> list[str]:
    fanned = []
    for sql, plan in _explain_all(cluster, statements):
        counts = TASKS.findall(plan)
        if not counts or set(counts) != {"1"}:
            fanned.append(f"{name} (Task Count {counts}): {' '.join(sql.split())[:400]}")
    return fanned


def _reads(app_run: AppRun) -> list[tuple[str, Any]]:
    return [
        (sql, params)
        for sql, params in app_run.statements
        if sql.lstrip().upper().startswith(("SELECT", "WITH"))
    ]


def test_every_chart_query_routes_to_one_shard(cluster: Cluster, app_run: AppRun) -> None:
    selected: dict[str, list[tuple[str, Any]]] = {name: [] for name in CHART_QUERIES}
    for sql, params in _reads(app_run):
        if INDEX_CHECK.search(" ".join(sql.split())):
            continue
        for name, pattern in CHART_QUERIES.items():
            if pattern.search(sql):
                selected[name].append((sql, params))
    missing = [name for name, found in selected.items() if not found]
    assert not missing, f"the app sent no {missing} statement"
    fanned = [f for name, found in selected.items() for f in _fanned_out(cluster, found, name)]
    assert not fanned, "\n".join(sorted(set(fanned)))


def test_index_check_routes_to_one_shard(cluster: Cluster, app_run: AppRun) -> None:
    known = [(q, p) for q, p in _reads(app_run) if INDEX_CHECK.search(" ".join(q.split()))]
    assert known, "the sync sent no index check"
    assert not _fanned_out(cluster, known, "index check")


def test_exact_vector_search_routes_to_one_shard(cluster: Cluster, app_run: AppRun) -> None:
    vec = "[" + ",".join(["0.05"] * 384) + "]"
    search = (
        "EXPLAIN SELECT c.id FROM chunk c LEFT JOIN concept k ON k.id = c.concept_id "
        "WHERE c.source = '{src}' AND c.patient_id = '{pid}' "
        "ORDER BY COALESCE(c.embedding, k.embedding) <=> '{vec}'::vector LIMIT 5"
    )
    plan = "\n".join(
        r[0]
        for r in _query(cluster, search.format(src=app_run.source, pid=app_run.patient_id, vec=vec))
    )
    assert TASKS.findall(plan) == ["1"], plan
    # The control: without the patient in the WHERE, the same search fans out to every shard.
    fanout = "\n".join(
        r[0]
        for r in _query(
            cluster,
            f"EXPLAIN SELECT c.id FROM chunk c ORDER BY c.embedding <=> '{vec}'::vector LIMIT 5",
        )
    )
    assert TASKS.findall(fanout) == ["32"], fanout


def test_audit_chain_verifies_on_citus(cluster: Cluster, app_run: AppRun) -> None:
    run = cluster.chartcite("audit", "verify", "--dev")
    assert run.returncode == 0, run.stdout[-1000:] + run.stderr[-2000:]
    assert "audit chain OK" in run.stdout


def test_agent_events_stay_append_only_on_the_shards(cluster: Cluster, app_run: AppRun) -> None:
    assert _query(cluster, "SELECT count(*) FROM agent_event")[0][0] >= 1
    for statement in (
        "UPDATE agent_event SET agent = 'someone-else'",
        "DELETE FROM agent_event",
        "TRUNCATE agent_event",
    ):
        with pytest.raises(Exception, match="append-only"):
            _query(cluster, statement)
    assert _query(cluster, "SELECT count(*) FROM agent_event")[0][0] >= 1

"""The audit trail proves itself: signed checkpoints catch what the hash chain alone cannot
(deleting the newest rows, recomputing the chain after an edit, a forged row), the app's database
role cannot change the audit tables, and the trail exports as validated FHIR AuditEvents."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B.auditevent import AuditEvent
from fhir.resources.R4B.bundle import Bundle
from pydantic import SecretStr
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from launch.app import audit_keyring
from launch.db import Database, app_database, create_engine, upgrade
from launch.demo_client import ask
from launch.settings import Settings
from smart_app import AuditRecord, append_audit
from smart_app.audit import GENESIS, chain_hash, row_record
from smart_app.audit_checkpoints import CheckpointPolicy, CheckpointWriter
from smart_app.repository import list_checkpoints
from tests.conftest import RunningDemo, scratch_database
from tests.integration.conftest import Synced

TABLES = ("audit_event", "audit_checkpoint", "agent_event")  # the append-only ones


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "launch.cli", *args],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "CHARTCITE_ENV": "dev", **env},
        timeout=120,
    )


def _run(db: Database, job: Callable[[AsyncConnection], Awaitable[Any]]) -> Any:
    async def go() -> Any:
        engine = create_engine(db, pool_size=1)
        try:
            async with engine.begin() as conn:
                return await job(conn)
        finally:
            await engine.dispose()

    return asyncio.run(go())


class Chart:
    """A scratch database with ``n`` audit rows and a checkpoint over them, and a CLI bound to it."""

    def __init__(
        self, database: Database, tmp: Path, n: int = 5, gap_at: int | None = None
    ) -> None:
        self.db = scratch_database(database, "anchor")
        self.env = {"DATABASE_URL": self.db.url}
        self.data_dir = tmp

        asyncio.run(_upgrade(self.db))
        for i in range(1, n + 1):
            rollback = i == gap_at

            async def add(conn: AsyncConnection, i: int = i, rollback: bool = rollback) -> None:
                await append_audit(
                    conn, AuditRecord("ask", "ok", actor="Practitioner/1", patient_id=f"p{i}")
                )
                if rollback:  # a failed request: its identity value is spent, leaving a gap
                    raise _Rollback

            try:
                _run(self.db, add)
            except _Rollback:
                pass

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return _cli("audit", *args, "--data-dir", str(self.data_dir), env=self.env)

    def owner(self, *statements: str) -> None:
        """Run SQL as the owner with the append-only triggers off (what a superuser can do)."""

        async def job(conn: AsyncConnection) -> None:
            for table in TABLES:
                await conn.execute(text(f"ALTER TABLE {table} DISABLE TRIGGER USER"))
            for sql in statements:
                await conn.execute(text(sql))
            for table in TABLES:
                await conn.execute(text(f"ALTER TABLE {table} ENABLE TRIGGER USER"))

        _run(self.db, job)

    def rechain(self) -> None:
        """Recompute every hash in seq order, as someone covering an edit would."""

        async def job(conn: AsyncConnection) -> None:
            await conn.execute(text("ALTER TABLE audit_event DISABLE TRIGGER USER"))
            rows = (await conn.execute(text("SELECT * FROM audit_event ORDER BY seq"))).mappings()
            prev = GENESIS
            for row in list(rows):
                digest = chain_hash(prev, row_record(row), row["recorded_at"])
                await conn.execute(
                    text("UPDATE audit_event SET prev_hash = :p, hash = :h WHERE seq = :s"),
                    {"p": prev, "h": digest, "s": row["seq"]},
                )
                prev = digest
            await conn.execute(text("ALTER TABLE audit_event ENABLE TRIGGER USER"))

        _run(self.db, job)


class _Rollback(Exception):
    pass


async def _upgrade(db: Database) -> None:
    engine = create_engine(db, pool_size=1)
    try:
        await upgrade(engine)
    finally:
        await engine.dispose()


def _broken(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 1, done.stdout + done.stderr
    return done.stderr


def test_checkpoint_then_verify_ok(database: Database, tmp_path: Path) -> None:
    chart = Chart(database, tmp_path)
    made = chart.cli("checkpoint", "--export", str(tmp_path / "anchor.jsonl"))
    assert made.returncode == 0, made.stderr
    assert "checkpoint #1 written: 5 records up to seq 5" in made.stdout
    again = chart.cli("checkpoint")
    assert "unchanged (no new records)" in again.stdout
    ok = chart.cli("verify", "--anchor", str(tmp_path / "anchor.jsonl"))
    assert ok.returncode == 0, ok.stderr
    assert "audit chain OK: 5 records verified; 5 anchored by 1 signed checkpoints" in ok.stdout


def test_deleting_the_newest_rows_is_detected(database: Database, tmp_path: Path) -> None:
    chart = Chart(database, tmp_path)
    assert chart.cli("checkpoint").returncode == 0
    chart.owner("DELETE FROM audit_event WHERE seq >= 4")
    # The chain alone still links: rows 1-3 are intact.
    err = _broken(chart.cli("verify"))
    assert "BROKEN at seq 5: checkpoint #1 signed 5 records up to seq 5" in err
    assert "the table ends at seq 3: the newest records were deleted" in err


def test_an_edit_with_the_chain_recomputed_is_detected(database: Database, tmp_path: Path) -> None:
    chart = Chart(database, tmp_path)
    assert chart.cli("checkpoint").returncode == 0
    chart.owner("UPDATE audit_event SET patient_id = 'someone-else' WHERE seq = 2")
    chart.rechain()
    err = _broken(chart.cli("verify"))
    assert "BROKEN at seq 5: record seq 5 has hash" in err
    assert "the chain was recomputed after an edit from the start" in err


def test_a_forged_row_with_a_valid_hash_is_detected(database: Database, tmp_path: Path) -> None:
    chart = Chart(database, tmp_path, n=6, gap_at=3)  # seq 3 was rolled back: rows 1,2,4,5,6
    assert "5 records up to seq 6" in chart.cli("checkpoint").stdout
    chart.owner(
        "INSERT INTO audit_event (seq, recorded_at, action, outcome, actor, patient_id, detail,"
        " prev_hash, hash) OVERRIDING SYSTEM VALUE VALUES (3, now(), 'resource_read', 'ok',"
        " 'Practitioner/1', 'p2', '{}', '', '')"
    )
    chart.rechain()  # the forged row gets a valid hash, and every later link is recomputed
    err = _broken(chart.cli("verify"))
    assert "BROKEN at seq 6: checkpoint #1 signed 5 records up to seq 6, the table has 6" in err
    assert "records were inserted" in err


def test_a_forged_agent_event_is_detected(database: Database, tmp_path: Path) -> None:
    """An agent event inserted behind the app's back has no audit record that recorded it."""
    chart = Chart(database, tmp_path)
    assert chart.cli("checkpoint").returncode == 0
    ok = chart.cli("verify")
    assert ok.returncode == 0 and "agent events OK: 0" in ok.stdout, ok.stdout + ok.stderr
    chart.owner(
        "INSERT INTO agent_event (source, patient_id, id, agent, event_type, payload, "
        "payload_sha256, answer_ids, refs, client_id, created_at, audit_hash) VALUES "
        "('s', 'p1', 'e1', 'triage', 'summary', '{}', 'x', '{}', '{}', 'c', now(), 'forged')"
    )
    assert "agent events BROKEN: 1 of 1" in _broken(chart.cli("verify"))


def test_a_forged_checkpoint_is_detected(database: Database, tmp_path: Path) -> None:
    chart = Chart(database, tmp_path)
    assert chart.cli("checkpoint").returncode == 0
    cp = json.loads(chart.cli("checkpoint").stdout.splitlines()[1])
    # Append a valid-looking row, then a checkpoint over it without the key.
    _run(chart.db, lambda c: append_audit(c, AuditRecord("ask", "ok", patient_id="p9")))
    chart.owner(
        "INSERT INTO audit_checkpoint (row_count, head_seq, head_hash, signed_at, key_id,"
        " prev_signature, signature) SELECT 6, seq, hash, now(), "
        f"'{cp['key_id']}', '{cp['signature']}', repeat('0', 64) FROM audit_event WHERE seq = 6"
    )
    err = _broken(chart.cli("verify"))
    assert "checkpoint #2: signature does not verify (a forged or altered checkpoint)" in err


def test_the_anchor_file_catches_a_truncated_checkpoint_table(
    database: Database, tmp_path: Path
) -> None:
    chart = Chart(database, tmp_path)
    anchor = tmp_path / "anchor.jsonl"
    assert chart.cli("checkpoint", "--export", str(anchor)).returncode == 0
    chart.owner("DELETE FROM audit_event WHERE seq >= 4", "DELETE FROM audit_checkpoint")
    # Without the off-site file nothing is left to compare with...
    assert chart.cli("verify").returncode == 0
    # ...with it, both the missing checkpoint and the missing rows show.
    err = _broken(chart.cli("verify", "--anchor", str(anchor)))
    assert "is missing from the database: the checkpoint table was truncated" in err
    assert "the newest records were deleted" in err


def test_app_role_cannot_change_the_audit_tables(database: Database, data_dir: Path) -> None:
    settings = Settings(env="dev", data_dir=data_dir)
    app_db = app_database(database, settings)

    async def attempt(sql: str) -> None:
        engine = create_engine(app_db, pool_size=1)
        try:
            async with engine.begin() as conn:
                assert await conn.scalar(text("SELECT current_user")) == "chartcite_app"
                await conn.execute(text(sql))
        finally:
            await engine.dispose()

    for table, column in (("audit_event", "outcome"), ("audit_checkpoint", "key_id")):
        for sql in (
            f"UPDATE {table} SET {column} = 'x'",
            f"DELETE FROM {table}",
            f"TRUNCATE {table}",
        ):
            with pytest.raises(DBAPIError, match=f"permission denied for table {table}"):
                asyncio.run(attempt(sql))
        for sql in (
            f"ALTER TABLE {table} DISABLE TRIGGER USER",
            f"ALTER TABLE {table} ADD COLUMN x int",
            f"DROP TABLE {table}",
        ):
            with pytest.raises(DBAPIError, match=f"must be owner of table {table}"):
                asyncio.run(attempt(sql))
    # ...but it appends, and reads what it appended.
    digest = _run(app_db, lambda c: append_audit(c, AuditRecord("ask", "ok", patient_id="p")))

    async def newest(conn: AsyncConnection) -> str:
        return str(await conn.scalar(text("SELECT hash FROM audit_event ORDER BY seq DESC")))

    assert _run(app_db, newest) == digest


def test_the_running_app_uses_the_app_role(demo: RunningDemo, patient_a: Synced) -> None:
    ask(patient_a.client, "Latest blood pressure?")

    async def users(conn: AsyncConnection) -> set[str]:
        rows = await conn.execute(
            text(
                "SELECT DISTINCT usename FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        )
        return {r[0] for r in rows}

    assert _run(demo.database, users) == {"chartcite_app"}


def test_the_app_writes_checkpoints(database: Database, data_dir: Path) -> None:
    db = scratch_database(database, "writer")
    asyncio.run(_upgrade(db))
    settings = Settings(env="dev", data_dir=data_dir, database_url=SecretStr(db.url))
    app_db = app_database(db, settings)

    async def go() -> list[Any]:
        engine = create_engine(app_db, pool_size=2)
        writer = CheckpointWriter(
            engine,
            audit_keyring(settings),
            CheckpointPolicy(every_rows=3, every_seconds=3600, poll_seconds=0.05),
        )
        writer.start()
        try:
            for i in range(4):
                async with engine.begin() as conn:
                    await append_audit(conn, AuditRecord("ask", "ok", patient_id=f"p{i}"))
            for _ in range(100):  # the writer notices three new rows within a few polls
                async with engine.connect() as conn:
                    if await list_checkpoints(conn):
                        break
                await asyncio.sleep(0.05)
            async with engine.begin() as conn:
                await append_audit(conn, AuditRecord("ask", "ok", patient_id="last"))
        finally:
            await writer.stop()  # and anchors the rest at shutdown
        async with engine.connect() as conn:
            found = await list_checkpoints(conn)
        await engine.dispose()
        return found

    checkpoints = asyncio.run(go())
    assert len(checkpoints) >= 2
    assert checkpoints[0].row_count >= 3
    assert (checkpoints[-1].row_count, checkpoints[-1].head_seq) == (5, 5)
    ok = _cli("audit", "verify", "--data-dir", str(data_dir), env={"DATABASE_URL": db.url})
    assert ok.returncode == 0, ok.stderr
    assert "5 anchored" in ok.stdout


def test_export_as_fhir_audit_events(demo: RunningDemo, patient_a: Synced, tmp_path: Path) -> None:
    answer = ask(patient_a.client, "What was the HbA1c trend?").json()
    out = tmp_path / "audit.ndjson"
    done = _cli(
        "audit",
        "export",
        "--data-dir",
        str(demo.settings.data_dir),
        "--patient",
        f"{_source(demo, patient_a)}/{patient_a.patient_id}",
        "--out",
        str(out),
        env={},
    )
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in out.read_text().splitlines()]
    assert events
    for event in events:
        AuditEvent.model_validate(event)
        refs = [e.get("what", {}).get("reference") for e in event.get("entity", [])]
        assert f"Patient/{patient_a.patient_id}" in refs
        assert event["source"]["observer"]["display"] == "chartcite"
    asked = next(
        e
        for e in events
        if any(
            en.get("what", {}).get("identifier", {}).get("value") == answer["answer_id"]
            for en in e.get("entity", [])
        )
    )
    cited = {en["what"]["reference"] for en in asked["entity"] if en.get("description") == "cited"}
    assert cited == set(answer["citations"])
    assert asked["action"] == "E" and asked["outcome"] == "0"
    assert asked["agent"][0]["requestor"] is True


def _source(demo: RunningDemo, patient: Synced) -> str:
    async def job(conn: AsyncConnection) -> str:
        return str(
            await conn.scalar(
                text("SELECT source FROM audit_event WHERE patient_id = :p LIMIT 1"),
                {"p": patient.patient_id},
            )
        )

    return str(_run(demo.database, job))


def test_api_audit_as_fhir_bundle(
    demo: RunningDemo, patient_a: Synced, observation_only: Synced
) -> None:
    ask(patient_a.client, "Which medications were prescribed?")
    resp = patient_a.client.get("/api/audit", params={"format": "fhir"})
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("application/fhir+json")
    bundle = Bundle.model_validate(resp.json())
    assert bundle.type == "searchset" and bundle.total == len(bundle.entry or [])
    plain = patient_a.client.get("/api/audit").json()["entries"]
    assert len(bundle.entry or []) == len(plain)

    # Scope filtering still applies: the same patient's trail, seen by an Observation-only
    # session, keeps no other type's references (the full session's has MedicationRequests).
    def types(body: dict[str, Any]) -> set[str]:
        return {
            en["what"]["reference"].split("/")[0]
            for entry in body["entry"]
            for en in entry["resource"].get("entity", [])
            if en.get("what", {}).get("reference")
        }

    assert "MedicationRequest" in types(resp.json())
    narrow = observation_only.client.get("/api/audit", params={"format": "fhir"}).json()
    Bundle.model_validate(narrow)
    assert types(narrow) <= {"Patient", "Observation"} and "Patient" in types(narrow)

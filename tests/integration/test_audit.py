"""The audit trail: every launch/sync/ask/read recorded, hash-chained, append-only in the database,
and ``chartcite audit verify`` exits non-zero once a row has been altered by hand."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from launch.db import Database, create_engine, upgrade
from launch.demo_client import ask
from smart_app import AuditRecord, append_audit
from tests.conftest import RunningDemo, scratch_database
from tests.integration.conftest import Synced


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "launch.cli", *args],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


def test_actions_are_audited_and_chain_verifies(demo: RunningDemo, patient_a: Synced) -> None:
    answer = ask(patient_a.client, "Latest blood pressure?").json()
    entries = patient_a.client.get("/api/audit").json()["entries"]
    actions = {(e["action"], e["outcome"]) for e in entries}
    assert {("launch", "ok"), ("sync", "started"), ("sync", "done"), ("ask", "ok")} <= actions
    ask_entry = next(e for e in entries if e["action"] == "ask")
    assert ask_entry["detail"]["answer_id"] == answer["answer_id"]
    assert "Latest blood pressure" not in str(entries)  # the question is stored hashed
    done = _cli("audit", "verify", "--dev", "--data-dir", str(demo.settings.data_dir))
    assert done.returncode == 0, done.stderr
    assert "audit chain OK" in done.stdout


def test_database_refuses_update_delete_truncate(database: Database) -> None:
    async def attempt(sql: str) -> None:
        engine = create_engine(database, pool_size=1)
        try:
            async with engine.begin() as conn:
                await conn.execute(text(sql))
        finally:
            await engine.dispose()

    for sql in (
        "UPDATE audit_event SET outcome = 'x'",
        "DELETE FROM audit_event",
        "TRUNCATE audit_event",
    ):
        with pytest.raises(DBAPIError, match="append-only"):
            asyncio.run(attempt(sql))


def test_verify_fails_after_a_row_is_altered(database: Database) -> None:
    """A database of its own, so the tampering cannot touch the other tests' chain."""
    tamper = scratch_database(database, "tamper")

    async def prepare() -> None:
        engine = create_engine(tamper, pool_size=1)
        await upgrade(engine)
        async with engine.begin() as conn:
            for i in range(3):
                await append_audit(
                    conn, AuditRecord("ask", "ok", actor="Practitioner/p", patient_id=f"p{i}")
                )
        await engine.dispose()

    async def alter() -> None:
        engine = create_engine(tamper, pool_size=1)
        async with engine.begin() as conn:
            await conn.execute(
                text("ALTER TABLE audit_event DISABLE TRIGGER audit_event_no_update")
            )
            await conn.execute(
                text("UPDATE audit_event SET patient_id = 'someone-else' WHERE seq = 2")
            )
            await conn.execute(text("ALTER TABLE audit_event ENABLE TRIGGER audit_event_no_update"))
        await engine.dispose()

    asyncio.run(prepare())
    env = {"DATABASE_URL": tamper.url}
    ok = _cli("audit", "verify", env=env | {"CHARTCITE_ENV": "dev"})
    assert ok.returncode == 0, ok.stderr
    assert "3 records" in ok.stdout
    asyncio.run(alter())
    broken = _cli("audit", "verify", env=env | {"CHARTCITE_ENV": "dev"})
    assert broken.returncode == 1
    assert "BROKEN at seq 2" in broken.stderr

"""Shared fixtures: one embedded PostgreSQL, migrated, and the whole demo (app + sandbox EHR) served
by uvicorn on a free loopback port. Tests talk to it over real HTTP."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from launch.db import Database, create_engine, open_database, upgrade, upgrade_database
from launch.sandbox import SandboxStore
from launch.server import BackgroundServer, build_demo, free_port, sandbox_store
from launch.settings import Settings, default_data_dir

ROOT = Path(__file__).resolve().parents[1]
# Tests poll sync status every few milliseconds: no rate limits unless a test sets them
# (tests/integration/test_hardening.py does). Subprocess servers inherit this.
os.environ.setdefault("CHARTCITE_RATE_LIMIT_SESSION_PER_MINUTE", "0")
os.environ.setdefault("CHARTCITE_RATE_LIMIT_CLIENT_PER_MINUTE", "0")
# ../shared next to the clone (CI has it; a user's clone may not). CHARTCITE_SHARED_DIR overrides.
SHARED_DIR = Path(os.environ.get("CHARTCITE_SHARED_DIR") or ROOT.parent / "shared")
SYNTHEA_DIR = SHARED_DIR / "data" / "synthea"
# Every test data dir shares the one model setup built (the model dir follows the data dir otherwise).
os.environ.setdefault(
    "CHARTCITE_MODEL_DIR", str(default_data_dir() / "models" / "all-MiniLM-L6-v2")
)


@pytest.fixture(scope="session")
def synthea_dir() -> Path:
    """The 16 Synthea patients of ``../shared/data/synthea``; skips (with the reason) without them."""
    if not (SYNTHEA_DIR / "_shared").is_dir():
        pytest.skip(f"Synthea sample data not found at {SYNTHEA_DIR} (set CHARTCITE_SHARED_DIR)")
    return SYNTHEA_DIR


class _LogTap(logging.Handler):
    """Every log record of the test session, formatted as a log file would hold it."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = f"{record.name} {record.levelname} {record.getMessage()}"
        except Exception:  # noqa: BLE001 - a malformed record is still scanned by its template
            text = f"{record.name} {record.levelname} {record.msg}"
        if record.exc_info:
            text += "\n" + logging.Formatter().formatException(record.exc_info)
        self.lines.append(text)


def _identifiers(resources: list[dict[str, object]]) -> set[str]:
    """What identifies a patient: id, MRN and other identifier values, names, birth date,
    phone, street address."""
    found: set[str] = set()
    for r in resources:
        if r.get("resourceType") != "Patient":
            continue
        found.add(str(r["id"]))
        found.update(str(i.get("value")) for i in r.get("identifier") or [] if i.get("value"))  # type: ignore[union-attr]
        for name in r.get("name") or []:  # type: ignore[union-attr]
            found.update(str(p) for p in [name.get("family"), *(name.get("given") or [])] if p)
        found.update(str(t.get("value")) for t in r.get("telecom") or [] if t.get("value"))  # type: ignore[union-attr]
        found.update(str(a) for ad in r.get("address") or [] for a in ad.get("line") or [])  # type: ignore[union-attr]
        if r.get("birthDate"):
            found.add(str(r["birthDate"]))
    return {f for f in found if len(f) >= 4}


def phi_hits(lines: list[str], identifiers: set[str]) -> list[tuple[str, str]]:
    """(line, identifier) for every line that names one of the identifiers as a whole token."""
    if not identifiers:
        return []
    alternatives = "|".join(map(re.escape, sorted(identifiers, key=len, reverse=True)))
    pattern = re.compile(r"(?<![\w-])(" + alternatives + r")(?![\w-])")
    return [(line[:200], m.group(0)) for line in lines if (m := pattern.search(line))]


@pytest.fixture(scope="session", autouse=True)
def phi_free_logs() -> Iterator[None]:
    """Every server log line of the whole test session is scanned for the identifiers of every
    patient the tests can have served (generated charts of each seed the tests use, the Synthea
    sample when present); one hit fails the session."""
    from launch import logs

    logs.quiet_libraries()  # the logging policy the product runs with
    tap = _LogTap()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(tap)
    root.setLevel(min(old_level, logging.INFO) if old_level else logging.INFO)
    yield
    root.removeHandler(tap)
    root.setLevel(old_level)
    from datetime import date

    from launch.sandbox import generate_patients

    ids: set[str] = set()
    for seed in (3, 5, 7, 8, 99):
        ids |= _identifiers(generate_patients(n_patients=20, seed=seed, today=date.today()))
    if (SYNTHEA_DIR / "_shared").is_dir():
        for bundle in SYNTHEA_DIR.glob("*.json"):
            entries = json.loads(bundle.read_text(encoding="utf-8")).get("entry") or []
            ids |= _identifiers([e.get("resource") or {} for e in entries])
    hits = phi_hits(tap.lines, ids)
    assert not hits, f"{len(hits)} log lines name a patient identifier, e.g. {hits[:3]}"
    assert not [line for line in tap.lines if "Traceback" in line and "chartcite" in line], (
        "a traceback reached the log"
    )


@dataclass
class RunningDemo:
    base_url: str
    settings: Settings
    store: SandboxStore
    database: Database


@pytest.fixture(scope="session")
def data_dir() -> Iterator[Path]:
    # Short path: PostgreSQL's unix socket path has a length limit.
    path = Path(tempfile.mkdtemp(prefix="cc-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def database(data_dir: Path) -> Iterator[Database]:
    settings = Settings(env="dev", data_dir=data_dir)
    db = open_database(settings)

    async def migrate() -> None:
        engine = create_engine(db, pool_size=1)
        await upgrade(engine)
        await engine.dispose()

    asyncio.run(migrate())
    yield db
    if db.embedded is not None:
        db.embedded.cleanup()


def scratch_database(database: Database, prefix: str) -> Database:
    """A new, empty database on the same server, for tests that must not touch the shared one."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"

    async def create() -> None:
        admin = create_engine(database, pool_size=1)
        async with admin.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(text(f'CREATE DATABASE "{name}"'))
        await admin.dispose()

    asyncio.run(create())
    return Database(
        url=make_url(database.url).set(database=name).render_as_string(hide_password=False)
    )


def migrated_scratch_database(database: Database, prefix: str) -> Database:
    """``scratch_database`` with the schema at head."""
    db = scratch_database(database, prefix)
    asyncio.run(upgrade_database(db))
    return db


@pytest.fixture(scope="session")
def demo(data_dir: Path, database: Database) -> Iterator[RunningDemo]:
    port = free_port()
    # Tokens re-checked (introspected) after a second, so that revocation tests need not wait.
    settings = Settings(env="dev", data_dir=data_dir, port=port, token_check_seconds=1)
    store = sandbox_store(patients=8)
    built = build_demo(settings, store, database=database)
    server = BackgroundServer(built.app, "127.0.0.1", port)
    server.start()
    yield RunningDemo(
        base_url=settings.base_url, settings=built.settings, store=store, database=database
    )
    server.stop()

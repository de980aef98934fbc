"""Shared fixtures: one embedded PostgreSQL, migrated, and the whole demo (app + sandbox EHR) served
by uvicorn on a free loopback port. Tests talk to it over real HTTP."""

from __future__ import annotations

import asyncio
import os
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

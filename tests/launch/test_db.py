"""Migrations: the app refuses an unmigrated database and names the command that fixes it."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from pydantic import SecretStr
from sqlalchemy import text
from sqlalchemy.engine import make_url

from launch.app import create_app
from launch.db import (
    Database,
    DatabaseError,
    create_engine,
    current_revision,
    head_revision,
    upgrade,
)
from launch.settings import Settings


def _empty_database(database: Database) -> str:
    name = f"empty_{uuid.uuid4().hex[:8]}"

    async def make() -> None:
        admin = create_engine(database, pool_size=1)
        async with admin.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(text(f'CREATE DATABASE "{name}"'))
        await admin.dispose()

    asyncio.run(make())
    return make_url(database.url).set(database=name).render_as_string(hide_password=False)


def test_app_refuses_an_unmigrated_database(database: Database, data_dir: object) -> None:
    url = _empty_database(database)
    app = create_app(Settings(env="dev", data_dir=data_dir, database_url=SecretStr(url)))

    async def start() -> None:
        async with app.router.lifespan_context(app):
            pass

    with pytest.raises(DatabaseError, match="run `chartcite db upgrade`"):
        asyncio.run(start())


def test_upgrade_is_idempotent(database: Database) -> None:
    url = _empty_database(database)

    async def run() -> tuple[tuple[str | None, str], tuple[str | None, str], str | None]:
        engine = create_engine(Database(url=url), pool_size=1)
        first = await upgrade(engine)
        second = await upgrade(engine)
        rev = await current_revision(engine)
        await engine.dispose()
        return first, second, rev

    first, second, rev = asyncio.run(run())
    assert first == (None, head_revision()) and second == (head_revision(), head_revision())
    assert rev == head_revision()

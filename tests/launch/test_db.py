"""Migrations: the app refuses an unmigrated database and names the command that fixes it."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import SecretStr

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
from tests.conftest import scratch_database


def test_app_refuses_an_unmigrated_database(database: Database, data_dir: object) -> None:
    url = scratch_database(database, "empty").url
    app = create_app(Settings(env="dev", data_dir=data_dir, database_url=SecretStr(url)))

    async def start() -> None:
        async with app.router.lifespan_context(app):
            pass

    with pytest.raises(DatabaseError, match="run `chartcite db upgrade`"):
        asyncio.run(start())


def test_upgrade_is_idempotent(database: Database) -> None:
    url = scratch_database(database, "empty").url

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


def test_app_role_is_derived_and_never_the_owner(database: Database, data_dir: object) -> None:
    from sqlalchemy.engine import make_url

    from launch.db import AppRole, app_database, app_role

    settings = Settings(env="dev", data_dir=data_dir)
    role = app_role(settings)
    assert role is not None and role.name == "chartcite_app" and role.password
    assert "password" not in repr(role).lower() or role.password not in repr(role)
    url = make_url(app_database(database, settings).url)
    assert url.username == "chartcite_app" and url.password == role.password
    dba = Settings(
        env="dev",
        data_dir=data_dir,
        app_database_url=SecretStr("postgresql://reader:pw@db.example/chartcite"),
    )
    assert app_role(dba) == AppRole(name="reader", managed=False)
    assert make_url(app_database(database, dba).url).drivername == "postgresql+asyncpg"
    assert app_role(Settings(env="dev", data_dir=data_dir, app_db_role="")) is None
    url_db = scratch_database(database, "owner")

    async def run() -> None:
        engine = create_engine(url_db, pool_size=1)
        try:
            await upgrade(engine, AppRole(name="postgres"))
        finally:
            await engine.dispose()

    with pytest.raises(DatabaseError, match="is the owner"):
        asyncio.run(run())

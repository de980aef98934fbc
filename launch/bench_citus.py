"""``chartcite bench ask --citus``: the same charts and the same ask plan, single node vs Citus.

One run: the ordinary single-node load (``launch/bench_ask.py``), a throw-away local Citus cluster
(``launch/citus.py``: coordinator and two workers on loopback, nodes in a temporary folder, stopped
by PID) migrated and distributed as ``chartcite db upgrade --citus`` does, every table copied row
for row from the single-node database (binary ``COPY``; referenced tables first, so ``concept``
precedes ``chunk``), then the same seeded (patient, question) plan on both: sequential p50/p95 and
``--clients`` concurrent asks/s and p50/p95, side by side, and whether both answered alike (the
same statement texts citing the same resources). Citus: https://docs.citusdata.com/
"""

from __future__ import annotations

import asyncio
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from launch import citus
from launch.bench import pct
from launch.bench_ask import Loaded, Phases, Timings, ask_phases, prepare, scratch_database
from launch.db import Database, create_engine, upgrade_database
from launch.server import free_port_range
from launch.settings import Settings
from rag import load_embedder
from smart_app.audit import AuditRecord
from smart_app.repository import append_audit


def default_cache() -> Path:
    """Where ``scripts/citus-cluster`` keeps the built PostgreSQL + Citus by default."""
    return Path.home() / ".cache" / "chartcite" / "citus"


def default_tarball() -> Path:
    """The vendored Citus source next to the repository (``../shared/vendor``)."""
    shared = Path(__file__).resolve().parents[2] / "shared"
    return shared / "vendor" / f"citus-{citus.CITUS_VERSION}.tar.gz"


#: Tables of the schema, referenced ones first (a foreign key needs its target's rows).
TABLES = """
SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public' AND c.relkind = 'r' AND c.relname <> 'alembic_version'
ORDER BY EXISTS (SELECT 1 FROM pg_constraint f WHERE f.confrelid = c.oid AND f.contype = 'f')
    DESC, c.relname
"""
#: Columns COPY can write: generated ones (``chunk.tsv``) are computed again by the target.
COLUMNS = """
SELECT attname FROM pg_attribute WHERE attrelid = CAST($1 AS regclass) AND attnum > 0
AND NOT attisdropped AND attgenerated = '' ORDER BY attnum
"""
PLACEMENT = """
SELECT table_name::text, citus_table_type, distribution_column, shard_count FROM citus_tables
ORDER BY table_name::text
"""


async def _driver(conn: AsyncConnection) -> Any:
    """The asyncpg connection under a SQLAlchemy one (for COPY)."""
    raw = await conn.get_raw_connection()
    return raw.driver_connection


async def copy_tables(source: Database, target: Database) -> dict[str, int]:
    """Copy every table's rows from ``source`` into the (migrated, empty) ``target``, checked by
    count; returns rows per table. ANALYZEs both sides so both plan on fresh statistics."""
    src_engine, dst_engine = create_engine(source, pool_size=1), create_engine(target, pool_size=1)
    copied: dict[str, int] = {}
    try:
        async with src_engine.connect() as s, dst_engine.connect() as d:
            src, dst = await _driver(s), await _driver(d)
            with tempfile.TemporaryDirectory(prefix="ccb-copy-", dir="/tmp") as tmp:
                for (table,) in await src.fetch(TABLES):
                    columns = [r[0] for r in await src.fetch(COLUMNS, table)]
                    path = Path(tmp) / table
                    await src.copy_from_table(table, columns=columns, format="binary", output=path)
                    await dst.copy_to_table(table, columns=columns, format="binary", source=path)
                    path.unlink()
                    want = await src.fetchval(f'SELECT count(*) FROM "{table}"')
                    have = await dst.fetchval(f'SELECT count(*) FROM "{table}"')
                    if want != have:
                        raise citus.CitusError(f"{table}: {want} rows in, {have} on Citus")
                    copied[table] = int(want)
            for conn in (src, dst):
                for table in copied:
                    await conn.execute(f'ANALYZE "{table}"')
    finally:
        await src_engine.dispose()
        await dst_engine.dispose()
    return copied


async def placement(db: Database) -> list[tuple[str, str, str | None, int]]:
    """``(table, kind, distribution column, shards)`` of every table in Citus' metadata."""
    engine = create_engine(db, pool_size=1)
    try:
        async with engine.connect() as conn:
            rows = await (await _driver(conn)).fetch(PLACEMENT)
    finally:
        await engine.dispose()
    return [(r[0], r[1], r[2], int(r[3])) for r in rows]


@dataclass(frozen=True)
class Compared:
    """Answers of the same plan on two backends: how many were answered on each, and how many differ."""

    planned: int
    answered: tuple[int, int]
    mismatches: list[str]


def compare(left: Phases, right: Phases) -> Compared:
    """Plan entry by entry: the same statements (text and cited ids) and the same cited ids."""
    planned, answered, mismatches = 0, [0, 0], []
    for phase in ("sequential", "concurrent"):
        a: Timings = getattr(left, phase)
        b: Timings = getattr(right, phase)
        planned += len(a.answers)
        answered[0] += sum(x is not None for x in a.answers)
        answered[1] += sum(x is not None for x in b.answers)
        for i, (x, y) in enumerate(zip(a.answers, b.answers, strict=True)):
            if x != y:
                # Counts only: statement texts are chart content and stay out of the output.
                nx, ny = (len(v[0]) if v else 0 for v in (x, y))
                cx, cy = (set(v[1]) if v else set() for v in (x, y))
                mismatches.append(
                    f"{phase} #{i}: {nx} vs {ny} statements, cited ids only on single node "
                    f"{len(cx - cy)}, only on Citus {len(cy - cx)}"
                )
    return Compared(planned, (answered[0], answered[1]), mismatches)


def table(phases: tuple[Phases, Phases], clients: int) -> list[str]:
    """The side-by-side latency table (ms around answer_question + commit; server latency_ms)."""
    rows: list[tuple[str, Any]] = []
    for label, phase in (
        ("sequential", "sequential"),
        (f"concurrent, {clients} clients", "concurrent"),
    ):
        timings: list[Timings] = [getattr(p, phase) for p in phases]
        rows += [
            (f"{label}: asks/s", [f"{len(t.wall_ms) / t.seconds:.1f}" for t in timings]),
            (f"{label}: p50 ms", [f"{pct(t.wall_ms, 0.5):.1f}" for t in timings]),
            (f"{label}: p95 ms", [f"{pct(t.wall_ms, 0.95):.1f}" for t in timings]),
            (f"{label}: server p50 ms", [f"{pct(t.server_ms, 0.5):.1f}" for t in timings]),
            (f"{label}: server p95 ms", [f"{pct(t.server_ms, 0.95):.1f}" for t in timings]),
        ]
    rows.append(("untimed warm-up: slowest ask ms", [f"{max(p.warm_ms):.1f}" for p in phases]))
    width = max(len(r[0]) for r in rows)
    out = [f"{'':{width}}  {'single node':>12}  {'Citus':>12}  Citus/single"]
    for label, (one, two) in rows:
        ratio = float(two) / max(float(one), 1e-9)
        out.append(f"{label:{width}}  {one:>12}  {two:>12}  {ratio:>11.2f}x")
    return out


def layout_lines(
    ports: dict[str, int], placed: list[tuple[str, str, str | None, int]], copied: dict[str, int]
) -> list[str]:
    """Nodes, then which table lives where."""
    workers = ", ".join(f"{n} 127.0.0.1:{p}" for n, p in ports.items() if n != "coordinator")
    out = [f"Citus {citus.CITUS_VERSION}: coordinator 127.0.0.1:{ports['coordinator']}, {workers}"]
    kinds: dict[str, list[str]] = {}
    for name, kind, col, shards in placed:
        if kind == "distributed":
            key = f"distributed on {col}, {shards} shards"
        else:
            key = {"local": "Citus local (coordinator, in Citus' metadata)"}.get(kind, kind)
        kinds.setdefault(key, []).append(name)
    known = {name for name, *_ in placed}
    kinds["plain local (coordinator, outside Citus' metadata)"] = [
        t for t in copied if t not in known
    ]
    out += [f"  {kind}: {', '.join(names)}" for kind, names in kinds.items() if names]
    return out


async def _compare(
    single: Database,
    cluster: Database,
    settings: Settings,
    loaded: Loaded,
    ports: dict[str, int],
    *,
    asks: int,
    clients: int,
    seed: int,
) -> int:
    t = time.perf_counter()
    before, after = await upgrade_database(cluster)
    changes = await citus.distribute_database(cluster)
    print(
        f"citus: schema {before or 'empty'} -> {after}, {len(changes)} table(s) placed "
        f"in {time.perf_counter() - t:.1f} s",
        flush=True,
    )
    t = time.perf_counter()
    copied = await copy_tables(single, cluster)
    rows = ", ".join(f"{name} {n}" for name, n in copied.items() if n)
    empty = ", ".join(name for name, n in copied.items() if not n)
    print(
        f"copied {sum(copied.values())} rows of {len(copied)} tables to Citus in "
        f"{time.perf_counter() - t:.1f} s: {rows}; empty: {empty or 'none'}"
    )
    for line in layout_lines(ports, await placement(cluster), copied):
        print(line)
    embedder = load_embedder(settings.resolved_model_dir, threads=settings.embed_threads)
    results: list[Phases] = []
    for label, db in (("single node", single), ("Citus", cluster)):
        engine = create_engine(db, pool_size=clients)
        try:
            t = time.perf_counter()
            phases = await ask_phases(
                engine, embedder, loaded, random.Random(seed), asks=asks, clients=clients
            )
            print(f"asked on {label} in {time.perf_counter() - t:.1f} s", flush=True)
        finally:
            await engine.dispose()
        results.append(phases)
    print(
        f"\nbench ask, single node vs Citus: {len(loaded.patients)} patients ({loaded.key}), "
        f"{asks} asks per phase, seed {seed}; p50/p95 around answer_question + commit"
    )
    for line in table((results[0], results[1]), clients):
        print(line)
    same = compare(results[0], results[1])
    print(
        f"answers: {same.planned} planned; answered on single node {same.answered[0]}, on Citus "
        f"{same.answered[1]}; {len(same.mismatches)} mismatches (statement texts + cited ids)"
    )
    for line in same.mismatches[:10]:
        print(f"  mismatch {line}")
    print(
        f"\naudit appends ({clients} concurrent writers x {AUDIT_APPENDS}, one chain each backend)"
    )
    for label, db in (("single node", single), ("Citus", cluster)):
        print(f"  {label:12} {await audit_appends(db, clients)}")
    size = await patient_bytes(single)
    print(
        f"patient data on single node: {size / 2**20:.1f} MiB for {len(loaded.patients)} patients "
        f"= {size / len(loaded.patients) / 2**10:.0f} KiB per patient (tables + indexes)"
    )
    return 0


AUDIT_APPENDS = 100
#: Patient-scoped tables whose size grows with the patients (``concept`` is shared).
PATIENT_TABLES = ("fhir_resource", "clinical_fact", "chunk", "sync_run", "quarantine", "answer")


async def audit_appends(db: Database, writers: int) -> str:
    """``writers`` tasks appending audit records at once, each its own transaction (as requests
    do); the chain is sequenced centrally (``smart_app.repository.append_audit``)."""
    engine = create_engine(db, pool_size=writers)
    latencies: list[float] = []

    async def writer(n: int) -> None:
        for i in range(AUDIT_APPENDS):
            t = time.perf_counter()
            async with engine.begin() as conn:
                await append_audit(
                    conn, AuditRecord("bench", "ok", actor="bench", detail={"w": n, "i": i})
                )
            latencies.append((time.perf_counter() - t) * 1000)

    try:
        t = time.perf_counter()
        await asyncio.gather(*(writer(n) for n in range(writers)))
        seconds = time.perf_counter() - t
    finally:
        await engine.dispose()
    return (
        f"{len(latencies) / seconds:7.1f} appends/s, p50 {pct(latencies, 0.5):.1f} ms, "
        f"p95 {pct(latencies, 0.95):.1f} ms"
    )


async def patient_bytes(db: Database) -> int:
    engine = create_engine(db, pool_size=1)
    try:
        async with engine.connect() as conn:
            raw = await _driver(conn)
            sizes = [
                await raw.fetchval("SELECT pg_total_relation_size(CAST($1 AS regclass))", t)
                for t in PATIENT_TABLES
            ]
    finally:
        await engine.dispose()
    return int(sum(sizes))


def run(
    *,
    asks: int,
    patients: int,
    data: Path | None,
    data_dir: Path | None,
    clients: int,
    seed: int,
    cache: Path,
    tarball: Path,
) -> int:
    nodes = Path(tempfile.mkdtemp(prefix="ccb-citus-", dir="/tmp"))
    layout = citus.Layout(cache, nodes_root=nodes)
    try:
        try:
            citus.build(tarball, layout)
            ports = citus.start(layout, base_port=free_port_range(3))
        except (citus.CitusError, subprocess.CalledProcessError, OSError) as exc:
            detail = getattr(exc, "stderr", None) or b""
            detail = detail.decode(errors="replace") if isinstance(detail, bytes) else detail
            reason = " ".join(f"{exc} {detail}".split())
            print(f"chartcite bench ask --citus: Citus unavailable: {reason}", file=sys.stderr)
            return 2
        cluster = Database(url=citus.coordinator_url(ports["coordinator"]))
        with scratch_database(data_dir) as (single, settings):
            loaded = prepare(single, settings, patients=patients, seed=seed, data=data)
            return asyncio.run(
                _compare(
                    single, cluster, settings, loaded, ports, asks=asks, clients=clients, seed=seed
                )
            )
    finally:
        citus.stop(layout)  # by postmaster PID
        shutil.rmtree(nodes, ignore_errors=True)

"""``chartcite bench ask``: warm ask latency over N patients in one database, and the naive pattern.

1. Load: N sandbox-generated patients (or a FHIR folder) go through ``chartcite import``'s pipeline
   (validate, store raw, project, index with the local embedding model) into one database. With
   ``--data-dir`` the embedded database is kept and reused by the next run of the same load.
2. Ask, in-process (no HTTP): ``rag.ask.answer_question`` against the database, random patients, the
   QUESTIONS mix; sequential p50/p95, then ``--clients`` concurrent asyncio clients, each on its own
   pooled connection (asks/s, p50/p95). Warm: every question is asked once before timing, and every
   pooled connection asks once.
3. Retrieval side by side on the same database: ``hybrid_search`` (exact per-patient scan) against
   the tutorial pattern, one global HNSW index and ``WHERE patient_id = … ORDER BY embedding <=> q
   LIMIT 5`` (pgvector 0.8 iterative scan on, as its README advises for filtered queries; and off).

``--citus``: the same load copied table by table into a throw-away local Citus cluster (coordinator
and two workers), then the same ask plan on both, side by side (``launch/bench_citus.py``).

``--stream``: instead, the demo app over real HTTP with the LLM configured against the fake
Anthropic Messages API (``launch/sandbox/anthropic_fake.py``, answering after ``--model-seconds``):
``POST /api/ask/stream`` time to the first event (the evidence, sent before the model is asked)
and to ``done``, p50/p95.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import random
import re
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from datetime import time as dtime
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy.ext.asyncio import AsyncEngine

from fhir_adapters import AccessFilter
from fhir_adapters.normalize import CLINICAL_TYPES
from launch.bench import pct
from launch.db import Database, create_engine, open_database, upgrade_database
from launch.importer import import_path
from launch.sandbox import SandboxStore, generate_patients, load_fhir_dir
from launch.settings import UNLIMITED, Settings, scratch_settings
from rag import load_embedder
from rag import repository as repo
from rag.ask import answer_question
from rag.embeddings import Embedder

QUESTIONS = (
    "What was this patient's HbA1c trend over the last 18 months, and which medications were previously prescribed?",
    "What is the latest blood pressure?",
    "Which allergies does the patient have?",
    "What was the plan at the last visit?",
    "Has the patient had a flu vaccine?",
    "List the active problems.",
    "How has kidney function (eGFR) changed since 2024?",
    "What did the notes say about follow-up?",
    "Cholesterol and LDL results in the past year",
    "Any procedures in the last 3 years?",
)

MARKER = "bench-ask.json"
NAIVE_K = 5
#: (hnsw.iterative_scan, index scans allowed, label); the first is the one the ratio uses.
NAIVE_MODES = (
    ("relaxed_order", True, "global HNSW, hnsw.iterative_scan=relaxed_order"),
    ("off", True, "global HNSW, hnsw.iterative_scan=off, pgvector's default"),
    ("off", False, "no index scans: exact sequential scan of the whole table"),
)


@dataclass(frozen=True)
class Loaded:
    """One load of the bench database: which source, which patients, as of which day."""

    key: str
    source: str
    patients: list[str]
    today: str
    load_seconds: float

    @property
    def now(self) -> datetime:
        """Noon of the day the charts were generated: the time windows of the asks match them."""
        return datetime.combine(date.fromisoformat(self.today), dtime(12), tzinfo=UTC)


def _load_key(patients: int, seed: int, data: Path | None) -> str:
    if data is not None:
        return "data-" + hashlib.sha256(str(data.resolve()).encode()).hexdigest()[:12]
    return f"generated-{patients}-seed{seed}"


def _read_marker(data_dir: Path) -> dict[str, Any]:
    try:
        loads = json.loads((data_dir / MARKER).read_text())
    except (OSError, ValueError):
        return {}
    return loads if isinstance(loads, dict) else {}


def _progress(total: int) -> Callable[[str], None]:
    """An ``import_path`` ``say`` that prints a line every 5 % with the time so far and left."""
    started = time.perf_counter()
    step = max(1, total // 20)
    done = 0

    def say(text: str) -> None:
        nonlocal done
        if not text.startswith("\r"):
            return
        done += 1
        if done % step == 0 or done == total:
            spent = time.perf_counter() - started
            left = spent / done * (total - done)
            print(
                f"  {done}/{total} patients loaded, {spent:.0f} s, ~{left:.0f} s left", flush=True
            )

    return say


async def load_charts(
    database: Database, settings: Settings, *, patients: int, seed: int, data: Path | None
) -> tuple[Loaded, bool]:
    """Import the bench charts unless this database already holds them; returns (load, reused)."""
    key = _load_key(patients, seed, data)
    known = _read_marker(settings.data_dir)
    entry = known.get(key)
    if entry is not None and "source" in entry:
        return Loaded(**entry), True
    # Each load has a source of its own: loads of other sizes in a reused database never mix.
    iss = f"https://bench.chartcite.invalid/{key}/fhir"
    if entry is not None:
        # An interrupted load: the same charts (same day) again; importing skips what is stored.
        today = date.fromisoformat(entry["today"])
        print(f"resuming the interrupted load {key} of {today}", flush=True)
    else:
        today = date.today()
        known[key] = {"today": today.isoformat()}
        (settings.data_dir / MARKER).write_text(json.dumps(known))
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ccb-files-", dir="/tmp") as tmp:
        if data is None:
            resources = generate_patients(n_patients=patients, seed=seed, today=today)
            print(f"generated {patients} patients ({len(resources)} resources) in "
                  f"{time.perf_counter() - started:.1f} s", flush=True)  # fmt: skip
            folder = Path(tmp)
            with (folder / "charts.ndjson").open("w") as fh:
                fh.writelines(json.dumps(r) + "\n" for r in resources)
        else:
            folder, resources = data, load_fhir_dir(data)
        ids = [str(p["id"]) for p in SandboxStore(resources).patients()]
        del resources
        report = await import_path(database, settings, folder, iss=iss, say=_progress(len(ids)))
    loaded = Loaded(key, report.source, ids, today.isoformat(), time.perf_counter() - started)
    known[key] = asdict(loaded)
    (settings.data_dir / MARKER).write_text(json.dumps(known))
    return loaded, False


#: What must be the same on every backend: statements (text, cited ids), then the cited ids.
Fingerprint = tuple[tuple[tuple[str, tuple[str, ...]], ...], tuple[str, ...]]


@dataclass
class Timings:
    server_ms: list[float]
    wall_ms: list[float]
    seconds: float
    #: One per plan entry, in plan order (``None``: not answered).
    answers: list[Fingerprint | None] = field(default_factory=list)

    def line(self, label: str) -> str:
        n = len(self.server_ms)
        return (
            f"{label}, {n} asks: server latency_ms p50 {pct(self.server_ms, 0.5):.1f} ms, "
            f"p95 {pct(self.server_ms, 0.95):.1f} ms; around answer_question + commit "
            f"p50 {pct(self.wall_ms, 0.5):.1f} ms, p95 {pct(self.wall_ms, 0.95):.1f} ms; "
            f"{n / self.seconds:.1f} asks/s"
        )


#: (patient id, question vector, full-text terms) for the retrieval comparison.
Probe = tuple[str, np.ndarray, list[str]]


def _terms(question: str) -> list[str]:
    """Full-text terms of a question for ``hybrid_search`` (``to_tsquery`` drops stop words)."""
    return sorted(set(re.findall(r"[a-z0-9]{3,}", question.lower())))


def _access(loaded: Loaded, patient_id: str) -> AccessFilter:
    return AccessFilter(loaded.source, patient_id, CLINICAL_TYPES)


async def _asks(
    engine: AsyncEngine,
    embedder: Embedder,
    loaded: Loaded,
    plan: list[tuple[str, str]],
    clients: int,
) -> Timings:
    """Run ``plan`` (patient, question) on ``clients`` connections, each ask in its own transaction."""
    queue = list(reversed(list(enumerate(plan))))
    server_ms: list[float] = []
    wall_ms: list[float] = []
    answers: list[Fingerprint | None] = [None] * len(plan)

    async def client() -> None:
        async with engine.connect() as conn:
            while queue:
                i, (pid, question) = queue.pop()
                t = time.perf_counter()
                async with conn.begin():
                    body = await answer_question(
                        conn, embedder, _access(loaded, pid), question, now=loaded.now
                    )
                wall_ms.append((time.perf_counter() - t) * 1000)
                server_ms.append(body.latency_ms)
                statements = tuple((s.text, tuple(s.citations)) for s in body.statements)
                answers[i] = (statements, tuple(sorted(body.citations)))

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return Timings(server_ms, wall_ms, time.perf_counter() - started, answers)


@dataclass(frozen=True)
class Phases:
    sequential: Timings
    concurrent: Timings
    #: The untimed warm-up asks (ms around answer_question + commit): what a cold start costs.
    warm_ms: list[float]


async def ask_phases(
    engine: AsyncEngine,
    embedder: Embedder,
    loaded: Loaded,
    rng: random.Random,
    *,
    asks: int,
    clients: int,
) -> Phases:
    """Untimed: every question once, then every pooled connection on several patients; then
    ``asks`` sequential and ``asks`` concurrent asks. The (patient, question) plan comes from
    ``rng`` (the warm-up draws the same), so one seed gives one plan."""
    warm = [(rng.choice(loaded.patients), q) for q in QUESTIONS]
    first = await _asks(engine, embedder, loaded, warm, 1)
    # A new connection is cold too (catalog caches; on Citus, a connection of its own to each
    # worker, opened on first use): each one asks about several patients before the timing.
    n, spread = len(loaded.patients), len(QUESTIONS) * clients
    around = [(loaded.patients[i % n], QUESTIONS[i % len(QUESTIONS)]) for i in range(spread)]
    second = await _asks(engine, embedder, loaded, around, clients)

    def plan() -> list[tuple[str, str]]:
        return [(rng.choice(loaded.patients), QUESTIONS[i % len(QUESTIONS)]) for i in range(asks)]

    sequential = await _asks(engine, embedder, loaded, plan(), 1)
    concurrent = await _asks(engine, embedder, loaded, plan(), clients)
    return Phases(sequential, concurrent, first.wall_ms + second.wall_ms)


async def _retrieval(database: Database, loaded: Loaded, pairs: list[Probe]) -> list[str]:
    """Time hybrid_search against the naive global-HNSW query on the same probes."""
    out: list[str] = []
    # A connection of its own, closed after: the naive TEMP table and its index go with it.
    engine = create_engine(database, pool_size=1)
    try:
        async with engine.connect() as conn:
            t = time.perf_counter()
            copied = 0
            async with conn.begin():
                for pid in loaded.patients:
                    copied += await repo.copy_naive_chunks(conn, _access(loaded, pid))
            out.append(
                f"naive table: {copied} chunks of {len(loaded.patients)} patients copied with their "
                f"vectors into one TEMP table, global HNSW (vector_cosine_ops, m=16, "
                f"ef_construction=64), no patient btree: {time.perf_counter() - t:.1f} s"
            )
            ours: list[float] = []
            # The k-th best similarity of the exact scan: many chunks share one concept vector,
            # so recall counts a naive row as right when it is at least that close (ties count).
            kth: list[float] = []
            async with conn.begin():
                for pid, vec, terms in pairs:
                    access = _access(loaded, pid)
                    t = time.perf_counter()
                    await repo.hybrid_search(conn, access, query_vector=vec, terms=terms)
                    ours.append((time.perf_counter() - t) * 1000)
                    # The exact top k by vector alone: what the naive query should return.
                    top = await repo.hybrid_search(
                        conn, access, query_vector=vec, terms=[], n=NAIVE_K, k=NAIVE_K
                    )
                    sims = sorted((h.similarity or 0.0 for h in top), reverse=True)
                    kth.append(sims[-1] if len(sims) == NAIVE_K else -1.0)
            out.append(
                f"retrieval, ours (hybrid_search: exact per-patient vector scan + full text, RRF, "
                f"one statement): p50 {pct(ours, 0.5):.2f} ms, p95 {pct(ours, 0.95):.2f} ms"
            )
            naive_p50 = exact_p50 = 0.0
            for mode, use_index, label in NAIVE_MODES:
                naive: list[float] = []
                found: list[int] = []
                recall: list[float] = []
                async with conn.begin():
                    first = _access(loaded, pairs[0][0])
                    plan = await repo.naive_plan(
                        conn, first, pairs[0][1], iterative_scan=mode, use_index=use_index
                    )
                    for (pid, vec, _), least in zip(pairs, kth, strict=True):
                        t = time.perf_counter()
                        rows = await repo.naive_search(conn, _access(loaded, pid), vec, k=NAIVE_K)
                        naive.append((time.perf_counter() - t) * 1000)
                        found.append(len(rows))
                        recall.append(sum(sim >= least - 1e-6 for _, sim in rows) / NAIVE_K)
                naive_p50 = naive_p50 or pct(naive, 0.5)
                exact_p50 = pct(naive, 0.5)  # the last mode: the exact sequential scan
                out.append(
                    f"retrieval, naive (WHERE patient_id ORDER BY <=> LIMIT {NAIVE_K}, {label}): "
                    f"p50 {pct(naive, 0.5):.2f} ms, "
                    f"p95 {pct(naive, 0.95):.2f} ms, {statistics.mean(found):.2f} of {NAIVE_K} "
                    f"rows returned, recall@{NAIVE_K} {statistics.mean(recall):.2f}; plan: {plan}"
                )
            ours_p50 = max(pct(ours, 0.5), 1e-9)
            out.append(
                f"ours p50 {ours_p50:.2f} ms (recall 1.00) vs naive p50 {naive_p50:.2f} ms "
                f"(HNSW, iterative scan on): naive/ours = {naive_p50 / ours_p50:.1f}x; vs the "
                f"naive exact scan p50 {exact_p50:.2f} ms: {exact_p50 / ours_p50:.1f}x"
            )
    finally:
        await engine.dispose()
    return out


async def _bench(
    database: Database, settings: Settings, loaded: Loaded, *, asks: int, clients: int, seed: int
) -> None:
    embedder = load_embedder(settings.resolved_model_dir, threads=settings.embed_threads)
    engine = create_engine(database, pool_size=clients)
    rng = random.Random(seed)
    try:
        t = time.perf_counter()
        embedder.embed([QUESTIONS[0]])
        cold = (time.perf_counter() - t) * 1000
        t = time.perf_counter()
        embedder.embed([QUESTIONS[0]])
        print(
            f"question embedding: model {cold:.1f} ms, cached {(time.perf_counter() - t) * 1000:.3f} ms"
        )
        phases = await ask_phases(engine, embedder, loaded, rng, asks=asks, clients=clients)
        print(phases.sequential.line("sequential (1 client)"))
        print(
            phases.concurrent.line(
                f"concurrent ({clients} in-process asyncio clients, a connection each)"
            )
        )
        vectors = embedder.embed(list(QUESTIONS))
        pairs = [
            (
                rng.choice(loaded.patients),
                vectors[i % len(QUESTIONS)],
                _terms(QUESTIONS[i % len(QUESTIONS)]),
            )
            for i in range(asks)
        ]
        for line in await _retrieval(database, loaded, pairs):
            print(line)
    finally:
        await engine.dispose()


@contextmanager
def scratch_database(data_dir: Path | None) -> Iterator[tuple[Database, Settings]]:
    """The embedded database in ``data_dir`` (kept), or in a temporary folder (removed after)."""
    with tempfile.TemporaryDirectory(prefix="ccb-", dir="/tmp") as tmp:
        settings = scratch_settings(data_dir or Path(tmp), **UNLIMITED)
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        database = open_database(settings)
        try:
            yield database, settings
        finally:
            if database.embedded is not None and data_dir is None:
                database.embedded.cleanup()


def prepare(
    database: Database, settings: Settings, *, patients: int, seed: int, data: Path | None
) -> Loaded:
    """Migrate the database and load the bench charts into it (or find them there), saying which."""
    print(f"database: {database.describe()}", flush=True)
    asyncio.run(upgrade_database(database))
    loaded, reused = asyncio.run(
        load_charts(database, settings, patients=patients, seed=seed, data=data)
    )
    if reused:
        print(
            f"reused the load {loaded.key} of {loaded.today} ({len(loaded.patients)} patients, "
            f"loaded in {loaded.load_seconds:.1f} s then)"
        )
    else:
        print(f"loaded {len(loaded.patients)} patients in {loaded.load_seconds:.1f} s")
    return loaded


def run(
    *,
    asks: int = 500,
    patients: int = 1000,
    data: Path | None = None,
    data_dir: Path | None = None,
    clients: int = 20,
    seed: int = 7,
) -> int:
    with scratch_database(data_dir) as (database, settings):
        loaded = prepare(database, settings, patients=patients, seed=seed, data=data)
        if asks > 0:
            asyncio.run(_bench(database, settings, loaded, asks=asks, clients=clients, seed=seed))
    return 0


def run_stream(*, asks: int, patients: int, seed: int, model_seconds: float) -> int:
    """``--stream``: the demo app (sandbox EHR, embedded Postgres) over real HTTP with an LLM
    configured against the fake Messages API answering after ``model_seconds``; each ask is a
    ``POST /api/ask/stream``: time to the first event (evidence) and to ``done``."""
    import httpx2
    from pydantic import SecretStr

    from launch.demo_client import launch_patient, sync_patient
    from launch.sandbox.anthropic_fake import FakeAnthropic
    from launch.server import BackgroundServer, build_demo, free_port

    with scratch_database(None) as (database, settings):
        asyncio.run(upgrade_database(database))
        fake = FakeAnthropic(api_key="bench-key")
        fake.configure(mode="faithful", latency_seconds=model_seconds)
        fake_port, port = free_port(), free_port()
        fake_server = BackgroundServer(fake.app, "127.0.0.1", fake_port)  # type: ignore[arg-type]
        fake_server.start()
        settings = settings.model_copy(
            update={
                "port": port,
                "anthropic_api_key": SecretStr("bench-key"),
                "anthropic_base_url": f"http://127.0.0.1:{fake_port}",
            }
        )
        store = SandboxStore(generate_patients(n_patients=patients, seed=seed, today=date.today()))
        demo = build_demo(settings, store, database=database)
        server = BackgroundServer(demo.app, "127.0.0.1", port)
        server.start()
        clients: list[httpx2.Client] = []
        try:
            for p in store.patients():
                client, resp = launch_patient(settings.base_url, str(p["id"]))
                resp.raise_for_status()
                sync_patient(client, full=True)
                clients.append(client)
            print(f"{len(clients)} patients launched and synced; model answers after "
                  f"{model_seconds:.2f} s", flush=True)  # fmt: skip
            rng = random.Random(seed)
            first: list[float] = []
            done: list[float] = []
            modes: dict[str, int] = {}
            for n in range(asks + len(QUESTIONS)):  # the first round warms up, untimed
                client, question = rng.choice(clients), QUESTIONS[n % len(QUESTIONS)]
                started = time.perf_counter()
                t_first = None
                with client.stream("POST", "/api/ask/stream", json={"question": question}) as resp:
                    resp.raise_for_status()
                    event = None
                    for line in resp.iter_lines():
                        if line.startswith("event: "):
                            event = line[7:]
                            t_first = t_first or time.perf_counter() - started
                        elif event == "done" and line.startswith("data: "):
                            mode = json.loads(line[6:])["mode"]
                            modes[mode] = modes.get(mode, 0) + 1
                t_done = time.perf_counter() - started
                if n >= len(QUESTIONS) and t_first is not None:
                    first.append(t_first * 1000)
                    done.append(t_done * 1000)
            print(
                f"stream, {len(first)} asks: first event p50 {pct(first, 0.5):.1f} ms, "
                f"p95 {pct(first, 0.95):.1f} ms; done p50 {pct(done, 0.5):.1f} ms, "
                f"p95 {pct(done, 0.95):.1f} ms; answers by mode {modes}"
            )
        finally:
            for c in clients:
                c.close()
            server.stop()
            fake_server.stop()
    return 0


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="chartcite bench ask", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--asks", type=int, default=500, help="asks per phase (0: load only)")
    p.add_argument("--patients", type=int, default=1000, help="generated patients to load")
    p.add_argument("--data", help="FHIR folder to load instead (e.g. Synthea output)")
    p.add_argument(
        "--data-dir",
        help="keep the embedded database here and reuse a load already in it (default: temporary)",
    )
    p.add_argument("--clients", type=int, default=20, help="concurrent clients")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument(
        "--stream",
        action="store_true",
        help="POST /api/ask/stream over HTTP with the LLM on (the fake Anthropic API): time to "
        "first event and to done (--patients defaults to 5, --asks to 100)",
    )
    p.add_argument(
        "--model-seconds", type=float, default=1.0, help="with --stream: the fake model's latency"
    )
    p.add_argument(
        "--citus",
        action="store_true",
        help="also copy the load into a throw-away local Citus cluster (coordinator + 2 workers) "
        "and ask the same plan on both: single node vs Citus side by side (no retrieval phase)",
    )
    p.add_argument(
        "--citus-cache",
        help="with --citus: the built PostgreSQL + Citus (default: ~/.cache/chartcite/citus)",
    )
    p.add_argument(
        "--citus-tarball",
        help="with --citus: the Citus source to build from when not built yet "
        "(default: ../shared/vendor/citus-14.0.1.tar.gz)",
    )
    args = p.parse_args(argv)
    common: dict[str, Any] = {
        "asks": args.asks,
        "patients": args.patients,
        "data": Path(args.data) if args.data else None,
        "data_dir": Path(args.data_dir) if args.data_dir else None,
        "clients": args.clients,
        "seed": args.seed,
    }
    if args.citus:
        from launch import bench_citus

        if args.asks <= 0 or args.stream:
            p.error("--citus needs --asks > 0 and no --stream")
        return bench_citus.run(
            **common,
            cache=Path(args.citus_cache) if args.citus_cache else bench_citus.default_cache(),
            tarball=Path(args.citus_tarball)
            if args.citus_tarball
            else bench_citus.default_tarball(),
        )
    if args.stream:
        patients = args.patients if "--patients" in argv else 5
        asks = args.asks if "--asks" in argv else 100
        return run_stream(
            asks=asks, patients=patients, seed=args.seed, model_seconds=args.model_seconds
        )
    return run(**common)

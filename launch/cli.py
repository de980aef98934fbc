"""``chartcite``: demo, serve, db upgrade, audit verify/checkpoint/export, keys, model build, bench."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from launch.settings import Settings


def _settings(args: argparse.Namespace, **overrides: Any) -> Settings:
    values: dict[str, Any] = {k: v for k, v in overrides.items() if v is not None}
    if getattr(args, "data_dir", None):
        values["data_dir"] = Path(args.data_dir).expanduser().resolve()
    if getattr(args, "port", None):
        values["port"] = args.port
    if getattr(args, "host", None):
        values["host"] = args.host
    try:
        return Settings(**values)
    except ValidationError as exc:  # one line, every problem (pydantic's text spans many)
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()))
            msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
            problems.append(f"{where.upper() and 'CHARTCITE_' + where.upper() + ': '}{msg}")
        sys.exit("chartcite: invalid settings: " + "; ".join(problems))


async def _upgrade(settings: Settings, database: Any = None) -> tuple[str | None, str]:
    from launch.db import app_role, open_database, upgrade_database

    return await upgrade_database(database or open_database(settings), app_role(settings))


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from launch.db import DatabaseError

    settings = _settings(args, env="dev" if args.dev else None)
    try:
        before, after = asyncio.run(_upgrade(settings))
    except DatabaseError as exc:
        print(f"chartcite: {exc}", file=sys.stderr)
        return 2
    print(f"database schema: {before or 'empty'} -> {after}")
    if getattr(args, "citus", False):
        return _distribute(settings)
    return 0


def _distribute(settings: Settings) -> int:
    """``db upgrade --citus``: distribute the migrated tables on the Citus coordinator."""
    from launch.citus import CitusError, distribute_database
    from launch.db import open_database

    try:
        changes = asyncio.run(distribute_database(open_database(settings)))
    except CitusError as exc:
        print(f"chartcite: {exc}", file=sys.stderr)
        return 2
    for change in changes:
        print(f"citus: {change}")
    print(f"citus: {len(changes)} table(s) changed" if changes else "citus: already distributed")
    return 0


def _load_anchor(path: Path) -> list[Any]:
    from smart_app.audit_anchor import Checkpoint

    lines = path.read_text(encoding="utf-8").splitlines()
    return [Checkpoint.from_json(json.loads(line)) for line in lines if line.strip()]


async def _audit_job(settings: Settings, job: Any) -> Any:
    """Run ``job(conn, keyring)`` in one transaction as the owner (the CLI is the operator)."""
    from launch.app import audit_keyring
    from launch.db import create_engine, open_database, require_migrated

    engine = create_engine(open_database(settings), pool_size=1)
    try:
        await require_migrated(engine)
        async with engine.begin() as conn:
            return await job(conn, audit_keyring(settings))
    finally:
        await engine.dispose()


def cmd_audit_verify(args: argparse.Namespace) -> int:
    """The chain, every signed checkpoint, and (``--anchor``) an exported checkpoint file."""
    from launch.db import DatabaseError
    from smart_app.agent_events import verify_all_events
    from smart_app.audit_checkpoints import verify_database

    settings = _settings(args, env="dev" if args.dev else None)
    try:
        anchor = _load_anchor(Path(args.anchor)) if args.anchor else None
    except (OSError, ValueError, KeyError) as exc:
        print(f"chartcite: cannot read the anchor file: {exc}", file=sys.stderr)
        return 2

    async def job(conn: Any, keys: Any) -> tuple[Any, tuple[int, list[int]]]:
        return await verify_database(conn, keys, anchor), await verify_all_events(conn)

    try:
        report, (events, bad_events) = asyncio.run(_audit_job(settings, job))
    except DatabaseError as exc:
        print(f"chartcite: {exc}", file=sys.stderr)
        return 2
    if bad_events:  # an agent event without its audit record: written behind the app's back
        print(
            f"agent events BROKEN: {len(bad_events)} of {events} do not match the audit record "
            f"that recorded them (event seq {', '.join(map(str, bad_events[:10]))})",
            file=sys.stderr,
        )
    if report.ok and not bad_events:
        if report.checkpoints:
            anchored = (
                f"{report.anchored_rows} anchored by {report.checkpoints} signed checkpoints "
                f"(last at seq {report.last_anchor_seq}), {report.unanchored_rows} newer"
            )
        else:
            anchored = "no checkpoints yet (`chartcite audit checkpoint` writes one)"
        extra = f"; {len(anchor)} anchored checkpoints of the file found" if anchor else ""
        print(f"audit chain OK: {report.rows} records verified; {anchored}{extra}")
        print(f"agent events OK: {events} match the audit records that recorded them")
        return 0
    if report.ok:
        return 1
    first, *rest = report.problems
    print(f"audit chain BROKEN at seq {first.seq}: {first.reason}", file=sys.stderr)
    for problem in rest:
        print(f"  also at seq {problem.seq}: {problem.reason}", file=sys.stderr)
    return 1


def cmd_audit_checkpoint(args: argparse.Namespace) -> int:
    """Sign the chain's head now, print the newest checkpoint; ``--export`` writes them all."""
    from launch.db import DatabaseError
    from smart_app import repository as repo
    from smart_app.audit_checkpoints import CheckpointRefused, write_checkpoint

    settings = _settings(args, env="dev" if args.dev else None)

    async def job(conn: Any, keys: Any) -> tuple[Any, list[Any]]:
        written = await write_checkpoint(conn, keys)
        return written, await repo.list_checkpoints(conn)

    try:
        written, checkpoints = asyncio.run(_audit_job(settings, job))
    except (DatabaseError, CheckpointRefused) as exc:
        print(f"chartcite: {exc}", file=sys.stderr)
        return 1 if isinstance(exc, CheckpointRefused) else 2
    if not checkpoints:
        print("no audit records yet: nothing to anchor")
        return 0
    cp = checkpoints[-1]
    state = "written" if written is not None else "unchanged (no new records)"
    print(
        f"checkpoint #{cp.seq} {state}: {cp.row_count} records up to seq {cp.head_seq}, "
        f"head {cp.head_hash[:16]}…, signed {cp.signed_at.isoformat()} with {cp.key_id}"
    )
    print(json.dumps(cp.to_json(), sort_keys=True))
    if args.export:
        out = Path(args.export)
        out.write_text("".join(json.dumps(c.to_json(), sort_keys=True) + "\n" for c in checkpoints))
        print(f"{len(checkpoints)} checkpoints written to {out} (keep it off-site)")
    return 0


def cmd_audit_export(args: argparse.Namespace) -> int:
    """The audit trail as FHIR R4 AuditEvents (NDJSON, or one Bundle), each validated."""
    from fhir_adapters import InvalidResource
    from launch.db import DatabaseError
    from smart_app import repository as repo
    from smart_app.audit_fhir import bundle, to_audit_event, validated

    patient = None
    if args.patient:
        source, sep, pid = args.patient.partition("/")
        if not sep or not source or not pid:
            print(
                "chartcite audit export: --patient is SOURCE/ID (e.g. ehr-1a2b…/123)",
                file=sys.stderr,
            )
            return 2
        patient = (source, pid)
    settings = _settings(args, env="dev" if args.dev else None)

    async def job(conn: Any, _keys: Any) -> list[dict[str, Any]]:
        rows = repo.iter_audit(conn, patient=patient)
        return [validated(to_audit_event(r, r["detail"] or {})) async for r in rows]

    try:
        events = asyncio.run(_audit_job(settings, job))
        if args.bundle:
            body = validated(bundle(events, bundle_type="collection", bundle_id="chartcite-audit"))
            text = json.dumps(body) + "\n"
        else:
            text = "".join(json.dumps(e) + "\n" for e in events)
    except DatabaseError as exc:
        print(f"chartcite: {exc}", file=sys.stderr)
        return 2
    except InvalidResource as exc:
        print(f"chartcite: an AuditEvent failed validation: {exc.reason}", file=sys.stderr)
        return 1
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
        print(f"{len(events)} AuditEvents written to {args.out}")
    else:
        sys.stdout.write(text)
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    """chartcite's private_key_jwt keys: show the JWKS, rotate (add a new pair), retire old ones."""
    from smart_app.keys import AppKeys

    settings = _settings(args, env="dev" if args.dev else None)
    keys = AppKeys.load_or_create(settings.app_keys_path)
    if args.keys_command == "rotate":
        print("new signing keys:", ", ".join(keys.rotate()))
        print("the old keys stay published until `chartcite keys retire`")
    elif args.keys_command == "retire":
        dropped = keys.retire()
        print("no longer published:", ", ".join(dropped) or "nothing (one key per algorithm)")
    else:
        print(json.dumps(keys.jwks(), indent=2))
    return 0


def cmd_sync(args: argparse.Namespace) -> int:
    from launch.db import DatabaseError, open_database, require_migrated_database
    from launch.repair import repair_all

    if args.bulk:
        return _bulk(args)
    if not args.repair:
        print(
            "chartcite sync: a patient's sync needs its SMART token, so it runs from a launch "
            "(POST /api/sync). Use --repair to rebuild derived data from the raw store, or "
            "--bulk --iss URL for a population export.",
            file=sys.stderr,
        )
        return 2
    settings = _settings(args, env="dev" if args.dev else None)
    database = open_database(settings)

    async def run() -> Any:
        await require_migrated_database(database)
        return await repair_all(database, settings, say=print)

    started = time.perf_counter()
    try:
        report = asyncio.run(run())
    except DatabaseError as exc:
        print(f"chartcite: {exc}", file=sys.stderr)
        return 2
    print(
        f"repair: {report.patients} patients checked in {time.perf_counter() - started:.1f}s; "
        f"{report.projected} facts re-projected, {report.indexed} re-indexed, "
        f"{report.removed_facts} orphan facts and {report.removed_chunks} orphan chunks removed; "
        f"{report.still_incomplete} facts still incomplete (need the EHR: sync from a launch)"
    )
    return 0


def _bulk(args: argparse.Namespace) -> int:
    from fhir_adapters import FhirAdapterError
    from launch.bulk_sync import bulk_sync
    from launch.db import DatabaseError, open_database, require_migrated_database
    from launch.importer import print_progress
    from smart_app.errors import AppError

    if not args.iss:
        print("chartcite sync --bulk: --iss (the EHR's FHIR base) is required", file=sys.stderr)
        return 2
    settings = _settings(args, env="dev" if args.dev else None)
    database = open_database(settings)

    async def run() -> Any:
        await require_migrated_database(database)
        return await bulk_sync(database, settings, args.iss, say=print_progress)

    try:
        report = asyncio.run(run())
    except (DatabaseError, FhirAdapterError, AppError, ValueError) as exc:
        print(f"chartcite sync --bulk: {getattr(exc, 'message', exc)}", file=sys.stderr)
        return 2
    imp = report.imported
    statuses = ", ".join(f"{n} {s}" for s, n in sorted(imp.statuses.items())) or "none"
    print(
        f"bulk: {report.files} files, {report.lines} resources ({report.megabytes:.1f} MB); "
        f"{imp.patients} charts into source {imp.source}: {statuses}"
    )
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from launch.db import DatabaseError, open_database, require_migrated_database
    from launch.importer import import_path, print_progress
    from launch.sandbox.loader import LoaderError

    path = Path(args.path)
    if not path.exists():
        print(f"chartcite import: {path} does not exist", file=sys.stderr)
        return 2
    settings = _settings(args, env="dev" if args.dev else None)
    database = open_database(settings)

    async def run() -> Any:
        await require_migrated_database(database)
        return await import_path(database, settings, path, iss=args.iss, say=print_progress)

    try:
        report = asyncio.run(run())
    except (DatabaseError, LoaderError) as exc:
        print(f"chartcite import: {exc}", file=sys.stderr)
        return 2
    statuses = ", ".join(f"{n} {s}" for s, n in sorted(report.statuses.items())) or "none"
    print(
        f"imported {report.patients} charts ({report.resources} resources, "
        f"{report.quarantined} quarantined) into source {report.source} "
        f"in {report.seconds:.1f}s: {statuses}"
    )
    return 0 if report.patients else 1


def cmd_model_build(args: argparse.Namespace) -> int:
    from rag.model_build import ModelBuildError, build_onnx_model

    settings = _settings(args, env="dev")
    try:
        path = build_onnx_model(settings.resolved_model_dir, force=args.force, progress=print)
    except ModelBuildError as exc:
        print(f"chartcite: {exc}", file=sys.stderr)
        return 2
    print(f"embedding model ready in {path}")
    return 0


def _ensure_model(settings: Settings) -> None:
    from rag import ModelNotBuiltError, load_embedder

    try:
        load_embedder(settings.resolved_model_dir)
    except ModelNotBuiltError:
        from rag.model_build import ModelBuildError, build_onnx_model

        print("building the embedding model once (a few seconds)…")
        try:
            build_onnx_model(settings.resolved_model_dir, progress=print)
        except ModelBuildError as exc:
            sys.exit(f"chartcite: {exc}")


def _exit_cleanly_on_signals() -> None:
    """uvicorn shuts down gracefully on SIGTERM/SIGINT and then re-raises the signal with the
    handler that was there before it; with Python's default the process dies on the spot and no
    ``finally`` (stopping the embedded PostgreSQL) runs. This handler turns it into SystemExit."""

    def stop(signum: int, _frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)


def cmd_demo(args: argparse.Namespace) -> int:
    import uvicorn

    from launch import logs
    from launch.db import DatabaseError, open_database
    from launch.sandbox import Fault
    from launch.server import build_demo, sandbox_store

    started = time.perf_counter()
    logs.configure()
    settings = _settings(args, env="dev")
    _ensure_model(settings)
    database = open_database(settings)
    try:
        before, after = asyncio.run(_upgrade(settings, database))
    except DatabaseError as exc:
        print(f"chartcite: {exc}", file=sys.stderr)
        return 2
    if before != after:
        print(f"database schema: {before or 'empty'} -> {after}")
    store = sandbox_store(patients=args.patients, data=Path(args.data) if args.data else None)
    base = settings.base_url

    def ready() -> None:
        print(
            f"\nchartcite demo ready in {time.perf_counter() - started:.1f}s at {base}\n"
            f"  data:        {database.describe()}\n"
            f"  sandbox EHR: {base}/ehr/  ({len(store.patients())} patients; click Launch)\n"
            f"  FHIR base:   {base}/ehr/fhir\n"
            f"  API docs:    {base}/docs\n",
            flush=True,
        )

    demo = build_demo(settings, store, database=database, on_ready=ready)
    if args.faults:
        demo.faults.set(*[Fault(**f) for f in json.loads(args.faults)])
        print(f"sandbox fault drill: {len(demo.faults.faults)} fault rule(s) active", flush=True)
    _exit_cleanly_on_signals()
    try:
        uvicorn.run(
            demo.app, host=settings.host, port=settings.port, access_log=False, log_level="warning"
        )
    finally:
        if database.embedded is not None:
            database.embedded.cleanup()  # stops the embedded PostgreSQL unless another user has it
    return 0


def preflight(settings: Settings) -> str | None:
    """What would stop the server from starting, as one line naming the fix (instead of a
    traceback from inside the ASGI lifespan)."""
    import binascii

    from launch.app import token_key
    from launch.db import DatabaseError, open_database, require_migrated_database
    from smart_app.crypto import TokenCipher

    try:
        TokenCipher.from_b64(
            token_key(settings), tuple(k.get_secret_value() for k in settings.token_keys_retired)
        )
    except (ValueError, binascii.Error, RuntimeError):
        return (
            "CHARTCITE_TOKEN_KEY is not base64 of 32 bytes "
            '(make one: python -c "import secrets,base64;print(base64.b64encode(secrets.token_bytes(32)).decode())")'
        )
    if not settings.resolved_model_dir.exists():
        return f"no embedding model at {settings.resolved_model_dir}: run chartcite model build"
    try:
        database = open_database(settings)
        asyncio.run(require_migrated_database(database))
    except DatabaseError as exc:
        return str(exc)
    except OSError as exc:
        return f"the database is unreachable ({type(exc).__name__}): check DATABASE_URL"
    return None


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from launch import logs
    from launch.app import create_app

    logs.configure()
    settings = _settings(args)
    problem = preflight(settings)
    if problem:
        print(f"chartcite: {problem}", file=sys.stderr)
        return 2
    _exit_cleanly_on_signals()
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        access_log=False,
        log_level="warning",
        workers=None,
    )
    return 0


def cmd_bench_ask(args: argparse.Namespace) -> int:
    from launch import bench_ask

    return bench_ask.main(args.rest)


def cmd_eval(args: argparse.Namespace) -> int:
    from launch import eval as evaluation

    return evaluation.main(args.rest)


def cmd_bench_sync(args: argparse.Namespace) -> int:
    from launch import bench_sync

    return bench_sync.run(
        patients=args.patients,
        data=Path(args.data) if args.data else None,
        chart_scale=args.chart_scale,
        separate_ehr=args.separate_ehr,
    )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="chartcite", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser, server: bool = False) -> None:
        sp.add_argument("--data-dir", help="where the embedded database and keys live")
        if server:
            sp.add_argument("--port", type=int, help="port (default 8000)")
            sp.add_argument("--host", help="interface (default 127.0.0.1)")

    demo = sub.add_parser(
        "demo", help="run everything locally: embedded Postgres, sandbox EHR, app"
    )
    common(demo, server=True)
    demo.add_argument("--patients", type=int, default=20, help="synthetic patients (default 20)")
    demo.add_argument("--data", help="load FHIR R4 Bundles/NDJSON from this folder instead")
    demo.add_argument(
        "--faults",
        help='fault drill: JSON list of sandbox faults, e.g. \'[{"kind": "status", "status": 503}]\'',
    )
    demo.set_defaults(func=cmd_demo)

    serve = sub.add_parser("serve", help="serve for real EHRs (settings from environment/.env)")
    common(serve, server=True)
    serve.set_defaults(func=cmd_serve)

    db = sub.add_parser("db", help="database commands").add_subparsers(
        dest="db_command", required=True
    )
    up = db.add_parser("upgrade", help="apply migrations")
    common(up)
    up.add_argument("--dev", action="store_true", help="dev settings (embedded database)")
    up.add_argument(
        "--citus",
        action="store_true",
        help="then distribute the tables on the Citus coordinator DATABASE_URL names",
    )
    up.set_defaults(func=cmd_db_upgrade)

    audit = sub.add_parser("audit", help="audit trail").add_subparsers(
        dest="audit_command", required=True
    )
    verify = audit.add_parser(
        "verify", help="verify the hash chain and its signed checkpoints; exits 1 on a problem"
    )
    common(verify)
    verify.add_argument("--dev", action="store_true", help="dev settings (embedded database)")
    verify.add_argument(
        "--anchor", help="a file from `audit checkpoint --export`: its checkpoints must still hold"
    )
    verify.set_defaults(func=cmd_audit_verify)
    checkpoint = audit.add_parser(
        "checkpoint", help="sign the chain's head now and print it; --export FILE for off-site"
    )
    common(checkpoint)
    checkpoint.add_argument("--dev", action="store_true", help="dev settings (embedded database)")
    checkpoint.add_argument("--export", help="write every checkpoint to FILE (JSON lines)")
    checkpoint.set_defaults(func=cmd_audit_checkpoint)
    export = audit.add_parser("export", help="the audit trail as FHIR R4 AuditEvents (NDJSON)")
    common(export)
    export.add_argument("--dev", action="store_true", help="dev settings (embedded database)")
    export.add_argument("--patient", help="one patient only: SOURCE/ID (the source key, ehr-…)")
    export.add_argument("--out", help="write to FILE instead of stdout")
    export.add_argument("--bundle", action="store_true", help="one Bundle (collection), not NDJSON")
    export.set_defaults(func=cmd_audit_export)

    keys = sub.add_parser("keys", help="private_key_jwt signing keys").add_subparsers(
        dest="keys_command", required=True
    )
    for name, text in (
        ("show", "print the public JWKS (as served at /.well-known/jwks.json)"),
        ("rotate", "add a new key pair per algorithm; it signs from now on"),
        ("retire", "stop publishing all but the newest key per algorithm"),
    ):
        k = keys.add_parser(name, help=text)
        common(k)
        k.add_argument("--dev", action="store_true", help="dev settings")
        k.set_defaults(func=cmd_keys)

    sync = sub.add_parser(
        "sync", help="--repair: rebuild derived data offline; --bulk: population $export"
    )
    common(sync)
    sync.add_argument(
        "--repair", action="store_true", help="re-project and re-index from the raw store"
    )
    sync.add_argument(
        "--bulk", action="store_true", help="population sync by Bulk Data $export (needs --iss)"
    )
    sync.add_argument("--iss", help="the EHR's FHIR base for --bulk")
    sync.add_argument("--dev", action="store_true", help="dev settings (embedded database)")
    sync.set_defaults(func=cmd_sync)

    imp = sub.add_parser("import", help="load FHIR Bundles/NDJSON files into the store, offline")
    common(imp)
    imp.add_argument("path", help="a file or folder of FHIR R4 Bundles (.json) and NDJSON")
    imp.add_argument(
        "--iss", help="the EHR's FHIR base the files came from (its launches see them)"
    )
    imp.add_argument("--dev", action="store_true", help="dev settings (embedded database)")
    imp.set_defaults(func=cmd_import)

    model = sub.add_parser("model", help="embedding model").add_subparsers(
        dest="model_command", required=True
    )
    build = model.add_parser(
        "build", help="build the ONNX model from the packaged MiniLM weights (no torch)"
    )
    common(build)
    build.add_argument("--force", action="store_true")
    build.set_defaults(func=cmd_model_build)

    evaluation = sub.add_parser(
        "eval", help="score answers against a question set (JSONL)", add_help=False
    )
    evaluation.add_argument("rest", nargs=argparse.REMAINDER)
    evaluation.set_defaults(func=cmd_eval)

    bench = sub.add_parser("bench", help="benchmarks that print numbers").add_subparsers(
        dest="bench_command", required=True
    )
    # These two parse their own options (``chartcite bench ask --help``, ``chartcite eval --help``).
    bench_ask = bench.add_parser("ask", help="ask latency p50/p95", add_help=False)
    bench_ask.add_argument("rest", nargs=argparse.REMAINDER)
    bench_ask.set_defaults(func=cmd_bench_ask)
    bench_sync = bench.add_parser("sync", help="sync time per patient")
    bench_sync.add_argument("--patients", type=int, default=3, help="patients to launch and sync")
    bench_sync.add_argument("--data", help="FHIR folder for the sandbox (e.g. Synthea output)")
    bench_sync.add_argument(
        "--chart-scale",
        type=float,
        default=1.0,
        help="stretch generated charts' history (3.5: about 1,000 resources per chart)",
    )
    bench_sync.add_argument(
        "--separate-ehr",
        action="store_true",
        help="run the sandbox EHR in its own process (as a real EHR), not inside the app",
    )
    bench_sync.set_defaults(func=cmd_bench_sync)
    return p


#: Subcommands that parse their own options: ``argparse.REMAINDER`` would not pass ``--help`` on.
_OWN_OPTIONS = {("eval",): cmd_eval, ("bench", "ask"): cmd_bench_ask}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    for prefix, func in _OWN_OPTIONS.items():
        if tuple(argv[: len(prefix)]) == prefix:
            return func(argparse.Namespace(rest=argv[len(prefix) :]))
    args = parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())

"""``create_app(settings)``: the FastAPI app with a lifespan that opens the database, checks the
migrations, loads the embedding model and hands everything to the routers as typed state.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import httpx2
from fastapi import FastAPI
from fastapi_offline import FastAPIOffline
from starlette.types import ASGIApp

from fhir_adapters.client import RetryPolicy
from fhir_adapters.normalize import warm_up
from fhir_adapters.validation import Validator
from launch import logs
from launch.db import Database, app_database, create_engine, open_database, require_migrated
from launch.settings import Settings
from rag import load_embedder
from rag.concepts import lexicon
from rag.llm import LlmAnswerer, LlmConfig
from rag.phi import PresidioDetector
from smart_app import (
    AppConfig,
    AppState,
    SmartClient,
    SyncJobs,
    TokenCipher,
    install_mcp,
    install_routes,
    new_key_b64,
)
from smart_app.audit_anchor import AuditKeyring
from smart_app.audit_checkpoints import CheckpointPolicy, CheckpointWriter
from smart_app.bearer import BearerVerifier
from smart_app.ehrs import EhrRegistration, EhrRegistry, normalise_iss
from smart_app.guard import Guard, GuardConfig, origin
from smart_app.keys import AppKeys
from smart_app.pages import page_csp
from smart_app.rate_limit import RateLimiter
from smart_app.routes_stream import router as stream_router

log = logging.getLogger("chartcite")


def token_key(settings: Settings) -> str:
    """The token encryption key: configured, or (dev only) generated once into the data dir."""
    if settings.token_key is not None:
        return settings.token_key.get_secret_value()
    if settings.env != "dev":
        raise RuntimeError("CHARTCITE_TOKEN_KEY is required outside dev")
    path: Path = settings.data_dir / "token.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(new_key_b64())
    return path.read_text().strip()


def audit_keyring(settings: Settings) -> AuditKeyring:
    """The checkpoint signing keys: ``CHARTCITE_AUDIT_KEY``, else derived from the token key."""
    return AuditKeyring.from_config(
        audit_key=settings.audit_key.get_secret_value() if settings.audit_key else None,
        audit_keys_retired=[k.get_secret_value() for k in settings.audit_keys_retired],
        token_key=None if settings.audit_key else token_key(settings),
        token_keys_retired=[k.get_secret_value() for k in settings.token_keys_retired],
    )


def registrations(settings: Settings) -> EhrRegistry:
    """The registered EHRs: ``CHARTCITE_EHRS``, plus one registration per ``iss_allowlist`` entry
    with the shorthand ``client_id``/``client_secret``/``scopes``/``fhir_url_aliases``."""
    regs: list[EhrRegistration] = []
    for e in settings.ehrs:
        regs.append(
            EhrRegistration(
                iss=e.iss,
                client_id=e.client_id,
                auth_method=e.auth_method,
                client_secret=e.client_secret.get_secret_value() if e.client_secret else None,
                scope=e.scope,
                aliases=tuple(e.aliases),
                token_format=e.token_format,
                allow_without_pkce=e.allow_without_pkce,
                name=e.name,
            )
        )
    secret = settings.client_secret.get_secret_value() if settings.client_secret else None
    aliases = {normalise_iss(k): v for k, v in settings.fhir_url_aliases.items()}
    known = {r.iss for r in regs}
    for iss in settings.iss_allowlist:
        if normalise_iss(iss) in known:
            continue
        regs.append(
            EhrRegistration(
                iss=iss,
                client_id=settings.client_id,
                auth_method="client_secret_basic" if secret else "none",
                client_secret=secret,
                scope=settings.scopes,
                aliases=tuple(aliases.get(normalise_iss(iss), ())),
            )
        )
        known.add(normalise_iss(iss))
    return EhrRegistry(regs)


def app_config(settings: Settings) -> AppConfig:
    return AppConfig(
        base_url=settings.base_url,
        ehrs=registrations(settings),
        state_ttl_seconds=settings.state_ttl_seconds,
        session_ttl_seconds=settings.session_ttl_seconds,
        secure_cookies=settings.secure_cookies,
        token_check_seconds=settings.token_check_seconds,
        sync_page_size=settings.sync_page_size,
        sync_lease_seconds=settings.sync_lease_seconds,
        sync_poll_seconds=settings.sync_poll_seconds,
        sync_concurrency=settings.sync_concurrency,
        sync_max_attempts=settings.sync_max_attempts,
        sync_full_every_seconds=settings.sync_full_every_hours * 3600,
        fhir_retry=fhir_retry(settings),
    )


def guard_config(settings: Settings) -> GuardConfig:
    """Limits and headers (``smart_app/guard.py``): the page may be framed by registered EHRs."""
    ehr_origins = sorted(
        {origin(r.iss) for r in registrations(settings)}
        | {o.rstrip("/") for e in settings.ehrs for o in e.frame_origins}
        | {o.rstrip("/") for o in settings.frame_ancestors}
    )
    return GuardConfig(
        max_body_bytes=settings.max_body_bytes,
        session_per_minute=settings.rate_limit_session_per_minute,
        client_per_minute=settings.rate_limit_client_per_minute,
        frame_ancestors=tuple(ehr_origins),
        page_csp=page_csp(),
    )


def fhir_retry(settings: Settings) -> RetryPolicy:
    """How hard each FHIR request tries, from the ``CHARTCITE_FHIR_*`` settings."""
    return RetryPolicy(
        attempts=settings.fhir_retry_attempts,
        base_delay=settings.fhir_backoff_seconds,
        max_retry_after=settings.fhir_max_retry_after_seconds,
        timeout=settings.fhir_request_timeout_seconds,
    )


def llm_config(settings: Settings) -> LlmConfig | None:
    """The model settings (``CHARTCITE_ANTHROPIC_*``, ``CHARTCITE_LLM_*``); ``None``: LLM off."""
    if not settings.llm_enabled or settings.anthropic_api_key is None:
        return None
    return LlmConfig(
        api_key=settings.anthropic_api_key.get_secret_value(),
        base_url=settings.anthropic_base_url,
        model=settings.llm_model,
        max_tokens=settings.llm_max_tokens,
        timeout_seconds=settings.llm_timeout_seconds,
        temperature=settings.llm_temperature,
        max_retries=settings.llm_retries,
        shift_dates=not settings.llm_keep_dates,
        max_evidence=settings.llm_max_evidence,
        stream=settings.llm_stream,
        input_usd_per_mtok=settings.llm_input_usd_per_mtok,
        output_usd_per_mtok=settings.llm_output_usd_per_mtok,
    )


async def open_llm(settings: Settings) -> LlmAnswerer | None:
    """The LLM answerer with its PHI detector (spaCy loads in a thread), when configured."""
    config = llm_config(settings)
    if config is None:
        return None
    detector = await asyncio.to_thread(PresidioDetector)
    return LlmAnswerer(config, detector)


def create_app(
    settings: Settings,
    *,
    database: Database | None = None,
    mounts: dict[str, ASGIApp] | None = None,
    on_ready: Callable[[], None] | None = None,
) -> FastAPI:
    """Build the app; nothing is opened until the lifespan runs."""

    limiter = RateLimiter(
        session_per_minute=settings.rate_limit_session_per_minute,
        client_per_minute=settings.rate_limit_client_per_minute,
        shared=settings.rate_limit_store == "postgres",
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        db = database or open_database(settings)
        engine = create_engine(app_database(db, settings))  # least privilege: not the owner
        validator = Validator(workers=settings.sync_validate_workers)
        try:
            await require_migrated(engine)
            embedder = load_embedder(settings.resolved_model_dir, threads=settings.embed_threads)
            warm_up()
            lexicon()  # parse and compile the clinical lexicon before the first question
            await validator.start()
            cipher = TokenCipher.from_b64(
                token_key(settings),
                tuple(k.get_secret_value() for k in settings.token_keys_retired),
            )
            async with httpx2.AsyncClient(timeout=settings.http_timeout_seconds) as http:
                state = AppState(
                    config=app_config(settings),
                    engine=engine,
                    cipher=cipher,
                    smart=SmartClient(
                        http,
                        discovery_ttl=settings.discovery_ttl_seconds,
                        keys=AppKeys.load_or_create(settings.app_keys_path),
                    ),
                    embedder=embedder,
                    validator=validator,
                )
                state.jobs = SyncJobs(state)
                state.bearer = BearerVerifier(state)
                await state.jobs.close_dead_runs()
                state.jobs.start_worker()  # claims queued jobs, and those of dead workers
                checkpoints = CheckpointWriter(
                    engine,
                    audit_keyring(settings),
                    CheckpointPolicy(
                        every_rows=settings.audit_checkpoint_every_rows,
                        every_seconds=settings.audit_checkpoint_seconds,
                    ),
                )
                await checkpoints.checkpoint()  # anchor what earlier runs appended
                checkpoints.start()
                state.llm = llm = await open_llm(settings)
                app.state.chartcite = state
                limiter.bind(engine)  # shared with every worker from now on
                if on_ready is not None:
                    on_ready()
                async with mcp.running():  # the MCP transport's task group
                    yield
                await state.jobs.shutdown()
                await checkpoints.stop()
                if llm is not None:
                    await llm.close()
        finally:
            limiter.bind(None)
            validator.close()
            await engine.dispose()
            if database is None and db.embedded is not None:
                db.embedded.cleanup()  # `serve` on the embedded server: stop what we started

    app = FastAPIOffline(  # /docs and /redoc from the installed package, pinned (no CDN)
        title="chartcite",
        version="0.1.0",
        lifespan=lifespan,
        description="Answers questions about the launched patient with validated FHIR citations.",
    )
    app.middleware("http")(logs.access_middleware)
    install_routes(app)
    app.include_router(stream_router)
    mcp = install_mcp(app, settings.base_url)  # /mcp: the same bearer auth as /api/*
    app.add_middleware(Guard, config=guard_config(settings), limiter=limiter)  # outermost: last
    for path, sub in (mounts or {}).items():
        app.mount(path, sub)
    return app

"""Composition of the demo: the sandbox EHR mounted at ``/ehr`` beside the app, and a uvicorn
server that can run in the foreground (``chartcite demo``) or in a thread (tests, ``chartcite bench``).
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from urllib.parse import urlsplit

import uvicorn
from fastapi import FastAPI
from pydantic import SecretStr
from starlette.types import ASGIApp

from launch.app import create_app
from launch.db import Database
from launch.sandbox import (
    FaultInjector,
    FaultPlan,
    SandboxClient,
    SandboxConfig,
    SandboxStore,
    create_sandbox_app,
    generate_patients,
    load_fhir_dir,
)
from launch.settings import EhrSettings, Settings


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def free_port_range(count: int, host: str = "127.0.0.1") -> int:
    """A free port with ``count - 1`` free ports after it (a Citus cluster, a set of workers)."""
    for _ in range(50):
        base = free_port(host)
        if base + count > 65535:
            continue
        try:
            for port in range(base, base + count):
                with socket.socket() as s:
                    s.bind((host, port))
        except OSError:
            continue
        return base
    raise RuntimeError(f"no free range of {count} ports on {host}")


def sandbox_store(
    *, patients: int = 20, data: Path | None = None, seed: int = 7, history_scale: float = 1.0
) -> SandboxStore:
    resources = (
        load_fhir_dir(data)
        if data
        else generate_patients(
            n_patients=patients, seed=seed, today=date.today(), history_scale=history_scale
        )
    )
    return SandboxStore(resources)


@dataclass
class Demo:
    settings: Settings
    app: FastAPI
    store: SandboxStore
    faults: FaultPlan

    @property
    def iss(self) -> str:
        return f"{self.settings.base_url}/ehr/fhir"


SECOND_EHR_SECRET = "s3cr+t/with:odd%chars&more="  # RFC 6749 §2.3.1 form-encoding matters


def build_demo(
    settings: Settings,
    store: SandboxStore,
    *,
    database: Database | None = None,
    on_ready: object = None,
    token_ttl: int = 3600,
    second_store: SandboxStore | None = None,
    third_store: SandboxStore | None = None,
) -> Demo:
    """The app with the sandbox EHR at ``/ehr``; the sandbox's FHIR base is registered.

    ``second_store``: a second, independent EHR at ``/ehr2`` (its own keys, tokens and patients —
    ids may overlap the first's), where chartcite is a confidential client (``client_secret_basic``
    with a secret that needs form-encoding) and bearer tokens are verified by the EHR's JWKS.
    ``third_store``: a third at ``/ehr3`` where chartcite is confidential-asymmetric
    (``private_key_jwt``; the EHR reads its keys from ``/.well-known/jwks.json``)."""
    base = settings.base_url
    iss = f"{base}/ehr/fhir"
    if iss not in settings.iss_allowlist:
        settings = settings.model_copy(update={"iss_allowlist": [*settings.iss_allowlist, iss]})
    embedding = _loopback_twin(base)
    if embedding and embedding not in settings.frame_ancestors:
        # The sandbox's embedded-EHR page (``/ehr/embedded``) opened as http://localhost:PORT
        # frames the app at 127.0.0.1: another site, as in a real EHR.
        settings = settings.model_copy(
            update={"frame_ancestors": [*settings.frame_ancestors, embedding]}
        )
    sandbox = create_sandbox_app(
        SandboxConfig(
            base_url=f"{base}/ehr",
            app_launch_url=f"{base}/launch",
            clients=(
                SandboxClient(client_id=settings.client_id, redirect_uris=(settings.redirect_uri,)),
                # The backend client `chartcite sync --bulk` uses (client credentials).
                SandboxClient(
                    client_id=settings.bulk_client_id,
                    redirect_uris=(),
                    client_secret=settings.resolved_bulk_secret(),
                ),
                # The same backend service as SMART Backend Services says: private_key_jwt,
                # chartcite's keys read from its JWKS URL (CHARTCITE_BULK_AUTH_METHOD).
                SandboxClient(
                    client_id=f"{settings.bulk_client_id}-jwt",
                    redirect_uris=(),
                    jwks_uri=f"{base}/.well-known/jwks.json",
                ),
            ),
            signing_key_path=settings.data_dir / "sandbox-signing-key.json",
            access_token_ttl=token_ttl,
        ),
        store,
    )
    faults = FaultPlan()
    mounts: dict[str, ASGIApp] = {"/ehr": FaultInjector(sandbox, faults)}
    extra = []
    if second_store is not None:
        extra.append(("/ehr2", second_store, "chartcite-b", "second sandbox EHR"))
    if third_store is not None:
        extra.append(("/ehr3", third_store, "chartcite-c", "third sandbox EHR"))
    for path, extra_store, client_id, name in extra:
        asymmetric = path == "/ehr3"
        registration = EhrSettings(
            iss=f"{base}{path}/fhir",
            client_id=client_id,
            auth_method="private_key_jwt" if asymmetric else "client_secret_basic",
            client_secret=None if asymmetric else SecretStr(SECOND_EHR_SECRET),
            scope=settings.scopes,
            # EHR 2's apps' bearer tokens are checked by its JWKS, EHR 3's by introspection.
            token_format="opaque" if asymmetric else "jwt",
            name=name,
        )
        if not any(e.iss.rstrip("/") == registration.iss for e in settings.ehrs):
            settings = settings.model_copy(update={"ehrs": [*settings.ehrs, registration]})
        client = SandboxClient(
            client_id=client_id,
            redirect_uris=(settings.redirect_uri,),
            client_secret=None if asymmetric else SECOND_EHR_SECRET,
            jwks_uri=f"{base}/.well-known/jwks.json" if asymmetric else None,
        )
        mounts[path] = create_sandbox_app(
            SandboxConfig(
                base_url=f"{base}{path}",
                app_launch_url=f"{base}/launch",
                clients=(client,),
                signing_key_path=settings.data_dir / f"sandbox{path[-1]}-signing-key.json",
                access_token_ttl=token_ttl,
            ),
            extra_store,
        )
    app = create_app(
        settings,
        database=database,
        mounts=mounts,
        on_ready=on_ready,  # type: ignore[arg-type]
    )
    return Demo(settings=settings, app=app, store=store, faults=faults)


def _loopback_twin(base: str) -> str | None:
    """``http://localhost:PORT`` for an app served at ``http://127.0.0.1:PORT``, else ``None``."""
    parts = urlsplit(base)
    if parts.hostname != "127.0.0.1":
        return None
    return f"{parts.scheme}://localhost" + (f":{parts.port}" if parts.port else "")


class BackgroundServer:
    """uvicorn in a daemon thread with its own event loop; ``start()`` waits until it serves."""

    def __init__(self, app: FastAPI, host: str, port: int) -> None:
        self.server = uvicorn.Server(
            uvicorn.Config(
                app, host=host, port=port, log_level="warning", access_log=False, lifespan="on"
            )
        )
        self.thread = threading.Thread(target=self._run, daemon=True, name="chartcite-server")
        self.error: BaseException | None = None

    def _run(self) -> None:
        try:
            asyncio.run(self.server.serve())
        except BaseException as exc:  # noqa: BLE001 - reported to the starting thread
            self.error = exc

    def start(self, timeout: float = 60.0) -> None:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start ({self.error!r})")
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)

"""``create_sandbox_app``: the sandbox EHR as one Starlette application.

Mountable anywhere (e.g. ``main_app.mount("/ehr", app)``): routes are relative, and every absolute
URL it emits comes from ``SandboxConfig.base_url``. All state (launches, codes, grants, signing
keys, the apps' cached JWK Sets, seen assertion ids) lives in the returned app, so several
sandboxes can run side by side; nothing happens at import time.

Routes: ``/auth/{authorize,token,revoke,introspect,jwks}`` (``authorization_server``),
``/fhir/…`` (``fhir_api``), ``/launch``, ``/patients``, ``/``, ``/smart-style.json``
(``launcher``) and the test controls ``/_control/{revoke,rotate-key}`` (``control``).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from launch.sandbox.authorization_server import SandboxAuthorizationServer
from launch.sandbox.client_jwks import ClientKeys, JwksFetcher, fetch_jwks
from launch.sandbox.config import SandboxConfig
from launch.sandbox.control import Controls
from launch.sandbox.fhir_api import FhirApi
from launch.sandbox.grant_store import GrantStore
from launch.sandbox.keys import KeyRing, SigningKey
from launch.sandbox.launch_context import LaunchRegistry
from launch.sandbox.launcher import Launcher
from launch.sandbox.store import SandboxStore
from launch.sandbox.tokens import TokenIssuer


def create_sandbox_app(
    config: SandboxConfig,
    store: SandboxStore,
    *,
    clock: Callable[[], float] = time.time,
    signing_key: SigningKey | None = None,
    jwks_fetcher: JwksFetcher = fetch_jwks,
) -> Starlette:
    """Build the sandbox EHR (authorization server, FHIR API, launcher, controls) over ``store``.

    ``clock``, ``signing_key`` and ``jwks_fetcher`` (how a client's ``jwks_uri`` is read) are for
    tests; by default the first signing key is read from (or created at)
    ``config.signing_key_path``, or generated in memory.
    """
    if signing_key is None:
        path = config.signing_key_path
        signing_key = SigningKey.load_or_create(path) if path else SigningKey.generate()
    keys = KeyRing(signing_key)
    launches = LaunchRegistry(clock)
    grants = GrantStore(clock)
    tokens = TokenIssuer(
        keys, grants, fhir_base=config.fhir_base, ttl=config.access_token_ttl, clock=clock
    )
    client_keys = ClientKeys(config.clients, fetcher=jwks_fetcher, clock=clock)
    server = SandboxAuthorizationServer(
        config=config, store=store, keys=keys, client_keys=client_keys, launches=launches,
        grants=grants, tokens=tokens, clock=clock,
    )  # fmt: skip

    async def jwks(request: Request) -> Response:
        return JSONResponse(keys.jwks())

    routes = [
        Route("/auth/authorize", server.authorize_endpoint, methods=["GET"]),
        Route("/auth/token", server.token_endpoint, methods=["POST"]),
        Route("/auth/revoke", server.revocation_endpoint, methods=["POST"]),
        Route("/auth/introspect", server.introspection_endpoint, methods=["POST"]),
        Route("/auth/jwks", jwks, methods=["GET"]),
        *FhirApi(config, store, tokens).routes(),
        *Launcher(config, store, launches).routes(),
        *Controls(grants, keys).routes(),
    ]
    app = Starlette(routes=routes)
    app.state.sandbox_config = config
    app.state.sandbox_store = store
    return app

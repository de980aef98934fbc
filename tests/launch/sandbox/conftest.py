"""Fixtures for the sandbox EHR tests: one signing key per session, real servers per test/module."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import httpx2
import pytest
from joserfc.jwk import ECKey, RSAKey

from launch.sandbox import SandboxClient, SandboxConfig, SandboxStore, create_sandbox_app
from launch.sandbox.client_jwks import JwksFetcher, fetch_jwks
from launch.sandbox.keys import SigningKey
from tests.launch.sandbox.sandbox_support import (
    APP_CALLBACK_PATH,
    APP_LAUNCH_PATH,
    CLIENT_ID,
    CLIENT_SECRET,
    SECRET_CLIENT_ID,
    ClientsFor,
    FakeClock,
    SandboxFactory,
    SmartClient,
    build_resources,
    serve,
)


@pytest.fixture(scope="session")
def signing_key() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture(scope="session")
def app_rsa_key() -> RSAKey:
    """The private RSA key of an asymmetric app (RS384 assertions)."""
    return RSAKey.generate_key(2048, auto_kid=True)


@pytest.fixture(scope="session")
def app_ec_key() -> ECKey:
    """The private P-384 key of an asymmetric app (ES384 assertions)."""
    return ECKey.generate_key("P-384", auto_kid=True)


def make_config(
    origin: str, base: str, *, clients: Sequence[SandboxClient] = (), **overrides: object
) -> SandboxConfig:
    """The test sandbox's config: the public and the secret client, plus ``clients``."""
    callback = f"{origin}{APP_CALLBACK_PATH}"
    registered = (
        SandboxClient(client_id=CLIENT_ID, redirect_uris=(callback,)),
        SandboxClient(
            client_id=SECRET_CLIENT_ID, redirect_uris=(callback,), client_secret=CLIENT_SECRET
        ),
        *clients,
    )
    return SandboxConfig(
        base_url=base,
        app_launch_url=f"{origin}{APP_LAUNCH_PATH}",
        clients=registered,
        **overrides,  # type: ignore[arg-type]
    )


@pytest.fixture
def sandbox_factory(signing_key: SigningKey) -> SandboxFactory:
    """``with sandbox_factory(clock=…, clients=…, jwks_fetcher=…, **config_overrides) as client:``
    a fresh running sandbox; ``clients(origin)`` gives extra registered clients."""

    @contextmanager
    def factory(
        clock: FakeClock | None = None,
        *,
        clients: ClientsFor = lambda origin: (),
        jwks_fetcher: JwksFetcher = fetch_jwks,
        **overrides: object,
    ) -> Iterator[SmartClient]:
        clock = clock or FakeClock()

        def build(origin: str) -> object:
            config = make_config(origin, origin, clients=clients(origin), **overrides)
            return create_sandbox_app(
                config,
                SandboxStore(build_resources()),
                clock=clock,
                signing_key=signing_key,
                jwks_fetcher=jwks_fetcher,
            )

        with serve(build) as origin, httpx2.Client(timeout=10) as http:
            yield SmartClient(http=http, base=origin, origin=origin)

    return factory


@pytest.fixture(scope="module")
def sandbox(signing_key: SigningKey) -> Iterator[SmartClient]:
    """A sandbox shared by a module's tests (real clock)."""

    def build(origin: str) -> object:
        config = make_config(origin, origin)
        return create_sandbox_app(config, SandboxStore(build_resources()), signing_key=signing_key)

    with serve(build) as origin, httpx2.Client(timeout=10) as http:
        yield SmartClient(http=http, base=origin, origin=origin)

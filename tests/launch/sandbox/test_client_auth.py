"""Client authentication at the sandbox's token endpoint over real HTTP: private_key_jwt
(RFC 7523 §2.2, SMART client-confidential-asymmetric) and client_secret_basic (RFC 6749 §2.3.1)."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import quote_plus

import httpx2
import pytest
from joserfc.jwk import ECKey, Key, RSAKey
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from launch.sandbox import SandboxClient, SandboxStore, create_sandbox_app
from launch.sandbox.client_jwks import JwksUnavailable
from launch.sandbox.keys import SigningKey
from tests.launch.sandbox.conftest import make_config
from tests.launch.sandbox.sandbox_support import (
    APP_CALLBACK_PATH,
    BACKEND_ID,
    FULL_SCOPE,
    FakeClock,
    SandboxFactory,
    SmartClient,
    assertion_form,
    build_resources,
    client_assertion,
    public_jwks,
    serve,
)

ASYM_ID = "asym-app"
SYSTEM_SCOPE = "system/*.rs"


@pytest.fixture(scope="module")
def asym(signing_key: SigningKey, app_rsa_key: RSAKey, app_ec_key: ECKey) -> Iterator[SmartClient]:
    """A sandbox (real clock) with an asymmetric app and an asymmetric backend service."""

    def build(origin: str) -> object:
        jwks = public_jwks(app_rsa_key, app_ec_key)
        clients = (
            SandboxClient(ASYM_ID, (f"{origin}{APP_CALLBACK_PATH}",), jwks=jwks),
            SandboxClient(BACKEND_ID, (), jwks=jwks),
        )
        config = make_config(origin, origin, clients=clients)
        return create_sandbox_app(config, SandboxStore(build_resources()), signing_key=signing_key)

    with serve(build) as origin, httpx2.Client(timeout=10) as http:
        yield SmartClient(http=http, base=origin, origin=origin, client_id=ASYM_ID)


#: Runs a test once per SMART assertion algorithm, with the app key of that type.
each_algorithm = pytest.mark.parametrize(
    ("alg", "key_name"), [("RS384", "app_rsa_key"), ("ES384", "app_ec_key")], ids=["RS384", "ES384"]
)


def token_url(client: SmartClient) -> str:
    return f"{client.base}/auth/token"


def backend_token(
    client: SmartClient, assertion: str, scope: str = SYSTEM_SCOPE
) -> httpx2.Response:
    data = {"grant_type": "client_credentials", "scope": scope, **assertion_form(assertion)}
    return client.http.post(token_url(client), data=data)


def assert_invalid_client(response: httpx2.Response) -> None:
    assert response.status_code == 401, response.text
    assert response.json()["error"] == "invalid_client"
    assert response.headers["www-authenticate"].startswith('Basic realm="')
    assert "access_token" not in response.json()


@each_algorithm
def test_private_key_jwt_code_exchange_and_refresh(
    asym: SmartClient, request: pytest.FixtureRequest, alg: str, key_name: str
) -> None:
    key: Key = request.getfixturevalue(key_name)
    launch_id = asym.launch(patient="pat-a")
    code = asym.code_from(asym.authorize(FULL_SCOPE, launch=launch_id))

    def assertion() -> dict[str, str]:
        signed = client_assertion(
            key, client_id=ASYM_ID, aud=token_url(asym), now=time.time(), alg=alg
        )
        return assertion_form(signed)

    exchanged = asym.exchange(code, **assertion())
    assert exchanged.status_code == 200, exchanged.text
    token = exchanged.json()
    assert token["patient"] == "pat-a"
    assert asym.get(f"{asym.fhir}/Patient/pat-a", token["access_token"]).status_code == 200

    refresh = {"grant_type": "refresh_token", "refresh_token": token["refresh_token"]}
    without = asym.http.post(token_url(asym), data={**refresh, "client_id": ASYM_ID})
    assert_invalid_client(without)  # an asymmetric client may not fall back to "none"
    refreshed = asym.http.post(token_url(asym), data={**refresh, **assertion()})
    assert refreshed.status_code == 200, refreshed.text
    assert refreshed.json()["patient"] == "pat-a"


@each_algorithm
def test_private_key_jwt_backend_service_gets_system_scopes(
    asym: SmartClient, request: pytest.FixtureRequest, alg: str, key_name: str
) -> None:
    key: Key = request.getfixturevalue(key_name)
    signed = client_assertion(
        key, client_id=BACKEND_ID, aud=token_url(asym), now=time.time(), alg=alg
    )
    response = backend_token(asym, signed)
    assert response.status_code == 200, response.text
    token = response.json()
    assert token["scope"] == SYSTEM_SCOPE
    assert "refresh_token" not in token
    assert "patient" not in token
    assert asym.get(f"{asym.fhir}/Patient/pat-b", token["access_token"]).status_code == 200

    signed = client_assertion(
        key, client_id=BACKEND_ID, aud=token_url(asym), now=time.time(), alg=alg
    )
    not_system = backend_token(asym, signed, scope="patient/*.rs")
    assert not_system.status_code == 400
    anonymous = asym.http.post(
        token_url(asym),
        data={"grant_type": "client_credentials", "scope": SYSTEM_SCOPE, "client_id": BACKEND_ID},
    )
    assert_invalid_client(anonymous)


BAD_ASSERTIONS: Mapping[str, dict[str, Any]] = {
    "unknown-kid": {"kid": "not-registered"},
    "alg-RS256": {"alg": "RS256"},
    "aud-fhir-base": {"aud": "{fhir}"},
    "aud-authorize": {"aud": "{base}/auth/authorize"},
    "exp-too-far": {"lifetime": 3600},
    "expired": {"lifetime": -30},
    "no-exp": {"exp": None},
    "no-jti": {"jti": None},
    "iss-not-sub": {"iss": "someone-else"},
    "unknown-client": {"client_id": "nobody"},
}


@pytest.mark.parametrize("case", list(BAD_ASSERTIONS), ids=list(BAD_ASSERTIONS))
def test_bad_assertions_are_invalid_client(
    asym: SmartClient, app_rsa_key: RSAKey, case: str
) -> None:
    params = dict(BAD_ASSERTIONS[case])
    client_id = params.pop("client_id", BACKEND_ID)
    aud = str(params.pop("aud", token_url(asym))).format(fhir=asym.fhir, base=asym.base)
    signed = client_assertion(app_rsa_key, client_id=client_id, aud=aud, now=time.time(), **params)
    assert_invalid_client(backend_token(asym, signed))


def test_assertion_signed_by_an_unregistered_key(asym: SmartClient, app_rsa_key: RSAKey) -> None:
    stranger = RSAKey.generate_key(2048, auto_kid=True)
    now = time.time()
    # the stranger's own kid, then a registered kid over the stranger's signature
    for kid in (stranger.kid, app_rsa_key.kid):
        signed = client_assertion(
            stranger, client_id=BACKEND_ID, aud=token_url(asym), now=now, kid=kid
        )
        assert_invalid_client(backend_token(asym, signed))


def test_replayed_jti_is_refused(asym: SmartClient, app_ec_key: ECKey) -> None:
    def signed(jti: str, lifetime: int) -> str:
        return client_assertion(
            app_ec_key,
            client_id=BACKEND_ID,
            aud=token_url(asym),
            now=time.time(),
            alg="ES384",
            jti=jti,
            lifetime=lifetime,
        )

    first = signed("replay-1", 200)
    assert backend_token(asym, first).status_code == 200
    assert_invalid_client(backend_token(asym, first))
    # a new JWT with the same jti is a replay too; a new jti is not
    assert_invalid_client(backend_token(asym, signed("replay-1", 250)))
    assert backend_token(asym, signed("replay-2", 250)).status_code == 200


def test_secret_and_public_clients_cannot_use_assertions(
    asym: SmartClient, app_rsa_key: RSAKey
) -> None:
    for client_id in ("confidential-app", "chartcite"):
        signed = client_assertion(
            app_rsa_key, client_id=client_id, aud=token_url(asym), now=time.time()
        )
        assert_invalid_client(backend_token(asym, signed))


def test_assertion_lifetime_is_at_most_five_minutes(
    sandbox_factory: SandboxFactory, app_rsa_key: RSAKey
) -> None:
    clock = FakeClock()
    jwks = public_jwks(app_rsa_key)
    with sandbox_factory(clock, clients=lambda o: [SandboxClient(BACKEND_ID, (), jwks=jwks)]) as c:
        at_limit = client_assertion(
            app_rsa_key, client_id=BACKEND_ID, aud=token_url(c), now=clock.now, lifetime=300
        )
        assert backend_token(c, at_limit).status_code == 200
        past_limit = client_assertion(
            app_rsa_key, client_id=BACKEND_ID, aud=token_url(c), now=clock.now, lifetime=301
        )
        assert_invalid_client(backend_token(c, past_limit))

        # a jti is remembered until its assertion expires, then the assertion itself is refused
        clock.advance(301)
        assert_invalid_client(backend_token(c, at_limit))


class JwksServer:
    """The app's JWKS endpoint: serves ``document``, counts requests."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self.requests = 0

    def app(self, origin: str) -> Starlette:
        async def jwks(request: Request) -> Response:
            self.requests += 1
            return JSONResponse(self.document)

        return Starlette(routes=[Route("/jwks.json", jwks)])


def test_jwks_uri_is_cached_and_refetched_for_a_new_kid(
    sandbox_factory: SandboxFactory, app_rsa_key: RSAKey, app_ec_key: ECKey
) -> None:
    clock = FakeClock()
    served = JwksServer(public_jwks(app_rsa_key))
    with serve(served.app) as jwks_origin:
        uri_client = SandboxClient(BACKEND_ID, (), jwks_uri=f"{jwks_origin}/jwks.json")
        with sandbox_factory(clock, clients=lambda origin: [uri_client]) as c:

            def token_with(key: Key, alg: str) -> httpx2.Response:
                signed = client_assertion(
                    key, client_id=BACKEND_ID, aud=token_url(c), now=clock.now, alg=alg
                )
                return backend_token(c, signed)

            assert token_with(app_rsa_key, "RS384").status_code == 200
            assert token_with(app_rsa_key, "RS384").status_code == 200
            assert served.requests == 1  # cached

            served.document = public_jwks(app_ec_key)  # the app rotates its key
            assert token_with(app_ec_key, "ES384").status_code == 200
            assert served.requests == 2  # unknown kid: fetched again once
            assert token_with(app_rsa_key, "RS384").status_code == 401  # dropped key
            assert served.requests == 3

            clock.advance(61)
            assert token_with(app_ec_key, "ES384").status_code == 200
            assert served.requests == 4  # stale after 60 seconds


def test_unreachable_jwks_uri_is_invalid_client(
    sandbox_factory: SandboxFactory, app_rsa_key: RSAKey
) -> None:
    asked: list[str] = []

    async def failing(url: str) -> Mapping[str, Any]:
        asked.append(url)
        raise JwksUnavailable(url)

    uri_client = SandboxClient(BACKEND_ID, (), jwks_uri="https://app.example/jwks.json")
    with sandbox_factory(clients=lambda origin: [uri_client], jwks_fetcher=failing) as c:
        signed = client_assertion(
            app_rsa_key, client_id=BACKEND_ID, aud=token_url(c), now=time.time()
        )
        assert_invalid_client(backend_token(c, signed))
    assert asked == ["https://app.example/jwks.json"]


ODD_ID = "odd:app+1"
ODD_SECRET = "p+s/w:r%d&x=y z"


def test_client_secret_basic_decodes_form_urlencoded_credentials(
    sandbox_factory: SandboxFactory,
) -> None:
    odd = SandboxClient(
        ODD_ID, (), client_secret=ODD_SECRET, token_endpoint_auth_method="client_secret_basic"
    )
    with sandbox_factory(clients=lambda origin: [odd]) as c:

        def with_basic(user: str, password: str) -> httpx2.Response:
            basic = base64.b64encode(f"{user}:{password}".encode()).decode()
            return c.http.post(
                token_url(c),
                data={"grant_type": "client_credentials", "scope": SYSTEM_SCOPE},
                headers={"Authorization": f"Basic {basic}"},
            )

        encoded = with_basic(quote_plus(ODD_ID), quote_plus(ODD_SECRET))
        assert encoded.status_code == 200, encoded.text
        assert_invalid_client(with_basic(ODD_ID, ODD_SECRET))  # not encoded: RFC 6749 §2.3.1
        post = c.http.post(
            token_url(c),
            data={
                "grant_type": "client_credentials",
                "scope": SYSTEM_SCOPE,
                "client_id": ODD_ID,
                "client_secret": ODD_SECRET,
            },
        )
        assert_invalid_client(post)  # registered for client_secret_basic only

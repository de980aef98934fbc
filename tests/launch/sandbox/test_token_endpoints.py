"""Token revocation (RFC 7009) and introspection (RFC 7662, SMART token introspection) over real
HTTP, with public, secret and private_key_jwt clients."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet

from launch.sandbox import SandboxClient, SandboxStore, create_sandbox_app
from launch.sandbox.keys import SigningKey
from tests.launch.sandbox.conftest import make_config
from tests.launch.sandbox.sandbox_support import (
    BACKEND_ID,
    CLIENT_ID,
    CLIENT_SECRET,
    FULL_SCOPE,
    SECRET_CLIENT_ID,
    SmartClient,
    assertion_form,
    build_resources,
    client_assertion,
    public_jwks,
    serve,
)


@pytest.fixture(scope="module")
def ehr(signing_key: SigningKey, app_ec_key: ECKey) -> Iterator[SmartClient]:
    """A sandbox with an asymmetric backend client (a resource server, say) beside the others."""

    def build(origin: str) -> object:
        jwks = public_jwks(app_ec_key)
        config = make_config(origin, origin, clients=[SandboxClient(BACKEND_ID, (), jwks=jwks)])
        return create_sandbox_app(config, SandboxStore(build_resources()), signing_key=signing_key)

    with serve(build) as origin, httpx2.Client(timeout=10) as http:
        yield SmartClient(http=http, base=origin, origin=origin)


def post(client: SmartClient, path: str, data: dict[str, str], **kwargs: Any) -> httpx2.Response:
    return client.http.post(f"{client.base}/auth/{path}", data=data, **kwargs)


def active(client: SmartClient, token: str) -> bool:
    body = post(client, "introspect", {"token": token, "client_id": CLIENT_ID}).json()
    return bool(body["active"])


def refresh_status(client: SmartClient, refresh_token: str) -> str:
    data = {"grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": CLIENT_ID}
    response = post(client, "token", data)
    return "ok" if response.status_code == 200 else str(response.json()["error"])


def backend_assertion(client: SmartClient, key: ECKey) -> dict[str, str]:
    signed = client_assertion(
        key, client_id=BACKEND_ID, aud=f"{client.base}/auth/token", now=time.time(), alg="ES384"
    )
    return assertion_form(signed)


@pytest.mark.parametrize("which", ["access_token", "refresh_token"])
def test_revoking_either_token_revokes_the_grant(ehr: SmartClient, which: str) -> None:
    token = ehr.ehr_token(FULL_SCOPE, patient="pat-a")
    other = ehr.ehr_token(FULL_SCOPE, patient="pat-a")

    response = post(ehr, "revoke", {"token": token[which], "client_id": CLIENT_ID})
    assert response.status_code == 200
    assert response.json() == {}

    assert ehr.get(f"{ehr.fhir}/Patient/pat-a", token["access_token"]).status_code == 401
    assert not active(ehr, token["access_token"])
    assert not active(ehr, token["refresh_token"])
    assert refresh_status(ehr, token["refresh_token"]) == "invalid_grant"
    # another grant of the same client and patient is untouched
    assert ehr.get(f"{ehr.fhir}/Patient/pat-a", other["access_token"]).status_code == 200
    assert refresh_status(ehr, other["refresh_token"]) == "ok"


@pytest.mark.parametrize("hint", ["refresh_token", "id_token"], ids=["wrong-hint", "unknown-hint"])
def test_revocation_looks_past_the_hint(ehr: SmartClient, hint: str) -> None:
    token = ehr.ehr_token(FULL_SCOPE, patient="pat-a")
    data = {"token": token["access_token"], "token_type_hint": hint, "client_id": CLIENT_ID}
    assert post(ehr, "revoke", data).status_code == 200
    assert not active(ehr, token["access_token"])


def test_revocation_answers_200_but_leaves_other_clients_tokens(ehr: SmartClient) -> None:
    token = ehr.ehr_token(FULL_SCOPE, patient="pat-a")
    assert (
        post(ehr, "revoke", {"token": "no-such-token", "client_id": CLIENT_ID}).status_code == 200
    )
    basic = base64.b64encode(f"{SECRET_CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
    foreign = post(
        ehr, "revoke", {"token": token["access_token"]}, headers={"Authorization": f"Basic {basic}"}
    )
    assert foreign.status_code == 200
    assert active(ehr, token["access_token"])  # not the secret client's token to revoke


def test_revocation_needs_client_authentication(ehr: SmartClient) -> None:
    token = ehr.ehr_token(FULL_SCOPE, patient="pat-a")
    anonymous = post(ehr, "revoke", {"token": token["access_token"]})
    assert anonymous.status_code == 401
    assert anonymous.json()["error"] == "invalid_client"
    secretless = post(
        ehr, "revoke", {"token": token["access_token"], "client_id": SECRET_CLIENT_ID}
    )
    assert secretless.status_code == 401
    assert active(ehr, token["access_token"])


def test_backend_revokes_its_token_with_private_key_jwt(
    ehr: SmartClient, app_ec_key: ECKey
) -> None:
    data = {"grant_type": "client_credentials", "scope": "system/*.rs"}
    token = post(ehr, "token", {**data, **backend_assertion(ehr, app_ec_key)}).json()
    assert active(ehr, token["access_token"])
    revoke = {"token": token["access_token"], **backend_assertion(ehr, app_ec_key)}
    assert post(ehr, "revoke", revoke).status_code == 200
    assert not active(ehr, token["access_token"])


def test_introspection_fields_match_the_access_token(ehr: SmartClient) -> None:
    token = ehr.ehr_token(FULL_SCOPE, patient="pat-b", practitioner="prac-1")
    keys = KeySet.import_key_set(ehr.http.get(f"{ehr.base}/auth/jwks").json())
    claims = jwt.decode(token["access_token"], keys, algorithms=["RS256"]).claims

    body = post(ehr, "introspect", {"token": token["access_token"], "client_id": CLIENT_ID}).json()
    assert body == {
        "active": True,
        "token_type": "Bearer",
        "scope": FULL_SCOPE,
        "client_id": CLIENT_ID,
        "sub": "prac-1",
        "fhirUser": "Practitioner/prac-1",
        "patient": "pat-b",
        "iss": ehr.fhir,
        "iat": claims["iat"],
        "exp": claims["iat"] + 3600,
    }


def test_resource_servers_authenticate_to_introspection(
    ehr: SmartClient, app_ec_key: ECKey
) -> None:
    token = ehr.ehr_token(FULL_SCOPE, patient="pat-a")["access_token"]
    basic = base64.b64encode(f"{SECRET_CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
    wrong = base64.b64encode(f"{SECRET_CLIENT_ID}:not-it".encode()).decode()
    ways: dict[str, tuple[dict[str, str], dict[str, str]]] = {
        "bearer": ({}, {"Authorization": f"Bearer {token}"}),
        "basic": ({}, {"Authorization": f"Basic {basic}"}),
        "post": ({"client_id": SECRET_CLIENT_ID, "client_secret": CLIENT_SECRET}, {}),
        "private_key_jwt": (backend_assertion(ehr, app_ec_key), {}),
    }
    for way, (form, headers) in ways.items():
        response = post(ehr, "introspect", {"token": token, **form}, headers=headers)
        assert response.status_code == 200, way
        assert response.json()["patient"] == "pat-a", way
    refused = post(ehr, "introspect", {"token": token}, headers={"Authorization": f"Basic {wrong}"})
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"].startswith('Basic realm="')


def test_introspection_looks_past_the_hint(ehr: SmartClient) -> None:
    token = ehr.ehr_token(FULL_SCOPE, patient="pat-a")
    data = {"token": token["refresh_token"], "token_type_hint": "access_token"}
    body = post(ehr, "introspect", {**data, "client_id": CLIENT_ID}).json()
    assert body["active"] is True
    assert body["token_type"] == "refresh_token"

"""Two sandbox EHRs in one server (``/ehr`` and ``/ehr2``) with overlapping patient ids: each has
its own state, and neither accepts the other's tokens, launches or client assertions."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx2
import pytest
from joserfc.jwk import ECKey
from starlette.applications import Starlette
from starlette.routing import Mount

from launch.sandbox import SandboxClient, SandboxStore, create_sandbox_app
from launch.sandbox.keys import SigningKey
from tests.launch.sandbox.conftest import make_config
from tests.launch.sandbox.sandbox_support import (
    BACKEND_ID,
    CLIENT_ID,
    FULL_SCOPE,
    SmartClient,
    assertion_form,
    build_resources,
    client_assertion,
    public_jwks,
    serve,
)


def second_store() -> SandboxStore:
    """The same ids as the first EHR's (pat-a, …), other people behind them."""
    resources = build_resources()
    for resource in resources:
        if resource["resourceType"] == "Patient" and resource["id"] == "pat-a":
            resource["name"] = [{"family": "Hopper", "given": ["Grace"]}]
    return SandboxStore(resources)


@pytest.fixture(scope="module")
def ehrs(signing_key: SigningKey, app_ec_key: ECKey) -> Iterator[tuple[SmartClient, SmartClient]]:
    """Both EHRs under one parent app, signing with the *same* key: only iss/aud tell them apart."""

    def build(origin: str) -> object:
        jwks = public_jwks(app_ec_key)
        backend = SandboxClient(BACKEND_ID, (), jwks=jwks)
        first = create_sandbox_app(
            make_config(origin, f"{origin}/ehr", clients=[backend]),
            SandboxStore(build_resources()),
            signing_key=signing_key,
        )
        second = create_sandbox_app(
            make_config(origin, f"{origin}/ehr2", clients=[backend]),
            second_store(),
            signing_key=signing_key,
        )
        return Starlette(routes=[Mount("/ehr2", second), Mount("/ehr", first)])

    with serve(build) as origin, httpx2.Client(timeout=10) as http:
        yield (
            SmartClient(http=http, base=f"{origin}/ehr", origin=origin),
            SmartClient(http=http, base=f"{origin}/ehr2", origin=origin),
        )


def name_of(client: SmartClient, token: str) -> str:
    patient = client.get(f"{client.fhir}/Patient/pat-a", token).json()
    return str(patient["name"][0]["family"])


def test_each_ehr_serves_its_own_patients(ehrs: tuple[SmartClient, SmartClient]) -> None:
    one, two = ehrs
    token_one = one.ehr_token(FULL_SCOPE, patient="pat-a")
    token_two = two.ehr_token(FULL_SCOPE, patient="pat-a")
    assert name_of(one, token_one["access_token"]) == "Lovelace"
    assert name_of(two, token_two["access_token"]) == "Hopper"
    assert one.http.get(f"{two.fhir}/.well-known/smart-configuration").json()["issuer"] == two.fhir


def test_tokens_of_one_ehr_are_refused_by_the_other(ehrs: tuple[SmartClient, SmartClient]) -> None:
    one, two = ehrs
    token = one.ehr_token(FULL_SCOPE, patient="pat-a")
    foreign = two.get(f"{two.fhir}/Patient/pat-a", token["access_token"])
    assert foreign.status_code == 401
    assert foreign.headers["www-authenticate"].startswith(f'Bearer realm="{two.fhir}"')
    introspected = two.http.post(
        f"{two.base}/auth/introspect", data={"token": token["access_token"], "client_id": CLIENT_ID}
    )
    assert introspected.json() == {"active": False}
    refresh = two.http.post(
        f"{two.base}/auth/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": token["refresh_token"],
            "client_id": CLIENT_ID,
        },
    )
    assert refresh.json()["error"] == "invalid_grant"
    assert one.get(f"{one.fhir}/Patient/pat-a", token["access_token"]).status_code == 200


def test_launches_and_assertions_belong_to_one_ehr(
    ehrs: tuple[SmartClient, SmartClient], app_ec_key: ECKey
) -> None:
    one, two = ehrs
    launch_id = one.launch(patient="pat-a")
    response = two.authorize(FULL_SCOPE, launch=launch_id, aud=two.fhir)
    assert "error=invalid_request" in response.headers["location"]

    signed = client_assertion(
        app_ec_key, client_id=BACKEND_ID, aud=f"{one.base}/auth/token", now=time.time(), alg="ES384"
    )
    data = {"grant_type": "client_credentials", "scope": "system/*.rs", **assertion_form(signed)}
    assert two.http.post(f"{two.base}/auth/token", data=data).status_code == 401
    assert one.http.post(f"{one.base}/auth/token", data=data).status_code == 200


def test_controls_act_on_one_ehr_only(ehrs: tuple[SmartClient, SmartClient]) -> None:
    one, two = ehrs
    token_one = one.ehr_token(FULL_SCOPE, patient="pat-a")["access_token"]
    token_two = two.ehr_token(FULL_SCOPE, patient="pat-a")["access_token"]
    kids_two = two.http.get(f"{two.base}/auth/jwks").json()

    assert one.http.post(f"{one.base}/_control/revoke", data={"patient": "pat-a"}).json()["revoked"]
    assert one.get(f"{one.fhir}/Patient/pat-a", token_one).status_code == 401
    assert two.get(f"{two.fhir}/Patient/pat-a", token_two).status_code == 200

    one.http.post(f"{one.base}/_control/rotate-key")
    assert two.http.get(f"{two.base}/auth/jwks").json() == kids_two
    assert two.get(f"{two.fhir}/Patient/pat-a", token_two).status_code == 200

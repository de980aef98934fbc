"""Per-launch options of ``GET /launch`` over real HTTP: simulated authorize and token errors
(RFC 6749 §4.1.2.1, §5.2), token lifetimes and SMART 2.x launch context extras."""

from __future__ import annotations

import pytest

from launch.sandbox.oauth_errors import AUTHORIZE_ERRORS, TOKEN_ERRORS
from tests.launch.sandbox.sandbox_support import (
    CLIENT_ID,
    FULL_SCOPE,
    FakeClock,
    SandboxFactory,
    SmartClient,
    query_of,
)


@pytest.mark.parametrize("code", list(AUTHORIZE_ERRORS))
def test_authorize_error_redirects_back_with_description_and_state(
    sandbox: SmartClient, code: str
) -> None:
    launch_id = sandbox.launch(patient="pat-a", error=code)
    response = sandbox.authorize(FULL_SCOPE, launch=launch_id)

    assert response.status_code == 302
    location = response.headers["location"]
    assert location.startswith(sandbox.redirect_uri + "?")
    assert "<" not in location and "%3C" in location and "%26" in location  # escaped
    query = query_of(location)
    assert query["error"] == code
    assert query["error_description"] == AUTHORIZE_ERRORS[code]
    assert "<" in query["error_description"] and "&" in query["error_description"]
    assert query["state"] == "state-123"
    assert "code" not in query


def test_deny_is_access_denied(sandbox: SmartClient) -> None:
    query = query_of(
        sandbox.authorize(FULL_SCOPE, launch=sandbox.launch(patient="pat-a", deny="1")).headers[
            "location"
        ]
    )
    assert query["error"] == "access_denied"
    assert query["error_description"] == AUTHORIZE_ERRORS["access_denied"]


def test_authorize_error_still_validates_the_request_first(sandbox: SmartClient) -> None:
    launch_id = sandbox.launch(patient="pat-a", error="server_error")
    response = sandbox.authorize(FULL_SCOPE, launch=launch_id, redirect_uri="http://127.0.0.1:1/x")
    assert response.status_code == 400  # an unregistered redirect_uri is never redirected to
    assert "location" not in response.headers


@pytest.mark.parametrize("code", list(TOKEN_ERRORS))
def test_token_error_fails_the_code_exchange(sandbox: SmartClient, code: str) -> None:
    launch_id = sandbox.launch(patient="pat-a", token_error=code)
    code_value = sandbox.code_from(sandbox.authorize(FULL_SCOPE, launch=launch_id))
    verifier = sandbox.last_verifier
    response = sandbox.exchange(code_value, verifier)

    assert response.status_code == TOKEN_ERRORS[code]
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["error"] == code
    assert body["error_description"]
    assert "access_token" not in body
    if code == "invalid_client":
        assert response.headers["www-authenticate"].startswith('Basic realm="')
    else:
        assert "www-authenticate" not in response.headers
    assert sandbox.exchange(code_value, verifier).json()["error"] == "invalid_grant"  # spent


def test_token_error_is_only_for_its_launch(sandbox: SmartClient) -> None:
    sandbox.launch(patient="pat-a", token_error="server_error")
    assert sandbox.ehr_token(FULL_SCOPE, patient="pat-a")["access_token"]


def refresh(client: SmartClient, refresh_token: str) -> dict[str, object]:
    data = {"grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": CLIENT_ID}
    response = client.http.post(f"{client.base}/auth/token", data=data)
    body: dict[str, object] = response.json()
    body["status"] = response.status_code
    return body


def test_token_ttl_sets_initial_and_refreshed_lifetimes(sandbox_factory: SandboxFactory) -> None:
    clock = FakeClock()
    with sandbox_factory(clock=clock) as client:
        token = client.ehr_token(FULL_SCOPE, patient="pat-a", token_ttl="90")
        assert token["expires_in"] == 90
        assert client.ehr_token(FULL_SCOPE, patient="pat-a")["expires_in"] == 3600

        clock.advance(89)
        assert client.get(f"{client.fhir}/Patient/pat-a", token["access_token"]).status_code == 200
        refreshed = refresh(client, token["refresh_token"])
        assert refreshed["status"] == 200 and refreshed["expires_in"] == 90
        clock.advance(2)
        assert client.get(f"{client.fhir}/Patient/pat-a", token["access_token"]).status_code == 401
        access = str(refreshed["access_token"])
        assert client.get(f"{client.fhir}/Patient/pat-a", access).status_code == 200
        clock.advance(89)
        assert client.get(f"{client.fhir}/Patient/pat-a", access).status_code == 401


def test_refresh_ttl_expires_each_refresh_token(sandbox_factory: SandboxFactory) -> None:
    clock = FakeClock()
    with sandbox_factory(clock=clock) as client:
        token = client.ehr_token(FULL_SCOPE, patient="pat-a", refresh_ttl="300")
        introspect = f"{client.base}/auth/introspect"
        live = client.http.post(
            introspect, data={"token": token["refresh_token"], "client_id": CLIENT_ID}
        ).json()
        assert live["active"] is True
        assert live["exp"] - live["iat"] == 300

        clock.advance(200)
        second = refresh(client, token["refresh_token"])
        assert second["status"] == 200  # a new refresh token, valid 300 s from now
        clock.advance(299)
        third = refresh(client, str(second["refresh_token"]))
        assert third["status"] == 200

        clock.advance(301)
        expired = refresh(client, str(third["refresh_token"]))
        assert expired["status"] == 400
        assert expired["error"] == "invalid_grant"
        gone = client.http.post(
            introspect, data={"token": str(third["refresh_token"]), "client_id": CLIENT_ID}
        )
        assert gone.json() == {"active": False}


def test_launch_context_extras_in_the_token_response(sandbox: SmartClient) -> None:
    token = sandbox.ehr_token(
        FULL_SCOPE,
        patient="pat-a",
        encounter="enc-a1",
        intent="reconcile-medications",
        tenant="clinic-7",
        need_patient_banner="0",
        smart_style_url="https://ehr.example/style-v2.json",
    )
    assert token["encounter"] == "enc-a1"
    assert token["fhirContext"] == [{"reference": "Encounter/enc-a1"}]
    assert token["intent"] == "reconcile-medications"
    assert token["tenant"] == "clinic-7"
    assert token["need_patient_banner"] is False
    assert token["smart_style_url"] == "https://ehr.example/style-v2.json"

    plain = sandbox.ehr_token(FULL_SCOPE, patient="pat-a")
    assert not {"encounter", "fhirContext", "intent", "tenant"} & set(plain)
    assert plain["need_patient_banner"] is True

    refreshed = refresh(sandbox, token["refresh_token"])
    assert refreshed["intent"] == "reconcile-medications"
    assert refreshed["fhirContext"] == [{"reference": "Encounter/enc-a1"}]


@pytest.mark.parametrize(
    "params",
    [
        {"error": "bogus"},
        {"token_error": "access_denied"},
        {"token_ttl": "0"},
        {"token_ttl": "ten"},
        {"refresh_ttl": "-5"},
        {"need_patient_banner": "2"},
        {"smart_style_url": "style.json"},
    ],
    ids=lambda p: "-".join(f"{k}={v}" for k, v in p.items()),
)
def test_bad_launch_options_are_400(sandbox: SmartClient, params: dict[str, str]) -> None:
    response = sandbox.http.get(f"{sandbox.base}/launch", params={"patient": "pat-a", **params})
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"
    assert next(iter(params)) in response.json()["error_description"]

"""The sandbox authorization server over real HTTP: SMART launches, RFC 6749/7636/7662."""

from __future__ import annotations

import base64

import pytest
from joserfc import jwt
from joserfc.jwk import KeySet

from tests.launch.sandbox.sandbox_support import (
    CLIENT_ID,
    CLIENT_SECRET,
    FULL_SCOPE,
    SECRET_CLIENT_ID,
    FakeClock,
    SandboxFactory,
    SmartClient,
    query_of,
)


def test_ehr_launch_issues_smart_token_response(sandbox: SmartClient) -> None:
    token = sandbox.ehr_token(FULL_SCOPE, patient="pat-a")

    assert token["token_type"] == "Bearer"
    assert token["scope"] == FULL_SCOPE
    assert token["patient"] == "pat-a"
    assert "encounter" not in token
    assert token["need_patient_banner"] is True
    assert token["smart_style_url"] == f"{sandbox.base}/smart-style.json"
    assert token["expires_in"] == 3600
    assert token["refresh_token"]
    assert token["id_token"].count(".") == 2
    patient = sandbox.get(f"{sandbox.fhir}/Patient/pat-a", token["access_token"])
    assert patient.status_code == 200
    assert patient.json()["id"] == "pat-a"


def test_token_response_is_not_cached(sandbox: SmartClient) -> None:
    launch_id = sandbox.launch(patient="pat-a")
    response = sandbox.exchange(sandbox.code_from(sandbox.authorize(FULL_SCOPE, launch=launch_id)))
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"


def test_access_token_and_id_token_verify_against_jwks(sandbox: SmartClient) -> None:
    launch_id = sandbox.launch(patient="pat-a", encounter="enc-a1")
    code = sandbox.code_from(sandbox.authorize(FULL_SCOPE, launch=launch_id, nonce="n-0S6_WzA2Mj"))
    token = sandbox.exchange(code).json()
    keys = KeySet.import_key_set(sandbox.http.get(f"{sandbox.base}/auth/jwks").json())

    id_token = jwt.decode(token["id_token"], keys, algorithms=["RS256"])
    assert id_token.header["kid"] == keys.keys[0].kid
    assert id_token.claims["iss"] == sandbox.fhir
    assert id_token.claims["aud"] == CLIENT_ID
    assert id_token.claims["nonce"] == "n-0S6_WzA2Mj"
    assert id_token.claims["fhirUser"] == "Practitioner/prac-1"
    assert id_token.claims["sub"] == "prac-1"
    assert id_token.claims["exp"] > id_token.claims["iat"]

    access = jwt.decode(token["access_token"], keys, algorithms=["RS256"]).claims
    assert access["iss"] == sandbox.fhir
    assert access["aud"] == sandbox.fhir
    assert access["client_id"] == CLIENT_ID
    assert access["patient"] == "pat-a"
    assert access["scope"] == FULL_SCOPE
    assert access["fhirUser"] == "Practitioner/prac-1"
    assert access["jti"]
    assert token["encounter"] == "enc-a1"


def test_jwks_holds_only_the_public_key(sandbox: SmartClient) -> None:
    jwks = sandbox.http.get(f"{sandbox.base}/auth/jwks").json()
    assert [k["kty"] for k in jwks["keys"]] == ["RSA"]
    assert {"n", "e", "kid"} <= set(jwks["keys"][0])
    assert not {"d", "p", "q", "dp", "dq", "qi"} & set(jwks["keys"][0])


@pytest.mark.parametrize(
    "overrides",
    [
        {"code_challenge_method": "plain"},
        {"code_challenge_method": None},
        {"code_challenge": None, "code_challenge_method": None},
    ],
    ids=["plain", "method-missing", "pkce-missing"],
)
def test_authorize_requires_pkce_s256(sandbox: SmartClient, overrides: dict[str, None]) -> None:
    launch_id = sandbox.launch(patient="pat-a")
    response = sandbox.authorize(FULL_SCOPE, launch=launch_id, **overrides)
    assert response.status_code == 302
    assert response.headers["location"].startswith(sandbox.redirect_uri + "?")
    query = query_of(response.headers["location"])
    assert query["error"] == "invalid_request"
    assert query["state"] == "state-123"
    assert "code" not in query


def test_wrong_code_verifier_is_rejected(sandbox: SmartClient) -> None:
    launch_id = sandbox.launch(patient="pat-a")
    code = sandbox.code_from(sandbox.authorize(FULL_SCOPE, launch=launch_id))
    response = sandbox.exchange(code, verifier="x" * 43)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"


def test_missing_code_verifier_is_rejected(sandbox: SmartClient) -> None:
    launch_id = sandbox.launch(patient="pat-a")
    code = sandbox.code_from(sandbox.authorize(FULL_SCOPE, launch=launch_id))
    response = sandbox.http.post(
        f"{sandbox.base}/auth/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": sandbox.redirect_uri,
            "client_id": CLIENT_ID,
        },
    )
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"


def test_code_is_single_use_and_reuse_revokes_its_tokens(sandbox: SmartClient) -> None:
    launch_id = sandbox.launch(patient="pat-a")
    code = sandbox.code_from(sandbox.authorize(FULL_SCOPE, launch=launch_id))
    verifier = sandbox.last_verifier
    first = sandbox.exchange(code, verifier)
    assert first.status_code == 200
    access_token = first.json()["access_token"]
    assert sandbox.get(f"{sandbox.fhir}/Patient/pat-a", access_token).status_code == 200

    second = sandbox.exchange(code, verifier)
    assert second.status_code == 400
    assert second.json()["error"] == "invalid_grant"
    assert sandbox.get(f"{sandbox.fhir}/Patient/pat-a", access_token).status_code == 401
    refresh = sandbox.http.post(
        f"{sandbox.base}/auth/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": first.json()["refresh_token"],
            "client_id": CLIENT_ID,
        },
    )
    assert refresh.json()["error"] == "invalid_grant"


def test_redirect_uri_must_match_at_token_endpoint(sandbox: SmartClient) -> None:
    launch_id = sandbox.launch(patient="pat-a")
    code = sandbox.code_from(sandbox.authorize(FULL_SCOPE, launch=launch_id))
    response = sandbox.exchange(code, redirect_uri=f"{sandbox.origin}/elsewhere")
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"


def test_refresh_token_rotates_and_keeps_context(sandbox: SmartClient) -> None:
    first = sandbox.ehr_token(FULL_SCOPE, patient="pat-a")
    data = {
        "grant_type": "refresh_token",
        "refresh_token": first["refresh_token"],
        "client_id": CLIENT_ID,
    }
    response = sandbox.http.post(f"{sandbox.base}/auth/token", data=data)
    assert response.status_code == 200, response.text
    refreshed = response.json()
    assert refreshed["access_token"] != first["access_token"]
    assert refreshed["refresh_token"] != first["refresh_token"]
    assert refreshed["scope"] == FULL_SCOPE
    assert refreshed["patient"] == "pat-a"
    assert (
        sandbox.get(f"{sandbox.fhir}/Patient/pat-a", refreshed["access_token"]).status_code == 200
    )

    again = sandbox.http.post(f"{sandbox.base}/auth/token", data=data)
    assert again.status_code == 400
    assert again.json()["error"] == "invalid_grant"


def test_no_refresh_token_without_offline_or_online_access(sandbox: SmartClient) -> None:
    token = sandbox.ehr_token("launch openid fhirUser patient/*.rs", patient="pat-a")
    assert "refresh_token" not in token
    online = sandbox.ehr_token("launch online_access patient/*.rs", patient="pat-a")
    assert online["refresh_token"]
    assert "id_token" not in online


def test_introspection_reports_active_token(sandbox: SmartClient) -> None:
    token = sandbox.ehr_token(FULL_SCOPE, patient="pat-a")
    response = sandbox.http.post(
        f"{sandbox.base}/auth/introspect",
        data={"token": token["access_token"], "client_id": CLIENT_ID},
    )
    assert response.status_code == 200
    body = response.json()
    assert body["active"] is True
    assert body["scope"] == FULL_SCOPE
    assert body["patient"] == "pat-a"
    assert body["client_id"] == CLIENT_ID
    assert body["sub"] == "prac-1"
    assert body["fhirUser"] == "Practitioner/prac-1"
    assert body["iss"] == sandbox.fhir
    assert body["exp"] - body["iat"] == 3600


def test_introspection_of_unknown_and_refresh_tokens(sandbox: SmartClient) -> None:
    token = sandbox.ehr_token(FULL_SCOPE, patient="pat-a")
    url = f"{sandbox.base}/auth/introspect"
    junk = sandbox.http.post(url, data={"token": "not-a-token", "client_id": CLIENT_ID})
    assert junk.json() == {"active": False}
    refresh = sandbox.http.post(url, data={"token": token["refresh_token"], "client_id": CLIENT_ID})
    assert refresh.json()["active"] is True
    assert refresh.json()["patient"] == "pat-a"


def test_introspection_needs_client_or_bearer_authentication(sandbox: SmartClient) -> None:
    token = sandbox.ehr_token(FULL_SCOPE, patient="pat-a")
    url = f"{sandbox.base}/auth/introspect"
    anonymous = sandbox.http.post(url, data={"token": token["access_token"]})
    assert anonymous.status_code == 401
    assert anonymous.json()["error"] == "invalid_client"
    unknown = sandbox.http.post(url, data={"token": token["access_token"], "client_id": "nobody"})
    assert unknown.status_code in (400, 401)
    bearer = sandbox.http.post(
        url,
        data={"token": token["access_token"]},
        headers={"Authorization": f"Bearer {token['access_token']}"},
    )
    assert bearer.status_code == 200
    assert bearer.json()["active"] is True


def test_scope_restricted_launch_grants_only_the_intersection(sandbox: SmartClient) -> None:
    restriction = (
        "patient/Observation.rs patient/Condition.read user/Encounter.rs "
        "patient/MedicationRequest.cruds"
    )
    requested = "launch openid fhirUser patient/*.read patient/Condition.rs"
    token = sandbox.ehr_token(requested, patient="pat-a", scope=restriction)

    assert token["scope"].split() == [
        "patient/Observation.rs",
        "patient/Condition.read",
        "launch",
        "openid",
        "fhirUser",
    ]
    access = token["access_token"]
    assert sandbox.get(f"{sandbox.fhir}/Observation", access, patient="pat-a").status_code == 200
    assert sandbox.get(f"{sandbox.fhir}/Condition/cond-a1", access).status_code == 200
    assert (
        sandbox.get(f"{sandbox.fhir}/MedicationRequest", access, patient="pat-a").status_code == 403
    )
    assert sandbox.get(f"{sandbox.fhir}/Encounter/enc-a1", access).status_code == 403


def test_deny_launch_redirects_with_access_denied(sandbox: SmartClient) -> None:
    launch_id = sandbox.launch(patient="pat-a", deny="1")
    response = sandbox.authorize(FULL_SCOPE, launch=launch_id)
    assert response.status_code == 302
    query = query_of(response.headers["location"])
    assert query["error"] == "access_denied"
    assert query["state"] == "state-123"
    assert "code" not in query


def test_standalone_launch_picks_first_patient(sandbox: SmartClient) -> None:
    code = sandbox.code_from(sandbox.authorize("launch/patient openid fhirUser patient/*.rs"))
    token = sandbox.exchange(code).json()
    assert token["patient"] == "pat-a"
    assert token["scope"] == "launch/patient openid fhirUser patient/*.rs"


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        ({"aud": "http://127.0.0.1:1/fhir"}, "invalid_request"),
        ({"aud": None}, "invalid_request"),
        ({"launch": "no-such-launch"}, "invalid_request"),
        ({"scope": "openid patient/*.rs"}, "invalid_request"),  # neither launch nor launch/patient
        ({"scope": None}, "invalid_scope"),
        ({"response_type": "token"}, "unsupported_response_type"),
    ],
    ids=["wrong-aud", "no-aud", "unknown-launch", "no-launch", "no-scope", "implicit"],
)
def test_authorize_errors_redirect_back_with_state(
    sandbox: SmartClient, overrides: dict[str, str | None], error: str
) -> None:
    response = sandbox.authorize("launch/patient patient/*.rs", **overrides)
    assert response.status_code == 302
    assert response.headers["location"].startswith(sandbox.redirect_uri + "?")
    query = query_of(response.headers["location"])
    assert query["error"] == error
    assert query["state"] == "state-123"


@pytest.mark.parametrize(
    "overrides",
    [
        {"client_id": "unknown-app"},
        {"redirect_uri": "http://127.0.0.1:1/evil"},
        {"redirect_uri": None},
    ],
    ids=["unknown-client", "unregistered-redirect", "no-redirect"],
)
def test_authorize_errors_without_valid_redirect_are_400_json(
    sandbox: SmartClient, overrides: dict[str, str | None]
) -> None:
    response = sandbox.authorize("launch/patient patient/*.rs", **overrides)
    assert response.status_code == 400
    assert "location" not in response.headers
    assert response.json()["error"] in ("invalid_client", "invalid_request")


def test_confidential_client_authenticates_with_basic_or_post(
    sandbox_factory: SandboxFactory,
) -> None:
    with sandbox_factory() as client:
        client.client_id = SECRET_CLIENT_ID
        basic = base64.b64encode(f"{SECRET_CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()

        launch_id = client.launch(patient="pat-b")
        code = client.code_from(client.authorize(FULL_SCOPE, launch=launch_id))
        no_secret = client.exchange(code)
        assert no_secret.status_code == 401
        assert no_secret.json()["error"] == "invalid_client"

        launch_id = client.launch(patient="pat-b")
        code = client.code_from(client.authorize(FULL_SCOPE, launch=launch_id))
        wrong = client.exchange(code, client_secret="not-the-secret")
        assert wrong.status_code == 401

        launch_id = client.launch(patient="pat-b")
        code = client.code_from(client.authorize(FULL_SCOPE, launch=launch_id))
        data = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": client.redirect_uri,
            "code_verifier": client.last_verifier,
        }
        ok = client.http.post(
            f"{client.base}/auth/token", data=data, headers={"Authorization": f"Basic {basic}"}
        )
        assert ok.status_code == 200, ok.text
        assert ok.json()["patient"] == "pat-b"

        launch_id = client.launch(patient="pat-b")
        code = client.code_from(client.authorize(FULL_SCOPE, launch=launch_id))
        post = client.exchange(code, client_secret=CLIENT_SECRET)
        assert post.status_code == 200, post.text


def test_codes_expire_after_60_seconds(sandbox_factory: SandboxFactory) -> None:
    clock = FakeClock()
    with sandbox_factory(clock=clock) as client:
        launch_id = client.launch(patient="pat-a")
        code = client.code_from(client.authorize(FULL_SCOPE, launch=launch_id))
        clock.advance(61)
        response = client.exchange(code)
        assert response.status_code == 400
        assert response.json()["error"] == "invalid_grant"


def test_launches_expire_after_10_minutes(sandbox_factory: SandboxFactory) -> None:
    clock = FakeClock()
    with sandbox_factory(clock=clock) as client:
        launch_id = client.launch(patient="pat-a")
        clock.advance(599)
        assert client.authorize(FULL_SCOPE, launch=launch_id).status_code == 302
        fresh = client.code_from(client.authorize(FULL_SCOPE, launch=launch_id))
        assert fresh
        clock.advance(2)
        query = query_of(client.authorize(FULL_SCOPE, launch=launch_id).headers["location"])
        assert query["error"] == "invalid_request"


def test_access_tokens_expire(sandbox_factory: SandboxFactory) -> None:
    clock = FakeClock()
    with sandbox_factory(clock=clock, access_token_ttl=120) as client:
        token = client.ehr_token(FULL_SCOPE, patient="pat-a")
        assert token["expires_in"] == 120
        assert client.get(f"{client.fhir}/Patient/pat-a", token["access_token"]).status_code == 200
        clock.advance(121)
        expired = client.get(f"{client.fhir}/Patient/pat-a", token["access_token"])
        assert expired.status_code == 401
        introspected = client.http.post(
            f"{client.base}/auth/introspect",
            data={"token": token["access_token"], "client_id": CLIENT_ID},
        )
        assert introspected.json() == {"active": False}


def test_blank_launch_scope_means_no_restriction(sandbox: SmartClient) -> None:
    token = sandbox.ehr_token("launch patient/*.rs", patient="pat-a", scope=" ")
    assert token["scope"] == "launch patient/*.rs"

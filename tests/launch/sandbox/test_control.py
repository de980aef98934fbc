"""The sandbox's test controls over real HTTP: ``/_control/revoke`` (the EHR user logs out, an
administrator revokes the app) and ``/_control/rotate-key`` (the EHR rotates its signing key)."""

from __future__ import annotations

import base64
from typing import Any

import httpx2
from joserfc import jwt
from joserfc.jwk import KeySet

from tests.launch.sandbox.sandbox_support import (
    CLIENT_ID,
    CLIENT_SECRET,
    FULL_SCOPE,
    SECRET_CLIENT_ID,
    SandboxFactory,
    SmartClient,
)


def works(client: SmartClient, access_token: str, patient: str = "pat-a") -> bool:
    """Whether the access token reads from the FHIR API and introspects as active (consistently)."""
    read = client.get(f"{client.fhir}/Patient/{patient}", access_token).status_code
    introspected = client.http.post(
        f"{client.base}/auth/introspect", data={"token": access_token, "client_id": CLIENT_ID}
    ).json()
    assert (read == 200) == introspected["active"], (read, introspected)
    if read != 200:
        assert read == 401 and introspected == {"active": False}
    return read == 200


def refresh(client: SmartClient, refresh_token: str) -> httpx2.Response:
    data = {"grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": CLIENT_ID}
    return client.http.post(f"{client.base}/auth/token", data=data)


def backend_token(client: SmartClient) -> dict[str, Any]:
    basic = base64.b64encode(f"{SECRET_CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
    response = client.http.post(
        f"{client.base}/auth/token",
        data={"grant_type": "client_credentials", "scope": "system/*.rs"},
        headers={"Authorization": f"Basic {basic}"},
    )
    body: dict[str, Any] = response.json()
    return body


def test_control_revoke_by_patient_then_all(sandbox_factory: SandboxFactory) -> None:
    with sandbox_factory() as client:
        a_offline = client.ehr_token(FULL_SCOPE, patient="pat-a")
        a_online = client.ehr_token("launch patient/*.rs", patient="pat-a")
        b = client.ehr_token(FULL_SCOPE, patient="pat-b")
        backend = backend_token(client)

        revoked = client.http.post(f"{client.base}/_control/revoke", data={"patient": "pat-a"})
        assert revoked.status_code == 200
        assert revoked.json() == {"revoked": 2}
        assert not works(client, a_offline["access_token"])
        assert not works(client, a_online["access_token"])
        assert refresh(client, a_offline["refresh_token"]).json()["error"] == "invalid_grant"
        assert works(client, b["access_token"], "pat-b")
        assert works(client, backend["access_token"])
        b_refreshed = refresh(client, b["refresh_token"])
        assert b_refreshed.status_code == 200

        everything = client.http.post(f"{client.base}/_control/revoke", data={"all": "1"})
        assert everything.json() == {"revoked": 2}
        assert not works(client, b_refreshed.json()["access_token"], "pat-b")
        assert refresh(client, b_refreshed.json()["refresh_token"]).status_code == 400
        assert not works(client, backend["access_token"])
        # later launches are not affected
        assert works(client, client.ehr_token(FULL_SCOPE, patient="pat-a")["access_token"])


def test_control_revoke_needs_a_patient_or_all(sandbox_factory: SandboxFactory) -> None:
    with sandbox_factory() as client:
        response = client.http.post(f"{client.base}/_control/revoke", data={})
        assert response.status_code == 400
        assert response.json()["error"] == "invalid_request"


def jwks_kids(client: SmartClient) -> list[str]:
    return [k["kid"] for k in client.http.get(f"{client.base}/auth/jwks").json()["keys"]]


def test_rotate_key_drops_the_old_key(sandbox_factory: SandboxFactory) -> None:
    with sandbox_factory() as client:
        before = client.ehr_token(FULL_SCOPE, patient="pat-a")
        (old_kid,) = jwks_kids(client)

        rotated = client.http.post(f"{client.base}/_control/rotate-key")
        assert rotated.status_code == 200
        new_kid = rotated.json()["kid"]
        assert new_kid != old_kid
        assert jwks_kids(client) == [new_kid] == rotated.json()["kids"]
        assert not works(client, before["access_token"])

        after = client.ehr_token(FULL_SCOPE, patient="pat-a")
        keys = KeySet.import_key_set(client.http.get(f"{client.base}/auth/jwks").json())
        for name in ("access_token", "id_token"):
            decoded = jwt.decode(after[name], keys, algorithms=["RS256"])
            assert decoded.header["kid"] == new_kid, name
        assert works(client, after["access_token"])
        # refresh tokens are not signed: the earlier grant refreshes into a new-key token
        refreshed = refresh(client, before["refresh_token"]).json()
        assert jwt.decode(refreshed["access_token"], keys, algorithms=["RS256"]).header["kid"] == (
            new_kid
        )


def test_rotate_key_keeping_the_old_one(sandbox_factory: SandboxFactory) -> None:
    with sandbox_factory() as client:
        before = client.ehr_token(FULL_SCOPE, patient="pat-a")["access_token"]
        (old_kid,) = jwks_kids(client)
        first = client.http.post(f"{client.base}/_control/rotate-key", data={"keep_old": "1"})
        assert jwks_kids(client) == [first.json()["kid"], old_kid]
        assert works(client, before)

        second = client.http.post(f"{client.base}/_control/rotate-key", data={"keep_old": "1"})
        assert jwks_kids(client) == [second.json()["kid"], first.json()["kid"], old_kid]
        assert works(client, before)
        client.http.post(f"{client.base}/_control/rotate-key")
        assert len(jwks_kids(client)) == 1
        assert not works(client, before)

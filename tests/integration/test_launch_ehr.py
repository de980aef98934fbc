"""SMART EHR launch through HTTP redirects only (SMART App Launch 2.x §2.0.3-2.0.8)."""

from __future__ import annotations

import base64
import hashlib
from contextlib import closing
from urllib.parse import parse_qs, urlsplit

import httpx2

from launch.demo_client import launch_patient, session_of
from tests.conftest import RunningDemo


def _first_patient(demo: RunningDemo) -> str:
    return str(demo.store.patients()[0]["id"])


def test_ehr_launch_uses_pkce_s256_and_ends_signed_in(demo: RunningDemo) -> None:
    pid = _first_patient(demo)
    client, final = launch_patient(demo.base_url, pid)
    with closing(client):
        assert final.status_code == 200
        assert urlsplit(str(final.url)).path == "/"
        hops = [urlsplit(str(r.url)) for r in final.history]
        authorize = next(h for h in hops if h.path.endswith("/auth/authorize"))
        q = parse_qs(authorize.query)
        assert q["code_challenge_method"] == ["S256"]
        challenge = q["code_challenge"][0]
        # base64url(SHA-256) without padding is 43 characters (RFC 7636 §4.2).
        assert len(challenge) == 43 and "=" not in challenge
        assert q["aud"] == [demo.settings.base_url + "/ehr/fhir"]
        assert q["response_type"] == ["code"] and "launch" in q and len(q["state"][0]) >= 32
        assert "nonce" in q
        context = client.get("/api/context").json()
        assert context["patient"] == f"Patient/{pid}"
        assert context["fhirUser"].startswith("Practitioner/")
        # The session reaches the page in the fragment only: not a cookie, not in the page.
        session = session_of(client)
        assert session and len(session) >= 40 and session not in final.text
        assert "chartcite_session" not in client.cookies
        callback = next(r for r in final.history if urlsplit(str(r.url)).path == "/callback")
        assert callback.headers["location"].startswith("/#session=")
        assert "set-cookie" not in callback.headers


def test_replayed_callback_is_refused(demo: RunningDemo) -> None:
    client, final = launch_patient(demo.base_url, _first_patient(demo))
    callback = next(r for r in final.history if urlsplit(str(r.url)).path == "/callback")
    client.close()
    with httpx2.Client(follow_redirects=False, timeout=30) as other:
        replay = other.get(str(callback.url))
    assert replay.status_code == 400
    assert "text/html" in replay.headers["content-type"]
    assert "already used" in replay.text and "invalid_state" in replay.text
    assert "Traceback" not in replay.text


def test_code_verifier_matches_challenge_end_to_end(demo: RunningDemo) -> None:
    """The sandbox only issues tokens when SHA-256(verifier) equals the challenge; check that the
    sandbox does reject a wrong verifier, so a signed-in session proves S256 was honoured."""
    verifier = "x" * 64
    digest = (
        base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    )
    with httpx2.Client(base_url=demo.base_url, follow_redirects=False, timeout=30) as c:
        launch = c.get(f"/ehr/launch?patient={_first_patient(demo)}")
        launch_id = parse_qs(urlsplit(launch.headers["location"]).query)["launch"][0]
        redirect_uri = demo.settings.redirect_uri
        auth = c.get(
            "/ehr/auth/authorize",
            params={
                "response_type": "code",
                "client_id": "chartcite",
                "redirect_uri": redirect_uri,
                "scope": "launch openid fhirUser patient/*.rs",
                "state": "s" * 32,
                "aud": demo.settings.base_url + "/ehr/fhir",
                "launch": launch_id,
                "code_challenge": digest,
                "code_challenge_method": "S256",
                "nonce": "n1",
            },
        )
        code = parse_qs(urlsplit(auth.headers["location"]).query)["code"][0]
        bad = c.post(
            "/ehr/auth/token",
            data={
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": redirect_uri,
                "client_id": "chartcite",
                "code_verifier": "y" * 64,
            },
        )
        assert bad.status_code == 400


def test_launch_errors_are_clear_html(demo: RunningDemo) -> None:
    with httpx2.Client(base_url=demo.base_url, follow_redirects=False, timeout=30) as c:
        no_iss = c.get("/launch")
        assert no_iss.status_code == 400 and "text/html" in no_iss.headers["content-type"]
        foreign = c.get("/launch", params={"iss": "http://127.0.0.1:9/fhir", "launch": "x"})
        assert foreign.status_code == 403 and "iss_not_allowed" in foreign.text
        unknown = c.get("/callback", params={"state": "nope", "code": "nope"})
        assert unknown.status_code == 400 and "invalid_state" in unknown.text
        missing = c.get("/callback")
        assert missing.status_code == 400


def test_denied_launch_is_403_page(demo: RunningDemo) -> None:
    client, final = launch_patient(demo.base_url, _first_patient(demo), deny=True)
    with closing(client):
        assert final.status_code == 403
        assert "ehr_access_denied" in final.text
        assert client.get("/api/context").status_code == 401


def test_api_without_session_is_401_json(demo: RunningDemo) -> None:
    with httpx2.Client(base_url=demo.base_url, timeout=30) as c:
        for method, path in (
            ("GET", "/api/context"),
            ("POST", "/api/sync"),
            ("GET", "/api/answers/x"),
        ):
            r = c.request(method, path, json={} if method == "POST" else None)
            assert r.status_code == 401, path
            assert r.json()["error"]["code"] == "no_session"
        assert c.get("/healthz").json() == {"status": "ok"}
        assert r.headers["www-authenticate"].startswith("Bearer")
    with httpx2.Client(
        base_url=demo.base_url, timeout=30, headers={"X-Chartcite-Session": "forged"}
    ) as c:
        r = c.post("/api/ask", json={"question": "hi"})
        assert r.status_code == 401 and r.json()["error"]["code"] == "session_expired"


def test_expired_state_is_refused(demo: RunningDemo) -> None:
    import asyncio

    from launch.db import create_engine
    from smart_app import repository as repo
    from smart_app.crypto import random_token, sha256_hex
    from smart_app.ehrs import source_key

    state = random_token()

    async def store_expired() -> None:
        engine = create_engine(demo.database, pool_size=1)
        async with engine.begin() as conn:
            await repo.save_launch_state(
                conn,
                ttl_seconds=-5,
                state_hash=sha256_hex(state),
                source=source_key(demo.settings.base_url + "/ehr/fhir"),
                iss=demo.settings.base_url + "/ehr/fhir",
                launch=None,
                code_verifier_enc=b"\x01" + b"0" * 40,
                nonce="n",
                requested_scope="openid",
                browser_hash=sha256_hex("b"),
            )
        await engine.dispose()

    asyncio.run(store_expired())
    with httpx2.Client(base_url=demo.base_url, follow_redirects=False, timeout=30) as c:
        r = c.get("/callback", params={"state": state, "code": "whatever"})
        assert r.status_code == 400 and "expired" in r.text
        again = c.get("/callback", params={"state": state, "code": "whatever"})
        assert again.status_code == 400 and "already used" in again.text

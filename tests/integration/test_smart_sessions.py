"""Sessions bound to the launch and the browser, logout, scope-filtered audit/context, and bearer
access for apps — all through HTTP against the demo (app + sandbox EHR)."""

from __future__ import annotations

import json
import secrets
import time
from contextlib import closing
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx2
import pytest

from launch.demo_client import (
    ask,
    code_flow_token,
    follow_launch,
    launch_patient,
    session_of,
    sync_patient,
)
from launch.sandbox.keys import SigningKey
from tests.conftest import RunningDemo
from tests.integration.conftest import Synced
from tests.integration.helpers import owned


def _patients(demo: RunningDemo) -> list[str]:
    return [str(p["id"]) for p in demo.store.patients()]


def _audit_outcomes(client: httpx2.Client) -> list[tuple[str, str]]:
    return [(e["action"], e["outcome"]) for e in client.get("/api/audit").json()["entries"]]


def _audited(demo: RunningDemo, action: str, outcome: str) -> int:
    """How many audit records of this action and outcome exist (read from the database)."""
    import asyncio

    from sqlalchemy import text

    from launch.db import create_engine

    async def count() -> int:
        engine = create_engine(demo.database, pool_size=1)
        try:
            async with engine.connect() as conn:
                q = "SELECT count(*) FROM audit_event WHERE action = :a AND outcome = :o"
                return int(await conn.scalar(text(q), {"a": action, "o": outcome}) or 0)
        finally:
            await engine.dispose()

    return asyncio.run(count())


# -- the browser binding (login CSRF) -------------------------------------------------------------


def _until_callback(client: httpx2.Client, patient: str) -> str:
    """Run a launch up to (not into) the app's /callback; return the callback URL."""
    response = client.get(f"/ehr/launch?patient={patient}")
    for _ in range(6):
        location = response.headers["location"]
        if urlsplit(location).path == "/callback":
            return location
        response = client.get(location)
    raise AssertionError("the launch never reached /callback")


def test_callback_from_another_browser_is_refused(demo: RunningDemo) -> None:
    attacker_patient, victim_patient = _patients(demo)[:2]
    victim, _ = launch_patient(demo.base_url, victim_patient)
    with (
        closing(victim),
        httpx2.Client(base_url=demo.base_url, follow_redirects=False, timeout=30) as attacker,
    ):
        link = _until_callback(attacker, attacker_patient)
        # The victim's browser opens the attacker's callback link (its own pre-auth cookie).
        planted = victim.get(link)
        assert planted.status_code == 403
        assert (
            "state_not_this_browser" in planted.text
            and "text/html" in planted.headers["content-type"]
        )
        assert "location" not in planted.headers  # no session was handed over
        # The victim's page still shows the victim's patient.
        assert victim.get("/api/context").json()["patient"] == f"Patient/{victim_patient}"
        assert _audited(demo, "launch", "state_not_this_browser")
        # Without any pre-auth cookie at all it is refused too.
        link2 = _until_callback(attacker, attacker_patient)
        with httpx2.Client(timeout=30) as bare:
            assert bare.get(link2).status_code == 403


def test_pre_auth_cookie_attributes(demo: RunningDemo) -> None:
    with httpx2.Client(base_url=demo.base_url, follow_redirects=False, timeout=30) as c:
        start = c.get(f"/ehr/launch?patient={_patients(demo)[0]}")
        launch = c.get(start.headers["location"])
        cookie = launch.headers["set-cookie"]
        assert cookie.startswith("chartcite-launch=")  # loopback http: no __Host-/Secure
        low = cookie.lower()
        assert "httponly" in low and "samesite=lax" in low and "path=/" in low
        value = cookie.split(";")[0].split("=", 1)[1]
        # A second launch in the same browser keeps the same binding (two tabs can launch).
        again = c.get(c.get(f"/ehr/launch?patient={_patients(demo)[1]}").headers["location"])
        assert "set-cookie" not in again.headers or value in again.headers["set-cookie"]


# -- one session per launch ------------------------------------------------------------------------


def test_two_tabs_two_patients_never_cross(demo: RunningDemo) -> None:
    first, second = _patients(demo)[:2]
    browser, _ = launch_patient(demo.base_url, first)
    with closing(browser):
        tab1 = session_of(browser)
        follow_launch(browser, f"/ehr/launch?patient={second}")  # same browser, second tab
        tab2 = session_of(browser)
        assert tab1 and tab2 and tab1 != tab2
        for session, patient in ((tab1, first), (tab2, second)):
            ctx = browser.get("/api/context", headers={"X-Chartcite-Session": session}).json()
            assert ctx["patient"] == f"Patient/{patient}"
        # The page sends its patient: a session of another patient is refused, not answered.
        crossed = browser.get(
            "/api/context",
            headers={"X-Chartcite-Session": tab2, "X-Chartcite-Patient": f"Patient/{first}"},
        )
        assert crossed.status_code == 409 and crossed.json()["error"]["code"] == "patient_mismatch"
        asked = browser.post(
            "/api/ask",
            json={"question": "meds"},
            headers={"X-Chartcite-Session": tab1, "X-Chartcite-Patient": f"Patient/{second}"},
        )
        assert asked.status_code == 409


def test_logout_ends_the_session(demo: RunningDemo) -> None:
    client, _ = launch_patient(demo.base_url, _patients(demo)[2])
    with closing(client):
        assert client.get("/api/context").status_code == 200
        with httpx2.Client(base_url=demo.base_url, timeout=30) as other:
            assert other.post("/logout").status_code == 401  # no session named: nothing ends
        out = client.post("/logout")
        assert out.status_code == 200 and out.json()["ended"] is True
        after = client.get("/api/context")
        assert after.status_code == 401 and after.json()["error"]["code"] == "session_expired"
        assert client.post("/logout").json()["ended"] is False


def test_session_cookie_no_longer_authenticates(demo: RunningDemo) -> None:
    """A cookie is sent by the browser on its own (CSRF); only the header counts."""
    client, _ = launch_patient(demo.base_url, _patients(demo)[0])
    with closing(client):
        session = session_of(client)
        with httpx2.Client(
            base_url=demo.base_url, timeout=30, cookies={"chartcite_session": str(session)}
        ) as c:
            assert c.get("/api/context").status_code == 401


# -- scopes at the edges ---------------------------------------------------------------------------


def test_audit_and_context_show_only_readable_types(
    demo: RunningDemo, patient_a: Synced, observation_only: Synced
) -> None:
    assert patient_a.patient_id == observation_only.patient_id
    answer = ask(patient_a.client, "which medications were prescribed?").json()
    assert any(c.startswith("MedicationRequest/") for c in answer["citations"])
    med = owned(demo.store, patient_a.patient_id, "MedicationRequest")[0]
    assert patient_a.client.get(f"/api/resources/MedicationRequest/{med['id']}").status_code == 200

    full = json.dumps(patient_a.client.get("/api/audit").json())
    assert "MedicationRequest/" in full  # the full-scope session sees what was cited
    narrow = observation_only.client.get("/api/audit").json()
    assert narrow["entries"], "the narrow session still sees the patient's audit trail"
    body = json.dumps(narrow)
    for rtype in ("MedicationRequest", "Condition", "DocumentReference", "Medication/"):
        assert rtype not in body, rtype
    ctx = observation_only.client.get("/api/context").json()
    typed = {k for k in (ctx["last_sync"] or {}).get("counts", {}) if k[:1].isupper()}
    assert typed <= {"Observation"}, typed


# -- bearer tokens of FHIR-aware apps ---------------------------------------------------------------


def app_token(demo: RunningDemo, patient: str, scope: str = "launch patient/*.rs") -> str:
    """An access token the sandbox EHR issues to an app by its own authorization-code flow."""
    return code_flow_token(
        demo.base_url, "/ehr", patient, client_id=demo.settings.client_id, scope=scope
    )


def _bearer(demo: RunningDemo, token: str, **headers: str) -> httpx2.Client:
    return httpx2.Client(
        base_url=demo.base_url,
        timeout=60,
        headers={"Authorization": f"Bearer {token}", **headers},
    )


def _signed(demo: RunningDemo, **claims: Any) -> str:
    """A token signed with the sandbox EHR's own key (the test EHR's key file)."""
    key = SigningKey.load_or_create(demo.settings.data_dir / "sandbox-signing-key.json")
    iss = demo.settings.base_url + "/ehr/fhir"
    now = int(time.time())
    base = {"iss": iss, "aud": iss, "sub": "u", "client_id": demo.settings.client_id, "iat": now}
    base |= {"exp": now + 600, "jti": secrets.token_urlsafe(8), "scope": "patient/*.rs"}
    return key.sign({**base, **claims})


def _challenge(r: httpx2.Response) -> str:
    return r.headers.get("www-authenticate", "")


def test_bearer_token_reads_syncs_and_asks(demo: RunningDemo) -> None:
    patient = _patients(demo)[3]
    with _bearer(demo, app_token(demo, patient)) as app:
        ctx = app.get("/api/context")
        assert ctx.status_code == 200, ctx.text
        assert ctx.json()["patient"] == f"Patient/{patient}" and ctx.json()["via"] == "bearer"
        status = sync_patient(app, full=True)
        assert status["status"] == "done"
        answer = ask(app, "active meds").json()
        meds = {
            f"MedicationRequest/{m['id']}" for m in owned(demo.store, patient, "MedicationRequest")
        }
        assert set(answer["citations"]) <= meds | {
            f"Medication/{m['id']}" for m in demo.store.of_type("Medication")
        }
        assert ("ask", "ok") in _audit_outcomes(app)
        entry = next(e for e in app.get("/api/audit").json()["entries"] if e["action"] == "ask")
        assert entry["detail"]["via"] == "bearer"


@pytest.mark.parametrize(
    ("case", "expect"),
    [
        ("garbage", 401),
        ("expired", 401),
        ("unregistered_issuer", 401),
        ("forged_signature", 401),
        ("no_patient", 403),
        ("no_readable_scope", 403),
    ],
)
def test_bearer_refusals(demo: RunningDemo, case: str, expect: int) -> None:
    patient = _patients(demo)[0]
    now = int(time.time())
    if case == "garbage":
        token = "not-a-token"
    elif case == "expired":
        token = _signed(demo, patient=patient, exp=now - 5)
    elif case == "unregistered_issuer":
        token = _signed(demo, patient=patient, iss="https://other-ehr.invalid/fhir")
    elif case == "forged_signature":
        other = SigningKey.generate()
        iss = demo.settings.base_url + "/ehr/fhir"
        token = other.sign(
            {"iss": iss, "aud": iss, "exp": now + 600, "jti": "x", "patient": patient,
             "scope": "patient/*.rs"}
        )  # fmt: skip
    elif case == "no_patient":
        token = _signed(demo)
    else:
        token = _signed(demo, patient=patient, scope="openid fhirUser")
    outcome = "invalid_token" if expect == 401 else "insufficient_scope"
    before = _audited(demo, "bearer", outcome)
    with _bearer(demo, token) as app:
        r = app.get("/api/context")
    assert r.status_code == expect, r.text
    code = r.json()["error"]["code"]
    assert _audited(demo, "bearer", outcome) == before + 1  # refused and audited
    if expect == 401:
        assert code == "invalid_token"
        assert 'error="invalid_token"' in _challenge(r)
    else:
        assert code == "insufficient_scope"
        assert 'error="insufficient_scope"' in _challenge(r)
    assert token not in r.text


def test_bearer_token_is_bound_to_its_patient_and_scopes(
    demo: RunningDemo, patient_a: Synced
) -> None:
    other = next(p for p in _patients(demo) if p != patient_a.patient_id)
    token = app_token(demo, other, scope="launch patient/Observation.rs")
    with _bearer(demo, token) as app:
        # Patient A's chart is synced, but this token is for another patient.
        obs = owned(demo.store, patient_a.patient_id, "Observation")[0]
        assert app.get(f"/api/resources/Observation/{obs['id']}").status_code == 404
        crossed = app.get("/api/context", headers={"X-Chartcite-Patient": patient_a.patient_id})
        assert crossed.status_code == 409
        med = owned(demo.store, other, "MedicationRequest")[0]
        narrow = app.get(f"/api/resources/MedicationRequest/{med['id']}")
        assert narrow.status_code == 403 and 'error="insufficient_scope"' in _challenge(narrow)
        assert app.get("/api/context").json()["readable_types"] == ["Observation"]


# -- the EHR's errors, in its own words, never a 500 -----------------------------------------------


def _spare_patient(demo: RunningDemo) -> str:
    """A patient no shared session fixture uses (revoking its grants harms nobody)."""
    return _patients(demo)[-1]


@pytest.mark.parametrize(
    ("knob", "code", "status"),
    [
        ({"error": "access_denied"}, "ehr_access_denied", 403),
        ({"error": "invalid_scope"}, "ehr_invalid_scope", 400),
        ({"error": "invalid_request"}, "ehr_invalid_request", 400),
        ({"error": "unauthorized_client"}, "ehr_unauthorized_client", 400),
        ({"error": "server_error"}, "ehr_server_error", 502),
        ({"error": "temporarily_unavailable"}, "ehr_temporarily_unavailable", 502),
        ({"token_error": "invalid_client"}, "ehr_invalid_client", 400),
        ({"token_error": "invalid_grant"}, "ehr_invalid_grant", 400),
        ({"token_error": "invalid_scope"}, "ehr_invalid_scope", 400),
        ({"token_error": "server_error"}, "ehr_server_error", 502),
    ],
    ids=lambda v: "-".join(f"{k}={x}" for k, x in v.items()) if isinstance(v, dict) else str(v),
)
def test_every_ehr_error_is_a_clear_page(
    demo: RunningDemo, knob: dict[str, str], code: str, status: int
) -> None:
    before = _audited(demo, "launch", code)
    client, final = launch_patient(demo.base_url, _spare_patient(demo), extra=knob)
    with closing(client):
        assert final.status_code == status, final.text[:300]
        assert "text/html" in final.headers["content-type"]
        assert code in final.text and "Traceback" not in final.text
        assert session_of(client) is None
        if "error" in knob:  # the EHR's description, escaped (it carries '<' and '&')
            assert "&lt;" in final.text and "&amp;" in final.text
            assert "<patient/" not in final.text
    assert _audited(demo, "launch", code) == before + 1


def test_launch_context_reaches_the_api(demo: RunningDemo) -> None:
    patient = _spare_patient(demo)
    encounter = owned(demo.store, patient, "Encounter")[0]["id"]
    client, final = launch_patient(
        demo.base_url,
        patient,
        extra={
            "encounter": encounter,
            "intent": "reconcile-medications",
            "tenant": "clinic-7",
            "need_patient_banner": "0",
        },
    )
    with closing(client):
        assert final.status_code == 200, final.text[:300]
        ctx = client.get("/api/context").json()
        assert ctx["intent"] == "reconcile-medications" and ctx["tenant"] == "clinic-7"
        assert ctx["need_patient_banner"] is False
        assert ctx["encounter"] == f"Encounter/{encounter}"
        assert ctx["fhirContext"] == [{"reference": f"Encounter/{encounter}"}]
        assert ctx["smart_style_url"].startswith("http")


def test_standalone_launch_gets_the_patient_the_ehr_picks(demo: RunningDemo) -> None:
    with httpx2.Client(base_url=demo.base_url, follow_redirects=False, timeout=30) as c:
        final = follow_launch(c, f"/launch?iss={demo.settings.base_url}/ehr/fhir")
        assert final.status_code == 200
        hops = [urlsplit(str(r.url)) for r in final.history]
        authorize = next(h for h in hops if h.path.endswith("/auth/authorize"))
        scope = parse_qs(authorize.query)["scope"][0].split()
        assert "launch/patient" in scope and "launch" not in scope
        ctx = c.get("/api/context").json()
        assert ctx["patient"] == f"Patient/{demo.store.patients()[0]['id']}"


# -- the session ends with the EHR's grant ---------------------------------------------------------


def test_revoked_grant_ends_the_session(demo: RunningDemo) -> None:
    patient = _spare_patient(demo)
    client, _ = launch_patient(demo.base_url, patient)
    with closing(client):
        assert client.get("/api/context").status_code == 200
        before = _audited(demo, "session_end", "refresh_failed")
        revoked = client.post("/ehr/_control/revoke", data={"patient": patient})
        assert revoked.status_code == 200 and revoked.json()["revoked"] >= 1
        time.sleep(1.2)  # the demo re-checks tokens after a second
        gone = client.get("/api/context")
        assert gone.status_code == 401 and gone.json()["error"]["code"] == "reauth_required"
        assert client.get("/api/context").json()["error"]["code"] == "session_expired"
        assert _audited(demo, "session_end", "refresh_failed") == before + 1


def test_expired_refresh_token_ends_the_session(demo: RunningDemo) -> None:
    client, final = launch_patient(
        demo.base_url,
        _spare_patient(demo),
        extra={"token_ttl": "40", "refresh_ttl": "1"},  # refresh tokens die after a second
    )
    with closing(client):
        assert final.status_code == 200
        assert client.get("/api/context").status_code == 200
        time.sleep(10.5)  # the access token (40 s) is now inside the 30 s refresh margin
        r = client.get("/api/context")
        assert r.status_code == 401 and r.json()["error"]["code"] == "reauth_required"


def test_concurrent_requests_share_one_refresh_at_a_time(demo: RunningDemo) -> None:
    """Tokens of 10 s (always inside the refresh margin): eight parallel calls each refresh, one
    at a time under the session's row lock, each with the newest (rotated) refresh token."""
    from concurrent.futures import ThreadPoolExecutor

    client, final = launch_patient(demo.base_url, _spare_patient(demo), extra={"token_ttl": "10"})
    with closing(client):
        assert final.status_code == 200
        session = str(session_of(client))

        def call(_: int) -> int:
            with httpx2.Client(
                base_url=demo.base_url, timeout=60, headers={"X-Chartcite-Session": session}
            ) as c:
                return c.get("/api/context").status_code

        with ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(call, range(8)))
        assert codes == [200] * 8
        assert client.get("/api/context").status_code == 200


def test_ehr_signing_key_rotation_is_followed(demo: RunningDemo) -> None:
    """The EHR rotates its key (keeping the old one published): the next id_token names a kid
    chartcite's cached JWKS lacks, so it reads the JWKS again instead of refusing the launch."""
    with httpx2.Client(base_url=demo.base_url, timeout=30) as c:
        rotated = c.post("/ehr/_control/rotate-key", data={"keep_old": "1"})
        assert rotated.status_code == 200
        new_kid = rotated.json()["kid"]
    client, final = launch_patient(demo.base_url, _spare_patient(demo))
    with closing(client):
        assert final.status_code == 200, final.text[:300]
        jwks = client.get("/ehr/auth/jwks").json()
        assert jwks["keys"][0]["kid"] == new_kid


def test_backend_services_with_private_key_jwt(demo: RunningDemo) -> None:
    """SMART Backend Services: client_credentials, system/*.rs, authenticated by a private_key_jwt
    assertion the EHR verifies with chartcite's published JWKS; the token then opens a $export."""
    import asyncio

    from smart_app.keys import AppKeys
    from smart_app.oauth import ClientConfig, SmartClient

    iss = demo.settings.base_url + "/ehr/fhir"
    client_id = f"{demo.settings.bulk_client_id}-jwt"

    async def token(scope: str) -> str:
        async with httpx2.AsyncClient(timeout=30) as http:
            smart = SmartClient(http, keys=AppKeys.load_or_create(demo.settings.app_keys_path))
            conf = await smart.discover(iss)
            client = ClientConfig(client_id, "", scope, auth_method="private_key_jwt")
            return (await smart.backend_token(conf, client, scope)).access_token

    access = asyncio.run(token("system/*.rs"))
    with httpx2.Client(timeout=30) as c:
        kick = c.get(
            f"{iss}/$export",
            headers={"Authorization": f"Bearer {access}", "Prefer": "respond-async"},
        )
        assert kick.status_code == 202, kick.text[:300]
    with pytest.raises(Exception) as refused:  # patient scopes are not for a backend service
        asyncio.run(token("patient/*.rs"))
    assert "ehr_" in getattr(refused.value, "code", "")

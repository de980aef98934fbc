"""Drive the demo like a browser would, over real HTTP: EHR launch with redirects, sync, ask.

Used by ``chartcite bench``, the integration tests and the example agents; plain httpx2 with a
cookie jar (for the pre-auth cookie). As a script (not a browser), the client gets the session the
callback hands over in the URL fragment (``/#session=…``) and sends it as ``X-Chartcite-Session``
with every call. ``code_flow_token`` is an app of its own getting a token from a sandbox EHR.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from typing import Any
from urllib.parse import parse_qs, quote_plus, urlencode, urlsplit

import httpx2

SESSION_HEADER = "X-Chartcite-Session"


def launch_patient(
    base_url: str,
    patient_id: str,
    *,
    scope: str | None = None,
    deny: bool = False,
    timeout: float = 30.0,
    ehr_path: str = "/ehr",
    extra: dict[str, str] | None = None,
) -> tuple[httpx2.Client, httpx2.Response]:
    """EHR-launch the app for a patient; returns the signed-in client and the final response."""
    params: dict[str, str] = {"patient": patient_id}
    if scope:
        params["scope"] = scope
    if deny:
        params["deny"] = "1"
    params.update(extra or {})
    client = httpx2.Client(base_url=base_url, follow_redirects=False, timeout=timeout)
    response = follow_launch(client, f"{ehr_path}/launch?{urlencode(params)}")
    return client, response


def follow_launch(client: httpx2.Client, url: str, *, hops: int = 10) -> httpx2.Response:
    """Follow a launch's redirects; at the page, take the session from the fragment."""
    response = client.get(url)
    history: list[httpx2.Response] = []
    for _ in range(hops):
        if not response.is_redirect:
            response.history = history  # as httpx's own redirect following would record them
            return response
        history.append(response)
        location = response.headers["location"]
        page, _, fragment = location.partition("#")
        session = dict(p.split("=", 1) for p in fragment.split("&") if "=" in p).get("session")
        if session:
            client.headers[SESSION_HEADER] = session
        response = client.get(str(response.url.join(page)))
    return response


def session_of(client: httpx2.Client) -> str | None:
    return client.headers.get(SESSION_HEADER)


def sync_patient(
    client: httpx2.Client, *, timeout: float = 300.0, poll: float = 0.2, full: bool = False
) -> dict[str, Any]:
    """Start a sync and wait until it is no longer running; returns the final status."""
    started = client.post("/api/sync", json={"full": full})
    started.raise_for_status()
    sync_id = started.json()["id"]
    deadline = time.monotonic() + timeout
    while True:
        status: dict[str, Any] = client.get(f"/api/sync/{sync_id}").json()
        if status["status"] != "running":
            return status
        if time.monotonic() > deadline:
            raise TimeoutError(f"sync {sync_id} still running after {timeout}s")
        time.sleep(poll)


def ask(client: httpx2.Client, question: str) -> httpx2.Response:
    return client.post("/api/ask", json={"question": question})


def code_flow_token(
    base_url: str,
    ehr_path: str,
    patient: str,
    *,
    client_id: str,
    scope: str = "launch patient/*.rs",
    secret: str | None = None,
) -> str:
    """An access token a sandbox EHR issues to an app by its own authorization-code flow (EHR
    launch, PKCE S256; a confidential client authenticates with form-encoded Basic, RFC 6749
    §2.3.1)."""
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    challenge = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    redirect = base_url + "/callback"
    with httpx2.Client(base_url=base_url, follow_redirects=False, timeout=30) as c:
        launch = c.get(f"{ehr_path}/launch?patient={patient}")
        launch_id = parse_qs(urlsplit(launch.headers["location"]).query)["launch"][0]
        auth = c.get(
            f"{ehr_path}/auth/authorize",
            params={
                "response_type": "code",
                "client_id": client_id,
                "redirect_uri": redirect,
                "scope": scope,
                "state": secrets.token_urlsafe(16),
                "aud": f"{base_url}{ehr_path}/fhir",
                "launch": launch_id,
                "code_challenge": challenge,
                "code_challenge_method": "S256",
            },
        )
        code = parse_qs(urlsplit(auth.headers["location"]).query)["code"][0]
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect}
        headers = {}
        if secret is None:
            form["client_id"] = client_id
        else:
            pair = f"{quote_plus(client_id)}:{quote_plus(secret)}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
        token = c.post(
            f"{ehr_path}/auth/token", data={**form, "code_verifier": verifier}, headers=headers
        )
        token.raise_for_status()
        return str(token.json()["access_token"])

"""Drive the demo like a browser would, over real HTTP: EHR launch with redirects, sync, ask.

Used by ``chartcite bench`` and the integration tests; plain httpx2 with a cookie jar.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlencode

import httpx2


def launch_patient(
    base_url: str,
    patient_id: str,
    *,
    scope: str | None = None,
    deny: bool = False,
    timeout: float = 30.0,
) -> tuple[httpx2.Client, httpx2.Response]:
    """EHR-launch the app for a patient; returns the signed-in client and the final response."""
    client = httpx2.Client(base_url=base_url, follow_redirects=True, timeout=timeout)
    params: dict[str, str] = {"patient": patient_id}
    if scope:
        params["scope"] = scope
    if deny:
        params["deny"] = "1"
    response = client.get(f"/ehr/launch?{urlencode(params)}")
    return client, response


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

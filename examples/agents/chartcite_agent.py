"""What both example agents share: a SMART access token from the demo's sandbox EHR, the chart
synced once, and an MCP session with chartcite over Streamable HTTP (the official MCP client).

A real agent is its own SMART client, registered with the EHR, and gets its token by the EHR's
authorization-code flow (or SMART Backend Services). The demo's sandbox EHR approves every
authorization request, so here the agent runs that flow itself, with PKCE, as the client the demo
registered (``chartcite``).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import secrets
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.types import CallToolResult


def arguments(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--base-url", default="http://127.0.0.1:8000", help="chartcite demo")
    parser.add_argument("--patient", help="sandbox patient id (default: the first one)")
    parser.add_argument("--token", help="an access token (default: one from the sandbox EHR)")
    parser.add_argument("--client-id", default="chartcite", help="the SMART client at the EHR")
    parser.add_argument("--scope", default="launch patient/*.rs openid fhirUser")
    return parser.parse_args()


def sandbox_token(base_url: str, patient: str, client_id: str, scope: str) -> str:
    """EHR launch at the sandbox, then authorize (PKCE S256) and the token request."""
    verifier = secrets.token_urlsafe(48)
    challenge = (
        base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    )
    redirect = f"{base_url}/callback"
    with httpx2.Client(base_url=base_url, follow_redirects=False, timeout=30) as c:
        launch = c.get("/ehr/launch", params={"patient": patient})
        if launch.status_code != 302:
            sys.exit(f"the sandbox EHR refused the launch: {launch.text[:200]}")
        launch_id = parse_qs(urlsplit(launch.headers["location"]).query)["launch"][0]
        auth = c.get(
            "/ehr/auth/authorize",
            params={
                "response_type": "code",
                "client_id": client_id,
                "redirect_uri": redirect,
                "scope": scope,
                "state": secrets.token_urlsafe(16),
                "aud": f"{base_url}/ehr/fhir",
                "launch": launch_id,
                "code_challenge": challenge,
                "code_challenge_method": "S256",
            },
        )
        code = parse_qs(urlsplit(auth.headers["location"]).query)["code"][0]
        token = c.post(
            "/ehr/auth/token",
            data={
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": redirect,
                "client_id": client_id,
                "code_verifier": verifier,
            },
        )
        token.raise_for_status()
        return str(token.json()["access_token"])


def first_patient(base_url: str) -> str:
    with httpx2.Client(base_url=base_url, timeout=30) as c:
        return str(c.get("/ehr/patients").json()[0]["id"])


def ensure_synced(base_url: str, token: str, timeout: float = 300.0) -> None:
    """Pull the token's patient into chartcite (REST; a no-op when it is fresh)."""
    headers = {"Authorization": f"Bearer {token}"}
    with httpx2.Client(base_url=base_url, timeout=60, headers=headers) as c:
        last = c.get("/api/context").json().get("last_sync")
        if last and last.get("answerable_at"):
            return
        run = c.post("/api/sync", json={})
        run.raise_for_status()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = c.get(f"/api/sync/{run.json()['id']}").json()
            if status["status"] != "running" or status.get("answerable_at"):
                return
            time.sleep(0.5)
        raise TimeoutError("the sync did not finish")


@asynccontextmanager
async def connect(base_url: str, token: str) -> AsyncIterator[Client]:
    """An MCP client session with chartcite's ``/mcp``, authorized by the bearer token."""
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=120)
    async with http, Client(streamable_http_client(f"{base_url}/mcp", http_client=http)) as client:
        yield client


async def call(client: Client, tool: str, args: dict[str, Any]) -> dict[str, Any]:
    """A tool's structured result; a tool error ends the agent with its code."""
    result: CallToolResult = await client.call_tool(tool, args)
    if result.is_error:
        text = result.content[0].text if result.content else "{}"  # type: ignore[union-attr]
        sys.exit(f"{tool} failed: {text}")
    assert isinstance(result.structured_content, dict)
    return result.structured_content


def setup(args: argparse.Namespace) -> tuple[str, str]:
    base = args.base_url.rstrip("/")
    token = args.token or sandbox_token(
        base, args.patient or first_patient(base), args.client_id, args.scope
    )
    ensure_synced(base, token)
    return base, token


def report(value: dict[str, Any]) -> None:
    print(json.dumps(value, indent=2, sort_keys=True))

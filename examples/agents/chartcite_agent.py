"""What both example agents share: a SMART access token from the demo's sandbox EHR, the chart
synced once, and an MCP session with chartcite over Streamable HTTP (the official MCP client).

A real agent is its own SMART client, registered with the EHR, and gets its token by the EHR's
authorization-code flow (or SMART Backend Services). The demo's sandbox EHR approves every
authorization request, so here the agent runs that flow itself, with PKCE, as the client the demo
registered (``chartcite``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.types import CallToolResult

from launch.demo_client import code_flow_token


def arguments(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--base-url", default="http://127.0.0.1:8000", help="chartcite demo")
    parser.add_argument("--patient", help="sandbox patient id (default: the first one)")
    parser.add_argument("--token", help="an access token (default: one from the sandbox EHR)")
    parser.add_argument("--client-id", default="chartcite", help="the SMART client at the EHR")
    parser.add_argument("--scope", default="launch patient/*.rs openid fhirUser")
    return parser.parse_args()


def sandbox_token(base_url: str, patient: str, client_id: str, scope: str) -> str:
    """EHR launch at the demo's sandbox EHR, then authorize (PKCE S256) and the token request:
    ``launch.demo_client.code_flow_token``, the flow the integration tests use too."""
    return code_flow_token(base_url, "/ehr", patient, client_id=client_id, scope=scope)


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

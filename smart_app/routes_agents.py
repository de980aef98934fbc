"""Agents over REST: ``POST/GET /api/agent-events`` (``smart_app/agent_events.py``) and the
OAuth 2.0 Protected Resource Metadata (RFC 9728) that MCP clients discover ``/mcp``'s
authorization servers from (MCP spec §Authorization)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from smart_app import agent_events as events
from smart_app import repository as repo
from smart_app.errors import AppError
from smart_app.session import SessionContext, app_state, current_session

router = APIRouter(prefix="/api")
well_known = APIRouter()
Session = Annotated[SessionContext, Depends(current_session)]


@router.post(
    "/agent-events",
    status_code=201,
    response_model=events.AgentEventOut,
    responses={201: {"description": "Recorded (append-only, chained into the audit trail)"}},
)
async def post_agent_event(
    request: Request, body: events.AgentEventIn, session: Session
) -> JSONResponse:
    """Record an agent's event for the caller's patient. Every reference it rests on must be a
    stored resource of this patient that the granted scopes allow: 403 for a type the scopes do
    not allow, 422 for anything else (another patient's resource answers as a missing one)."""
    state = app_state(request)
    try:
        async with state.engine.begin() as conn:
            event = await events.record_event(conn, session, body)
    except AppError as exc:
        async with state.engine.begin() as conn:  # refused: audited, the event's hash only
            await repo.append_audit(
                conn,
                session.audit_record(
                    "agent_event",
                    exc.code,
                    agent=body.agent,
                    event_type=body.type,
                    payload_sha256=events.payload_sha256(body.payload),
                ),
            )
        raise
    return JSONResponse(event.model_dump(mode="json"), status_code=201)


@router.get("/agent-events", response_model=events.AgentEventList)
async def get_agent_events(
    request: Request,
    session: Session,
    agent: Annotated[str | None, Query(pattern=events.NAME_RE)] = None,
    type: Annotated[str | None, Query(pattern=events.TYPE_RE)] = None,
    encounter: Annotated[
        str | None, Query(pattern=events.ENCOUNTER_RE, description="Encounter/<id>")
    ] = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=events.MAX_LIST)] = 100,
) -> dict[str, Any]:
    """The agent events of the caller's patient, oldest first (the newest ``limit``); events
    resting on resources the caller's scopes do not show are left out."""
    state = app_state(request)
    async with state.engine.begin() as conn:
        found = await events.list_events(
            conn,
            session.access,
            agent=agent,
            event_type=type,
            encounter=encounter,
            since=since,
            until=until,
            limit=limit,
        )
        await repo.append_audit(
            conn, session.audit_record("agent_event_list", "ok", count=len(found))
        )
    return {"events": [e.model_dump(mode="json") for e in found]}


class ProtectedResource(BaseModel):
    """OAuth 2.0 Protected Resource Metadata (RFC 9728 §2)."""

    resource: str = Field(description="This protected resource's identifier (its URL)")
    authorization_servers: list[str] = Field(
        description="The registered EHRs (SMART: their FHIR base, whose "
        ".well-known/smart-configuration names the authorize and token endpoints)"
    )
    scopes_supported: list[str]
    bearer_methods_supported: list[str]
    resource_name: str
    resource_documentation: str


def _metadata(request: Request, resource: str) -> dict[str, Any]:
    config = app_state(request).config
    regs = list(config.ehrs)
    scopes = sorted({s for r in regs for s in r.scope.split()})
    base = config.base_url.rstrip("/")
    return {
        "resource": base + resource,
        "authorization_servers": [r.iss for r in regs],
        "scopes_supported": scopes,
        "bearer_methods_supported": ["header"],
        "resource_name": "chartcite",
        "resource_documentation": base + "/docs",
    }


@well_known.get("/.well-known/oauth-protected-resource", response_model=ProtectedResource)
async def protected_resource(request: Request) -> dict[str, Any]:
    """Protected Resource Metadata of the app (``/api/*`` and ``/mcp``)."""
    return _metadata(request, "")


@well_known.get("/.well-known/oauth-protected-resource/mcp", response_model=ProtectedResource)
async def protected_resource_mcp(request: Request) -> dict[str, Any]:
    """Protected Resource Metadata of ``/mcp`` (RFC 9728 §3.1: the resource's path appended)."""
    return _metadata(request, "/mcp")

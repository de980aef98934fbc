"""The MCP server at ``/mcp``: chartcite's tools for agents, under the caller's SMART scopes.

Model Context Protocol, Streamable HTTP transport (spec 2025-06-18 §Transports, and the stateless
2026-07-28 revision the official SDK also serves), built on the SDK's low-level ``Server``: one
handler validates each call's arguments against its tool's pydantic model, runs it, audits it and
returns structured content that matches the tool's declared ``outputSchema``. The only module that
imports ``mcp``.

Authorization (MCP spec §Authorization, RFC 9728): every HTTP request to ``/mcp`` goes through
``smart_app.session.current_session`` — the same bearer check (introspection or JWKS) and access
filter as ``/api/*``. Without a valid credential the answer is 401 with ``WWW-Authenticate:
Bearer … resource_metadata="<base>/.well-known/oauth-protected-resource/mcp"``; no tool runs. The
tools take no patient argument: the patient is the token's. Stateless (no MCP session kept
between requests): any worker serves any request, and a token's revocation applies at once.

Each call appends one ``mcp_tool`` audit record: tool, SHA-256 of the arguments, patient, client,
the resource references of the result, outcome and latency. ``ask`` also appends the same ``ask``
record as ``POST /api/ask``; ``record_event`` its ``agent_event`` record.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from datetime import time as dtime
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import mcp.types as mt
from mcp.server.lowlevel import Server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
)
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute
from starlette.types import Receive, Scope, Send

from fhir_adapters import FhirAdapterError, get_resource, list_facts
from rag import AnswerBody, RagError, get_answer, hybrid_search
from rag import terms as query_terms
from smart_app import agent_events as events
from smart_app import asking
from smart_app import repository as repo
from smart_app.asking import AskRequest
from smart_app.bearer import insufficient_scope
from smart_app.errors import AppError, Forbidden, NotFound
from smart_app.guard import bad_text
from smart_app.session import SessionContext, app_state, current_session
from smart_app.state import AppState

log = logging.getLogger("chartcite.mcp")
SESSION_KEY = "chartcite.session"
MAX_BODY_BYTES = 64 * 1024
METADATA_PATH = "/.well-known/oauth-protected-resource"

# -- tool inputs and outputs (their JSON Schemas are the tools' inputSchema/outputSchema) --------


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _clean(value: str) -> str:
    if bad_text(value):
        raise ValueError("holds control characters or invalid Unicode")
    return value


Code = Annotated[str, StringConstraints(min_length=1, max_length=64), AfterValidator(_clean)]


class GetAnswerIn(_In):
    answer_id: uuid.UUID = Field(description="An answer_id from ask (or POST /api/ask)")


class ReadResourceIn(_In):
    resource_type: str = Field(pattern=r"^[A-Z][A-Za-z]{1,63}$", description="e.g. Observation")
    resource_id: str = Field(pattern=r"^[A-Za-z0-9\-.]{1,64}$")


class ResourceOut(BaseModel):
    reference: str = Field(description="Type/id")
    resource: dict[str, Any] = Field(description="The stored FHIR R4 resource, as the EHR sent it")


FactKind = Literal[
    "labs",
    "vitals",
    "medications",
    "problems",
    "allergies",
    "immunizations",
    "procedures",
    "encounters",
]
KIND_TYPES: dict[str, tuple[str, str | None]] = {  # kind -> (resource type, Observation category)
    "labs": ("Observation", "laboratory"),
    "vitals": ("Observation", "vital-signs"),
    "medications": ("MedicationRequest", None),
    "problems": ("Condition", None),
    "allergies": ("AllergyIntolerance", None),
    "immunizations": ("Immunization", None),
    "procedures": ("Procedure", None),
    "encounters": ("Encounter", None),
}
DETAIL_KEYS = ("components", "dosage", "verification", "criticality", "reactions", "reasons")


class ListFactsIn(_In):
    kind: FactKind
    codes: list[Code] | None = Field(
        default=None, max_length=50, description="Only these codes (e.g. LOINC 4548-4)"
    )
    since: date | None = Field(default=None, description="From this date (inclusive)")
    until: date | None = Field(default=None, description="Up to this date (inclusive)")
    limit: int = Field(default=100, ge=1, le=500, description="The newest this many")


class FactItem(BaseModel):
    reference: str = Field(description="Type/id of the resource this fact comes from")
    resource_type: str
    code_system: str | None
    code: str | None
    display: str | None
    status: str | None
    category: str | None
    date: str | None
    end_date: str | None
    value: float | None
    value_text: str | None
    unit: str | None
    encounter: str | None = Field(description="Encounter/<id>, when the scopes allow Encounter")
    medication: str | None = Field(description="Medication/<id> a request points at")
    detail: dict[str, Any] = Field(description="components, dosage, reactions, reasons …")


class FactList(BaseModel):
    kind: str
    facts: list[FactItem] = Field(description="Oldest first")


class SearchNotesIn(_In):
    query: Annotated[str, AfterValidator(_clean)] = Field(
        min_length=1, max_length=500, description="What to look for in the notes"
    )
    limit: int = Field(default=8, ge=1, le=20)


class Passage(BaseModel):
    reference: str = Field(description="DocumentReference/<id> the passage is from")
    date: str | None
    encounter: str | None
    text: str
    score: float


class PassageList(BaseModel):
    passages: list[Passage] = Field(description="Best first")


class ListEventsIn(_In):
    agent: events.Name | None = None
    type: events.EventType | None = None
    encounter: str | None = Field(
        default=None, pattern=events.ENCOUNTER_RE, description="Encounter/<id>"
    )
    since: datetime | None = None
    until: datetime | None = None
    limit: int = Field(default=50, ge=1, le=events.MAX_LIST)


@dataclass(frozen=True)
class Outcome:
    body: BaseModel
    refs: list[str]


Handler = Callable[[AppState, SessionContext, Any], Awaitable[Outcome]]


@dataclass(frozen=True)
class ToolSpec:
    name: str
    title: str
    description: str
    input: type[BaseModel]
    output: type[BaseModel]
    run: Handler
    read_only: bool = True

    def tool(self) -> mt.Tool:
        return mt.Tool(
            name=self.name,
            title=self.title,
            description=self.description,
            inputSchema=self.input.model_json_schema(),
            outputSchema=self.output.model_json_schema(),
            annotations=mt.ToolAnnotations(
                readOnlyHint=self.read_only, destructiveHint=False, openWorldHint=False
            ),
        )


# -- the tools ------------------------------------------------------------------------------------


def _scope_refused(session: SessionContext, resource_type: str) -> AppError:
    message = f"the granted scopes do not allow reading {resource_type[:64]}"
    if session.kind == "bearer":
        return insufficient_scope(message)
    return Forbidden(message, code="scope_denied")


async def _ask(state: AppState, session: SessionContext, args: AskRequest) -> Outcome:
    """The pipeline of ``POST /api/ask`` (``smart_app/asking.py``), with its audit record."""
    answer = await asking.ask(state, session, args.question, tool="ask")
    return Outcome(answer, sorted(answer.citations))


async def _get_answer(state: AppState, session: SessionContext, args: GetAnswerIn) -> Outcome:
    async with state.engine.connect() as conn:
        body = await get_answer(conn, session.access, args.answer_id)
    if body is None:
        raise NotFound("no such answer for this patient", code="answer_not_found")
    answer = AnswerBody.model_validate(body)
    return Outcome(answer, sorted(answer.citations))


async def _read_resource(state: AppState, session: SessionContext, args: ReadResourceIn) -> Outcome:
    if not session.access.allows(args.resource_type):
        raise _scope_refused(session, args.resource_type)
    async with state.engine.connect() as conn:
        resource = await get_resource(conn, session.access, args.resource_type, args.resource_id)
    if resource is None:
        raise NotFound("no such resource for this patient", code="resource_not_found")
    ref = f"{args.resource_type}/{args.resource_id}"
    return Outcome(ResourceOut(reference=ref, resource=resource), [ref])


def _iso(value: Any) -> str | None:
    return value.isoformat() if value else None


def _fact(row: dict[str, Any], session: SessionContext) -> FactItem:
    detail = row.get("detail") or {}
    med = detail.get("medication_id")
    encounter = row.get("encounter_id")
    return FactItem(
        reference=f"{row['resource_type']}/{row['id']}",
        resource_type=row["resource_type"],
        code_system=row["code_system"],
        code=row["code"],
        display=row["display"],
        status=row["status"],
        category=row["category"],
        date=_iso(row["date"]),
        end_date=_iso(row["end_date"]),
        value=row["value_num"],
        value_text=row["value_text"] if row["resource_type"] != "DocumentReference" else None,
        unit=row["unit"],
        encounter=f"Encounter/{encounter}"
        if encounter and session.access.allows("Encounter")
        else None,
        medication=f"Medication/{med}" if med and session.access.allows("Medication") else None,
        detail={k: detail[k] for k in DETAIL_KEYS if detail.get(k) not in (None, [], "")},
    )


def _day_start(d: date | None) -> datetime | None:
    return datetime.combine(d, dtime.min, tzinfo=UTC) if d else None


def _day_end(d: date | None) -> datetime | None:
    return datetime.combine(d, dtime.max, tzinfo=UTC) if d else None


async def _list_facts(state: AppState, session: SessionContext, args: ListFactsIn) -> Outcome:
    rtype, category = KIND_TYPES[args.kind]
    if not session.access.allows(rtype):
        raise _scope_refused(session, rtype)
    async with state.engine.connect() as conn:
        rows = await list_facts(
            conn,
            session.access,
            rtype,
            codes=args.codes,
            since=_day_start(args.since),
            until=_day_end(args.until),
            limit=5000,
        )
    if category is not None:
        rows = [r for r in rows if r["category"] == category]
    facts = [_fact(r, session) for r in rows[-args.limit :]]
    refs = sorted({f.reference for f in facts} | {f.encounter for f in facts if f.encounter})
    return Outcome(FactList(kind=args.kind, facts=facts), refs)


async def _search_notes(state: AppState, session: SessionContext, args: SearchNotesIn) -> Outcome:
    if not session.access.allows("DocumentReference"):
        raise _scope_refused(session, "DocumentReference")
    vector = (await asyncio.to_thread(state.embedder.embed, [args.query]))[0]
    async with state.engine.connect() as conn:
        hits = await hybrid_search(
            conn,
            session.access,
            query_vector=vector,
            terms=query_terms(args.query),
            types=["DocumentReference"],
            n=args.limit,
        )
    passages = [
        Passage(
            reference=f"{h.resource_type}/{h.resource_id}",
            date=_iso(h.date),
            encounter=f"Encounter/{h.encounter_id}"
            if h.encounter_id and session.access.allows("Encounter")
            else None,
            text=h.text,
            score=round(float(h.score), 6),
        )
        for h in hits
    ]
    return Outcome(PassageList(passages=passages), sorted({p.reference for p in passages}))


async def _record_event(
    state: AppState, session: SessionContext, args: events.AgentEventIn
) -> Outcome:
    async with state.engine.begin() as conn:
        event = await events.record_event(conn, session, args)
    return Outcome(event, event.refs)


async def _list_events(state: AppState, session: SessionContext, args: ListEventsIn) -> Outcome:
    async with state.engine.connect() as conn:
        found = await events.list_events(
            conn,
            session.access,
            agent=args.agent,
            event_type=args.type,
            encounter=args.encounter,
            since=args.since,
            until=args.until,
            limit=args.limit,
        )
    refs = sorted({r for e in found for r in e.refs})
    return Outcome(events.AgentEventList(events=found), refs)


TOOLS: dict[str, ToolSpec] = {
    t.name: t
    for t in (
        ToolSpec(
            "ask",
            "Ask about the patient",
            "A question about the token's patient, answered from the synced chart with every "
            "citation checked (the same answer JSON as POST /api/ask). Statements cite FHIR "
            "resources as Type/id; only resources the token's scopes allow are ever cited.",
            AskRequest,
            AnswerBody,
            _ask,  # type: ignore[arg-type]
            read_only=False,
        ),
        ToolSpec(
            "get_answer",
            "Get an answer again",
            "A stored answer of this patient, unchanged (null citations are never added).",
            GetAnswerIn,
            AnswerBody,
            _get_answer,  # type: ignore[arg-type]
        ),
        ToolSpec(
            "read_resource",
            "Read a FHIR resource",
            "One stored FHIR resource of this patient, if the scopes allow its type.",
            ReadResourceIn,
            ResourceOut,
            _read_resource,  # type: ignore[arg-type]
        ),
        ToolSpec(
            "list_facts",
            "List structured facts",
            "Structured facts of one kind (labs, vitals, medications, problems, allergies, "
            "immunizations, procedures, encounters), optionally by code and date window; each "
            "with the reference of the resource it comes from.",
            ListFactsIn,
            FactList,
            _list_facts,  # type: ignore[arg-type]
        ),
        ToolSpec(
            "search_notes",
            "Search clinical notes",
            "Passages of this patient's notes that match the query (exact vector search and full "
            "text, fused), each with its DocumentReference.",
            SearchNotesIn,
            PassageList,
            _search_notes,  # type: ignore[arg-type]
        ),
        ToolSpec(
            "record_event",
            "Record an agent event",
            "Record what this agent concluded (shared with the other agents of this patient). "
            "Every reference in it — refs, answer_ids' citations, the encounter, Type/id in the "
            "payload — must be a stored resource of this patient the scopes allow, or the event "
            "is refused. Append-only and chained into the audit trail.",
            events.AgentEventIn,
            events.AgentEventOut,
            _record_event,  # type: ignore[arg-type]
            read_only=False,
        ),
        ToolSpec(
            "list_events",
            "List agent events",
            "Events agents recorded for this patient (newest last), by agent, type, encounter "
            "and time; events resting on resources the scopes do not show are left out.",
            ListEventsIn,
            events.AgentEventList,
            _list_events,  # type: ignore[arg-type]
        ),
    )
}


# -- dispatch: validate, run, audit ---------------------------------------------------------------


def args_sha256(arguments: dict[str, Any]) -> str:
    text = json.dumps(arguments, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _error(code: str, message: str) -> mt.CallToolResult:
    return mt.CallToolResult(
        content=[
            mt.TextContent(
                type="text", text=json.dumps({"error": {"code": code, "message": message}})
            )
        ],
        isError=True,
    )


def _invalid(exc: ValidationError) -> str:
    fields = sorted({".".join(str(p) for p in e["loc"]) or "arguments" for e in exc.errors()})
    return "invalid arguments: " + ", ".join(fields)[:300]


async def _run(
    spec: ToolSpec, state: AppState, session: SessionContext, args: BaseModel
) -> tuple[str, mt.CallToolResult, list[str]]:
    """(outcome, result, result references) of one validated call; failures contained."""
    try:
        out = await spec.run(state, session, args)
    except (AppError, RagError, FhirAdapterError) as exc:
        return exc.code, _error(exc.code, exc.message), []
    except Exception as exc:  # noqa: BLE001 - contained like the REST API's failures
        ref = uuid.uuid4().hex[:12]
        log.error("unhandled %s in MCP tool %s (ref %s)", type(exc).__name__, spec.name, ref)
        return "internal_error", _error("internal_error", f"internal error (reference {ref})"), []
    body = out.body.model_dump(mode="json")
    result = mt.CallToolResult(
        content=[mt.TextContent(type="text", text=json.dumps(body))], structuredContent=body
    )
    return "ok", result, out.refs


async def call_tool(
    state: AppState, session: SessionContext, name: str, arguments: dict[str, Any]
) -> mt.CallToolResult:
    """Run one tool call for this session and audit it (whatever the outcome)."""
    started = time.perf_counter()
    spec = TOOLS.get(name)
    refs: list[str] = []
    if spec is None:
        outcome, result = "unknown_tool", _error("unknown_tool", "no such tool")
    else:
        try:
            args = spec.input.model_validate(arguments)
        except ValidationError as exc:
            args = None
            outcome, result = "invalid_arguments", _error("invalid_arguments", _invalid(exc))
        if args is not None:
            outcome, result, refs = await _run(spec, state, session, args)
    async with state.engine.begin() as conn:
        await repo.append_audit(
            conn,
            session.audit_record(
                "mcp_tool",
                outcome,
                tool=name[:64] if spec is not None or not bad_text(name) else "(invalid)",
                args_sha256=args_sha256(arguments),
                result_refs=refs[:500],
                result_ref_count=len(refs),
                latency_ms=round((time.perf_counter() - started) * 1000, 1),
                scopes=str(session.scopes),
            ),
        )
    return result


@functools.cache
def tool_list() -> list[mt.Tool]:
    """The tools with their schemas (built once: generating JSON Schemas is not cheap)."""
    return [spec.tool() for spec in TOOLS.values()]


async def _on_list_tools(ctx: Any, params: mt.PaginatedRequestParams | None) -> mt.ListToolsResult:
    return mt.ListToolsResult(tools=tool_list())


async def _on_call_tool(ctx: Any, params: mt.CallToolRequestParams) -> mt.CallToolResult:
    request = ctx.request
    session = request.scope.get(SESSION_KEY) if isinstance(request, Request) else None
    if not isinstance(session, SessionContext):  # the endpoint below always sets it
        return _error("no_session", "no authenticated session for this call")
    return await call_tool(app_state(request), session, params.name, dict(params.arguments or {}))


# -- the HTTP endpoint ----------------------------------------------------------------------------


def _with_metadata(headers: dict[str, str] | None, base_url: str) -> dict[str, str]:
    """RFC 9728 §5.1: the 401 challenge names the protected-resource metadata."""
    out = dict(headers or {})
    link = f'resource_metadata="{base_url}{METADATA_PATH}/mcp"'
    value = out.get("WWW-Authenticate") or 'Bearer realm="chartcite"'
    out["WWW-Authenticate"] = f"{value}, {link}"
    return out


def _security(base_url: str) -> TransportSecuritySettings:
    """DNS-rebinding protection: the app's own host, and loopback for local clients."""
    parts = urlsplit(base_url)
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=[parts.netloc, "127.0.0.1:*", "localhost:*", "[::1]:*"],
        allowed_origins=[f"{parts.scheme}://{parts.netloc}"],
    )


class McpEndpoint:
    """The ASGI app at ``/mcp``: authenticate as ``/api/*`` does, then the SDK's transport."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.route: BaseRoute | None = None  # set when mounted: access logs name its path
        self.server: Server[Any] = Server(
            "chartcite",
            version="0.1.0",
            title="chartcite",
            instructions=(
                "Tools about one patient: the patient of your SMART access token. Every answer's "
                "citations are checked FHIR references; record_event shares what you concluded "
                "with the other agents of this patient, list_events reads theirs."
            ),
            on_list_tools=_on_list_tools,
            on_call_tool=_on_call_tool,
        )
        self.manager = StreamableHTTPSessionManager(
            app=self.server,
            json_response=True,
            stateless=True,
            security_settings=_security(self.base_url),
            max_request_body_size=MAX_BODY_BYTES,
        )

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """The transport's task group, for the app's lifespan."""
        async with self.manager.run():
            yield

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if self.route is not None:
            scope.setdefault("route", self.route)
        request = Request(scope, receive)
        try:
            session = await current_session(request)
        except AppError as exc:
            headers = exc.headers
            if exc.status == 401:
                headers = _with_metadata(headers, self.base_url)
            response = JSONResponse(
                {"error": {"code": exc.code, "message": exc.message}},
                status_code=exc.status,
                headers=headers,
            )
            await response(scope, receive, send)
            return
        scope[SESSION_KEY] = session

        # no-store, nosniff, the body limit and the rate limit: the Guard, as for /api.
        await self.manager.handle_request(scope, receive, send)

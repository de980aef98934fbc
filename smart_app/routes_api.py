"""The JSON API behind a SMART session: context, sync, ask, answers, resources, audit, health."""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import text

from fhir_adapters import (
    AccessFilter,
    existing_refs,
    get_resource,
    get_sync_run,
    latest_sync_run,
)
from rag import AnswerBody, get_answer
from smart_app import asking
from smart_app import repository as repo
from smart_app.api_models import (
    AuditEntries,
    ContextBody,
    FhirResource,
    Health,
    Readiness,
    SyncRunBody,
    json_schema,
)
from smart_app.asking import AskRequest
from smart_app.audit_fhir import bundle as fhir_bundle
from smart_app.audit_fhir import to_audit_event, validated
from smart_app.bearer import insufficient_scope
from smart_app.errors import Forbidden, NotFound
from smart_app.session import CHART_TYPES, SessionContext, app_state, current_session

router = APIRouter(prefix="/api")
health = APIRouter()
Session = Annotated[SessionContext, Depends(current_session)]


def _visible_types(value: Any, access: AccessFilter) -> Any:
    """A per-type mapping without the resource types the caller may not read (operators' keys,
    lower-case — timings, retries — stay)."""
    if not isinstance(value, dict):
        return value
    return {k: v for k, v in value.items() if type_visible(k, access)}


def type_visible(name: str, access: AccessFilter) -> bool:
    """May this caller learn about resources of type ``name``? A note's Binary goes with
    DocumentReference; names that are not resource types (timings, retries) always."""
    if name == "Binary":
        return access.allows("DocumentReference")
    if name in CHART_TYPES:
        return access.allows(name)
    return True


def _sync_json(run: dict[str, Any], access: AccessFilter) -> dict[str, Any]:
    return {
        "id": str(run["id"]),
        "status": run["status"],
        "phase": run["phase"],
        "counts": _visible_types(run["counts"], access),
        "quarantined": run["quarantined"],
        "error": run["error"],
        "errors": _visible_types(run["errors"], access),
        "mode": run["mode"],
        "started_at": run["started_at"].isoformat(),
        "heartbeat_at": _iso(run["heartbeat_at"]),
        "answerable_at": _iso(run["answerable_at"]),
        "finished_at": _iso(run["finished_at"]),
    }


def _iso(value: Any) -> str | None:
    return value.isoformat() if value else None


async def _audit(
    request: Request, session: SessionContext, action: str, outcome: str, **detail: Any
) -> None:
    async with app_state(request).engine.begin() as conn:
        await repo.append_audit(
            conn,
            session.audit_record(action, outcome, **detail),
        )


def medical_record_number(patient: dict[str, Any]) -> str | None:
    """The value of the Patient's identifier typed ``MR`` (HL7 v2 table 0203), if any."""
    for ident in patient.get("identifier") or []:
        codings = ((ident or {}).get("type") or {}).get("coding") or []
        if any(c.get("code") == "MR" for c in codings if isinstance(c, dict)) and ident.get(
            "value"
        ):
            return str(ident["value"])
    return None


@router.get("/context", response_model=ContextBody)
async def context(request: Request, session: Session) -> dict[str, Any]:
    """The launch context: patient, user, granted scopes, and a banner from the synced Patient."""
    async with app_state(request).engine.connect() as conn:
        patient = await get_resource(conn, session.access, "Patient", session.patient_id)
        last = await latest_sync_run(conn, session.access)
    banner = None
    if patient:
        name = (patient.get("name") or [{}])[0]
        banner = {
            "name": " ".join([*name.get("given", []), name.get("family", "")]).strip() or None,
            "birthDate": patient.get("birthDate"),
            "gender": patient.get("gender"),
            "mrn": medical_record_number(patient),
        }
    return {
        "patient": f"Patient/{session.patient_id}",
        "fhirUser": session.fhir_user,
        "scopes": list(session.scopes.raw),
        "readable_types": sorted(session.access.resource_types),
        "banner": banner,
        "need_patient_banner": session.need_patient_banner,
        "smart_style_url": session.smart_style_url,
        "encounter": f"Encounter/{session.encounter_id}" if session.encounter_id else None,
        "intent": session.launch_context.get("intent"),
        "tenant": session.launch_context.get("tenant"),
        "fhirContext": session.launch_context.get("fhirContext") or [],
        "via": session.kind,
        "last_sync": _sync_json(last, session.access) if last else None,
    }


class SyncRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    full: bool = Field(
        default=False,
        description="Pull the whole chart even if an incremental pull would do "
        "(also removes what the EHR deleted).",
    )


@router.post(
    "/sync",
    status_code=202,
    response_model=SyncRunBody,
    responses={
        202: {
            "description": "The run started (or the one already running)",
            "headers": {"Location": {"schema": {"type": "string"}, "description": "its status"}},
            "links": {
                "SyncStatus": {
                    "operationId": "sync_status_api_sync__sync_id__get",
                    "parameters": {"sync_id": "$response.body#/id"},
                }
            },
        }
    },
)
async def start_sync(
    request: Request, session: Session, body: SyncRequest | None = None
) -> JSONResponse:
    """Start pulling the launched patient's record (or return the sync already running).

    Within ``sync_full_every_hours`` of a complete full pull with the same or fewer scopes, only
    what changed is pulled (``mode: incremental``); ``{"full": true}`` forces a full pull.
    """
    state = app_state(request)
    assert state.jobs is not None
    sync_id = await state.jobs.start(session, full=bool(body and body.full))
    async with state.engine.connect() as conn:
        run = await get_sync_run(conn, session.access, sync_id)
    assert run is not None
    return JSONResponse(
        _sync_json(run, session.access),
        status_code=202,
        headers={"Location": f"/api/sync/{sync_id}"},
    )


@router.get("/sync/{sync_id}", response_model=SyncRunBody)
async def sync_status(request: Request, sync_id: str, session: Session) -> dict[str, Any]:
    try:
        key = uuid.UUID(sync_id)
    except ValueError:
        raise NotFound("no such sync run", code="sync_not_found") from None
    async with app_state(request).engine.connect() as conn:
        run = await get_sync_run(conn, session.access, key)
    if run is None:
        raise NotFound("no such sync run for this patient", code="sync_not_found")
    return _sync_json(run, session.access)


@router.post(
    "/ask",
    response_model=AnswerBody,
    responses={
        200: {
            "description": "The answer, with every citation checked",
            "links": {
                "AnswerAgain": {
                    "operationId": "get_answer_again_api_answers__answer_id__get",
                    "parameters": {"answer_id": "$response.body#/answer_id"},
                }
            },
        }
    },
)
async def ask(request: Request, body: AskRequest, session: Session) -> AnswerBody:
    """Answer a question about the launched patient with validated citations (written by the
    model when one is configured, else extractive; the same validator either way)."""
    return await asking.ask(app_state(request), session, body.question, stream=False)


@router.get("/answers/{answer_id}", response_model=AnswerBody)
async def get_answer_again(request: Request, answer_id: str, session: Session) -> dict[str, Any]:
    try:
        key = uuid.UUID(answer_id)
    except ValueError:
        raise NotFound("no such answer", code="answer_not_found") from None
    async with app_state(request).engine.connect() as conn:
        body = await get_answer(conn, session.access, key)
    if body is None:
        await _audit(request, session, "answer_read", "not_found")
        raise NotFound("no such answer for this patient", code="answer_not_found")
    await _audit(request, session, "answer_read", "ok", answer_id=answer_id)
    return body


@router.get(
    "/resources/{resource_type}/{resource_id}",
    response_class=JSONResponse,
    responses={
        200: {
            "description": "The stored resource, as the EHR sent it",
            "content": {"application/fhir+json": {"schema": json_schema(FhirResource)}},
        }
    },
)
async def read_resource(
    request: Request, resource_type: str, resource_id: str, session: Session
) -> JSONResponse:
    """A stored resource of the launched patient, if the granted scopes allow its type."""
    ref = f"{resource_type[:64]}/{resource_id[:64]}"
    if not session.access.allows(resource_type):
        await _audit(request, session, "resource_read", "scope_denied", resource=ref)
        message = f"the granted scopes do not allow reading {resource_type[:64]}"
        if session.kind == "bearer":
            raise insufficient_scope(message)
        raise Forbidden(message, code="scope_denied")
    async with app_state(request).engine.connect() as conn:
        resource = await get_resource(conn, session.access, resource_type, resource_id)
    if resource is None:
        await _audit(request, session, "resource_read", "not_found", resource=ref)
        raise NotFound("no such resource for this patient", code="resource_not_found")
    await _audit(request, session, "resource_read", "ok", resource=ref)
    return JSONResponse(resource, media_type="application/fhir+json")


def _is_ref(value: Any) -> bool:
    return isinstance(value, str) and "/" in value and value[:1].isupper()


def audit_view(detail: dict[str, Any], access: AccessFilter) -> dict[str, Any] | None:
    """An audit record's detail as this caller may see it: references to resource types it may
    not read are removed, per-type counts of them too; a record *about* such a resource (a read
    of it) is not shown at all (``None``)."""
    ref = detail.get("resource")
    if _is_ref(ref) and not type_visible(str(ref).split("/", 1)[0], access):
        return None
    out: dict[str, Any] = {}
    for key, value in detail.items():
        if isinstance(value, list) and any(_is_ref(v) for v in value):
            out[key] = [
                v for v in value if not _is_ref(v) or type_visible(v.split("/", 1)[0], access)
            ]
        elif isinstance(value, dict):
            out[key] = _visible_types(value, access)
        else:
            out[key] = value
    return out


async def _within_categories(
    conn: Any, access: AccessFilter, visible: list[tuple[Any, dict[str, Any]]]
) -> list[tuple[Any, dict[str, Any]]]:
    """Under a category-restricted scope, a reference of a restricted type stays only if this
    session could read that resource (checked against the stored copy); a record about a hidden
    resource goes."""
    refs: set[tuple[str, str]] = set()
    for _, detail in visible:
        for value in detail.values():
            items = value if isinstance(value, list) else [value]
            refs |= {tuple(v.split("/", 1)) for v in items if _is_ref(v)}  # type: ignore[misc]
    restricted = {(t, i) for t, i in refs if t in access.categories}
    readable = await existing_refs(conn, access, restricted) if restricted else set()

    def ok(ref: str) -> bool:
        t, i = ref.split("/", 1)
        return t not in access.categories or (t, i) in readable

    out = []
    for row, detail in visible:
        about = detail.get("resource")
        if _is_ref(about) and not ok(str(about)):
            continue
        cleaned = {
            k: [v for v in val if not _is_ref(v) or ok(v)] if isinstance(val, list) else val
            for k, val in detail.items()
        }
        out.append((row, cleaned))
    return out


@router.get(
    "/audit",
    response_model=AuditEntries,
    responses={
        200: {
            "description": "``{entries: [...]}``; with ``format=fhir`` a FHIR R4 Bundle "
            "(searchset) of AuditEvent resources (application/fhir+json)",
            "content": {"application/fhir+json": {"schema": json_schema(FhirResource)}},
        }
    },
)
async def audit_log(
    request: Request,
    session: Session,
    limit: int = 100,
    format: Literal["json", "fhir"] = "json",
) -> Any:
    """This patient's audit records, newest first, filtered by the caller's scopes."""
    async with app_state(request).engine.connect() as conn:
        rows = await repo.list_audit(
            conn,
            source=session.source,
            patient_id=session.patient_id,
            limit=max(1, min(limit, 1000)),
        )
        views = [(r, audit_view(r["detail"] or {}, session.access)) for r in rows]
        visible = [(r, d) for r, d in views if d is not None]  # None: a record about a hidden type
        if session.access.categories:  # granular scopes: hide what a category keeps out
            visible = await _within_categories(conn, session.access, visible)
    if format == "fhir":
        events = [to_audit_event(r, d) for r, d in visible]
        body = validated(
            fhir_bundle(events, bundle_type="searchset", bundle_id=f"audit-{uuid.uuid4().hex}")
        )
        return JSONResponse(body, media_type="application/fhir+json")
    entries = [
        {
            "seq": r["seq"],
            "recorded_at": r["recorded_at"].isoformat(),
            "action": r["action"],
            "outcome": r["outcome"],
            "actor": r["actor"],
            "detail": detail,
            "hash": r["hash"],
        }
        for r, detail in visible
    ]
    return {"entries": entries}


@health.get("/healthz", response_model=Health)
async def healthz() -> dict[str, str]:
    """The app is up and serving (the lifespan refused to start on an unmigrated database)."""
    return {"status": "ok"}


@health.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "The database is unreachable"}},
)
async def readyz(request: Request) -> JSONResponse:
    try:
        async with app_state(request).engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    except Exception:  # noqa: BLE001 - any failure means "not ready"; the reason is not exposed
        return JSONResponse({"status": "unavailable", "database": "unreachable"}, status_code=503)
    return JSONResponse({"status": "ready", "database": "ok"})

"""Agent events: what one agent concluded about a patient, read by the others (shared state).

An event names its patient (with its EHR), an optional encounter, the agent, an event type, a JSON
payload, and what it rests on: answer ids and resource references. Before it is accepted, every
reference — listed in ``refs``, found in the payload (a ``reference`` value, a ``citations`` or
``refs`` list, or ``Type/id`` of a chart type inside text), the encounter, and the citations of
the named answers — is checked as a citation is (``rag/citations.py``): of a type the granted
scopes allow (else 403) and stored for this patient (else 422, the same answer for another
patient's resource as for one that does not exist). The payload is bounded: a JSON object of at
most ``MAX_PAYLOAD_BYTES`` canonical bytes, ``MAX_DEPTH`` levels, exact numbers, text without
control characters; ``text`` and ``statements`` (``[{text, citations}]``) have fixed shapes.

Events are append-only (trigger, migration 0006) and hash-chained into the audit trail: recording
one appends an ``agent_event`` audit record (event id, agent, type, payload SHA-256, references)
and the event row keeps that record's hash. A reader sees an event only when its scopes cover
everything the event rests on (as a stored answer, ``rag.get_answer``). The SQL of the
``agent_event`` table lives here, in one place; the caller commits.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator
from sqlalchemy import cast, insert, literal, select
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncConnection

from fhir_adapters import AccessFilter, existing_refs
from rag import get_answer
from smart_app import repository as repo
from smart_app.bearer import insufficient_scope
from smart_app.errors import AppError, Forbidden
from smart_app.guard import bad_text
from smart_app.session import CHART_TYPES, SessionContext
from smart_app.tables import AgentEvent

_event = AgentEvent.__table__  # type: ignore[attr-defined]

MAX_PAYLOAD_BYTES = 16 * 1024
MAX_DEPTH = 8
MAX_REFS = 100
MAX_ANSWERS = 20
MAX_LIST = 500
MAX_EXACT_INT = 2**53  # beyond this a JSON number is not exact in most readers
REF_RE = r"^[A-Z][A-Za-z]{1,63}/[A-Za-z0-9\-.]{1,64}$"
ENCOUNTER_RE = r"^(Encounter/)?[A-Za-z0-9\-.]{1,64}$"
# ``Type/id`` inside text, for the types chartcite stores (others cannot be checked anyway).
_TEXT_REF = re.compile(r"(?<![A-Za-z0-9/])([A-Z][A-Za-z]{1,63})/([A-Za-z0-9\-.]{1,64})")
_STRICT_REF = re.compile(REF_RE)
_REF_KEYS = ("reference",)
_REF_LIST_KEYS = ("citations", "refs")

Ref = Annotated[str, StringConstraints(pattern=REF_RE)]
NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,63}$"
TYPE_RE = r"^[a-z][a-z0-9_.\-]{0,63}$"
Name = Annotated[str, StringConstraints(pattern=NAME_RE)]
EventType = Annotated[str, StringConstraints(pattern=TYPE_RE)]


class ReferenceRefused(AppError):
    """A reference an event rests on is not a stored resource (or answer) of this patient."""

    status = 422
    code = "reference_refused"


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def payload_sha256(payload: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()


def _check_value(value: Any, depth: int, where: str) -> None:
    if depth > MAX_DEPTH:
        raise ValueError(f"the payload is nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str) or not key or len(key) > 128 or bad_text(key):
                raise ValueError(f"{where}: keys are 1-128 characters of text")
            _check_value(item, depth + 1, f"{where}.{key}")
    elif isinstance(value, list):
        for item in value:
            _check_value(item, depth + 1, where)
    elif isinstance(value, str):
        if bad_text(value):
            raise ValueError(f"{where}: text holds control characters or invalid Unicode")
    elif isinstance(value, bool) or value is None:
        return
    elif isinstance(value, int):
        if abs(value) > MAX_EXACT_INT:
            raise ValueError(f"{where}: integers must lie within ±2^53")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where}: numbers must be finite")
    else:
        raise ValueError(f"{where}: not a JSON value")


def check_payload(payload: dict[str, Any]) -> dict[str, Any]:
    """The payload if it is a bounded JSON object of the documented shape; else ``ValueError``."""
    _check_value(payload, 1, "payload")
    if len(canonical_json(payload).encode()) > MAX_PAYLOAD_BYTES:
        raise ValueError(f"the payload is larger than {MAX_PAYLOAD_BYTES} bytes")
    if "text" in payload and not isinstance(payload["text"], str):
        raise ValueError("payload.text must be text")
    statements = payload.get("statements")
    if statements is not None:
        ok = isinstance(statements, list) and all(
            isinstance(s, dict)
            and isinstance(s.get("text"), str)
            and isinstance(s.get("citations", []), list)
            and all(isinstance(c, str) for c in s.get("citations", []))
            for s in statements
        )
        if not ok:
            raise ValueError("payload.statements must be [{text, citations: [Type/id]}]")
    return payload


def payload_refs(payload: Any) -> set[str]:
    """Every resource reference a payload makes: ``reference`` values and ``citations``/``refs``
    items (which must be ``Type/id``: else ``ValueError``), and ``Type/id`` of a chart type in
    text."""
    found: set[str] = set()

    def strict(value: Any) -> None:
        if not isinstance(value, str) or not _STRICT_REF.fullmatch(value):
            raise ValueError("a reference in the payload is not of the form Type/id")
        found.add(value)

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                if key in _REF_KEYS and isinstance(item, str):
                    strict(item)
                elif key in _REF_LIST_KEYS and isinstance(item, list):
                    for ref in item:
                        strict(ref)
                else:
                    walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)
        elif isinstance(value, str):
            for m in _TEXT_REF.finditer(value):
                rtype, rid = m.group(1), m.group(2).rstrip(".")
                if rtype in CHART_TYPES and rid:
                    found.add(f"{rtype}/{rid}")

    walk(payload)
    return found


class AgentEventIn(BaseModel):
    """An event to record. The patient is the caller's (its token's or session's), never named."""

    model_config = ConfigDict(extra="forbid")
    agent: Name = Field(description="The recording agent's name, e.g. triage-agent")
    type: EventType = Field(description="What kind of event, e.g. summary, triage, follow_up")
    encounter: str | None = Field(
        default=None,
        pattern=ENCOUNTER_RE,
        description="Encounter/<id> of this patient (checked like a citation)",
    )
    payload: dict[str, Any] = Field(
        default_factory=dict,
        description=f"A JSON object (≤ {MAX_PAYLOAD_BYTES} bytes, depth ≤ {MAX_DEPTH}); "
        "optional `text` and `statements: [{text, citations: [Type/id]}]`; every reference in "
        "it is checked",
    )
    refs: list[Ref] = Field(
        default_factory=list,
        max_length=MAX_REFS,
        description="Resource references (Type/id) the event rests on",
    )
    answer_ids: list[uuid.UUID] = Field(
        default_factory=list,
        max_length=MAX_ANSWERS,
        description="Answers (POST /api/ask, MCP ask) the event rests on",
    )

    @field_validator("payload")
    @classmethod
    def _payload(cls, value: dict[str, Any]) -> dict[str, Any]:
        return check_payload(value)

    def encounter_id(self) -> str | None:
        return self.encounter.removeprefix("Encounter/") if self.encounter else None


class AgentEventOut(BaseModel):
    """A recorded event, as every agent of the patient reads it."""

    id: str
    seq: int = Field(description="Order of recording (increasing)")
    patient: str = Field(description="Patient/<id>")
    encounter: str | None
    agent: str
    type: str
    payload: dict[str, Any]
    payload_sha256: str
    answer_ids: list[str]
    refs: list[str] = Field(description="Every resource reference it rests on, checked")
    recorded_by: str | None = Field(description="fhirUser of the token or session")
    client_id: str
    created_at: str
    audit_hash: str = Field(description="Hash of the audit record of this event (its link)")


class AgentEventList(BaseModel):
    events: list[AgentEventOut]


def _split(ref: str) -> tuple[str, str]:
    rtype, _, rid = ref.partition("/")
    return rtype, rid


async def check_refs(
    conn: AsyncConnection, session: SessionContext, refs: Iterable[str], what: str = "reference"
) -> None:
    """Refuse unless every reference is of an allowed type (403) and a stored resource of this
    patient that the scopes show (422). Messages name types and counts, never ids."""
    wanted = {_split(r) for r in refs}
    denied = sorted({t for t, _ in wanted if not session.access.allows(t)})
    if denied:
        message = f"the granted scopes do not allow reading {', '.join(denied)[:200]}"
        if session.kind == "bearer":
            raise insufficient_scope(message)
        raise Forbidden(message, code="scope_denied")
    missing = wanted - await existing_refs(conn, session.access, wanted)
    if missing:
        raise ReferenceRefused(
            f"{len(missing)} {what}(s) are not stored resources of this patient "
            "(or not visible with these scopes)"
        )


async def record_event(
    conn: AsyncConnection, session: SessionContext, event: AgentEventIn
) -> AgentEventOut:
    """Validate and append an event and its audit record, in the caller's transaction."""
    try:
        refs = set(event.refs) | payload_refs(event.payload)
    except ValueError as exc:
        raise ReferenceRefused(str(exc)) from None
    encounter = event.encounter_id()
    if encounter:
        refs.add(f"Encounter/{encounter}")
    answers = sorted({str(a) for a in event.answer_ids})
    for answer_id in answers:
        body = await get_answer(conn, session.access, uuid.UUID(answer_id))
        if body is None:
            raise ReferenceRefused("an answer id is not an answer of this patient")
        refs |= set(body.get("citations") or {})
    if len(refs) > MAX_REFS * 5:
        raise ReferenceRefused(f"the event rests on more than {MAX_REFS * 5} references")
    await check_refs(conn, session, refs)
    event_id = str(uuid.uuid4())
    # Hash what Postgres will hand back (jsonb normalises numbers), so the hash can be re-checked.
    payload = await conn.scalar(select(cast(literal(event.payload, JSONB), JSONB)))
    digest = payload_sha256(payload)
    ordered = sorted(refs)
    audit_hash = await repo.append_audit(
        conn,
        session.audit_record(
            "agent_event",
            "ok",
            event_id=event_id,
            agent=event.agent,
            event_type=event.type,
            payload_sha256=digest,
            answer_ids=answers,
            refs=ordered,
        ),
    )
    row = (
        (
            await conn.execute(
                insert(_event)
                .values(
                    source=session.source,
                    patient_id=session.patient_id,
                    id=event_id,
                    encounter_id=encounter,
                    agent=event.agent,
                    event_type=event.type,
                    payload=payload,
                    payload_sha256=digest,
                    answer_ids=answers,
                    refs=ordered,
                    actor=session.fhir_user,
                    client_id=session.client_id,
                    created_at=datetime.now(UTC),
                    audit_hash=audit_hash,
                )
                .returning(*_event.c)
            )
        )
        .mappings()
        .one()
    )
    return _out(dict(row))


def _out(row: dict[str, Any]) -> AgentEventOut:
    return AgentEventOut(
        id=row["id"],
        seq=row["seq"],
        patient=f"Patient/{row['patient_id']}",
        encounter=f"Encounter/{row['encounter_id']}" if row["encounter_id"] else None,
        agent=row["agent"],
        type=row["event_type"],
        payload=row["payload"],
        payload_sha256=row["payload_sha256"],
        answer_ids=list(row["answer_ids"]),
        refs=list(row["refs"]),
        recorded_by=row["actor"],
        client_id=row["client_id"],
        created_at=row["created_at"].isoformat(),
        audit_hash=row["audit_hash"],
    )


def _aware(value: datetime) -> datetime:
    """A time without an offset is UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


async def list_events(
    conn: AsyncConnection,
    access: AccessFilter,
    *,
    agent: str | None = None,
    event_type: str | None = None,
    encounter: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 100,
) -> list[AgentEventOut]:
    """The patient's events, oldest first, that ``access`` may see whole (every reference of an
    allowed type and, for category-restricted types, a resource it shows)."""
    stmt = select(_event).where(
        _event.c.source == access.source, _event.c.patient_id == access.patient_id
    )
    if agent is not None:
        stmt = stmt.where(_event.c.agent == agent)
    if event_type is not None:
        stmt = stmt.where(_event.c.event_type == event_type)
    if encounter is not None:
        stmt = stmt.where(_event.c.encounter_id == encounter.removeprefix("Encounter/"))
    if since is not None:
        stmt = stmt.where(_event.c.created_at >= _aware(since))
    if until is not None:
        stmt = stmt.where(_event.c.created_at <= _aware(until))
    # Newest ``limit`` visible ones: read a bounded window, filter, keep the newest.
    window = max(1, min(limit, MAX_LIST)) * 4
    rows = [
        dict(r)
        for r in (await conn.execute(stmt.order_by(_event.c.seq.desc()).limit(window)))
        .mappings()
        .all()
    ]
    typed = [r for r in rows if all(access.allows(_split(ref)[0]) for ref in r["refs"])]
    restricted = {
        _split(ref) for r in typed for ref in r["refs"] if access.restricted(_split(ref)[0])
    }
    shown = await existing_refs(conn, access, restricted) if restricted else set()
    visible = [
        r
        for r in typed
        if all(
            access.restricted(_split(ref)[0]) is None or _split(ref) in shown for ref in r["refs"]
        )
    ]
    return [_out(r) for r in reversed(visible[: max(1, min(limit, MAX_LIST))])]


async def verify_events(conn: AsyncConnection, access: AccessFilter) -> tuple[int, int]:
    """(events, events whose payload hash and audit record agree) for this patient: each event's
    audit row (by ``audit_hash``) must name it and carry its payload's SHA-256."""
    rows = (
        (
            await conn.execute(
                select(_event).where(
                    _event.c.source == access.source, _event.c.patient_id == access.patient_id
                )
            )
        )
        .mappings()
        .all()
    )
    audits = {
        a["hash"]: a
        async for a in repo.iter_audit(conn, patient=(access.source, access.patient_id))
        if a["action"] == "agent_event"
    }
    good = sum(1 for row in rows if _matches(row, audits.get(row["audit_hash"])))
    return len(rows), good


def _matches(row: Mapping[str, Any], audit: Mapping[str, Any] | None) -> bool:
    detail = (audit or {}).get("detail") or {}
    return (
        detail.get("event_id") == row["id"]
        and detail.get("payload_sha256") == row["payload_sha256"] == payload_sha256(row["payload"])
        and detail.get("refs") == list(row["refs"])
    )


async def verify_all_events(conn: AsyncConnection) -> tuple[int, list[int]]:
    """Every stored event against the audit record that recorded it (``chartcite audit
    verify``): (events checked, ``seq`` of each event whose audit record is missing or disagrees
    — an event written or changed behind the app's back)."""
    audits = {a["hash"]: a async for a in repo.iter_audit(conn) if a["action"] == "agent_event"}
    rows = (await conn.execute(select(_event).order_by(_event.c.seq))).mappings().all()
    bad = [int(r["seq"]) for r in rows if not _matches(r, audits.get(r["audit_hash"]))]
    return len(rows), bad

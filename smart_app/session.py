"""Request authentication: the SMART session behind the request, as an access filter.

The granted scopes (token response) are turned into a plain ``AccessFilter`` for ``rag`` and
``fhir_adapters``: the patient from the launch context, the resource types the scopes allow.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import Request

from fhir_adapters import CLINICAL_TYPES, AccessFilter, has_category
from smart_app import repository as repo
from smart_app.audit import AuditRecord
from smart_app.bearer import ISS_HEADER, challenge, insufficient_scope
from smart_app.crypto import sha256_hex
from smart_app.errors import AppError, Conflict, Forbidden, NotAuthenticated
from smart_app.scopes import GrantedScopes
from smart_app.state import AppState
from smart_app.tokens import live_access_token

CHART_TYPES = CLINICAL_TYPES | {"Patient", "Medication"}


SESSION_HEADER = "x-chartcite-session"
PATIENT_HEADER = "x-chartcite-patient"


@dataclass(frozen=True)
class SessionContext:
    """Who is asking, about which patient, with which granted scopes. No tokens here."""

    id_hash: str
    iss: str
    source: str
    client_id: str
    patient_id: str
    fhir_user: str | None
    scopes: GrantedScopes
    access: AccessFilter
    kind: str = "launch"
    encounter_id: str | None = None
    need_patient_banner: bool = True
    smart_style_url: str | None = None
    launch_context: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"SessionContext(iss={self.iss!r}, kind={self.kind!r}, scopes={str(self.scopes)!r})"

    def audit_record(self, action: str, outcome: str, **detail: Any) -> AuditRecord:
        """An audit record of this session's user, client and patient."""
        return AuditRecord(
            action,
            outcome,
            actor=self.fhir_user,
            client_id=self.client_id,
            source=self.source,
            patient_id=self.patient_id,
            detail={"via": self.kind, **detail},
        )


def app_state(request: Request) -> AppState:
    state: AppState = request.app.state.chartcite
    return state


def access_for(scopes: GrantedScopes, source: str, patient_id: str) -> AccessFilter:
    """The access filter of these granted scopes: the types they read, and the categories a
    restricted (``?category=``) read admits. A restriction on a type without a ``category``
    element admits nothing: no read of that type."""
    readable = scopes.readable(frozenset(CHART_TYPES))
    categories = {t: c for t, c in readable.items() if c is not None and has_category(t)}
    types = {t for t, c in readable.items() if c is None or t in categories}
    if "MedicationRequest" in types and "MedicationRequest" not in categories:
        # A request's drug; not for a restricted read, where it might be a hidden request's.
        types.add("Medication")
    return AccessFilter(source, patient_id, frozenset(types), categories)


def session_context(row: Any) -> SessionContext:
    """The session of an ``app_session`` row."""
    scopes = GrantedScopes.parse(row.granted_scope)
    return SessionContext(
        id_hash=row.id_hash,
        iss=row.iss,
        source=row.source,
        client_id=row.client_id,
        patient_id=row.patient_id,
        fhir_user=row.fhir_user,
        scopes=scopes,
        access=access_for(scopes, row.source, row.patient_id),
        kind=row.kind,
        encounter_id=row.encounter_id,
        need_patient_banner=row.need_patient_banner,
        smart_style_url=row.smart_style_url,
        launch_context=dict(row.launch_context or {}),
    )


async def _bearer_session(state: AppState, request: Request, token: str) -> SessionContext:
    """The session row behind an app's bearer token (made on first use, until the token's exp)."""
    verifier = state.bearer
    assert verifier is not None
    try:
        grant = await verifier.check(token, request.headers.get(ISS_HEADER))
        if not grant.patient:
            raise insufficient_scope(
                "the token has no patient context (a patient-level token is needed)"
            )
        scopes = GrantedScopes.parse(grant.scope)
        if not scopes.readable_types(frozenset(CHART_TYPES)):
            raise insufficient_scope(
                "the token's scopes allow reading none of the patient's record"
            )
    except AppError as exc:  # refused and audited (no token, no patient: the reason only)
        async with state.engine.begin() as conn:
            await repo.append_audit(
                conn, AuditRecord("bearer", exc.code, detail={"reason": exc.message[:200]})
            )
        raise
    id_hash = sha256_hex("bearer:" + token)
    async with state.engine.connect() as conn:
        row = await repo.get_session(conn, id_hash)
    if row is None or row.granted_scope != grant.scope:
        expires = (
            datetime.fromtimestamp(grant.exp, UTC)
            if grant.exp
            else datetime.now(UTC) + timedelta(seconds=state.config.bearer_cache_seconds)
        )
        reg = grant.registration
        async with state.engine.begin() as conn:
            await repo.upsert_bearer_session(
                conn,
                id_hash=id_hash,
                source=reg.source,
                iss=reg.iss,
                client_id=grant.client_id or "unknown",
                patient_id=grant.patient,
                fhir_user=grant.fhir_user,
                granted_scope=grant.scope,
                access_token_enc=state.cipher.encrypt(token, context=b"access"),
                token_expires_at=expires,
                expires_at=expires,
            )
            row = await repo.get_session(conn, id_hash)
    assert row is not None
    return session_context(row)


async def current_session(request: Request) -> SessionContext:
    """FastAPI dependency: the caller's session, from ``X-Chartcite-Session`` (a launch; the page
    keeps it per tab) or ``Authorization: Bearer`` (an app's own EHR token).

    401 without either (or when the EHR ended the grant), 403 without a patient context, 409 when
    ``X-Chartcite-Patient`` names another patient than the session's."""
    state = app_state(request)
    auth = request.headers.get("authorization") or ""
    scheme, _, credential = auth.partition(" ")
    if scheme.lower() == "bearer" and credential.strip():
        ctx = await _bearer_session(state, request, credential.strip())
    else:
        raw = request.headers.get(SESSION_HEADER)
        if not raw:
            raise NotAuthenticated(
                "no session: launch chartcite from your EHR, or send an EHR access token as "
                "Authorization: Bearer",
                headers=challenge(),
            )
        row, _ = await live_access_token(state, sha256_hex(raw), check=True)
        if not row.patient_id:
            raise Forbidden("this session has no patient context", code="no_patient_context")
        ctx = session_context(row)
    expected = request.headers.get(PATIENT_HEADER)
    if expected is not None and expected.removeprefix("Patient/") != ctx.patient_id:
        async with state.engine.begin() as conn:
            await repo.append_audit(conn, ctx.audit_record("request", "patient_mismatch"))
        raise Conflict(
            "this page shows another patient than its session: reload it from the EHR",
            code="patient_mismatch",
        )
    return ctx

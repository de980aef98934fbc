"""Request authentication: the server-side SMART session behind the cookie, as an access filter.

The granted scopes (token response) are turned into a plain ``AccessFilter`` for ``rag`` and
``fhir_adapters``: the patient from the launch context, the resource types the scopes allow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import Request

from fhir_adapters import CLINICAL_TYPES, AccessFilter
from smart_app import repository as repo
from smart_app.audit import AuditRecord
from smart_app.crypto import sha256_hex
from smart_app.errors import Forbidden, NotAuthenticated
from smart_app.scopes import GrantedScopes
from smart_app.state import AppState

CHART_TYPES = CLINICAL_TYPES | {"Patient", "Medication"}


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

    def __repr__(self) -> str:
        return f"SessionContext(iss={self.iss!r}, scopes={str(self.scopes)!r})"

    def audit_record(self, action: str, outcome: str, **detail: Any) -> AuditRecord:
        """An audit record of this session's user, client and patient."""
        return AuditRecord(
            action,
            outcome,
            actor=self.fhir_user,
            client_id=self.client_id,
            source=self.source,
            patient_id=self.patient_id,
            detail=detail,
        )


def app_state(request: Request) -> AppState:
    state: AppState = request.app.state.chartcite
    return state


def access_for(scopes: GrantedScopes, source: str, patient_id: str) -> AccessFilter:
    readable = scopes.readable_types(frozenset(CHART_TYPES))
    if "MedicationRequest" in readable:
        readable |= {"Medication"}
    return AccessFilter(source, patient_id, frozenset(readable))


async def current_session(request: Request) -> SessionContext:
    """FastAPI dependency: 401 without a valid session, 403 without a patient context."""
    state = app_state(request)
    raw = request.cookies.get(state.config.cookie_name)
    if not raw:
        raise NotAuthenticated("no session: launch chartcite from your EHR first")
    async with state.engine.connect() as conn:
        row = await repo.get_session(conn, sha256_hex(raw))
    if row is None:
        raise NotAuthenticated(
            "the session is unknown or expired: launch chartcite again", code="session_expired"
        )
    if not row.patient_id:
        raise Forbidden("this session has no patient context", code="no_patient_context")
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
    )

"""Typed response bodies of the JSON API (what ``/openapi.json`` promises and the contract fuzz
checks). Request bodies live with their routes; the answer is ``rag.AnswerBody``."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class SyncRunBody(BaseModel):
    """One pull of the launched patient's chart. Per-type maps name only the types the caller
    may read."""

    id: str
    status: Literal["running", "done", "partial", "failed"]
    phase: str = Field(description="queued, fetching, validating, indexing, notes, done …")
    counts: dict[str, Any] = Field(description="stored resources per type, and timings")
    quarantined: int = Field(description="resources set aside as invalid or not this patient's")
    error: str | None = Field(description="why the run failed (types and reasons, never PHI)")
    errors: dict[str, Any] = Field(description="per-type problems of a partial run")
    mode: str = Field(description="full, incremental or import")
    started_at: str
    heartbeat_at: str | None
    answerable_at: str | None = Field(
        description="when the facts were stored (asks work from then)"
    )
    finished_at: str | None


class Banner(BaseModel):
    name: str | None
    birthDate: str | None
    gender: str | None
    mrn: str | None = Field(default=None, description="the identifier typed MR, if any")


class ContextBody(BaseModel):
    """The launch context of the caller's session or bearer token."""

    patient: str = Field(description="Patient/<id>")
    fhirUser: str | None
    scopes: list[str] = Field(description="the granted scopes (never the requested ones)")
    readable_types: list[str]
    banner: Banner | None = Field(description="from the synced Patient; null before a sync")
    need_patient_banner: bool
    smart_style_url: str | None
    encounter: str | None
    intent: str | None
    tenant: str | None
    fhirContext: list[Any]
    via: Literal["launch", "bearer"]
    last_sync: SyncRunBody | None


class AuditEntry(BaseModel):
    seq: int
    recorded_at: str
    action: str
    outcome: str
    actor: str | None
    detail: dict[str, Any] = Field(description="ids, hashes and counts; never PHI or tokens")
    hash: str = Field(description="this record's link in the hash chain")


class AuditEntries(BaseModel):
    entries: list[AuditEntry]


class FhirResource(BaseModel):
    """A FHIR R4 resource as the EHR sent it."""

    model_config = ConfigDict(extra="allow")
    resourceType: str
    id: str


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready", "unavailable"]
    database: Literal["ok", "unreachable"]


class LogoutBody(BaseModel):
    ended: bool = Field(description="false when the session was already gone")
    ehr_tokens_revoked: bool = False


class Jwks(BaseModel):
    """A JSON Web Key Set (RFC 7517): chartcite's public signing keys."""

    keys: list[dict[str, Any]]


def json_schema(model: type[BaseModel]) -> dict[str, Any]:
    """A model's schema for a hand-written ``responses`` entry (media types FastAPI does not
    model, such as ``application/fhir+json``)."""
    return model.model_json_schema(ref_template="#/components/schemas/{model}")

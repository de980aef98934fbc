"""App tables: single-use launch state, server-side sessions (tokens encrypted), the audit chain,
the sync job queue and the shared rate-limit windows."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Integer,
    LargeBinary,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
from sqlmodel import Field, SQLModel


def _ts(nullable: bool = True) -> Any:
    return Field(default=None, sa_column=Column(DateTime(timezone=True), nullable=nullable))


class LaunchState(SQLModel, table=True):
    """OAuth ``state`` (stored as its SHA-256), PKCE verifier (encrypted) and nonce; single use."""

    __tablename__ = "launch_state"
    state_hash: str = Field(sa_column=Column(Text, primary_key=True))
    source: str = Field(sa_column=Column(Text, nullable=False))
    iss: str = Field(sa_column=Column(Text, nullable=False))
    launch: str | None = Field(default=None, sa_column=Column(Text))
    code_verifier_enc: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    nonce: str = Field(sa_column=Column(Text, nullable=False))
    requested_scope: str = Field(sa_column=Column(Text, nullable=False))
    browser_hash: str = Field(sa_column=Column(Text, nullable=False))
    created_at: datetime | None = _ts(False)
    expires_at: datetime | None = _ts(False)
    used_at: datetime | None = _ts()


class AppSession(SQLModel, table=True):
    """A SMART session: a launch (the page holds a random id, the table its SHA-256) or an app's
    bearer token (the table holds the token's SHA-256)."""

    __tablename__ = "app_session"
    id_hash: str = Field(sa_column=Column(Text, primary_key=True))
    source: str = Field(sa_column=Column(Text, nullable=False))
    iss: str = Field(sa_column=Column(Text, nullable=False))
    client_id: str = Field(sa_column=Column(Text, nullable=False))
    patient_id: str | None = Field(default=None, sa_column=Column(Text))
    encounter_id: str | None = Field(default=None, sa_column=Column(Text))
    fhir_user: str | None = Field(default=None, sa_column=Column(Text))
    granted_scope: str = Field(sa_column=Column(Text, nullable=False))
    access_token_enc: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    refresh_token_enc: bytes | None = Field(default=None, sa_column=Column(LargeBinary))
    token_expires_at: datetime | None = _ts()
    need_patient_banner: bool = Field(default=True, sa_column=Column(Boolean, nullable=False))
    smart_style_url: str | None = Field(default=None, sa_column=Column(Text))
    kind: str = Field(default="launch", sa_column=Column(Text, nullable=False))
    launch_context: dict[str, Any] = Field(
        default_factory=dict, sa_column=Column(JSONB, nullable=False)
    )
    checked_at: datetime | None = _ts()
    created_at: datetime | None = _ts(False)
    expires_at: datetime | None = _ts(False)


class AuditEvent(SQLModel, table=True):
    """One audit record; ``hash`` = SHA-256(prev_hash + canonical record). Append-only (trigger)."""

    __tablename__ = "audit_event"
    seq: int | None = Field(default=None, sa_column=Column(BigInteger, primary_key=True))
    recorded_at: datetime | None = _ts(False)
    action: str = Field(sa_column=Column(Text, nullable=False))
    outcome: str = Field(sa_column=Column(Text, nullable=False))
    actor: str | None = Field(default=None, sa_column=Column(Text))
    client_id: str | None = Field(default=None, sa_column=Column(Text))
    source: str | None = Field(default=None, sa_column=Column(Text))
    patient_id: str | None = Field(default=None, sa_column=Column(Text))
    detail: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSONB, nullable=False))
    prev_hash: str = Field(sa_column=Column(Text, nullable=False))
    hash: str = Field(sa_column=Column(Text, nullable=False, unique=True))


class AgentEvent(SQLModel, table=True):
    """What an agent concluded about a patient, for the other agents (``smart_app/agent_events.py``).

    Append-only (trigger, migration 0006); ``audit_hash`` is the hash of the audit row that
    recorded it, so each event is a link of the audit chain."""

    __tablename__ = "agent_event"
    # Per patient, so that the constraint holds the distribution column (migration 0007).
    __table_args__ = (UniqueConstraint("source", "patient_id", "audit_hash"),)
    source: str = Field(sa_column=Column(Text, primary_key=True))
    patient_id: str = Field(sa_column=Column(Text, primary_key=True))
    id: str = Field(sa_column=Column(Text, primary_key=True))
    seq: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=False))
    encounter_id: str | None = Field(default=None, sa_column=Column(Text))
    agent: str = Field(sa_column=Column(Text, nullable=False))
    event_type: str = Field(sa_column=Column(Text, nullable=False))
    payload: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSONB, nullable=False))
    payload_sha256: str = Field(sa_column=Column(Text, nullable=False))
    answer_ids: list[str] = Field(
        default_factory=list, sa_column=Column(ARRAY(Text), nullable=False)
    )
    refs: list[str] = Field(default_factory=list, sa_column=Column(ARRAY(Text), nullable=False))
    actor: str | None = Field(default=None, sa_column=Column(Text))
    client_id: str = Field(sa_column=Column(Text, nullable=False))
    created_at: datetime | None = _ts(False)
    audit_hash: str = Field(sa_column=Column(Text, nullable=False))


class SyncJob(SQLModel, table=True):
    """A queued or running sync (``smart_app/sync_queue.py``); its id is the ``sync_run`` id.

    Any app process may claim it (``FOR UPDATE SKIP LOCKED``), holds it by a lease it extends
    while it runs, and fences every write on (``lease_owner``, ``attempts``)."""

    __tablename__ = "sync_job"
    id: uuid.UUID = Field(sa_column=Column(UUID(as_uuid=True), primary_key=True))
    source: str = Field(sa_column=Column(Text, nullable=False))
    patient_id: str = Field(sa_column=Column(Text, nullable=False))
    session_hash: str = Field(sa_column=Column(Text, nullable=False))
    mode: str = Field(sa_column=Column(Text, nullable=False))
    since: datetime | None = _ts()
    created_at: datetime | None = _ts(False)
    attempts: int = Field(default=0, sa_column=Column(Integer, nullable=False))
    lease_owner: str | None = Field(default=None, sa_column=Column(Text))
    lease_until: datetime | None = _ts()
    locked: bool = Field(default=False, sa_column=Column(Boolean, nullable=False))
    finished_at: datetime | None = _ts()


class RateWindow(SQLModel, table=True):
    """Requests counted per limiter key and minute, shared by every app process (UNLOGGED)."""

    __tablename__ = "rate_window"
    key: str = Field(sa_column=Column(Text, primary_key=True))
    window_start: datetime = Field(sa_column=Column(DateTime(timezone=True), primary_key=True))
    hits: int = Field(sa_column=Column(Integer, nullable=False))

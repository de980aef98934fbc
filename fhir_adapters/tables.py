"""FHIR store tables: raw resources, typed projections, sync runs and quarantine.

Every patient-scoped table has ``(source, patient_id)`` first in its primary key (btree): ``source``
is the registered EHR's stable key, so two EHRs' ``Patient/123`` never meet, a chart query is an
index range scan, and the schema can be distributed on ``patient_id`` (Citus) unchanged.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Column, DateTime, Float, Identity, Integer, Text
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlmodel import Field, SQLModel


def _ts(**kw: Any) -> Any:
    return Field(default=None, sa_column=Column(DateTime(timezone=True), **kw))


class FhirResource(SQLModel, table=True):
    """A stored FHIR resource, raw JSON as received (validated with fhir.resources R4B)."""

    __tablename__ = "fhir_resource"
    source: str = Field(sa_column=Column(Text, primary_key=True))
    patient_id: str = Field(sa_column=Column(Text, primary_key=True))
    resource_type: str = Field(sa_column=Column(Text, primary_key=True))
    id: str = Field(sa_column=Column(Text, primary_key=True))
    version_id: str | None = Field(default=None, sa_column=Column(Text))
    last_updated: datetime | None = _ts()
    content_hash: str = Field(sa_column=Column(Text, nullable=False))
    content: dict[str, Any] = Field(sa_column=Column(JSONB, nullable=False))
    synced_at: datetime | None = _ts(nullable=False)


class ClinicalFact(SQLModel, table=True):
    """Typed projection of one clinical resource; one row shape for every type.

    ``date`` is the clinically meaningful time (Observation.effective, MedicationRequest.authoredOn,
    Condition.onset, Immunization.occurrence, Procedure.performed, Encounter.period.start,
    DocumentReference.date); type-specific extras (dosage, components, reactions) sit in ``detail``.
    """

    __tablename__ = "clinical_fact"
    source: str = Field(sa_column=Column(Text, primary_key=True))
    patient_id: str = Field(sa_column=Column(Text, primary_key=True))
    resource_type: str = Field(sa_column=Column(Text, primary_key=True))
    id: str = Field(sa_column=Column(Text, primary_key=True))
    category: str | None = Field(default=None, sa_column=Column(Text))
    code_system: str | None = Field(default=None, sa_column=Column(Text))
    code: str | None = Field(default=None, sa_column=Column(Text))
    display: str | None = Field(default=None, sa_column=Column(Text))
    status: str | None = Field(default=None, sa_column=Column(Text))
    date: datetime | None = _ts()
    end_date: datetime | None = _ts()
    value_num: float | None = Field(default=None, sa_column=Column(Float))
    value_text: str | None = Field(default=None, sa_column=Column(Text))
    unit: str | None = Field(default=None, sa_column=Column(Text))
    encounter_id: str | None = Field(default=None, sa_column=Column(Text))
    detail: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSONB, nullable=False))
    #: Hash of the raw resource version (and its Medication/Binary) this fact was projected from.
    source_hash: str | None = Field(default=None, sa_column=Column(Text))
    #: The ``source_hash`` the fact's chunks were built from (NULL: not indexed yet).
    indexed_hash: str | None = Field(default=None, sa_column=Column(Text))
    #: Why the fact is known to lack something (note text unreadable, Medication unreadable).
    incomplete: str | None = Field(default=None, sa_column=Column(Text))


class SyncRun(SQLModel, table=True):
    """One pull (or repair) of a patient's compartment, with progress, per-type errors and a lease."""

    __tablename__ = "sync_run"
    source: str = Field(sa_column=Column(Text, primary_key=True))
    patient_id: str = Field(sa_column=Column(Text, primary_key=True))
    id: uuid.UUID = Field(sa_column=Column(UUID(as_uuid=True), primary_key=True))
    session_id: str | None = Field(default=None, sa_column=Column(Text))
    status: str = Field(sa_column=Column(Text, nullable=False))
    phase: str = Field(default="queued", sa_column=Column(Text, nullable=False))
    counts: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSONB, nullable=False))
    quarantined: int = Field(default=0, sa_column=Column(Integer, nullable=False))
    error: str | None = Field(default=None, sa_column=Column(Text))
    errors: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSONB, nullable=False))
    mode: str = Field(default="full", sa_column=Column(Text, nullable=False))
    types: list[str] = Field(default_factory=list, sa_column=Column(JSONB, nullable=False))
    started_at: datetime | None = _ts(nullable=False)
    heartbeat_at: datetime | None = _ts()
    answerable_at: datetime | None = _ts()
    finished_at: datetime | None = _ts()


class Quarantine(SQLModel, table=True):
    """A resource set aside: its type, id and the reason (fields and error types, never values).

    Its content is never kept: it may be another patient's."""

    __tablename__ = "quarantine"
    source: str = Field(sa_column=Column(Text, primary_key=True))
    patient_id: str = Field(sa_column=Column(Text, primary_key=True))
    seq: int | None = Field(
        default=None, sa_column=Column(BigInteger, Identity(always=True), primary_key=True)
    )
    sync_id: uuid.UUID = Field(sa_column=Column(UUID(as_uuid=True), nullable=False))
    resource_type: str | None = Field(default=None, sa_column=Column(Text))
    resource_id: str | None = Field(default=None, sa_column=Column(Text))
    reason: str = Field(sa_column=Column(Text, nullable=False))
    created_at: datetime | None = _ts(nullable=False)

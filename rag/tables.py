"""Index tables: concepts (embedded once, shared), chunks (per patient) and persisted answers."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pgvector.sqlalchemy import Vector
from sqlalchemy import Column, DateTime, Text
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlmodel import Field, SQLModel

EMBEDDING_DIM = 384


class Concept(SQLModel, table=True):
    """A code's display text, embedded once and shared by every instance (no PHI)."""

    __tablename__ = "concept"
    id: str = Field(sa_column=Column(Text, primary_key=True))
    text: str = Field(sa_column=Column(Text, nullable=False))
    model_id: str = Field(sa_column=Column(Text, nullable=False))
    embedding: Any = Field(sa_column=Column(Vector(EMBEDDING_DIM), nullable=False))


class Chunk(SQLModel, table=True):
    """A retrievable piece of one patient's chart, tied to exactly one resource.

    Structured chunks point at a shared ``concept_id`` vector; narrative chunks carry their own.
    The ``tsv`` full-text column is generated in the database (see the migration).
    """

    __tablename__ = "chunk"
    source: str = Field(sa_column=Column(Text, primary_key=True))
    patient_id: str = Field(sa_column=Column(Text, primary_key=True))
    id: str = Field(sa_column=Column(Text, primary_key=True))
    resource_type: str = Field(sa_column=Column(Text, nullable=False))
    resource_id: str = Field(sa_column=Column(Text, nullable=False))
    encounter_id: str | None = Field(default=None, sa_column=Column(Text))
    date: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True)))
    kind: str = Field(sa_column=Column(Text, nullable=False))
    text: str = Field(sa_column=Column(Text, nullable=False))
    content_hash: str = Field(sa_column=Column(Text, nullable=False))
    #: The fact's ``source_hash`` (raw resource version) this chunk was built from.
    source_hash: str | None = Field(default=None, sa_column=Column(Text))
    concept_id: str | None = Field(default=None, sa_column=Column(Text))
    embedding: Any = Field(default=None, sa_column=Column(Vector(EMBEDDING_DIM)))


class Answer(SQLModel, table=True):
    """An answer exactly as returned, so ``GET /api/answers/{id}`` can return it unchanged."""

    __tablename__ = "answer"
    source: str = Field(sa_column=Column(Text, primary_key=True))
    patient_id: str = Field(sa_column=Column(Text, primary_key=True))
    id: uuid.UUID = Field(sa_column=Column(UUID(as_uuid=True), primary_key=True))
    created_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=False)
    )
    body: dict[str, Any] = Field(sa_column=Column(JSONB, nullable=False))

"""The answer contract (DESIGN.md "Answer JSON") as typed models."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class Statement(BaseModel):
    text: str
    citations: list[str] = Field(default_factory=list)
    kind: Literal["fact", "notice"] = "fact"
    """``fact`` statements carry ≥1 validated citation; ``notice`` ones say what could not be answered."""


class CitationInfo(BaseModel):
    resource_type: str
    id: str
    display: str | None = None
    date: str | None = None
    value: str | None = None
    status: str | None = None
    """The resource's status (a Condition's clinicalStatus), so a reader can group without
    fetching each resource."""
    end_date: str | None = None


class AnswerBody(BaseModel):
    answer_id: str
    patient: str
    question: str
    mode: Literal["extractive", "llm"] = "extractive"
    statements: list[Statement]
    citations: dict[str, CitationInfo]
    confidence: float
    removed_statements: int = 0
    latency_ms: float = 0.0
    retrieved: int = 0

"""Answering one question for one caller: the single path behind ``POST /api/ask``,
``POST /api/ask/stream`` and the MCP ``ask`` tool — the not-synced check, the chart notice, the
LLM (when configured) or extractive answer, storage, and the ``ask`` audit record."""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy.ext.asyncio import AsyncConnection

from fhir_adapters import latest_sync_run
from rag import AnswerBody, answer_question
from rag.llm import LlmAnswer
from smart_app import repository as repo
from smart_app.errors import Conflict
from smart_app.guard import bad_text
from smart_app.session import SessionContext
from smart_app.state import AppState

MAX_QUESTION = 2000


class AskRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    question: str = Field(description="A question about the launched patient (1-2,000 characters).")

    @field_validator("question")
    @classmethod
    def _question(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("the question is empty")
        if bad_text(value):
            raise ValueError("the question holds control characters or invalid Unicode")
        if len(value) > MAX_QUESTION:
            raise ValueError(f"the question is longer than {MAX_QUESTION} characters")
        return value


def chart_notice(run: dict[str, Any] | None) -> str | None:
    """What an answer must say about the copy of the chart it was read from (no PHI: types,
    counts and reasons only)."""
    if run is None or run["status"] == "done":
        return None
    if run["status"] == "running":
        return (
            "This chart is still being synced ("
            + str(run["phase"])
            + "): notes and recent changes may not be included yet."
        )
    if run["status"] == "partial":
        kinds = ", ".join(sorted(run["errors"])) or "some resources"
        return (
            f"The last sync of this chart was incomplete ({kinds}: see the sync status), "
            "so this answer may be missing information."
        )
    return "The last sync of this chart failed; this answer uses the copy stored before it."


async def ready_notice(conn: AsyncConnection, session: SessionContext) -> str | None:
    """409 ``not_synced`` before the first sync stored the facts; else the chart notice."""
    if await latest_sync_run(conn, session.access, answerable=True) is None:
        raise Conflict(
            "this patient has not been synced yet: POST /api/sync first", code="not_synced"
        )
    return chart_notice(await latest_sync_run(conn, session.access))


def audit_detail(
    body: AnswerBody, question: str, session: SessionContext, **extra: Any
) -> dict[str, Any]:
    """The ``ask`` audit record's detail: ids, hashes and counts, never the question."""
    return {
        "answer_id": body.answer_id,
        "mode": body.mode,
        "question_sha256": hashlib.sha256(question.encode()).hexdigest(),
        "cited": sorted(body.citations),
        "retrieved": body.retrieved,
        "removed_statements": body.removed_statements,
        "latency_ms": body.latency_ms,
        "scopes": str(session.scopes),
        **extra,
    }


def llm_recorder(
    session: SessionContext, question: str, **extra: Any
) -> Callable[[AsyncConnection, LlmAnswer], Awaitable[None]]:
    """Appends the ask's audit record — with each model call's model, payload hash, number of
    identifiers replaced and usage, never the payload — in the answer's own transaction."""

    async def record(conn: AsyncConnection, result: LlmAnswer) -> None:
        detail = audit_detail(
            result.body,
            question,
            session,
            llm_calls=[c.audit() for c in result.calls],
            usage=result.usage,
            cost_usd=result.cost_usd,
            fallback=result.fallback,
            gated=result.gated,
            **extra,
        )
        await repo.append_audit(conn, session.audit_record("ask", "ok", **detail))

    return record


async def ask(
    state: AppState, session: SessionContext, question: str, **audit_extra: Any
) -> AnswerBody:
    """Answer, store and audit one question (``audit_extra``: e.g. the MCP tool's name)."""
    if state.llm is not None:
        async with state.engine.connect() as conn:  # none held while the model writes
            notice = await ready_notice(conn, session)
        result = await state.llm.answer(
            state.engine,
            state.embedder,
            session.access,
            question,
            chart_notice=notice,
            record=llm_recorder(session, question, **audit_extra),
        )
        return result.body
    async with state.engine.begin() as conn:  # check, answer, store and audit: one transaction
        notice = await ready_notice(conn, session)
        answer = await answer_question(
            conn, state.embedder, session.access, question, chart_notice=notice
        )
        detail = audit_detail(answer, question, session, **audit_extra)
        await repo.append_audit(conn, session.audit_record("ask", "ok", **detail))
    return answer

"""``POST /api/ask/stream``: the answer as Server-Sent Events (WHATWG HTML, "Server-sent events",
https://html.spec.whatwg.org/multipage/server-sent-events.html).

Events, in order: ``evidence`` (the retrieval set, before any model is asked), one ``statement``
per statement that passed citation validation, then ``done`` (answer id, mode, confidence,
removed statements, latency, and the warning when the model could not be used). The answer is
stored and audited as ``POST /api/ask`` stores it (``GET /api/answers/{id}`` returns it). When
the client goes away the model call is cancelled and nothing is stored.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from rag.answer import AnswerBody
from rag.ask import Composed, compose_answer
from rag.llm import LlmAnswerer
from rag.repository import save_answer
from smart_app import repository as repo
from smart_app.asking import AskRequest, audit_detail, llm_recorder, ready_notice
from smart_app.session import SessionContext, app_state, current_session

log = logging.getLogger("chartcite.ask")
router = APIRouter(prefix="/api")
Session = Annotated[SessionContext, Depends(current_session)]
EVENTS = (
    "A text/event-stream: `event: evidence` (`{patient, retrieved, citations}`), then one "
    "`event: statement` per validated statement (`{text, citations, kind}`), then "
    "`event: done` (`{answer_id, mode, confidence, removed_statements, latency_ms, warning}`)."
)


#: One event of the stream (OpenAPI before 3.2: ``schema`` of text/event-stream is per event).
EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["event", "data"],
    "properties": {
        "event": {"type": "string", "enum": ["evidence", "statement", "done", "error"]},
        "data": {"type": "string", "contentMediaType": "application/json"},
    },
}


class EventStream(StreamingResponse):
    media_type = "text/event-stream"


def sse(event: str, data: Any) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def _evidence(composed: Composed, patient: str) -> dict[str, Any]:
    return {
        "patient": patient,
        "retrieved": len(composed.evidence),
        "citations": {k: v.model_dump(mode="json") for k, v in sorted(composed.evidence.items())},
    }


def _done(body: AnswerBody, warning: str | None, **extra: Any) -> dict[str, Any]:
    return {
        "answer_id": body.answer_id,
        "mode": body.mode,
        "confidence": body.confidence,
        "removed_statements": body.removed_statements,
        "latency_ms": body.latency_ms,
        "warning": warning,
        **extra,
    }


@router.post(
    "/ask/stream",
    response_class=EventStream,
    responses={
        200: {
            "description": EVENTS,
            "content": {"text/event-stream": {"schema": EVENT_SCHEMA}},
        }
    },
)
async def ask_stream(request: Request, body: AskRequest, session: Session) -> EventStream:
    """Answer a question about the launched patient as Server-Sent Events: evidence first,
    then each validated statement, then ``done`` with the stored answer's id."""
    state = app_state(request)
    async with state.engine.connect() as conn:
        notice = await ready_notice(conn, session)  # 409 before the stream starts
    llm = state.llm
    queue: asyncio.Queue[bytes | None] = asyncio.Queue()

    async def on_evidence(composed: Composed) -> None:
        await queue.put(sse("evidence", _evidence(composed, f"Patient/{session.patient_id}")))

    async def finish(result: AnswerBody, warning: str | None, **extra: Any) -> None:
        for s in result.statements:
            await queue.put(sse("statement", s.model_dump(mode="json")))
        await queue.put(sse("done", _done(result, warning, **extra)))

    async def run_llm(answerer: LlmAnswerer) -> None:
        result = await answerer.answer(
            state.engine,
            state.embedder,
            session.access,
            body.question,
            chart_notice=notice,
            on_evidence=on_evidence,
            record=llm_recorder(session, body.question, stream=True),
        )
        await finish(result.body, result.fallback, usage=result.usage, cost_usd=result.cost_usd)

    async def run_extractive() -> None:
        started = time.perf_counter()
        async with state.engine.begin() as conn:
            composed = await compose_answer(
                conn, state.embedder, session.access, body.question, chart_notice=notice
            )
            await on_evidence(composed)
            answer = composed.body
            answer.latency_ms = round((time.perf_counter() - started) * 1000, 1)
            await save_answer(
                conn, session.access, uuid.UUID(answer.answer_id), answer.model_dump(mode="json")
            )
            await repo.append_audit(
                conn,
                session.audit_record(
                    "ask", "ok", **audit_detail(answer, body.question, session, stream=True)
                ),
            )
        await finish(answer, None)

    async def produce() -> None:
        try:
            await (run_llm(llm) if llm is not None else run_extractive())
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the stream has begun: an event, not a 500
            ref = uuid.uuid4().hex[:12]
            log.error("ask stream failed (%s), reference %s", type(exc).__name__, ref)
            message = f"the answer failed (reference {ref})"
            await queue.put(sse("error", {"code": "internal_error", "message": message}))
        finally:
            await queue.put(None)

    async def events() -> AsyncIterator[bytes]:
        task = asyncio.create_task(produce())
        try:
            while (item := await queue.get()) is not None:
                yield item
            await task
        finally:
            if not task.done():  # the client went away: stop the model call, store nothing
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    return EventStream(events(), headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

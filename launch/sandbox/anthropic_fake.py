"""A fake Anthropic Messages API (``POST /v1/messages``, https://docs.anthropic.com/en/api/messages)
speaking the real wire format: JSON responses and Server-Sent Events streams
(https://docs.anthropic.com/en/api/messages-streaming: ``message_start``, ``content_block_start``,
``content_block_delta`` with ``input_json_delta``, ``content_block_stop``, ``message_delta``,
``message_stop``, ``ping``), ``tool_use`` content blocks, and the error envelope
(``{"type": "error", "error": {"type": "rate_limit_error", ...}}``) with 429/529/5xx.

Like the sandbox EHR it is the other side of the wire and imports nothing from the app. It reads
the numbered evidence from the user message (lines ``[n] ref=Type/id | ...``) and the checked
facts (``- text (items [1], [2])``), and records every request body it receives (``requests``)
for the PHI checks of the tests and ``chartcite eval --mode llm``.

Modes (``FakeConfig.mode``):

- ``faithful``: the checked facts (or, without them, the first evidence items) as statements,
  each citing the refs of its items.
- ``unretrieved`` / ``foreign`` / ``out_of_scope`` / ``uncited``: every statement cites a ref that
  was never retrieved / one of ``foreign_refs`` (another patient's) / one of ``out_of_scope_refs``
  / nothing.
- ``mixed``: the faithful statements plus one statement of each bad kind above.
- ``unknown_placeholder``: a statement naming a placeholder the request never held.
- ``no_tool``: a text block instead of the tool call.
- ``stall``: nothing for ``stall_seconds`` (a stream sends ``message_start`` first).
- ``error``: status ``error_status`` (429 with ``retry-after``, 529 overloaded, 500...) for
  the first ``fail_first`` requests (0: all of them), then ``faithful``.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

MODES = (
    "faithful",
    "unretrieved",
    "foreign",
    "out_of_scope",
    "uncited",
    "mixed",
    "unknown_placeholder",
    "no_tool",
    "stall",
    "error",
)
ADVERSARIAL = ("unretrieved", "foreign", "out_of_scope", "uncited", "mixed", "unknown_placeholder")
_ITEM = re.compile(r"^\[(\d+)\] ref=(\S+) \| (.*)$", re.MULTILINE)
_FACT = re.compile(r"^- (.*) \(items ((?:\[\d+\](?:, )?)+)\)$", re.MULTILINE)
_ERRORS = {
    400: "invalid_request_error",
    401: "authentication_error",
    429: "rate_limit_error",
    500: "api_error",
    503: "api_error",
    529: "overloaded_error",
}


@dataclass
class FakeConfig:
    mode: str = "faithful"
    foreign_refs: list[str] = field(default_factory=list)
    out_of_scope_refs: list[str] = field(default_factory=list)
    stall_seconds: float = 30.0
    error_status: int = 529
    fail_first: int = 0
    retry_after: float = 0.0
    max_statements: int = 8
    latency_seconds: float = 0.0
    """How long every answer takes (a model's thinking time), before the first byte."""


@dataclass
class Recorded:
    """One request as it arrived: the parsed body, when, and whether the client hung up."""

    body: dict[str, Any]
    at: float
    stream: bool
    status: int = 200
    disconnected: bool = False


def _tokens(text: str) -> int:
    return max(1, len(text) // 4)


def _user_text(body: dict[str, Any]) -> str:
    parts = []
    for m in body.get("messages") or []:
        content = m.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts += [c.get("text", "") for c in content if isinstance(c, dict)]
    return "\n".join(parts)


def faithful_statements(text: str, limit: int) -> list[dict[str, Any]]:
    """What an honest model answers from the prompt: the checked facts with their items' refs,
    else the first evidence items as they are written."""
    refs = {int(n): ref for n, ref, _ in _ITEM.findall(text)}
    out = []
    for fact, items in _FACT.findall(text):
        cited = [refs[int(n)] for n in re.findall(r"\[(\d+)\]", items) if int(n) in refs]
        out.append({"text": fact, "evidence": cited, "confidence": 0.9})
    if not out:
        for _, ref, line in _ITEM.findall(text)[:limit]:
            out.append({"text": line.split(" | ", 1)[-1], "evidence": [ref], "confidence": 0.7})
    return out


class FakeAnthropic:
    """The fake API as a Starlette app (``app``), its configuration and its request record."""

    def __init__(self, config: FakeConfig | None = None, api_key: str = "test-key") -> None:
        self.config = config or FakeConfig()
        self.api_key = api_key
        self.requests: list[Recorded] = []
        self._served = 0
        self.app = Starlette(
            routes=[
                Route("/v1/messages", self.messages, methods=["POST"]),
                Route("/_fake/config", self.set_config, methods=["POST"]),
                Route("/_fake/requests", self.list_requests, methods=["GET", "DELETE"]),
            ]
        )

    def configure(self, **values: Any) -> None:
        """A new configuration (unnamed fields back to their defaults); the failure count restarts."""
        if values.get("mode", "faithful") not in MODES:
            raise ValueError(f"unknown mode {values['mode']!r}")
        self.config = FakeConfig(**values)
        self._served = 0

    def clear(self) -> None:
        self.requests.clear()

    def bodies(self) -> list[str]:
        """Every recorded request body as the JSON text that arrived."""
        return [json.dumps(r.body, ensure_ascii=False) for r in self.requests]

    # -- control ---------------------------------------------------------------------------------

    async def set_config(self, request: Request) -> Response:
        try:
            self.configure(**(await request.json()))
        except (TypeError, ValueError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse({"mode": self.config.mode})

    async def list_requests(self, request: Request) -> Response:
        if request.method == "DELETE":
            self.clear()
            return Response(status_code=204)
        return JSONResponse(
            [
                {
                    "body": r.body,
                    "stream": r.stream,
                    "status": r.status,
                    "disconnected": r.disconnected,
                }
                for r in self.requests
            ]
        )

    # -- the Messages API ------------------------------------------------------------------------

    @staticmethod
    def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
        kind = _ERRORS.get(status, "api_error")
        return JSONResponse(
            {"type": "error", "error": {"type": kind, "message": message}},
            status_code=status,
            headers={"request-id": f"req_{uuid.uuid4().hex[:20]}", **(headers or {})},
        )

    async def messages(self, request: Request) -> Response:
        bearer = request.headers.get("authorization", "").removeprefix("Bearer ")
        if self.api_key not in (request.headers.get("x-api-key"), bearer):
            return self._error(401, "invalid x-api-key")
        if not request.headers.get("anthropic-version"):
            return self._error(400, "anthropic-version header is required")
        try:
            body = await request.json()
        except ValueError:
            return self._error(400, "the body is not JSON")
        if not isinstance(body, dict) or not body.get("model") or not body.get("max_tokens"):
            return self._error(400, "model and max_tokens are required")
        stream = bool(body.get("stream"))
        rec = Recorded(body=body, at=time.time(), stream=stream)
        self.requests.append(rec)
        self._served += 1
        cfg = self.config
        if cfg.mode == "error" and (cfg.fail_first == 0 or self._served <= cfg.fail_first):
            rec.status = cfg.error_status
            headers = {"retry-after": str(cfg.retry_after)} if cfg.error_status == 429 else {}
            return self._error(cfg.error_status, "the fake is failing on purpose", headers)
        if cfg.mode == "stall" and not stream and await self._stall(request, rec):
            return Response(status_code=499)
        if cfg.latency_seconds > 0:
            await asyncio.sleep(cfg.latency_seconds)
        content = self._content(body)
        usage_in = _tokens(json.dumps(body))
        if stream:
            return StreamingResponse(
                self._events(request, rec, body, content, usage_in),
                media_type="text/event-stream",
                headers={"request-id": f"req_{uuid.uuid4().hex[:20]}"},
            )
        message = self._message(body, content, usage_in)
        return JSONResponse(message, headers={"request-id": f"req_{uuid.uuid4().hex[:20]}"})

    async def _stall(self, request: Request, rec: Recorded) -> bool:
        """Wait ``stall_seconds`` unless the client hangs up first (then ``True``)."""
        deadline = time.monotonic() + self.config.stall_seconds
        while time.monotonic() < deadline:
            if await request.is_disconnected():
                rec.disconnected = True
                return True
            await asyncio.sleep(0.05)
        return False

    def _statements(self, text: str) -> list[dict[str, Any]]:
        cfg = self.config
        good = faithful_statements(text, cfg.max_statements)
        if cfg.mode in ("faithful", "stall", "error", "no_tool"):
            return good
        bad_ref = {
            "unretrieved": lambda: f"Observation/never-retrieved-{uuid.uuid4().hex[:8]}",
            "foreign": lambda: (cfg.foreign_refs or ["Observation/foreign"])[0],
            "out_of_scope": lambda: (cfg.out_of_scope_refs or ["MedicationRequest/x"])[0],
        }
        if cfg.mode in bad_ref:
            return [{**s, "evidence": [*s["evidence"][:1], bad_ref[cfg.mode]()]} for s in good]
        if cfg.mode == "uncited":
            return [{**s, "evidence": []} for s in good]
        if cfg.mode == "unknown_placeholder":
            return [{**s, "text": s["text"] + " Seen with [PERSON_97]."} for s in good]
        # mixed: the honest answer and one of each failure
        first = good[0]["text"] if good else "A statement"
        bad = [
            {"text": first, "evidence": [bad_ref[k]()], "confidence": 0.9}
            for k in ("unretrieved", "foreign", "out_of_scope")
        ]
        bad.append({"text": first, "evidence": [], "confidence": 0.9})
        return [*good, *bad]

    def _content(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        text = _user_text(body)
        if self.config.mode == "no_tool":
            return [{"type": "text", "text": "I cannot use tools today."}]
        tools = body.get("tools") or [{"name": "record_answer"}]
        return [
            {
                "type": "tool_use",
                "id": f"toolu_{uuid.uuid4().hex[:24]}",
                "name": tools[0].get("name", "record_answer"),
                "input": {"statements": self._statements(text)},
            }
        ]

    @staticmethod
    def _message(
        body: dict[str, Any], content: list[dict[str, Any]], usage_in: int
    ) -> dict[str, Any]:
        return {
            "id": f"msg_{uuid.uuid4().hex[:24]}",
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": content,
            "stop_reason": "tool_use" if content[0]["type"] == "tool_use" else "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": usage_in, "output_tokens": _tokens(json.dumps(content))},
        }

    async def _events(
        self,
        request: Request,
        rec: Recorded,
        body: dict[str, Any],
        content: list[dict[str, Any]],
        usage_in: int,
    ) -> AsyncIterator[bytes]:
        def event(name: str, data: dict[str, Any]) -> bytes:
            return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()

        message = self._message(body, content, usage_in)
        start = {**message, "content": [], "stop_reason": None}
        start["usage"] = {"input_tokens": usage_in, "output_tokens": 1}
        try:
            yield event("message_start", {"type": "message_start", "message": start})
            if self.config.mode == "stall":
                await asyncio.sleep(self.config.stall_seconds)
            yield event("ping", {"type": "ping"})
            for i, block in enumerate(content):
                if block["type"] == "tool_use":
                    opened = {**block, "input": {}}
                    yield event(
                        "content_block_start",
                        {"type": "content_block_start", "index": i, "content_block": opened},
                    )
                    raw = json.dumps(block["input"])
                    for k in range(0, len(raw), 64):  # partial JSON, as the API sends it
                        delta = {"type": "input_json_delta", "partial_json": raw[k : k + 64]}
                        yield event(
                            "content_block_delta",
                            {"type": "content_block_delta", "index": i, "delta": delta},
                        )
                else:
                    yield event(
                        "content_block_start",
                        {
                            "type": "content_block_start",
                            "index": i,
                            "content_block": {"type": "text", "text": ""},
                        },
                    )
                    yield event(
                        "content_block_delta",
                        {
                            "type": "content_block_delta",
                            "index": i,
                            "delta": {"type": "text_delta", "text": block["text"]},
                        },
                    )
                yield event("content_block_stop", {"type": "content_block_stop", "index": i})
            yield event(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
                    "usage": {"output_tokens": message["usage"]["output_tokens"]},
                },
            )
            yield event("message_stop", {"type": "message_stop"})
        except asyncio.CancelledError:
            rec.disconnected = True
            raise

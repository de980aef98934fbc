"""Fault injection for the sandbox EHR: what real servers and networks do to a sync.

``FaultInjector`` is ASGI middleware in front of the sandbox; a test (or ``chartcite demo
--faults``) fills its ``FaultPlan`` with ``Fault`` rules. A rule matches requests by a regular
expression on ``path?query`` and fires on the ``nth`` match for ``times`` matches (0: for ever):

- ``status``: answer ``status`` (429, 503, …) with an OperationOutcome and ``Retry-After``.
- ``stall``: wait ``seconds`` before answering (past the client's timeout).
- ``reset``: start the response, send part of it, then drop the connection.
- ``truncate``: send the response cut in half (valid headers, broken JSON).
- ``next_host``: rewrite the ``next`` link's origin to ``host`` (an alias, or another server).
- ``no_everything``: the CapabilityStatement drops ``$everything`` and the operation answers 404.
- ``token_expired``: answer 401 ``invalid_token``, as when an access token expires mid-sync.
- ``extra_entry``: add ``resource`` to the page (say, another patient's Observation).
- ``drop_entry``: lose the page's last entry (``Bundle.total`` no longer adds up).

``FaultPlan.fired`` lists what fired (kind and path), so tests can assert the fault really happened.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from starlette.types import ASGIApp, Message, Receive, Scope, Send

Kind = Literal[
    "status",
    "stall",
    "reset",
    "truncate",
    "next_host",
    "no_everything",
    "token_expired",
    "extra_entry",
    "drop_entry",
]


@dataclass
class Fault:
    kind: Kind
    path: str = ""
    nth: int = 1
    times: int = 1
    status: int = 503
    retry_after: str | None = None
    seconds: float = 0.0
    host: str = ""
    resource: dict[str, Any] | None = None
    seen: int = 0

    def fires(self, target: str) -> bool:
        if not re.search(self.path, target):
            return False
        self.seen += 1
        return self.seen >= self.nth and (self.times == 0 or self.seen < self.nth + self.times)


@dataclass
class FaultPlan:
    faults: list[Fault] = field(default_factory=list)
    fired: list[tuple[str, str]] = field(default_factory=list)

    def set(self, *faults: Fault) -> None:
        self.faults = list(faults)
        self.fired = []

    def clear(self) -> None:
        self.set()

    def pick(self, target: str) -> Fault | None:
        for fault in self.faults:
            if fault.fires(target):
                self.fired.append((fault.kind, target))
                return fault
        return None


def _outcome(status: int, text: str) -> bytes:
    code = "throttled" if status == 429 else ("login" if status == 401 else "transient")
    return json.dumps(
        {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": code, "details": {"text": text}}],
        }
    ).encode()


class FaultInjector:
    """ASGI middleware that applies the plan's faults to matching requests."""

    def __init__(self, app: ASGIApp, plan: FaultPlan) -> None:
        self.app = app
        self.plan = plan

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.plan.faults:
            await self.app(scope, receive, send)
            return
        query = scope.get("query_string", b"").decode()
        target = scope["path"] + (f"?{query}" if query else "")
        if "/fhir/metadata" in target and any(f.kind == "no_everything" for f in self.plan.faults):
            await self._rewrite(scope, receive, send, _drop_everything)
            return
        if "$everything" in target and any(f.kind == "no_everything" for f in self.plan.faults):
            self.plan.fired.append(("no_everything", target))
            await _respond(send, 404, _outcome(404, "Unknown operation"))
            return
        fault = self.plan.pick(target)
        if fault is None or fault.kind == "no_everything":
            await self.app(scope, receive, send)
        elif fault.kind == "status":
            headers = [(b"retry-after", fault.retry_after.encode())] if fault.retry_after else []
            await _respond(send, fault.status, _outcome(fault.status, "Try again later"), headers)
        elif fault.kind == "token_expired":
            headers = [(b"www-authenticate", b'Bearer error="invalid_token"')]
            await _respond(send, 401, _outcome(401, "The access token expired"), headers)
        elif fault.kind == "stall":
            await asyncio.sleep(fault.seconds)
            await self.app(scope, receive, send)
        elif fault.kind == "reset":
            status, headers, body = await _capture(self.app, scope, receive)
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send(
                {"type": "http.response.body", "body": body[: len(body) // 3], "more_body": True}
            )
            raise ConnectionResetError("fault injection: connection dropped")
        elif fault.kind == "truncate":
            status, headers, body = await _capture(self.app, scope, receive)
            await _respond(send, status, body[: len(body) // 2], _without_length(headers))
        elif fault.kind == "next_host":
            host = fault.host
            await self._rewrite(scope, receive, send, lambda doc: _move_next(doc, host))
        elif fault.kind == "extra_entry":
            extra = {"resource": fault.resource, "search": {"mode": "match"}}
            await self._rewrite(
                scope, receive, send, lambda doc: doc.setdefault("entry", []).append(extra)
            )
        elif fault.kind == "drop_entry":
            await self._rewrite(scope, receive, send, lambda doc: (doc.get("entry") or [0]).pop())

    async def _rewrite(self, scope: Scope, receive: Receive, send: Send, edit: Any) -> None:
        status, headers, body = await _capture(self.app, scope, receive)
        try:
            doc = json.loads(body)
        except ValueError:
            await _respond(send, status, body, _without_length(headers))
            return
        edit(doc)
        await _respond(send, status, json.dumps(doc).encode(), _without_length(headers))


def _drop_everything(doc: dict[str, Any]) -> None:
    for rest in doc.get("rest") or []:
        rest.pop("operation", None)
        for res in rest.get("resource") or []:
            res.pop("operation", None)


def _move_next(doc: dict[str, Any], host: str) -> None:
    """``host`` replaces the link's origin; a ``{url}`` in it is replaced by the whole link."""
    for link in doc.get("link") or []:
        if link.get("relation") == "next":
            url = str(link["url"])
            origin_end = url.index("/", url.index("://") + 3)
            link["url"] = host.replace("{url}", url) if "{url}" in host else host + url[origin_end:]


def _without_length(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    return [(k, v) for k, v in headers if k.lower() != b"content-length"]


async def _capture(app: ASGIApp, scope: Scope, receive: Receive) -> tuple[int, Any, bytes]:
    started: dict[str, Any] = {}
    chunks: list[bytes] = []

    async def keep(message: Message) -> None:
        if message["type"] == "http.response.start":
            started.update(message)
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, keep)
    return int(started["status"]), list(started.get("headers", [])), b"".join(chunks)


async def _respond(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    base = [(k, v) for k, v in headers or [] if k.lower() != b"content-type"]
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/fhir+json"),
                (b"content-length", str(len(body)).encode()),
                *base,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})

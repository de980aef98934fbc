"""The outermost layer of every request: bad bytes refused, bodies bounded, callers rate-limited,
failures contained, security headers set.

A pure ASGI middleware, so that nothing — not even an exception inside a response — reaches
uvicorn, whose own handler prints a full traceback (with SQL parameters, hence PHI) to stderr.

- **Bad bytes**: a path or query string that is not valid UTF-8 once percent-decoded, or holds a
  control character (NUL, ESC, …) or a lone surrogate, is answered 422 before any routing.
- **Body size**: ``Content-Length`` above the limit → 413 at once; a chunked body is counted as it
  arrives and cut off at the limit.
- **Rate limits**: a one-minute window per session (``X-Chartcite-Session`` or the bearer
  token, by hash) and per client address, on ``/api/*`` and ``/mcp``, shared by every app process
  through Postgres (``smart_app/rate_limit.py``); over the limit → 429 with ``Retry-After``.
- **Failures**: any exception becomes a 500 with a reference id; the log line names the reference,
  the method, the route template and the exception class — never the URL, the body or the message.
- **Headers**: ``X-Content-Type-Options: nosniff`` everywhere; ``Cache-Control: no-store`` on the
  API and the launch pages (PHI); a strict Content-Security-Policy whose ``frame-ancestors`` are
  the registered EHRs' origins (the page runs inside their iframes) — for the JSON API ``'none'``.
"""

from __future__ import annotations

import json
import logging
import math
import unicodedata
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_to_bytes, urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from smart_app.pages import error_page
from smart_app.rate_limit import RateLimiter

log = logging.getLogger("chartcite.errors")
BROWSER_PATHS = ("/launch", "/callback")
OWN_PREFIXES = (
    "/api",
    "/mcp",
    "/launch",
    "/callback",
    "/logout",
    "/.well-known",
    "/healthz",
    "/readyz",
)


@dataclass(frozen=True)
class GuardConfig:
    max_body_bytes: int = 64 * 1024
    session_per_minute: int = 300
    client_per_minute: int = 3000
    frame_ancestors: tuple[str, ...] = ()
    page_csp: str = ""


def bad_text(value: str) -> bool:
    """A control character (other than tab/newline/CR) or a lone surrogate."""
    for ch in value:
        if ch in "\t\n\r":
            continue
        cat = unicodedata.category(ch)
        if cat in ("Cc", "Cs"):
            return True
    return False


def _bad_raw(raw: bytes) -> bool:
    try:
        text = unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        return True
    return bad_text(text)


def origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


class Guard:
    """See the module docstring."""

    def __init__(
        self, app: ASGIApp, config: GuardConfig, limiter: RateLimiter | None = None
    ) -> None:
        self.app = app
        self.config = config
        self.limiter = limiter or RateLimiter(
            session_per_minute=config.session_per_minute,
            client_per_minute=config.client_per_minute,
            shared=False,
        )
        ancestors = " ".join(("'self'", *config.frame_ancestors))
        self._page_csp = (
            config.page_csp or "default-src 'self'"
        ) + f"; frame-ancestors {ancestors}"
        self._api_csp = "default-src 'none'; frame-ancestors 'none'"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        own = path == "/" or path.startswith(OWN_PREFIXES)
        raw_path = scope.get("raw_path") or path.encode("utf-8", "surrogateescape")
        if _bad_raw(raw_path) or _bad_raw(scope.get("query_string", b"")):
            await self._error(
                scope, send, 422, "invalid_request", "the URL holds characters that are not allowed"
            )
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None:
            try:
                too_big = int(length) > self.config.max_body_bytes
            except ValueError:
                too_big = True
            if too_big and own:
                await self._error(scope, send, 413, "body_too_large", self._too_big())
                return
        if path.startswith(("/api", "/mcp")) and self.limiter.active:
            client = scope.get("client")
            who = headers.get(b"x-chartcite-session") or headers.get(b"authorization")
            retry = await self.limiter.hit(client[0] if client else "unknown", who)
            if retry is not None:
                await self._error(
                    scope,
                    send,
                    429,
                    "rate_limited",
                    "too many requests: slow down and retry",
                    {"Retry-After": str(math.ceil(retry))},
                )
                return
        if own and scope.get("method") in ("POST", "PUT", "PATCH"):
            # API bodies are small: read (bounded) before the app does, then replay.
            chunks: list[bytes] = []
            size = 0
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    break
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > self.config.max_body_bytes:
                    await self._error(scope, send, 413, "body_too_large", self._too_big())
                    return
                chunks.append(chunk)
                if not message.get("more_body"):
                    break
            body = b"".join(chunks)
            replayed = False
            upstream = receive  # not ``receive``: that name is rebound to replay below

            async def replay() -> Message:
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await upstream()

            receive = replay

        started = False

        async def send_with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if own:
                    message = dict(message)
                    message["headers"] = self._headers(path, message.get("headers") or [])
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except Exception as exc:  # noqa: BLE001 - the one place every failure is contained
            ref = uuid.uuid4().hex[:12]
            route = scope.get("route")
            template = getattr(route, "path", None) or (
                "/ehr/…" if path.startswith("/ehr") else "(unmatched)"
            )
            log.error(
                "unhandled %s on %s %s (ref %s)",
                type(exc).__name__,
                scope.get("method"),
                template,
                ref,
            )
            if not started:
                await self._error(
                    scope, send, 500, "internal_error", f"internal error (reference {ref})"
                )

    def _too_big(self) -> str:
        return f"the request body is larger than {self.config.max_body_bytes} bytes"

    def _headers(
        self, path: str, headers: Iterable[tuple[bytes, bytes]]
    ) -> list[tuple[bytes, bytes]]:
        out = [
            (k, v)
            for k, v in headers
            if k.lower() not in (b"cache-control", b"content-security-policy")
        ]
        out.append((b"x-content-type-options", b"nosniff"))
        out.append((b"referrer-policy", b"no-referrer"))
        if path.startswith(("/.well-known", "/healthz", "/readyz")):
            out.append((b"cache-control", dict(headers).get(b"cache-control", b"no-store")))
        else:
            out.append((b"cache-control", b"no-store"))
        csp = self._page_csp if path == "/" or path.startswith(BROWSER_PATHS) else self._api_csp
        out.append((b"content-security-policy", csp.encode()))
        return out

    async def _error(
        self,
        scope: Scope,
        send: Send,
        status: int,
        code: str,
        message: str,
        extra: dict[str, str] | None = None,
    ) -> None:
        path: str = scope.get("path", "")
        if path in BROWSER_PATHS and scope.get("method") in ("GET", "HEAD"):
            body = error_page(status, code, message).encode()
            ctype = b"text/html; charset=utf-8"
        else:
            body = json.dumps({"error": {"code": code, "message": message}}).encode()
            ctype = b"application/json"
        headers: list[Any] = [
            (b"content-type", ctype),
            (b"content-length", str(len(body)).encode()),
        ]
        headers += [(k.lower().encode(), v.encode()) for k, v in (extra or {}).items()]
        headers = self._headers(path, headers)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

"""Starlette ↔ authlib glue for the sandbox authorization server (RFC 6749 §3.1, §3.2).

authlib ships server integrations for Flask and Django only. Like those (see
``authlib.integrations.flask_oauth2.requests``), this module wraps a framework request into an
``OAuth2Request`` whose ``payload`` holds the OAuth parameters — the query string for the
authorization endpoint, the form body for the token and introspection endpoints — and turns
authlib's ``(status, body, headers)`` triples into Starlette responses.

Starlette reads bodies asynchronously while authlib is synchronous, so the body is read first
into an ``HttpRequest`` snapshot. The URI given to authlib comes from the configured public
base URL, never from the request's Host header.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from authlib.oauth2.rfc6749 import OAuth2Payload, OAuth2Request
from starlette.requests import Request
from starlette.responses import Response

FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """A fully read HTTP request: method, public URI, headers, query and form parameters."""

    method: str
    uri: str
    headers: Mapping[str, str]
    query: Sequence[tuple[str, str]]
    form: Sequence[tuple[str, str]]


async def read_http_request(request: Request, public_uri: str) -> HttpRequest:
    """Snapshot a Starlette request (only ``application/x-www-form-urlencoded`` bodies are read)."""
    form: list[tuple[str, str]] = []
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if request.method == "POST" and content_type == FORM_CONTENT_TYPE:
        body = await request.body()
        form = parse_qsl(body.decode("utf-8", errors="replace"), keep_blank_values=True)
    query = list(request.query_params.multi_items())
    uri = f"{public_uri}?{request.url.query}" if request.url.query else public_uri
    return HttpRequest(request.method, uri, request.headers, query, form)


class SandboxPayload(OAuth2Payload):  # type: ignore[misc]
    """OAuth parameters: the first value of each name in ``data``, all values in ``datalist``."""

    def __init__(self, pairs: Sequence[tuple[str, str]]) -> None:
        self._data: dict[str, str] = {}
        self._datalist: defaultdict[str, list[str]] = defaultdict(list)
        for name, value in pairs:
            self._data.setdefault(name, value)
            self._datalist[name].append(value)

    @property
    def data(self) -> dict[str, str]:
        return self._data

    @property
    def datalist(self) -> defaultdict[str, list[str]]:
        return self._datalist


class SandboxOAuth2Request(OAuth2Request):  # type: ignore[misc]
    """An ``OAuth2Request`` over an ``HttpRequest`` snapshot."""

    def __init__(self, http: HttpRequest) -> None:
        super().__init__(method=http.method, uri=http.uri, headers=http.headers)
        self._http = http
        self.payload = SandboxPayload(http.query if http.method == "GET" else http.form)

    @property
    def args(self) -> dict[str, str]:
        return dict(reversed(list(self._http.query)))

    @property
    def form(self) -> dict[str, str]:
        return dict(reversed(list(self._http.form)))


def to_response(status: int, body: Any, headers: Sequence[tuple[str, str]]) -> Response:
    """authlib's ``(status, body, headers)`` as a Starlette response (JSON when body is a dict)."""
    content = json.dumps(body) if isinstance(body, dict) else (body or "")
    return Response(content, status_code=status, headers=dict(headers))

"""The one place errors become HTTP responses: JSON ``{"error": {code, message}}`` for the API,
a small HTML page for the browser-facing ``GET /launch`` and ``GET /callback``. Never a stack trace.
"""

from __future__ import annotations

import logging
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from fhir_adapters import FhirAdapterError
from rag import RagError
from smart_app.errors import AppError
from smart_app.pages import error_page

log = logging.getLogger("chartcite.errors")
BROWSER_PATHS = ("/launch", "/callback")


def error_response(
    request: Request,
    status: int,
    code: str,
    message: str,
    headers: dict[str, str] | None = None,
) -> Response:
    if request.url.path in BROWSER_PATHS and request.method in ("GET", "HEAD"):
        page = error_page(status, code, message)
        return HTMLResponse(page, status_code=status, headers=headers)
    return JSONResponse(
        {"error": {"code": code, "message": message}}, status_code=status, headers=headers
    )


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts) or "invalid request"


def install(app: FastAPI) -> None:
    @app.exception_handler(AppError)
    async def _app_error(request: Request, exc: AppError) -> Response:
        return error_response(request, exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(FhirAdapterError)
    async def _fhir_error(request: Request, exc: FhirAdapterError) -> Response:
        return error_response(request, exc.status, exc.code, exc.message)

    @app.exception_handler(RagError)
    async def _rag_error(request: Request, exc: RagError) -> Response:
        return error_response(request, exc.status, exc.code, exc.message)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        return error_response(request, 422, "invalid_request", _validation_message(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 400 and isinstance(exc.__cause__, ValueError):
            # FastAPI's "error parsing the body" (bytes that are not UTF-8): invalid input,
            # answered like a body that is not JSON (422), as the contract says.
            message = "the request body is not valid UTF-8 JSON"
            return error_response(request, 422, "invalid_request", message)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        # Keep the exception's headers: a 405 names the allowed methods (RFC 9110 §15.5.6).
        return error_response(request, exc.status_code, code, message, dict(exc.headers or {}))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        ref = uuid.uuid4().hex[:12]
        # Type and reference only: exception messages can carry PHI or tokens.
        log.error(
            "unhandled %s on %s %s (ref %s)",
            type(exc).__name__,
            request.method,
            request.url.path,
            ref,
        )
        return error_response(request, 500, "internal_error", f"internal error (reference {ref})")

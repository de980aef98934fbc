"""The OpenAPI document, made to tell the truth about errors.

FastAPI documents validation errors as ``{"detail": [...]}`` (``HTTPValidationError``) and nothing
else; chartcite answers every error as ``{"error": {"code", "message"}}`` (``smart_app/http_errors.py``,
``smart_app/guard.py``) with the statuses below. This rewrites each operation's error responses to
the one envelope and lists the statuses the route can really answer.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

ERROR_SCHEMA: dict[str, Any] = {
    "title": "Error",
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string", "description": "machine-readable, e.g. not_synced"},
                "message": {"type": "string", "description": "for people; never PHI or tokens"},
            },
        }
    },
}
WHY = {
    "400": "Bad request (e.g. an OAuth error from the EHR)",
    "401": "No session, an expired one, or an invalid bearer token (WWW-Authenticate)",
    "403": "The granted scopes do not allow this (insufficient_scope for bearer tokens), "
    "including a resource an agent event cites",
    "404": "No such resource, answer or sync run for this patient",
    "405": "Method not allowed (the Allow header names the allowed ones)",
    "409": "Not synced yet, or X-Chartcite-Patient names another patient than the session's",
    "413": "The request body is larger than the limit",
    "422": "Invalid input (empty or too long question, control characters, bad URL bytes, a "
    "body that is not UTF-8 JSON, or an agent event citing what is not this patient's: "
    "reference_refused)",
    "429": "Rate limited (Retry-After says when to retry)",
    "500": "Internal error; the message carries a reference id for the operators",
    "502": "The EHR is unreachable or answered wrongly",
}


FHIR_JSON = ("/api/audit", "/api/resources/{resource_type}/{resource_id}")


def _statuses(path: str, method: str) -> list[str]:
    statuses = ["405", "422", "500"]
    if path.startswith("/api"):
        statuses += ["401", "403", "409", "429"]
        if "{" in path:
            statuses.append("404")
        if method in ("post", "put", "patch"):
            statuses.append("413")
        if path in ("/api/sync", "/api/ask"):
            statuses.append("502")
    if path in ("/launch", "/callback"):
        statuses += ["400", "403", "502"]
        if method == "post":
            statuses.append("413")
    if path == "/logout":
        statuses += ["401"]
    return sorted(set(statuses))


def truthful_openapi(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema:
        return app.openapi_schema
    doc = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    schemas["Error"] = ERROR_SCHEMA
    ref = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    page = {"text/html": {"schema": {"type": "string"}}}  # the browser-facing launch pages
    for path, ops in doc.get("paths", {}).items():
        for method, op in ops.items():
            browser = path in ("/launch", "/callback") and method == "get"
            responses = op.setdefault("responses", {})
            for status in _statuses(path, method):
                content = page if browser and status not in ("405",) else ref
                responses[status] = {"description": WHY[status], "content": content}
            if path in FHIR_JSON and "200" in responses:  # FHIR bodies as FHIR says
                content = responses["200"].setdefault("content", {})
                content.setdefault("application/fhir+json", {"schema": {"type": "object"}})
                if path.startswith("/api/resources"):
                    content.pop("application/json", None)
            if browser:
                responses["200"] = {
                    "description": "For a browser: the page that binds the launch to its tab "
                    "and goes on to the EHR (/launch), or finishes the sign-in through POST "
                    "/callback (/callback)",
                    "content": page,
                }
                responses["302"] = {
                    "description": "For other clients: redirect to the EHR's authorize endpoint "
                    "(/launch) or to the page with the new session in the URL fragment (/callback)"
                }
    app.openapi_schema = doc
    return doc


def install(app: FastAPI) -> None:
    app.openapi = lambda: truthful_openapi(app)  # type: ignore[method-assign]

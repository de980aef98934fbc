"""The sandbox's FHIR R4 REST API (FHIR R4 http §3.1.0, search §3.1.1, Patient/$everything).

Endpoints under ``{base}/fhir``: ``.well-known/smart-configuration`` and ``metadata`` (public),
``{type}/{id}`` (read), ``{type}?…`` (search-type), ``Patient/{id}/$everything``. Every data
endpoint needs ``Authorization: Bearer <access token>`` (RFC 6750 §2.1) signed by the sandbox;
errors are ``OperationOutcome`` resources with 400/401/403/404. Responses are
``application/fhir+json``; the token is never echoed.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from functools import wraps
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from launch.sandbox import access
from launch.sandbox.access import TokenAccess
from launch.sandbox.bulk import BulkExport
from launch.sandbox.bundles import parse_page, searchset
from launch.sandbox.capability import capability_statement, smart_configuration
from launch.sandbox.config import SandboxConfig
from launch.sandbox.errors import BadRequest, NotFound, SandboxError, Unauthorized
from launch.sandbox.store import SUPPORTED_SEARCH_PARAMS, SandboxStore
from launch.sandbox.tokens import TokenIssuer

FHIR_JSON = "application/fhir+json"
PATIENT_PARAMS = ("patient", "subject", "patient:Patient", "subject:Patient")
_TYPE_RE = re.compile(r"^[A-Z][A-Za-z]+$")

Handler = Callable[[Request], Awaitable[Response]]


class FhirResponse(JSONResponse):
    media_type = FHIR_JSON


def operation_outcome(error: SandboxError) -> dict[str, Any]:
    """An OperationOutcome with one issue describing ``error`` (FHIR R4 OperationOutcome)."""
    return {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": "error",
                "code": error.issue_code,
                "details": {"text": error.message},
                "diagnostics": error.code,
            }
        ],
    }


class FhirApi:
    """Starlette endpoints of the FHIR API over a ``SandboxStore``."""

    def __init__(self, config: SandboxConfig, store: SandboxStore, tokens: TokenIssuer) -> None:
        self.config = config
        self.store = store
        self.tokens = tokens
        self.bulk = BulkExport(store, config.fhir_base)

    def routes(self) -> list[Route]:
        return [
            Route("/fhir/.well-known/smart-configuration", self._wrap(self.smart_config)),
            Route("/fhir/metadata", self._wrap(self.metadata)),
            Route("/fhir/Patient/{id}/$everything", self._wrap(self.everything)),
            Route("/fhir/$export", self._wrap(self.export_all)),
            Route("/fhir/Patient/$export", self._wrap(self.export_patients)),
            Route(
                "/fhir/$export-status/{job}",
                self._wrap(self.export_status),
                methods=["GET", "DELETE"],
            ),
            Route("/fhir/$export-file/{job}/{name}", self._wrap(self.export_file)),
            Route("/fhir/{type}/{id}", self._wrap(self.read)),
            Route("/fhir/{type}", self._wrap(self.search)),
        ]

    def _wrap(self, handler: Handler) -> Handler:
        @wraps(handler)
        async def endpoint(request: Request) -> Response:
            try:
                return await handler(request)
            except SandboxError as error:
                return self._error_response(error)

        return endpoint

    def _error_response(self, error: SandboxError) -> Response:
        headers = {}
        if isinstance(error, Unauthorized):
            challenge = f'Bearer realm="{self.config.fhir_base}"'
            if error.code == "invalid_token":
                challenge += ', error="invalid_token"'
            headers["WWW-Authenticate"] = challenge
        return FhirResponse(operation_outcome(error), status_code=error.status, headers=headers)

    def _access(self, request: Request) -> TokenAccess:
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise Unauthorized("A bearer access token is required.", code="missing_token")
        return TokenAccess.from_claims(self.tokens.verify(value.strip()))

    # -- public discovery --------------------------------------------------------------------

    async def smart_config(self, request: Request) -> Response:
        return JSONResponse(smart_configuration(self.config))

    async def metadata(self, request: Request) -> Response:
        return FhirResponse(capability_statement(self.config, self.store))

    # -- data --------------------------------------------------------------------------------

    async def read(self, request: Request) -> Response:
        token = self._access(request)
        resource_type = _resource_type(request.path_params["type"])
        resource = access.read(token, self.store, resource_type, request.path_params["id"])
        return FhirResponse(resource)

    async def search(self, request: Request) -> Response:
        token = self._access(request)
        resource_type = _resource_type(request.path_params["type"])
        query = list(request.query_params.multi_items())
        page = parse_page(query)
        patient_param = _patient_param(resource_type, query)
        patient = access.search_patient(token, self.store, resource_type, patient_param)
        if resource_type == "Patient" and token.patient is None:
            patient = None  # ``_id`` already filters; it may list several ids
        criteria = [(k, v) for k, v in query if k in SUPPORTED_SEARCH_PARAMS]
        matches = self.store.search(resource_type, patient, criteria)
        applied = [(k, v) for k, v in query if k in SUPPORTED_SEARCH_PARAMS or k in PATIENT_PARAMS]
        url = f"{self.config.fhir_base}/{resource_type}"
        bundle = searchset(
            matches, page=page, url=url, query=applied, fhir_base=self.config.fhir_base
        )
        return FhirResponse(bundle)

    async def everything(self, request: Request) -> Response:
        token = self._access(request)
        patient_id = request.path_params["id"]
        types = access.everything_types(token, self.store, patient_id)
        query = list(request.query_params.multi_items())
        page = parse_page(query)
        values = dict(reversed(query))
        if values.get("_type"):
            wanted = {t.strip() for t in values["_type"].split(",")}
            types = [t for t in types if t in wanted]
        since = values.get("_since") or None
        matches = self.store.everything(patient_id, types=set(types), since=since)
        applied = [(k, v) for k, v in query if k in ("_type", "_since")]
        url = f"{self.config.fhir_base}/Patient/{patient_id}/$everything"
        bundle = searchset(
            matches, page=page, url=url, query=applied, fhir_base=self.config.fhir_base
        )
        return FhirResponse(bundle)

    # -- Bulk Data export (launch/sandbox/bulk.py) --------------------------------------------

    async def export_all(self, request: Request) -> Response:
        return self.bulk.kick_off(request, self._access(request), scope_patients=False)

    async def export_patients(self, request: Request) -> Response:
        return self.bulk.kick_off(request, self._access(request), scope_patients=True)

    async def export_status(self, request: Request) -> Response:
        token = self._access(request)
        job = request.path_params["job"]
        if request.method == "DELETE":
            return self.bulk.cancel(job, token)
        return self.bulk.status(job, token)

    async def export_file(self, request: Request) -> Response:
        token = self._access(request)
        return self.bulk.file(request.path_params["job"], request.path_params["name"], token)


def _resource_type(value: str) -> str:
    if not _TYPE_RE.match(value):
        raise NotFound(f"Unknown resource type {value!r}.")
    return value


def _patient_param(resource_type: str, query: Sequence[tuple[str, str]]) -> str | None:
    """The patient id a search names (``patient``/``subject``; ``_id`` for Patient), if any."""
    names = ("_id",) if resource_type == "Patient" else PATIENT_PARAMS
    values = {v for k, v in query if k in names}
    if not values:
        return None
    if len(values) > 1:
        raise BadRequest("Search one patient at a time.", code="invalid_search")
    value = values.pop()
    if resource_type == "Patient":
        return value
    parts = value.rstrip("/").split("/")
    if len(parts) == 1:
        return parts[0]
    if parts[-2] != "Patient" or not parts[-1]:
        raise BadRequest("Only Patient subjects are supported.", code="invalid_search")
    return parts[-1]

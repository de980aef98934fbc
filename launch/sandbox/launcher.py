"""The EHR side of an EHR launch (SMART App Launch 2.x §"EHR Launch") and the sandbox's pages.

- ``GET /launch?patient=<id>[&practitioner=<id>][&encounter=<id>][&scope=<space separated>]``
  records a launch context and redirects the browser to
  ``{app_launch_url}?iss={base}/fhir&launch=<opaque id>``. More parameters shape the launch
  (``launch_context.LaunchOptions``):

  - context: ``intent=<string>``, ``tenant=<string>``, ``need_patient_banner=0|1`` (default 1),
    ``smart_style_url=<absolute URL>`` (default ``{base}/smart-style.json``);
  - ``error=<code>`` (``deny=1`` is ``error=access_denied``): the authorize endpoint redirects
    back with that RFC 6749 §4.1.2.1 error (``oauth_errors.AUTHORIZE_ERRORS``);
  - ``token_error=<code>``: the code exchange fails with that RFC 6749 §5.2 error
    (``oauth_errors.TOKEN_ERRORS``: ``invalid_client`` 401, ``server_error`` 500, … 400);
  - ``token_ttl=<seconds>``: lifetime of this launch's access tokens, initial and refreshed;
  - ``refresh_ttl=<seconds>``: lifetime of each of its refresh tokens.
- ``GET /patients``: ``[{"id", "name"}]``; ``GET /``: a self-contained HTML patient list with a
  Launch button per patient (and a link to the chart with the app embedded); ``GET
  /embedded?patient=<id>[&<launch parameters>]``: the EHR's chart page with the app launched in an
  iframe; ``GET /smart-style.json``: the ``smart_style_url`` document.
Errors here are JSON ``{"error": code, "error_description": message}`` (404 for an unknown patient,
practitioner or encounter, 400 for a bad option).
"""

from __future__ import annotations

import html
from collections.abc import Awaitable, Callable, Mapping
from functools import wraps
from typing import Any
from urllib.parse import urlencode, urlsplit

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from launch.sandbox.config import SandboxConfig
from launch.sandbox.errors import BadRequest, NotFound, SandboxError
from launch.sandbox.launch_context import LaunchOptions, LaunchRegistry, default_fhir_user
from launch.sandbox.oauth_errors import AUTHORIZE_ERRORS, TOKEN_ERRORS
from launch.sandbox.scopes import split_scope
from launch.sandbox.store import Resource, SandboxStore

Handler = Callable[[Request], Awaitable[Response]]

SMART_STYLE = {
    "color_background": "#f6f7f9",
    "color_error": "#b3261e",
    "color_highlight": "#1f6feb",
    "color_modal_backdrop": "",
    "color_success": "#1a7f37",
    "color_text": "#1f2328",
    "dim_border_radius": "6px",
    "dim_font_size": "14px",
    "dim_spacing_size": "16px",
    "font_family_body": "system-ui, sans-serif",
    "font_family_heading": "system-ui, sans-serif",
}


def display_name(patient: Resource) -> str:
    """``Given Family`` from the first HumanName (``text`` if that is all there is)."""
    names = patient.get("name") or []
    if not names:
        return ""
    first = names[0]
    given = " ".join(first.get("given") or [])
    joined = " ".join(p for p in (given, first.get("family") or "") if p)
    return joined or str(first.get("text") or "")


def launch_options(params: Mapping[str, str]) -> LaunchOptions:
    """The ``LaunchOptions`` a ``GET /launch`` query asks for; ``BadRequest`` if one is invalid."""
    error = params.get("error") or ("access_denied" if _flag(params, "deny", False) else None)
    if error is not None and error not in AUTHORIZE_ERRORS:
        raise BadRequest(f"'error' must be one of {', '.join(AUTHORIZE_ERRORS)}.")
    token_error = params.get("token_error") or None
    if token_error is not None and token_error not in TOKEN_ERRORS:
        raise BadRequest(f"'token_error' must be one of {', '.join(TOKEN_ERRORS)}.")
    style = params.get("smart_style_url") or None
    parts = urlsplit(style or "")
    if style is not None and (parts.scheme not in ("http", "https") or not parts.netloc):
        raise BadRequest("'smart_style_url' must be an absolute http(s) URL.")
    return LaunchOptions(
        authorize_error=error,
        token_error=token_error,
        token_ttl=_seconds(params, "token_ttl"),
        refresh_ttl=_seconds(params, "refresh_ttl"),
        need_patient_banner=_flag(params, "need_patient_banner", True),
        smart_style_url=style,
        intent=params.get("intent") or None,
        tenant=params.get("tenant") or None,
    )


def _flag(params: Mapping[str, str], name: str, default: bool) -> bool:
    value = params.get(name)
    if value is None or value == "":
        return default
    if value not in ("0", "1", "true", "false"):
        raise BadRequest(f"'{name}' must be 0 or 1.")
    return value in ("1", "true")


def _seconds(params: Mapping[str, str], name: str) -> int | None:
    value = params.get(name)
    if value is None or value == "":
        return None
    if not (value.isascii() and value.isdigit()) or int(value) <= 0:
        raise BadRequest(f"'{name}' must be a positive number of seconds.")
    return int(value)


def _json_errors(handler: Handler) -> Handler:
    @wraps(handler)
    async def endpoint(request: Request) -> Response:
        try:
            return await handler(request)
        except SandboxError as error:
            body = {"error": error.code, "error_description": error.message}
            return JSONResponse(body, status_code=error.status)

    return endpoint


class Launcher:
    """Launch redirects and the patient pages."""

    def __init__(
        self, config: SandboxConfig, store: SandboxStore, launches: LaunchRegistry
    ) -> None:
        self.config = config
        self.store = store
        self.launches = launches

    def routes(self) -> list[Route]:
        return [
            Route("/", self.index),
            Route("/patients", self.patients),
            Route("/launch", _json_errors(self.launch)),
            Route("/embedded", _json_errors(self.embedded)),
            Route("/smart-style.json", self.smart_style),
        ]

    async def launch(self, request: Request) -> Response:
        params = request.query_params
        patient_id = params.get("patient") or ""
        if self.store.get("Patient", patient_id) is None:
            raise NotFound("Unknown patient.", code="unknown_patient")
        practitioner = params.get("practitioner")
        if practitioner:
            if self.store.get("Practitioner", practitioner) is None:
                raise NotFound("Unknown practitioner.", code="unknown_practitioner")
            fhir_user = f"Practitioner/{practitioner}"
        else:
            fhir_user = default_fhir_user(self.store)
        encounter = params.get("encounter") or None
        if (
            encounter is not None
            and self.store.compartment_owner("Encounter", encounter) != patient_id
        ):
            raise NotFound("Unknown encounter for this patient.", code="unknown_encounter")
        scope = params.get("scope")
        context = self.launches.create(
            patient=patient_id,
            fhir_user=fhir_user,
            encounter=encounter,
            scope_restriction=tuple(split_scope(scope)) if scope and scope.strip() else None,
            options=launch_options(params),
        )
        query = urlencode({"iss": self.config.fhir_base, "launch": context.launch_id})
        separator = "&" if "?" in self.config.app_launch_url else "?"
        return RedirectResponse(f"{self.config.app_launch_url}{separator}{query}", status_code=302)

    async def embedded(self, request: Request) -> Response:
        """The EHR's own chart page with the app launched inside an iframe, as EHRs embed SMART
        apps. The iframe's address is the EHR's public one (``base_url``): open this page under
        another host name (``localhost`` for ``127.0.0.1``) and the app runs as a third party,
        with the browser's third-party cookie rules."""
        patient = self.store.get("Patient", request.query_params.get("patient") or "")
        if patient is None:
            raise NotFound("Unknown patient.", code="unknown_patient")
        query = {k: v for k, v in request.query_params.items()}
        src = f"{self.config.root}/launch?{urlencode(query)}"
        page = _EMBEDDED.replace("{name}", html.escape(display_name(patient))).replace(
            "{src}", html.escape(src, quote=True)
        )
        return HTMLResponse(page)

    async def patients(self, request: Request) -> Response:
        return JSONResponse(
            [{"id": p["id"], "name": display_name(p)} for p in self.store.patients()]
        )

    async def smart_style(self, request: Request) -> Response:
        return JSONResponse(SMART_STYLE)

    async def index(self, request: Request) -> Response:
        return HTMLResponse(render_index(self.store.patients()))


def render_index(patients: list[dict[str, Any]]) -> str:
    """The patient list page; every value is HTML-escaped, links are relative."""
    rows = []
    for patient in patients:
        pid = html.escape(str(patient["id"]), quote=True)
        href = html.escape("launch?" + urlencode({"patient": patient["id"]}), quote=True)
        embedded = html.escape("embedded?" + urlencode({"patient": patient["id"]}), quote=True)
        rows.append(
            "<tr>"
            f"<td>{html.escape(display_name(patient))}</td>"
            f"<td>{html.escape(str(patient.get('birthDate') or ''))}</td>"
            f"<td>{html.escape(str(patient.get('gender') or ''))}</td>"
            f'<td><a class="launch" href="{href}" data-patient-id="{pid}">Launch</a> '
            f'<a class="embedded" href="{embedded}" data-patient-id="{pid}">in the chart</a></td>'
            "</tr>"
        )
    body = "\n".join(rows) or '<tr><td colspan="4">No patients loaded.</td></tr>'
    return _PAGE.replace("{rows}", body)


_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Sandbox EHR</title>
<style>
  body { font: 15px/1.5 system-ui, sans-serif; margin: 0; background: #f6f7f9; color: #1f2328; }
  header { background: #24292f; color: #fff; padding: 12px 24px; }
  header h1 { font-size: 18px; margin: 0; }
  main { max-width: 880px; margin: 24px auto; padding: 0 16px; }
  table { width: 100%; border-collapse: collapse; background: #fff; border-radius: 6px;
          box-shadow: 0 1px 3px rgba(0,0,0,.12); overflow: hidden; }
  th, td { text-align: left; padding: 10px 14px; border-bottom: 1px solid #e5e7eb; }
  th { background: #f0f2f5; font-weight: 600; }
  a.launch { display: inline-block; padding: 4px 14px; border-radius: 6px; background: #1f6feb;
             color: #fff; text-decoration: none; }
  a.launch:hover { background: #1a5fcc; }
</style>
</head>
<body>
<header><h1>Sandbox EHR &mdash; patients</h1></header>
<main>
<p>Choose a patient to launch the app in their chart.</p>
<table>
<thead><tr><th>Name</th><th>Birth date</th><th>Gender</th><th></th></tr></thead>
<tbody>
{rows}
</tbody>
</table>
</main>
</body>
</html>
"""

_EMBEDDED = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Sandbox EHR &mdash; chart</title>
<style>
  body { font: 15px/1.5 system-ui, sans-serif; margin: 0; background: #f6f7f9; color: #1f2328;
         display: flex; flex-direction: column; height: 100vh; }
  header { background: #24292f; color: #fff; padding: 8px 24px; }
  iframe { flex: 1; border: 0; width: 100%; background: #fff; }
</style>
</head>
<body>
<header>Sandbox EHR &mdash; chart of <strong id="ehr-patient">{name}</strong></header>
<iframe id="app" title="chartcite" src="{src}"></iframe>
</body>
</html>
"""

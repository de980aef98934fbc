"""Test controls of the sandbox EHR: what an EHR user or administrator does behind the app's back.

- ``POST /_control/revoke`` form ``patient=<id>`` (or ``all=1``): revokes every access and
  refresh token issued for that patient (or every token), as when the user logs out of the EHR
  or an administrator revokes the app. The FHIR API then answers 401, introspection
  ``{"active": false}`` and the refresh grant ``invalid_grant``. Answers ``{"revoked": <grants>}``.
- ``POST /_control/rotate-key`` form ``keep_old=1`` (optional): a new signing key (new ``kid``)
  signs every later access token and id_token; ``/auth/jwks`` publishes it, and the old key only
  with ``keep_old=1``. Tokens signed by a dropped key are refused from then on. Answers
  ``{"kid": <new kid>, "kids": [<published kids>]}``.

Errors are JSON ``{"error": code, "error_description": message}``.
"""

from __future__ import annotations

from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from launch.sandbox.grant_store import GrantStore
from launch.sandbox.keys import KeyRing

TRUE_VALUES = ("1", "true")


class Controls:
    """The ``/_control/*`` routes over one sandbox's grants and keys."""

    def __init__(self, grants: GrantStore, keys: KeyRing) -> None:
        self.grants = grants
        self.keys = keys

    def routes(self) -> list[Route]:
        return [
            Route("/_control/revoke", self.revoke, methods=["POST"]),
            Route("/_control/rotate-key", self.rotate_key, methods=["POST"]),
        ]

    async def revoke(self, request: Request) -> Response:
        form = await _form(request)
        patient = form.get("patient")
        if form.get("all") in TRUE_VALUES:
            return JSONResponse({"revoked": self.grants.revoke_all()})
        if not patient:
            body = {"error": "invalid_request", "error_description": "Give patient=<id> or all=1."}
            return JSONResponse(body, status_code=400)
        return JSONResponse({"revoked": self.grants.revoke_patient(patient)})

    async def rotate_key(self, request: Request) -> Response:
        form = await _form(request)
        key = self.keys.rotate(keep_old=form.get("keep_old") in TRUE_VALUES)
        kids = [k["kid"] for k in self.keys.jwks()["keys"]]
        return JSONResponse({"kid": key.kid, "kids": kids})


async def _form(request: Request) -> dict[str, str]:
    """The ``application/x-www-form-urlencoded`` body's fields (first value of each)."""
    body = (await request.body()).decode("utf-8", errors="replace")
    return dict(reversed(parse_qsl(body, keep_blank_values=True)))

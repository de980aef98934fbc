"""Errors of the SMART app; each carries a machine ``code`` and an HTTP ``status``.

    AppError
    ├── BadRequest (400)          invalid_request, invalid_state, launch_denied, invalid_token_response
    ├── NotAuthenticated (401)    no_session, session_expired
    ├── Forbidden (403)           iss_not_allowed, scope_denied, no_patient_context
    ├── NotFound (404)            not_found
    ├── Conflict (409)            not_synced
    └── UpstreamError (502)       ehr_unreachable, ehr_error

Messages are written for people and never contain tokens, PHI or upstream bodies.
"""

from __future__ import annotations


class AppError(Exception):
    status = 500
    code = "internal_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class BadRequest(AppError):
    status = 400
    code = "invalid_request"


class NotAuthenticated(AppError):
    status = 401
    code = "no_session"


class Forbidden(AppError):
    status = 403
    code = "forbidden"


class NotFound(AppError):
    status = 404
    code = "not_found"


class Conflict(AppError):
    status = 409
    code = "conflict"


class UpstreamError(AppError):
    status = 502
    code = "ehr_error"

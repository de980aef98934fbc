"""Errors of the SMART app; each carries a machine ``code`` and an HTTP ``status``.

    AppError
    ├── BadRequest (400)          invalid_request, invalid_state, launch_denied, invalid_token_response
    ├── NotAuthenticated (401)    no_session, session_expired, reauth_required, invalid_token
    ├── Forbidden (403)           iss_not_allowed, scope_denied, no_patient_context,
    │                             insufficient_scope, state_not_this_browser
    ├── NotFound (404)            not_found
    ├── Conflict (409)            not_synced, patient_mismatch
    ├── UpstreamError (502)       ehr_unreachable, ehr_error
    └── EhrRefused (400)          ehr_<RFC 6749 error>: the EHR refused (authorize or token)

Messages are written for people and never contain tokens, PHI or upstream bodies.
"""

from __future__ import annotations


class AppError(Exception):
    status = 500
    code = "internal_error"

    def __init__(
        self, message: str, *, code: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}
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


# RFC 6749 §4.1.2.1 and §5.2 error codes, plus OpenID Connect's; anything else is "other".
OAUTH_ERRORS = frozenset(
    {
        "invalid_request",
        "invalid_client",
        "invalid_grant",
        "unauthorized_client",
        "unsupported_grant_type",
        "unsupported_response_type",
        "invalid_scope",
        "access_denied",
        "server_error",
        "temporarily_unavailable",
        "login_required",
        "consent_required",
        "interaction_required",
    }
)
_STAGES = {
    "authorize": "did not authorize chartcite",
    "token": "refused to issue a token for this launch",
    "refresh": "refused to refresh the session",
    "backend": "refused a backend-services token",
}


def clean_description(value: str | None, limit: int = 300) -> str | None:
    """An EHR's ``error_description``, printable and bounded (RFC 6749 allows only %x20-7E minus
    ``"`` and ``\\``; real servers send more). Escaping for HTML is the renderer's job."""
    if not value:
        return None
    text = "".join(ch if ch.isprintable() else " " for ch in str(value)).strip()
    return text[:limit] or None


class EhrRefused(AppError):
    """The EHR answered an OAuth request with an error: its code and words are kept."""

    status = 400

    def __init__(self, stage: str, error: str, description: str | None) -> None:
        self.stage = stage
        self.ehr_error = error if error in OAUTH_ERRORS else "other"
        self.description = clean_description(description)
        message = f"the EHR {_STAGES.get(stage, 'refused the request')} ({self.ehr_error})"
        if self.description:
            message += f": {self.description}"
        super().__init__(message, code=f"ehr_{self.ehr_error}")
        if stage == "refresh":
            self.status = 401
        elif self.ehr_error in ("server_error", "temporarily_unavailable"):
            self.status = 502
        elif self.ehr_error in ("access_denied", "consent_required", "login_required"):
            self.status = 403

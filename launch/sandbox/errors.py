"""Errors of the sandbox EHR; each carries a machine ``code`` and an HTTP ``status``.

    SandboxError
    ├── BadRequest (400)        invalid_request, invalid_search
    ├── Unauthorized (401)      missing_token, invalid_token
    ├── Forbidden (403)         scope_denied, patient_mismatch
    └── NotFound (404)          not_found, unknown_launch

On the FHIR API they become an ``OperationOutcome`` (FHIR R4 §3.1.0.6, "OperationOutcome");
elsewhere a JSON ``{"error": code, "error_description": message}``. OAuth endpoint errors are
authlib's own ``OAuth2Error`` (RFC 6749 §4.1.2.1, §5.2) and never pass through here.
Messages never contain tokens.
"""

from __future__ import annotations


class SandboxError(Exception):
    """Base error: ``code`` is machine-readable, ``message`` is for people."""

    status = 500
    code = "internal_error"
    #: FHIR ``OperationOutcome.issue.code`` (value set issue-type)
    issue_code = "exception"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class BadRequest(SandboxError):
    status = 400
    code = "invalid_request"
    issue_code = "invalid"


class Unauthorized(SandboxError):
    status = 401
    code = "invalid_token"
    issue_code = "login"


class Forbidden(SandboxError):
    status = 403
    code = "forbidden"
    issue_code = "forbidden"


class NotFound(SandboxError):
    status = 404
    code = "not_found"
    issue_code = "not-found"

"""OAuth error responses the sandbox sends on purpose, and its ``invalid_client`` answer.

- ``AUTHORIZE_ERRORS``: the RFC 6749 §4.1.2.1 codes a launch may ask the authorize endpoint to
  redirect back with (``GET /launch?error=…``). Each ``error_description`` holds ``<`` and ``&``
  so that the app's escaping of it is tested.
- ``TOKEN_ERRORS``: the RFC 6749 §5.2 codes (with their HTTP status) a launch may ask its code
  exchange to fail with (``GET /launch?token_error=…``).
- ``ClientAuthenticationFailed``: ``invalid_client`` as 401 with ``WWW-Authenticate: Basic
  realm="…"`` (RFC 6749 §5.2, RFC 7617 §2), for every failed client authentication at the token,
  revocation and introspection endpoints, whatever the method tried.
"""

from __future__ import annotations

from collections.abc import Mapping

from authlib.consts import default_json_headers
from authlib.oauth2 import OAuth2Error
from authlib.oauth2.rfc6749 import InvalidClientError

AUTHORIZE_ERRORS: Mapping[str, str] = {
    "access_denied": "The user <sandbox clinician> & the EHR denied access",
    "invalid_scope": "Scope <patient/Foo.rs> & others not allowed",
    "invalid_request": "Request <launch> & its parameters refused by the EHR",
    "unauthorized_client": "Client <app> & this launch are not authorized",
    "server_error": "EHR <sandbox> & its authorization service failed",
    "temporarily_unavailable": "EHR <sandbox> & its login are down for maintenance",
}
TOKEN_ERRORS: Mapping[str, int] = {
    "invalid_client": 401,
    "invalid_grant": 400,
    "invalid_request": 400,
    "unauthorized_client": 400,
    "invalid_scope": 400,
    "server_error": 500,
    "temporarily_unavailable": 503,
}


class ClientAuthenticationFailed(InvalidClientError):  # type: ignore[misc]
    """``invalid_client``, 401, with a ``Basic`` challenge naming the sandbox's realm."""

    status_code = 401

    def __init__(self, description: str | None, *, realm: str) -> None:
        super().__init__(description=description or "Client authentication failed.")
        self.realm = realm

    def get_headers(self) -> list[tuple[str, str]]:
        return [*default_json_headers, ("WWW-Authenticate", f'Basic realm="{self.realm}"')]


def authorize_error(code: str, *, redirect_uri: str, state: str | None) -> OAuth2Error:
    """The redirect-back error of a launch that asked for ``error=code``."""
    return OAuth2Error(
        error=code, description=AUTHORIZE_ERRORS[code], redirect_uri=redirect_uri, state=state
    )


def token_error(code: str, *, realm: str) -> OAuth2Error:
    """The token-endpoint error of a launch that asked for ``token_error=code``."""
    description = f"Simulated {code} <for this launch> & its code is spent"
    if code == "invalid_client":
        return ClientAuthenticationFailed(description, realm=realm)
    return OAuth2Error(error=code, description=description, status_code=TOKEN_ERRORS[code])

"""The objects authlib's server grants work with (RFC 6749 §2, §4.1, §6; RFC 7662; OIDC Core §3.1).

- ``ClientModel``: a registered ``SandboxClient`` seen through authlib's ``ClientMixin``.
- ``Authorization``: who authorized what for which patient; authlib's "user". Its fields end up
  in the token response (``patient``, ``encounter``, the launch's options) and the JWT claims
  (``sub``, ``fhirUser``).
- ``AuthorizationCode``: a single-use code bound to client, redirect_uri, PKCE challenge, nonce.
- ``RefreshToken`` and ``AccessTokenView``: what the refresh grant, RFC 7009 revocation and
  RFC 7662 introspection see. Both belong to a *grant* (one code exchange or client-credentials
  request and its refreshes), which is revoked as a whole.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

from authlib.oauth2.rfc6749 import ClientMixin, TokenMixin
from authlib.oidc.core import AuthorizationCodeMixin

from launch.sandbox.config import SandboxClient
from launch.sandbox.launch_context import LaunchOptions

#: The sandbox's RFC 7662 §2.1 option of authorizing an introspection call with an access token
#: it issued; the other methods are RFC 7591 §2's (``SandboxClient.auth_methods``).
BEARER_AUTH_METHOD = "bearer_access_token"
GRANT_TYPES = frozenset({"authorization_code", "refresh_token"})


class ClientModel(ClientMixin):  # type: ignore[misc]
    """authlib's view of a registered client."""

    def __init__(self, client: SandboxClient) -> None:
        self.client = client
        self.client_id = client.client_id

    def __repr__(self) -> str:
        return f"ClientModel(client_id={self.client_id!r})"

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> None:
        # SMART requires redirect_uri on every authorize request: no default is ever assumed.
        return None

    def get_allowed_scope(self, scope: str | None) -> str | None:
        # ``None`` makes authlib answer invalid_scope; the SMART grant narrows the scope later.
        return scope or None

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.client.redirect_uris

    def check_client_secret(self, client_secret: str) -> bool:
        secret = self.client.client_secret
        return secret is not None and secrets.compare_digest(secret, client_secret)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        if method == BEARER_AUTH_METHOD:
            return endpoint == "introspection"
        return method in self.client.auth_methods

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        if grant_type == "client_credentials":
            return not self.client.is_public
        return grant_type in GRANT_TYPES


@dataclass(frozen=True, slots=True)
class Authorization:
    """The end user's decision: who (``fhir_user``), for which patient and encounter, and how."""

    fhir_user: str
    patient: str | None
    encounter: str | None = None
    options: LaunchOptions = field(default_factory=LaunchOptions)

    @property
    def sub(self) -> str:
        """The OIDC subject: the id part of ``fhirUser`` (``Practitioner/abc`` → ``abc``)."""
        return self.fhir_user.rsplit("/", 1)[-1]

    def get_user_id(self) -> str:
        return self.sub


@dataclass(slots=True)
class AuthorizationCode(AuthorizationCodeMixin):  # type: ignore[misc]
    """An issued authorization code (RFC 6749 §4.1.2) with its PKCE challenge (RFC 7636 §4.4)."""

    code: str = field(repr=False)
    client_id: str
    redirect_uri: str
    scope: str
    authorization: Authorization
    code_challenge: str | None
    code_challenge_method: str | None
    nonce: str | None
    auth_time: int
    expires_at: float

    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope

    def get_nonce(self) -> str | None:
        return self.nonce

    def get_auth_time(self) -> int:
        return self.auth_time

    def get_acr(self) -> None:
        return None

    def get_amr(self) -> None:
        return None


@dataclass(slots=True)
class RefreshToken(TokenMixin):  # type: ignore[misc]
    """A refresh token (RFC 6749 §6), kept server-side and rotated on use.

    ``GrantStore.refresh`` refuses it once revoked or past ``expires_at``.
    """

    token: str = field(repr=False)
    client_id: str
    scope: str
    authorization: Authorization
    issued_at: int
    grant_id: str
    expires_at: int | None = None
    revoked: bool = False

    def check_client(self, client: ClientModel) -> bool:
        return client.get_client_id() == self.client_id

    def get_scope(self) -> str:
        return self.scope

    def get_expires_in(self) -> int:
        return 0

    def is_expired(self) -> bool:
        return False  # GrantStore.refresh, which has the clock, already refused an expired one

    def is_revoked(self) -> bool:
        return self.revoked

    def get_user(self) -> Authorization:
        return self.authorization


@dataclass(frozen=True, slots=True)
class AccessTokenView(TokenMixin):  # type: ignore[misc]
    """A verified access-token JWT as RFC 7662 introspection sees it."""

    claims: dict[str, Any] = field(repr=False)
    revoked: bool = False

    def check_client(self, client: ClientModel) -> bool:
        return bool(client.get_client_id() == self.claims.get("client_id"))

    def get_scope(self) -> str:
        return str(self.claims.get("scope", ""))

    def get_expires_in(self) -> int:
        return int(self.claims["exp"]) - int(self.claims["iat"])

    def is_expired(self) -> bool:
        return False  # the signature check already rejected expired tokens

    def is_revoked(self) -> bool:
        return self.revoked

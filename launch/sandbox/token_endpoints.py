"""Token revocation (RFC 7009) and introspection (RFC 7662, SMART App Launch 2.x §"Token
Introspection") over the sandbox's tokens.

Both look a token up as an access token (a valid, unrevoked JWT of this sandbox) or a refresh
token (live, unexpired), the hinted type first and then the other (RFC 7009 §2.1).

- ``POST /auth/revoke``: the client authenticates as at the token endpoint (a public client by
  ``client_id``). Revoking one of its tokens revokes the whole grant: its access tokens and
  refresh tokens. The answer is 200 whether the token was known, already dead, another
  client's (left alone) or of an unknown ``token_type_hint`` (ignored, RFC 7009 §2.1).
- ``POST /auth/introspect``: any registered client, or the bearer of a sandbox access token (a
  resource server), may introspect. Inactive tokens give ``{"active": false}``; active ones
  ``active, token_type, scope, client_id, sub, fhirUser, iat, exp, iss`` and ``patient``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from authlib.oauth2.rfc6749 import InvalidRequestError, OAuth2Request
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7662 import IntrospectionEndpoint

from launch.sandbox.errors import Unauthorized
from launch.sandbox.grants import TOKEN_AUTH_METHODS
from launch.sandbox.oauth_models import (
    BEARER_AUTH_METHOD,
    AccessTokenView,
    ClientModel,
    RefreshToken,
)

if TYPE_CHECKING:
    from launch.sandbox.authorization_server import SandboxAuthorizationServer

Token = AccessTokenView | RefreshToken


def find_token(server: SandboxAuthorizationServer, value: str, hint: str | None) -> Token | None:
    """The live access or refresh token ``value``, looking first where ``hint`` points."""

    def access() -> Token | None:
        try:
            return AccessTokenView(server.tokens.verify(value))
        except Unauthorized:
            return None

    def refresh() -> Token | None:
        return server.grants.refresh(value)

    order = (refresh, access) if hint == "refresh_token" else (access, refresh)
    for lookup in order:
        token = lookup()
        if token is not None:
            return token
    return None


class SandboxRevocationEndpoint(RevocationEndpoint):  # type: ignore[misc]
    """RFC 7009: revoke the grant a token of the authenticated client belongs to."""

    CLIENT_AUTH_METHODS: ClassVar[list[str]] = TOKEN_AUTH_METHODS
    server: SandboxAuthorizationServer

    def check_params(self, request: OAuth2Request, client: ClientModel) -> None:
        if not request.form.get("token"):
            raise InvalidRequestError("Missing 'token'.")

    def authenticate_token(self, request: OAuth2Request, client: ClientModel) -> Token | None:
        self.check_params(request, client)
        token = self.query_token(request.form["token"], request.form.get("token_type_hint"))
        return token if token is not None and token.check_client(client) else None

    def query_token(self, token_string: str, token_type_hint: str | None) -> Token | None:
        return find_token(self.server, token_string, token_type_hint)

    def revoke_token(self, token: Token, request: OAuth2Request) -> None:
        grants = self.server.grants
        if isinstance(token, AccessTokenView):
            grant_id = grants.grant_of(jti=str(token.claims["jti"]))
        else:
            grant_id = token.grant_id
        if grant_id is not None:
            grants.revoke_grant(grant_id)


class SandboxIntrospectionEndpoint(IntrospectionEndpoint):  # type: ignore[misc]
    """RFC 7662: any registered client (or bearer of a sandbox access token) may introspect."""

    CLIENT_AUTH_METHODS: ClassVar[list[str]] = [*TOKEN_AUTH_METHODS, BEARER_AUTH_METHOD]
    server: SandboxAuthorizationServer

    def query_token(self, token_string: str, token_type_hint: str | None) -> Token | None:
        return find_token(self.server, token_string, token_type_hint)

    def check_permission(self, token: Any, client: ClientModel, request: OAuth2Request) -> bool:
        return True

    def introspect_token(self, token: Token) -> dict[str, Any]:
        if isinstance(token, AccessTokenView):
            claims = token.claims
            names = ("scope", "patient", "client_id", "sub", "fhirUser", "exp", "iat", "iss")
            payload = {name: claims[name] for name in names if name in claims}
            return {"active": True, "token_type": "Bearer", **payload}
        authorization = token.authorization
        payload = {
            "active": True,
            "token_type": "refresh_token",
            "scope": token.scope,
            "client_id": token.client_id,
            "sub": authorization.sub,
            "fhirUser": authorization.fhir_user,
            "iat": token.issued_at,
            "iss": self.server.config.fhir_base,
        }
        if token.expires_at is not None:
            payload["exp"] = token.expires_at
        if authorization.patient is not None:
            payload["patient"] = authorization.patient
        return payload

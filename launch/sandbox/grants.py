"""authlib grants and extensions that make the sandbox a SMART App Launch 2.x authorization server.

- ``S256CodeChallenge``: RFC 7636 with ``S256`` only; a missing challenge or ``plain`` is refused
  at the authorization endpoint (SMART App Launch 2.x §"Considerations for PKCE Support").
- ``SmartLaunch``: checks ``aud`` against the FHIR base URL, resolves the EHR ``launch`` context
  (or picks a patient for a standalone launch with ``launch/patient``), narrows the granted
  scope to the launch's restriction (SMART "Scopes and Launch Context") and carries the launch's
  options (a simulated authorize error among them) to the authorization.
- ``SandboxOpenIDCode``: OpenID Connect Core §3.1 id_token (RS256, the current ``kid``,
  ``nonce``, ``fhirUser``).
- ``SmartAuthorizationCodeGrant`` (RFC 6749 §4.1; fails as the launch's ``token_error`` asks)
  and ``SmartRefreshTokenGrant`` (RFC 6749 §6, rotating refresh tokens), for public (``none``),
  symmetric (client secret) and asymmetric (``private_key_jwt``) clients.
- ``SandboxClientCredentialsGrant``: RFC 6749 §4.4 as SMART Backend Services uses it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from authlib.oauth2.rfc6749 import InvalidRequestError, OAuth2Request
from authlib.oauth2.rfc6749.grants import (
    AuthorizationCodeGrant,
    ClientCredentialsGrant,
    RefreshTokenGrant,
)
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oidc.core.grants import OpenIDCode
from joserfc.jwk import RSAKey

from launch.sandbox.grant_store import CODE_TTL_SECONDS
from launch.sandbox.launch_context import default_fhir_user
from launch.sandbox.oauth_errors import token_error
from launch.sandbox.oauth_models import (
    Authorization,
    AuthorizationCode,
    ClientModel,
    RefreshToken,
)
from launch.sandbox.scopes import intersect, split_scope

if TYPE_CHECKING:
    from launch.sandbox.authorization_server import SandboxAuthorizationServer

#: Methods the token endpoint tries, in this order (``SandboxClient.auth_methods`` decides).
CONFIDENTIAL_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "private_key_jwt"]
TOKEN_AUTH_METHODS = [*CONFIDENTIAL_AUTH_METHODS, "none"]


class S256CodeChallenge(CodeChallenge):  # type: ignore[misc]
    """PKCE that accepts ``code_challenge_method=S256`` only and requires it on every request."""

    SUPPORTED_CODE_CHALLENGE_METHOD: ClassVar[list[str]] = ["S256"]

    def validate_code_challenge(self, grant: Any, redirect_uri: str) -> None:
        data = grant.request.payload.data
        if not data.get("code_challenge"):
            raise InvalidRequestError("Missing 'code_challenge': PKCE with S256 is required.")
        if data.get("code_challenge_method") != "S256":
            raise InvalidRequestError("Unsupported 'code_challenge_method': only S256 is allowed.")
        super().validate_code_challenge(grant, redirect_uri)


class SmartLaunch:
    """Grant extension: SMART ``aud``, ``launch`` / ``launch/patient`` and granted-scope rules."""

    def __init__(self, server: SandboxAuthorizationServer) -> None:
        self.server = server

    def __call__(self, grant: Any) -> None:
        grant.register_hook("after_validate_authorization_request_payload", self.validate)

    def validate(self, grant: Any, redirect_uri: str) -> None:
        request: OAuth2Request = grant.request
        data = request.payload.data
        fhir_base = self.server.config.fhir_base
        if (data.get("aud") or "").rstrip("/") != fhir_base:
            raise InvalidRequestError("The 'aud' parameter must be this server's FHIR base URL.")
        requested = split_scope(request.scope)
        launch_id = data.get("launch")
        if launch_id:
            context = self.server.launches.get(launch_id)
            if context is None:
                raise InvalidRequestError("Unknown or expired 'launch' parameter.")
            authorization = Authorization(
                context.fhir_user, context.patient, context.encounter, context.options
            )
            granted = requested
            if context.scope_restriction is not None:
                granted = intersect(context.scope_restriction, requested)
        elif "launch/patient" in requested:
            patients = self.server.store.patients()
            if not patients:
                raise InvalidRequestError("The sandbox has no patient to choose.")
            fhir_user = default_fhir_user(self.server.store)
            authorization = Authorization(fhir_user, patients[0]["id"], None)
            granted = requested
        else:
            raise InvalidRequestError(
                "Missing 'launch' (EHR launch) or 'launch/patient' scope (standalone launch)."
            )
        request.scope = " ".join(granted)
        request.user = authorization


class SandboxOpenIDCode(OpenIDCode):  # type: ignore[misc]
    """id_token for the code flow: ``iss`` = FHIR base, ``aud`` = client_id, ``fhirUser``."""

    def __init__(self, server: SandboxAuthorizationServer) -> None:
        super().__init__(require_nonce=False)
        self.server = server

    def exists_nonce(self, nonce: str, request: OAuth2Request) -> bool:
        return self.server.grants.nonce_in_use(request.payload.client_id, nonce)

    def resolve_client_private_key(self, client: ClientModel) -> RSAKey:
        return self.server.keys.current.private_key

    def get_client_algorithm(self, client: ClientModel) -> str:
        return "RS256"

    def get_encode_header(self, client: ClientModel) -> dict[str, str]:
        return {"alg": "RS256", "kid": self.server.keys.current.kid, "typ": "JWT"}

    def get_client_claims(self, client: ClientModel) -> dict[str, Any]:
        now = int(self.server.clock())
        return {
            "iss": self.server.config.fhir_base,
            "aud": client.get_client_id(),
            "iat": now,
            "exp": now + self.server.config.access_token_ttl,
        }

    def generate_user_info(self, user: Authorization, scope: str) -> dict[str, str]:
        return {"sub": user.sub, "fhirUser": user.fhir_user}


class SmartAuthorizationCodeGrant(AuthorizationCodeGrant):  # type: ignore[misc]
    """RFC 6749 §4.1 with single-use, 60-second codes bound to the launch's authorization."""

    TOKEN_ENDPOINT_AUTH_METHODS: ClassVar[list[str]] = TOKEN_AUTH_METHODS
    server: SandboxAuthorizationServer

    def save_authorization_code(self, code: str, request: OAuth2Request) -> None:
        data = request.payload.data
        now = self.server.clock()
        record = AuthorizationCode(
            code=code,
            client_id=request.client.get_client_id(),
            redirect_uri=request.payload.redirect_uri,
            scope=request.scope,
            authorization=request.user,
            code_challenge=data.get("code_challenge"),
            code_challenge_method=data.get("code_challenge_method"),
            nonce=data.get("nonce"),
            auth_time=int(now),
            expires_at=now + CODE_TTL_SECONDS,
        )
        self.server.grants.save_code(record)

    def validate_token_request(self) -> None:
        """authlib's checks (client, code, redirect_uri, PKCE), then the launch's ``token_error``."""
        super().validate_token_request()
        failure = self.request.authorization_code.authorization.options.token_error
        if failure is not None:
            raise token_error(failure, realm=self.server.realm)

    def query_authorization_code(self, code: str, client: ClientModel) -> AuthorizationCode | None:
        return self.server.grants.consume_code(code, client.get_client_id())

    def delete_authorization_code(self, authorization_code: AuthorizationCode) -> None:
        pass  # consume_code already took it out of the store

    def authenticate_user(self, authorization_code: AuthorizationCode) -> Authorization:
        return authorization_code.authorization


class SmartRefreshTokenGrant(RefreshTokenGrant):  # type: ignore[misc]
    """RFC 6749 §6; each use revokes the old refresh token and issues a new one."""

    TOKEN_ENDPOINT_AUTH_METHODS: ClassVar[list[str]] = TOKEN_AUTH_METHODS
    INCLUDE_NEW_REFRESH_TOKEN = True
    server: SandboxAuthorizationServer

    def authenticate_refresh_token(self, refresh_token: str) -> RefreshToken | None:
        return self.server.grants.refresh(refresh_token)

    def authenticate_user(self, refresh_token: RefreshToken) -> Authorization:
        return refresh_token.authorization

    def revoke_old_credential(self, refresh_token: RefreshToken) -> None:
        refresh_token.revoked = True


class SandboxClientCredentialsGrant(ClientCredentialsGrant):  # type: ignore[misc]
    """RFC 6749 §4.4 for confidential clients: ``system/`` scopes only, no refresh token (SMART
    Backend Services: a signed JWT assertion, or a client secret instead)."""

    TOKEN_ENDPOINT_AUTH_METHODS: ClassVar[list[str]] = CONFIDENTIAL_AUTH_METHODS

    def validate_token_request(self) -> None:
        super().validate_token_request()
        scopes = split_scope(self.request.payload.scope or "")
        if not scopes or any(not s.startswith("system/") for s in scopes):
            raise InvalidRequestError("client_credentials grants only system/ scopes")

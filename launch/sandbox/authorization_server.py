"""The sandbox's OAuth 2.0 authorization server (RFC 6749, RFC 7636, RFC 7662, OIDC Core §3.1).

``SandboxAuthorizationServer`` is authlib's ``AuthorizationServer`` bound to the sandbox's state
(clients from the config, launch contexts, codes, refresh tokens, signing key) plus the three
Starlette endpoints: ``GET /auth/authorize`` (auto-approves: no login or consent UI),
``POST /auth/token`` and ``POST /auth/introspect``. Token responses carry SMART's extra fields
(``patient``, ``encounter``, ``need_patient_banner``, ``smart_style_url``; SMART App Launch 2.x
§"Launch context arrives with your access_token").
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

from authlib.oauth2 import AuthorizationServer, OAuth2Error
from authlib.oauth2.rfc6749 import OAuth2Request
from starlette.requests import Request
from starlette.responses import Response

from launch.sandbox.config import SandboxConfig
from launch.sandbox.errors import Unauthorized
from launch.sandbox.grant_store import GrantStore
from launch.sandbox.grants import (
    S256CodeChallenge,
    SandboxClientCredentialsGrant,
    SandboxIntrospectionEndpoint,
    SandboxOpenIDCode,
    SmartAuthorizationCodeGrant,
    SmartLaunch,
    SmartRefreshTokenGrant,
)
from launch.sandbox.keys import SigningKey
from launch.sandbox.launch_context import LaunchRegistry
from launch.sandbox.oauth_adapter import (
    HttpRequest,
    SandboxOAuth2Request,
    read_http_request,
    to_response,
)
from launch.sandbox.oauth_models import BEARER_AUTH_METHOD, Authorization, ClientModel, RefreshToken
from launch.sandbox.scopes import split_scope
from launch.sandbox.store import SandboxStore
from launch.sandbox.tokens import TokenIssuer

#: Scopes whose grant comes with a refresh token (SMART "Scopes for requesting a refresh token").
REFRESH_SCOPES = frozenset({"offline_access", "online_access"})


class SandboxAuthorizationServer(AuthorizationServer):  # type: ignore[misc]
    """authlib's authorization server over the sandbox's in-memory state."""

    def __init__(
        self,
        *,
        config: SandboxConfig,
        store: SandboxStore,
        key: SigningKey,
        launches: LaunchRegistry,
        grants: GrantStore,
        tokens: TokenIssuer,
        clock: Callable[[], float],
    ) -> None:
        super().__init__(scopes_supported=None)
        self.config = config
        self.store = store
        self.key = key
        self.launches = launches
        self.grants = grants
        self.tokens = tokens
        self.clock = clock
        self._clients = {c.client_id: ClientModel(c) for c in config.clients}
        self.register_token_generator("default", self._generate_token)
        self.register_client_auth_method(BEARER_AUTH_METHOD, self._authenticate_bearer)
        self.register_grant(
            SmartAuthorizationCodeGrant,
            [S256CodeChallenge(required=True), SmartLaunch(self), SandboxOpenIDCode(self)],
        )
        self.register_grant(SmartRefreshTokenGrant)
        self.register_grant(SandboxClientCredentialsGrant)
        self.register_endpoint(SandboxIntrospectionEndpoint)

    # -- authlib's integration points --------------------------------------------------------

    def query_client(self, client_id: str) -> ClientModel | None:
        return self._clients.get(client_id)

    def save_token(self, token: dict[str, Any], request: OAuth2Request) -> None:
        jti = self.tokens.verify(token["access_token"])["jti"]
        code = getattr(request, "authorization_code", None)
        if code is not None:
            self.grants.note_issued(code.code, jti)
        refresh = token.get("refresh_token")
        if refresh is not None:
            self.grants.save_refresh(
                RefreshToken(
                    token=refresh,
                    client_id=request.client.get_client_id(),
                    scope=token["scope"],
                    authorization=request.user,
                    issued_at=int(self.clock()),
                )
            )
            if code is not None:
                self.grants.note_issued(code.code, refresh)

    def create_oauth2_request(self, request: HttpRequest) -> SandboxOAuth2Request:
        return SandboxOAuth2Request(request)

    def create_json_request(self, request: HttpRequest) -> Any:
        raise NotImplementedError("the sandbox has no JSON OAuth endpoints")

    def handle_response(self, status: int, body: Any, headers: Any) -> Response:
        return to_response(status, body, headers)

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        """No signal system: nothing listens."""

    def _generate_token(
        self,
        grant_type: str,
        client: ClientModel,
        user: Authorization | None = None,
        scope: str | None = None,
        expires_in: int | None = None,
        include_refresh_token: bool = True,
    ) -> dict[str, Any]:
        if user is None and grant_type == "client_credentials":
            user = Authorization(fhir_user=f"Device/{client.get_client_id()}", patient=None)
        if user is None:
            raise ValueError("the sandbox issues tokens for an authorization only")
        granted = scope or ""
        issued = self.tokens.issue(
            client_id=client.get_client_id(), authorization=user, scope=granted,
            expires_in=expires_in,
        )  # fmt: skip
        token: dict[str, Any] = {
            "access_token": issued.value,
            "token_type": "Bearer",
            "expires_in": issued.expires_in,
            "scope": granted,
            "need_patient_banner": True,
            "smart_style_url": f"{self.config.root}/smart-style.json",
        }
        if user.patient is not None:
            token["patient"] = user.patient
        if user.encounter is not None:
            token["encounter"] = user.encounter
        if include_refresh_token and REFRESH_SCOPES & set(split_scope(granted)):
            token["refresh_token"] = secrets.token_urlsafe(32)
        return token

    def _authenticate_bearer(self, query_client: Any, request: OAuth2Request) -> Any:
        """RFC 7662 §2.1: a sandbox access token may authorize an introspection call."""
        scheme, _, value = (request.headers.get("Authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            return None
        try:
            claims = self.tokens.verify(value.strip())
        except Unauthorized:
            return None
        return query_client(claims.get("client_id"))

    # -- the endpoints -----------------------------------------------------------------------

    def authorize(self, http: HttpRequest) -> Response:
        """RFC 6749 §4.1.1–4.1.2.1: validate, auto-approve (or deny per launch) and redirect."""
        response: Response
        try:
            grant = self.get_consent_grant(http)
        except OAuth2Error as error:
            response = self.handle_error_response(None, error)
            return response
        user = None if getattr(grant.request, "smart_deny", False) else grant.request.user
        response = self.create_authorization_response(grant.request, grant_user=user, grant=grant)
        return response

    async def authorize_endpoint(self, request: Request) -> Response:
        http = await read_http_request(request, self.config.auth_url("authorize"))
        return self.authorize(http)

    async def token_endpoint(self, request: Request) -> Response:
        http = await read_http_request(request, self.config.auth_url("token"))
        response: Response = self.create_token_response(http)
        return response

    async def introspection_endpoint(self, request: Request) -> Response:
        http = await read_http_request(request, self.config.auth_url("introspect"))
        response: Response | None = self.create_endpoint_response("introspection", http)
        if response is None:  # pragma: no cover - authlib always answers introspection
            raise RuntimeError("introspection produced no response")
        return response

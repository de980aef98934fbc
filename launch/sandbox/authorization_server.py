"""The sandbox's OAuth 2.0 authorization server (RFC 6749, RFC 7636, RFC 7009, RFC 7523, RFC 7662,
OIDC Core §3.1).

``SandboxAuthorizationServer`` is authlib's ``AuthorizationServer`` bound to the sandbox's state
(clients from the config and their keys, launch contexts, codes, grants, signing keys) plus the
four Starlette endpoints: ``GET /auth/authorize`` (auto-approves: no login or consent UI; or
redirects back with the error the launch asked for), ``POST /auth/token``, ``POST /auth/revoke``
and ``POST /auth/introspect``. Clients authenticate as ``client_auth`` describes; every failure
is ``invalid_client`` with 401. Token responses carry SMART's extra fields (``patient``,
``encounter``, ``fhirContext``, ``need_patient_banner``, ``smart_style_url``, ``intent``,
``tenant``; SMART App Launch 2.x §"Launch context arrives with your access_token").
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

from authlib.oauth2 import AuthorizationServer, OAuth2Error
from authlib.oauth2.rfc6749 import InvalidClientError, OAuth2Request
from starlette.requests import Request
from starlette.responses import Response

from launch.sandbox.client_auth import (
    BearerAccessToken,
    PrivateKeyJwt,
    authenticate_client_secret_basic,
    peek_assertion,
)
from launch.sandbox.client_jwks import ClientKeys
from launch.sandbox.config import SandboxConfig
from launch.sandbox.grant_store import GrantStore
from launch.sandbox.grants import (
    S256CodeChallenge,
    SandboxClientCredentialsGrant,
    SandboxOpenIDCode,
    SmartAuthorizationCodeGrant,
    SmartLaunch,
    SmartRefreshTokenGrant,
)
from launch.sandbox.keys import KeyRing
from launch.sandbox.launch_context import LaunchRegistry
from launch.sandbox.oauth_adapter import (
    HttpRequest,
    SandboxOAuth2Request,
    read_http_request,
    to_response,
)
from launch.sandbox.oauth_errors import ClientAuthenticationFailed, authorize_error
from launch.sandbox.oauth_models import BEARER_AUTH_METHOD, Authorization, ClientModel, RefreshToken
from launch.sandbox.scopes import split_scope
from launch.sandbox.store import SandboxStore
from launch.sandbox.token_endpoints import SandboxIntrospectionEndpoint, SandboxRevocationEndpoint
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
        keys: KeyRing,
        client_keys: ClientKeys,
        launches: LaunchRegistry,
        grants: GrantStore,
        tokens: TokenIssuer,
        clock: Callable[[], float],
    ) -> None:
        super().__init__(scopes_supported=None)
        self.config = config
        self.store = store
        self.keys = keys
        self.client_keys = client_keys
        self.launches = launches
        self.grants = grants
        self.tokens = tokens
        self.clock = clock
        #: ``realm`` of the ``WWW-Authenticate: Basic`` challenge sent with ``invalid_client``.
        self.realm = config.auth_url("token")
        self._clients = {c.client_id: ClientModel(c) for c in config.clients}
        self.register_token_generator("default", self._generate_token)
        self.register_client_auth_method("client_secret_basic", authenticate_client_secret_basic)
        self.register_client_auth_method(
            "private_key_jwt",
            PrivateKeyJwt(token_url=config.auth_url("token"), keys=client_keys, clock=clock),
        )
        self.register_client_auth_method(BEARER_AUTH_METHOD, BearerAccessToken(tokens))
        self.register_grant(
            SmartAuthorizationCodeGrant,
            [S256CodeChallenge(required=True), SmartLaunch(self), SandboxOpenIDCode(self)],
        )
        self.register_grant(SmartRefreshTokenGrant)
        self.register_grant(SandboxClientCredentialsGrant)
        self.register_endpoint(SandboxIntrospectionEndpoint)
        self.register_endpoint(SandboxRevocationEndpoint)

    # -- authlib's integration points --------------------------------------------------------

    def query_client(self, client_id: str) -> ClientModel | None:
        return self._clients.get(client_id)

    def save_token(self, token: dict[str, Any], request: OAuth2Request) -> None:
        """File the new tokens under their grant: the refreshed one's, or a new grant."""
        claims = self.tokens.verify(token["access_token"])
        previous: RefreshToken | None = request.refresh_token
        if previous is not None:
            grant_id = previous.grant_id
        else:
            code = request.authorization_code
            grant_id = self.grants.open_grant(
                claims["client_id"], claims.get("patient"), code=code.code if code else None
            )
        self.grants.note_access_token(grant_id, claims["jti"])
        refresh = token.get("refresh_token")
        if refresh is not None:
            authorization: Authorization = request.user
            now = int(self.clock())
            ttl = authorization.options.refresh_ttl
            self.grants.save_refresh(
                RefreshToken(
                    token=refresh,
                    client_id=claims["client_id"],
                    scope=token["scope"],
                    authorization=authorization,
                    issued_at=now,
                    grant_id=grant_id,
                    expires_at=now + ttl if ttl is not None else None,
                )
            )

    def authenticate_client(
        self, request: OAuth2Request, methods: list[str], endpoint: str = "token"
    ) -> ClientModel:
        """authlib's client authentication; any ``invalid_client`` is answered with 401."""
        try:
            client: ClientModel = super().authenticate_client(request, methods, endpoint)
        except InvalidClientError as error:
            raise ClientAuthenticationFailed(error.description, realm=self.realm) from error
        return client

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
        options = user.options
        issued = self.tokens.issue(
            client_id=client.get_client_id(), authorization=user, scope=granted,
            expires_in=expires_in or options.token_ttl,
        )  # fmt: skip
        token: dict[str, Any] = {
            "access_token": issued.value,
            "token_type": "Bearer",
            "expires_in": issued.expires_in,
            "scope": granted,
            "need_patient_banner": options.need_patient_banner,
            "smart_style_url": options.smart_style_url or f"{self.config.root}/smart-style.json",
        }
        if user.patient is not None:
            token["patient"] = user.patient
        if user.encounter is not None:
            token["encounter"] = user.encounter
            token["fhirContext"] = [{"reference": f"Encounter/{user.encounter}"}]
        if options.intent is not None:
            token["intent"] = options.intent
        if options.tenant is not None:
            token["tenant"] = options.tenant
        if include_refresh_token and REFRESH_SCOPES & set(split_scope(granted)):
            token["refresh_token"] = secrets.token_urlsafe(32)
        return token

    # -- the endpoints -----------------------------------------------------------------------

    def authorize(self, http: HttpRequest) -> Response:
        """RFC 6749 §4.1.1–4.1.2.1: validate, then auto-approve or fail as the launch asked."""
        response: Response
        try:
            grant = self.get_consent_grant(http)
        except OAuth2Error as error:
            response = self.handle_error_response(None, error)
            return response
        request = grant.request
        failure = request.user.options.authorize_error
        if failure is not None:
            error = authorize_error(
                failure, redirect_uri=grant.redirect_uri, state=request.payload.state
            )
            response = self.handle_error_response(request, error)
            return response
        response = self.create_authorization_response(request, grant_user=request.user, grant=grant)
        return response

    async def authorize_endpoint(self, request: Request) -> Response:
        http = await read_http_request(request, self.config.auth_url("authorize"))
        return self.authorize(http)

    async def token_endpoint(self, request: Request) -> Response:
        http = await self._read_client_request(request, "token")
        response: Response = self.create_token_response(http)
        return response

    async def revocation_endpoint(self, request: Request) -> Response:
        return await self._endpoint_response("revocation", request, "revoke")

    async def introspection_endpoint(self, request: Request) -> Response:
        return await self._endpoint_response("introspection", request, "introspect")

    async def _endpoint_response(self, name: str, request: Request, path: str) -> Response:
        http = await self._read_client_request(request, path)
        response: Response | None = self.create_endpoint_response(name, http)
        if response is None:  # pragma: no cover - authlib always answers these endpoints
            raise RuntimeError(f"{name} produced no response")
        return response

    async def _read_client_request(self, request: Request, path: str) -> HttpRequest:
        """Read the request and, for a client assertion, have its client's JWK Set at hand."""
        http = await read_http_request(request, self.config.auth_url(path))
        peeked = peek_assertion(dict(reversed(list(http.form))))
        if peeked is not None:
            client = self.query_client(peeked[0])
            if client is not None:
                await self.client_keys.prepare(client.client, peeked[1])
        return http

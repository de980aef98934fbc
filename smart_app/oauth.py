"""SMART App Launch OAuth client: discovery, authorize URL with PKCE S256, code exchange, id_token.

SMART App Launch 2.x §2.0.4 (.well-known/smart-configuration), §2.0.5-2.0.8 (authorization code
flow); RFC 7636 (PKCE, S256 only); OpenID Connect Core §3.1.3.7 (id_token validation). The home of
authlib (client) and joserfc (JWT) in this package.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import httpx2
from authlib.integrations.httpx_client import AsyncOAuth2Client
from authlib.oauth2.rfc6749.errors import OAuth2Error
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from smart_app.errors import BadRequest, UpstreamError

REQUIRED_FIELDS = ("authorization_endpoint", "token_endpoint")


@dataclass(frozen=True)
class SmartConfiguration:
    """The parts of an EHR's smart-configuration this app relies on."""

    iss: str
    issuer: str | None
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str | None
    introspection_endpoint: str | None
    code_challenge_methods: tuple[str, ...]
    capabilities: tuple[str, ...]


@dataclass(frozen=True)
class ClientConfig:
    client_id: str
    redirect_uri: str
    scope: str
    client_secret: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class TokenResponse:
    """A SMART token response; tokens are excluded from the repr."""

    access_token: str = field(repr=False)
    scope: str
    patient: str | None
    encounter: str | None
    id_token: str | None = field(repr=False)
    refresh_token: str | None = field(repr=False)
    expires_at: float | None
    need_patient_banner: bool
    smart_style_url: str | None


class SmartClient:
    """Talks to SMART authorization servers; discovery and JWKS are cached per process."""

    def __init__(self, http: httpx2.AsyncClient, *, discovery_ttl: float = 300.0) -> None:
        self._http = http
        self._ttl = discovery_ttl
        self._discovery: dict[str, tuple[float, SmartConfiguration]] = {}
        self._jwks: dict[str, tuple[float, KeySet]] = {}

    async def discover(self, iss: str) -> SmartConfiguration:
        cached = self._discovery.get(iss)
        if cached and cached[0] > time.monotonic():
            return cached[1]
        doc = await self._get_json(f"{iss.rstrip('/')}/.well-known/smart-configuration")
        missing = [f for f in REQUIRED_FIELDS if not isinstance(doc.get(f), str)]
        if missing:
            raise UpstreamError(
                f"the EHR's smart-configuration lacks {', '.join(missing)}", code="ehr_discovery"
            )
        methods = tuple(doc.get("code_challenge_methods_supported") or ())
        if "S256" not in methods:
            raise UpstreamError(
                "the EHR does not advertise PKCE S256; refusing to launch", code="ehr_no_pkce"
            )
        conf = SmartConfiguration(
            iss=iss,
            issuer=doc.get("issuer"),
            authorization_endpoint=doc["authorization_endpoint"],
            token_endpoint=doc["token_endpoint"],
            jwks_uri=doc.get("jwks_uri"),
            introspection_endpoint=doc.get("introspection_endpoint"),
            code_challenge_methods=methods,
            capabilities=tuple(doc.get("capabilities") or ()),
        )
        self._discovery[iss] = (time.monotonic() + self._ttl, conf)
        return conf

    def _oauth(self, client: ClientConfig) -> AsyncOAuth2Client:
        return AsyncOAuth2Client(
            client_id=client.client_id,
            client_secret=client.client_secret,
            token_endpoint_auth_method="client_secret_basic" if client.client_secret else "none",
            redirect_uri=client.redirect_uri,
            scope=client.scope,
            code_challenge_method="S256",
            timeout=self._http.timeout,
        )

    async def authorization_url(
        self,
        conf: SmartConfiguration,
        client: ClientConfig,
        *,
        state: str,
        code_verifier: str,
        nonce: str,
        launch: str | None,
    ) -> str:
        extra: dict[str, str] = {"aud": conf.iss, "nonce": nonce}
        if launch:
            extra["launch"] = launch
        async with self._oauth(client) as oauth:
            url, _ = oauth.create_authorization_url(
                conf.authorization_endpoint, state=state, code_verifier=code_verifier, **extra
            )
        return str(url)

    async def exchange_code(
        self, conf: SmartConfiguration, client: ClientConfig, *, code: str, code_verifier: str
    ) -> TokenResponse:
        try:
            async with self._oauth(client) as oauth:
                token = await oauth.fetch_token(
                    conf.token_endpoint,
                    grant_type="authorization_code",
                    code=code,
                    code_verifier=code_verifier,
                    redirect_uri=client.redirect_uri,
                )
        except OAuth2Error as exc:
            raise BadRequest(
                f"the EHR refused the authorization code ({exc.error})",
                code="token_exchange_failed",
            ) from None
        except httpx2.HTTPError:
            raise UpstreamError(
                "the EHR's token endpoint is unreachable", code="ehr_unreachable"
            ) from None
        return _token_response(dict(token))

    async def refresh(
        self, conf: SmartConfiguration, client: ClientConfig, refresh_token: str
    ) -> TokenResponse:
        try:
            async with self._oauth(client) as oauth:
                token = await oauth.refresh_token(conf.token_endpoint, refresh_token=refresh_token)
        except (OAuth2Error, httpx2.HTTPError):
            raise UpstreamError(
                "the EHR refused to refresh the session", code="refresh_failed"
            ) from None
        return _token_response(dict(token))

    async def backend_token(
        self, conf: SmartConfiguration, client_id: str, client_secret: str, scope: str
    ) -> TokenResponse:
        """A system-level token by the client-credentials grant (RFC 6749 §4.4)."""
        try:
            async with AsyncOAuth2Client(
                client_id=client_id,
                client_secret=client_secret,
                token_endpoint_auth_method="client_secret_basic",
                scope=scope,
                timeout=self._http.timeout,
            ) as oauth:
                token = await oauth.fetch_token(
                    conf.token_endpoint, grant_type="client_credentials", scope=scope
                )
        except OAuth2Error as exc:
            raise UpstreamError(
                f"the EHR refused a backend token ({exc.error})", code="backend_token_refused"
            ) from None
        except httpx2.HTTPError:
            raise UpstreamError(
                "the EHR's token endpoint is unreachable", code="ehr_unreachable"
            ) from None
        return _token_response(dict(token))

    async def verify_id_token(
        self, conf: SmartConfiguration, client: ClientConfig, id_token: str, *, nonce: str
    ) -> dict[str, Any]:
        """Verify signature (JWKS), iss, aud, exp/iat and nonce; return the claims."""
        if not conf.jwks_uri:
            raise BadRequest(
                "the EHR publishes no jwks_uri; cannot verify the id_token", code="id_token_invalid"
            )
        keys = await self._keyset(conf.jwks_uri)
        try:
            token = jwt.decode(id_token, keys, algorithms=["RS256", "RS384", "ES256", "ES384"])
            jwt.JWTClaimsRegistry(
                leeway=60,
                iss={"essential": True, "values": [v for v in (conf.issuer, conf.iss) if v]},
                aud={"essential": True, "value": client.client_id},
                exp={"essential": True},
                nonce={"essential": True, "value": nonce},
            ).validate(token.claims)
        except (JoseError, ValueError) as exc:
            raise BadRequest(
                f"the id_token failed verification ({type(exc).__name__})", code="id_token_invalid"
            ) from None
        return dict(token.claims)

    async def _keyset(self, jwks_uri: str) -> KeySet:
        cached = self._jwks.get(jwks_uri)
        if cached and cached[0] > time.monotonic():
            return cached[1]
        keys = KeySet.import_key_set(await self._get_json(jwks_uri))  # type: ignore[arg-type]
        self._jwks[jwks_uri] = (time.monotonic() + self._ttl, keys)
        return keys

    async def _get_json(self, url: str) -> dict[str, Any]:
        try:
            resp = await self._http.get(url, headers={"Accept": "application/json"})
        except httpx2.HTTPError:
            raise UpstreamError("the EHR is unreachable", code="ehr_unreachable") from None
        if resp.status_code != 200:
            raise UpstreamError(
                f"the EHR answered {resp.status_code} to discovery", code="ehr_discovery"
            )
        try:
            body = resp.json()
        except ValueError:
            raise UpstreamError(
                "the EHR's discovery document is not JSON", code="ehr_discovery"
            ) from None
        if not isinstance(body, dict):
            raise UpstreamError(
                "the EHR's discovery document is not an object", code="ehr_discovery"
            )
        return body


def _token_response(token: dict[str, Any]) -> TokenResponse:
    if not token.get("access_token") or "scope" not in token:
        raise BadRequest(
            "the EHR's token response lacks access_token or scope", code="invalid_token_response"
        )
    expires_at = token.get("expires_at")
    if expires_at is None and token.get("expires_in"):
        expires_at = time.time() + float(token["expires_in"])
    return TokenResponse(
        access_token=token["access_token"],
        scope=str(token["scope"]),
        patient=token.get("patient"),
        encounter=token.get("encounter"),
        id_token=token.get("id_token"),
        refresh_token=token.get("refresh_token"),
        expires_at=float(expires_at) if expires_at else None,
        need_patient_banner=bool(token.get("need_patient_banner", True)),
        smart_style_url=token.get("smart_style_url"),
    )

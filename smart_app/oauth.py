"""SMART App Launch OAuth client: discovery, authorize URL with PKCE S256, code exchange, id_token.

SMART App Launch 2.x §2.0.4 (.well-known/smart-configuration), §2.0.5-2.0.8 (authorization code
flow); RFC 7636 (PKCE, S256 only); OpenID Connect Core §3.1.3.7 (id_token validation). The home of
authlib (client) and joserfc (JWT) in this package.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote_plus

import httpx2
from authlib.common.errors import AuthlibBaseError
from authlib.common.urls import add_params_to_qs
from authlib.integrations.httpx_client import AsyncOAuth2Client
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from smart_app.ehrs import AuthMethod, EhrRegistration
from smart_app.errors import BadRequest, EhrRefused, UpstreamError
from smart_app.keys import AppKeys

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
log = logging.getLogger("chartcite.oauth")

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
    revocation_endpoint: str | None = None


@dataclass(frozen=True)
class ClientConfig:
    """How chartcite authenticates to one EHR's token endpoint, for one request's scopes."""

    client_id: str
    redirect_uri: str
    scope: str
    client_secret: str | None = field(default=None, repr=False)
    auth_method: AuthMethod | None = None
    """``None``: ``client_secret_basic`` with a secret, ``none`` (public) without."""

    @property
    def method(self) -> AuthMethod:
        if self.auth_method is not None:
            return self.auth_method
        return "client_secret_basic" if self.client_secret else "none"

    @classmethod
    def of(cls, reg: EhrRegistration, redirect_uri: str, scope: str | None = None) -> ClientConfig:
        return cls(
            reg.client_id, redirect_uri, scope or reg.scope, reg.client_secret, reg.auth_method
        )


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
    launch_context: dict[str, Any] = field(default_factory=dict)
    """The rest of SMART's launch context: ``intent``, ``tenant``, ``fhirContext``."""


class SmartClient:
    """Talks to SMART authorization servers; discovery and JWKS are cached per process."""

    def __init__(
        self,
        http: httpx2.AsyncClient,
        *,
        discovery_ttl: float = 300.0,
        keys: AppKeys | None = None,
    ) -> None:
        self._http = http
        self._ttl = discovery_ttl
        self._keys = keys
        self._discovery: dict[str, tuple[float, SmartConfiguration]] = {}
        self._jwks: dict[str, tuple[float, KeySet]] = {}

    @property
    def keys(self) -> AppKeys | None:
        """chartcite's own signing keys (private_key_jwt), published at /.well-known/jwks.json."""
        return self._keys

    async def discover(self, iss: str, *, allow_without_pkce: bool = False) -> SmartConfiguration:
        cached = self._discovery.get(iss)
        if cached and cached[0] > time.monotonic():
            conf = cached[1]
        else:
            doc = await self._get_json(f"{iss.rstrip('/')}/.well-known/smart-configuration")
            missing = [f for f in REQUIRED_FIELDS if not isinstance(doc.get(f), str)]
            if missing:
                raise UpstreamError(
                    f"the EHR's smart-configuration lacks {', '.join(missing)}",
                    code="ehr_discovery",
                )
            conf = SmartConfiguration(
                iss=iss,
                issuer=doc.get("issuer"),
                authorization_endpoint=doc["authorization_endpoint"],
                token_endpoint=doc["token_endpoint"],
                jwks_uri=doc.get("jwks_uri"),
                introspection_endpoint=doc.get("introspection_endpoint"),
                code_challenge_methods=tuple(doc.get("code_challenge_methods_supported") or ()),
                capabilities=tuple(doc.get("capabilities") or ()),
                revocation_endpoint=doc.get("revocation_endpoint"),
            )
            self._discovery[iss] = (time.monotonic() + self._ttl, conf)
        if "S256" not in conf.code_challenge_methods:
            if not allow_without_pkce:
                raise UpstreamError(
                    "the EHR does not advertise PKCE S256; refusing to launch", code="ehr_no_pkce"
                )
            log.warning("EHR %s does not advertise PKCE S256: launching in compat mode", iss)
        return conf

    def _auth(self, client: ClientConfig, conf: SmartConfiguration) -> Any:
        """The token-endpoint client authentication of this registration, for authlib."""
        method = client.method
        if method == "client_secret_basic":
            return _secret_basic
        if method == "private_key_jwt":
            if self._keys is None:
                raise UpstreamError(
                    "private_key_jwt is configured but chartcite has no signing keys",
                    code="client_keys_missing",
                )
            keys = self._keys

            def _assertion(auth: Any, http_method: str, uri: str, headers: Any, body: str) -> Any:
                body = add_params_to_qs(
                    body or "",
                    [
                        ("client_assertion_type", ASSERTION_TYPE),
                        ("client_assertion", keys.client_assertion(auth.client_id, uri)),
                    ],
                )
                headers["Content-Length"] = str(len(body))
                return uri, headers, body

            return _assertion
        return method  # "client_secret_post" and "none": authlib's own

    def _oauth(self, client: ClientConfig, conf: SmartConfiguration) -> AsyncOAuth2Client:
        return AsyncOAuth2Client(
            client_id=client.client_id,
            client_secret=client.client_secret,
            token_endpoint_auth_method=self._auth(client, conf),
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
        async with self._oauth(client, conf) as oauth:
            url, _ = oauth.create_authorization_url(
                conf.authorization_endpoint, state=state, code_verifier=code_verifier, **extra
            )
        return str(url)

    async def _token_call(self, stage: str, call: Any) -> TokenResponse:
        """Run one token-endpoint call; every refusal becomes an ``EhrRefused`` with the EHR's
        own error code and (truncated) description, never a 500."""
        try:
            token = await call
        except AuthlibBaseError as exc:
            raise EhrRefused(stage, str(exc.error or "oauth_error"), exc.description) from None
        except httpx2.HTTPStatusError as exc:
            error, description = _error_body(exc.response)
            if error is None:
                error = "server_error" if exc.response.status_code >= 500 else "invalid_request"
            raise EhrRefused(stage, error, description) from None
        except httpx2.HTTPError:
            raise UpstreamError(
                "the EHR's token endpoint is unreachable", code="ehr_unreachable"
            ) from None
        except ValueError:  # a token response that is not JSON
            raise EhrRefused(stage, "invalid_token_response", None) from None
        return _token_response(dict(token))

    async def exchange_code(
        self, conf: SmartConfiguration, client: ClientConfig, *, code: str, code_verifier: str
    ) -> TokenResponse:
        async with self._oauth(client, conf) as oauth:
            return await self._token_call(
                "token",
                oauth.fetch_token(
                    conf.token_endpoint,
                    grant_type="authorization_code",
                    code=code,
                    code_verifier=code_verifier,
                    redirect_uri=client.redirect_uri,
                ),
            )

    async def refresh(
        self, conf: SmartConfiguration, client: ClientConfig, refresh_token: str
    ) -> TokenResponse:
        async with self._oauth(client, conf) as oauth:
            return await self._token_call(
                "refresh", oauth.refresh_token(conf.token_endpoint, refresh_token=refresh_token)
            )

    async def backend_token(
        self, conf: SmartConfiguration, client: ClientConfig, scope: str
    ) -> TokenResponse:
        """A system-level token by the client-credentials grant (RFC 6749 §4.4; SMART Backend
        Services with ``private_key_jwt``, or a client secret where the EHR allows it)."""
        async with self._oauth(client, conf) as oauth:
            return await self._token_call(
                "backend",
                oauth.fetch_token(
                    conf.token_endpoint, grant_type="client_credentials", scope=scope
                ),
            )

    async def introspect(
        self, conf: SmartConfiguration, client: ClientConfig, token: str
    ) -> dict[str, Any]:
        """RFC 7662 / SMART token introspection of a bearer token an app presented.

        A confidential registration authenticates as itself; a public one can only name itself
        (``client_id``), which some EHRs accept and most do not — register chartcite as a
        confidential client where bearer access or revocation checks matter."""
        if not conf.introspection_endpoint:
            raise UpstreamError(
                "the EHR offers no token introspection", code="ehr_no_introspection"
            )
        form, headers = self._client_auth(
            client, conf.introspection_endpoint, {"token": token, "token_type_hint": "access_token"}
        )
        headers["Accept"] = "application/json"
        try:
            resp = await self._http.post(conf.introspection_endpoint, data=form, headers=headers)
        except httpx2.HTTPError:
            raise UpstreamError("the EHR is unreachable", code="ehr_unreachable") from None
        if resp.status_code != 200:
            raise UpstreamError(
                f"the EHR answered {resp.status_code} to token introspection",
                code="ehr_introspection",
            )
        try:
            body = resp.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise UpstreamError(
                "the EHR's introspection answer is not a JSON object", code="ehr_introspection"
            )
        return body

    def _client_auth(
        self, client: ClientConfig, endpoint: str, form: dict[str, str]
    ) -> tuple[dict[str, str], dict[str, str]]:
        """The form and headers of a call to an EHR endpoint other than the token endpoint
        (introspection, revocation), authenticated as the registration says."""
        headers: dict[str, str] = {}
        if client.method == "client_secret_basic":
            headers["Authorization"] = _basic(client.client_id, client.client_secret or "")
        elif client.method == "client_secret_post":
            form |= {"client_id": client.client_id, "client_secret": client.client_secret or ""}
        elif client.method == "private_key_jwt" and self._keys is not None:
            form |= {
                "client_assertion_type": ASSERTION_TYPE,
                "client_assertion": self._keys.client_assertion(client.client_id, endpoint),
            }
        else:  # a public client can only name itself
            form["client_id"] = client.client_id
        return form, headers

    async def revoke(self, conf: SmartConfiguration, client: ClientConfig, token: str) -> bool:
        """RFC 7009 revocation, best effort (logout); ``False`` when not possible."""
        if not conf.revocation_endpoint:
            return False
        form, headers = self._client_auth(client, conf.revocation_endpoint, {"token": token})
        try:
            resp = await self._http.post(conf.revocation_endpoint, data=form, headers=headers)
        except httpx2.HTTPError:
            return False
        return resp.status_code == 200

    async def verify_id_token(
        self, conf: SmartConfiguration, client: ClientConfig, id_token: str, *, nonce: str
    ) -> dict[str, Any]:
        """Verify signature (JWKS), iss, aud, exp/iat and nonce; return the claims."""
        if not conf.jwks_uri:
            raise BadRequest(
                "the EHR publishes no jwks_uri; cannot verify the id_token", code="id_token_invalid"
            )
        try:
            token = await self._decode(conf.jwks_uri, id_token)
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

    async def verify_access_jwt(self, conf: SmartConfiguration, token: str) -> dict[str, Any]:
        """Claims of an access token that is a JWT signed by the EHR (its JWKS), unexpired and
        issued by and for this FHIR base; ``ValueError``/``JoseError`` otherwise."""
        if not conf.jwks_uri:
            raise ValueError("the EHR publishes no jwks_uri")
        decoded = await self._decode(conf.jwks_uri, token)
        issuers = [v for v in (conf.issuer, conf.iss) if v]
        jwt.JWTClaimsRegistry(
            leeway=30, iss={"essential": True, "values": issuers}, exp={"essential": True}
        ).validate(decoded.claims)
        aud = decoded.claims.get("aud")
        auds = aud if isinstance(aud, list) else [aud]
        if aud is not None and conf.iss not in [str(a).rstrip("/") for a in auds]:
            raise ValueError("the token is not for this FHIR server")
        return dict(decoded.claims)

    async def _decode(self, jwks_uri: str, token: str) -> Any:
        """Verify a JWT's signature; an unknown ``kid`` re-reads the JWKS once (key rotation)."""
        algorithms = ["RS256", "RS384", "ES256", "ES384"]
        keys = await self._keyset(jwks_uri)
        try:
            return jwt.decode(token, keys, algorithms=algorithms)
        except JoseError:
            kid = _kid(token)
            if kid is None or any(k.kid == kid for k in keys.keys):
                raise
        return jwt.decode(token, await self._keyset(jwks_uri, fresh=True), algorithms=algorithms)

    async def _keyset(self, jwks_uri: str, *, fresh: bool = False) -> KeySet:
        cached = self._jwks.get(jwks_uri)
        if cached and cached[0] > time.monotonic() and not fresh:
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


def _basic(client_id: str, secret: str) -> str:
    """RFC 6749 §2.3.1: id and secret are form-urlencoded, then joined by ``:`` and base64'd."""
    raw = f"{quote_plus(client_id)}:{quote_plus(secret)}"
    return "Basic " + base64.b64encode(raw.encode()).decode()


def _secret_basic(auth: Any, method: str, uri: str, headers: Any, body: str) -> Any:
    headers["Authorization"] = _basic(auth.client_id, auth.client_secret or "")
    return uri, headers, body


def _error_body(resp: httpx2.Response) -> tuple[str | None, str | None]:
    """RFC 6749 §5.2 ``error``/``error_description`` from a refusal, when the body has them."""
    try:
        body = resp.json()
    except ValueError:
        return None, None
    if not isinstance(body, dict) or not isinstance(body.get("error"), str):
        return None, None
    desc = body.get("error_description")
    return body["error"], desc if isinstance(desc, str) else None


def _kid(token: str) -> str | None:
    try:
        header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    except (ValueError, IndexError):
        return None
    kid = header.get("kid") if isinstance(header, dict) else None
    return kid if isinstance(kid, str) else None


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
        launch_context={
            k: token[k] for k in ("intent", "tenant", "fhirContext") if token.get(k) is not None
        },
    )

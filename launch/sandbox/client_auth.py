"""How apps authenticate to the sandbox's token, revocation and introspection endpoints.

Registered with authlib's ``AuthorizationServer.register_client_auth_method``:

- ``client_secret_basic`` (RFC 6749 §2.3.1): ``client_id`` and secret are each
  ``application/x-www-form-urlencoded`` before they are joined with ``:`` and base64-encoded, so
  the sandbox decodes them with ``unquote_plus`` (authlib's own method uses ``unquote``, which
  reads an encoded space ``+`` as a plus sign).
- ``private_key_jwt`` (RFC 7523 §2.2, SMART App Launch 2.x "client-confidential-asymmetric"):
  ``client_assertion_type`` = ``urn:ietf:params:oauth:client-assertion-type:jwt-bearer``, a JWT
  signed with RS384 or ES384 under a ``kid`` of the client's JWK Set (``client_jwks``), ``iss`` =
  ``sub`` = client_id, ``aud`` = the token endpoint URL, ``exp`` at most five minutes ahead and a
  ``jti`` never seen before (remembered until its ``exp``). A ``jku`` header, if sent, must be
  the registered ``jwks_uri``.
- ``bearer_access_token`` (RFC 7662 §2.1): a sandbox access token authorizes an introspection.

Every failure raises or ends in authlib's ``InvalidClientError``; the server answers it as 401.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import unquote_plus

from authlib.oauth2.rfc6749 import InvalidClientError, OAuth2Request
from authlib.oauth2.rfc7523 import JWTBearerClientAssertion
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import Key

from launch.sandbox.client_jwks import ClientKeys
from launch.sandbox.errors import Unauthorized
from launch.sandbox.oauth_models import ClientModel
from launch.sandbox.tokens import TokenIssuer

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_ALGORITHMS = ("RS384", "ES384")
MAX_ASSERTION_LIFETIME_SECONDS = 300

QueryClient = Callable[[str], ClientModel | None]


def authenticate_client_secret_basic(
    query_client: QueryClient, request: OAuth2Request
) -> ClientModel | None:
    """HTTP Basic with form-urlencoded credentials (RFC 6749 §2.3.1)."""
    scheme, _, value = (request.headers.get("Authorization") or "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    client_id, colon, secret = decoded.partition(":")
    if not colon:
        return None
    client = query_client(unquote_plus(client_id))
    if client is None or not client.check_client_secret(unquote_plus(secret)):
        return None
    return client


def peek_assertion(form: Mapping[str, str]) -> tuple[str, str | None] | None:
    """``(sub, kid)`` of a client assertion, unverified, to fetch the right JWK Set first."""
    assertion = form.get("client_assertion")
    if form.get("client_assertion_type") != ASSERTION_TYPE or not assertion:
        return None
    try:
        header, claims = JWTBearerClientAssertion().extract_assertion(assertion)
    except InvalidClientError:
        return None
    sub, kid = claims.get("sub"), header.get("kid")
    if not isinstance(sub, str):
        return None
    return sub, kid if isinstance(kid, str) else None


class PrivateKeyJwt(JWTBearerClientAssertion):  # type: ignore[misc]
    """RFC 7523 client assertions, checked as SMART's asymmetric client authentication."""

    CLIENT_AUTH_METHOD = "private_key_jwt"

    def __init__(self, *, token_url: str, keys: ClientKeys, clock: Callable[[], float]) -> None:
        super().__init__(validate_jti=True, leeway=0)
        self._audience = token_url
        self._keys = keys
        self._clock = clock
        self._seen: dict[tuple[str, str], float] = {}  # (client_id, jti) -> exp

    def get_audiences(self) -> list[str]:
        return [self._audience]

    def __call__(self, query_client: QueryClient, request: OAuth2Request) -> ClientModel | None:
        form = request.form
        assertion = form.get("client_assertion")
        if form.get("client_assertion_type") != ASSERTION_TYPE or not assertion:
            return None
        header, claims = self.extract_assertion(assertion)
        if header.get("alg") not in ASSERTION_ALGORITHMS:
            raise InvalidClientError(
                description="The assertion must be signed with RS384 or ES384."
            )
        client_id = claims.get("sub")
        if not isinstance(client_id, str):
            raise InvalidClientError(description="Missing or invalid claim: 'sub'.")
        if form.get("client_id") not in (None, client_id):
            raise InvalidClientError(description="'client_id' differs from the assertion's 'sub'.")
        client = query_client(client_id)
        if client is None:
            raise InvalidClientError(description="The client does not exist on this server.")
        jku = header.get("jku")
        if jku is not None and jku != client.client.jwks_uri:
            raise InvalidClientError(description="'jku' is not the registered jwks_uri.")
        key = self._key(client, header.get("kid"))
        request.client = client
        self.process_assertion_claims(assertion, key)
        result: ClientModel = self.authenticate_client(client)
        return result

    def _key(self, client: ClientModel, kid: object) -> Key:
        if not isinstance(kid, str) or not kid:
            raise InvalidClientError(description="The assertion header needs a 'kid'.")
        key_set = self._keys.key_set(client.client)
        for key in key_set or ():
            if key.kid == kid:
                return key
        raise InvalidClientError(description="No key with this 'kid' in the client's JWK Set.")

    def process_assertion_claims(self, assertion: str, resolve_key: Key) -> dict[str, Any]:
        try:
            token = jwt.decode(assertion, resolve_key, algorithms=list(ASSERTION_ALGORITHMS))
        except JoseError as exc:
            raise InvalidClientError(description=_safe(exc.description)) from exc
        claims = dict(token.claims)
        self.verify_claims(claims)
        return claims

    def verify_claims(self, claims: dict[str, Any]) -> None:
        now = int(self._clock())
        registry = jwt.JWTClaimsRegistry(
            now=now,
            iss={"essential": True},
            sub={"essential": True},
            aud={"essential": True, "values": self.get_audiences()},
            exp={"essential": True},
            jti={"essential": True},
        )
        try:
            registry.validate(claims)
        except JoseError as exc:
            raise InvalidClientError(description=_safe(exc.description)) from exc
        if claims["iss"] != claims["sub"]:
            raise InvalidClientError(description="Issuer and subject must both be the client_id.")
        if claims["exp"] > now + MAX_ASSERTION_LIFETIME_SECONDS:
            raise InvalidClientError(description="'exp' is more than five minutes ahead.")
        if not self.validate_jti(claims, claims["jti"]):
            raise InvalidClientError(description="This 'jti' was used before.")

    def validate_jti(self, claims: dict[str, Any], jti: str) -> bool:
        now = self._clock()
        self._seen = {seen: exp for seen, exp in self._seen.items() if exp >= now}
        seen = (str(claims["sub"]), jti)
        if seen in self._seen:
            return False
        self._seen[seen] = float(claims["exp"])
        return True


class BearerAccessToken:
    """RFC 7662 §2.1: a valid sandbox access token authorizes an introspection call."""

    def __init__(self, tokens: TokenIssuer) -> None:
        self._tokens = tokens

    def __call__(self, query_client: QueryClient, request: OAuth2Request) -> ClientModel | None:
        scheme, _, value = (request.headers.get("Authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            return None
        try:
            claims = self._tokens.verify(value.strip())
        except Unauthorized:
            return None
        return query_client(str(claims.get("client_id")))


def _safe(text: str) -> str:
    """``text`` without the characters an RFC 6749 ``error_description`` must not hold."""
    return "".join(c for c in text if 0x20 <= ord(c) <= 0x7E and c not in '"\\')

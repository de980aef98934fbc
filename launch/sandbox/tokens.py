"""Access tokens of the sandbox EHR: RS256 JWTs (RFC 9068-like profile, RFC 6750 Bearer use).

Claims: ``iss`` and ``aud`` (both the FHIR base URL), ``sub``, ``client_id``, ``scope``,
``patient`` (when there is a patient context), ``fhirUser``, ``exp``, ``iat``, ``jti``.
They are signed with the key ring's current key. The FHIR API and introspection both verify a
token through ``TokenIssuer.verify``, which accepts only the ring's keys and refuses a revoked
``jti``.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from launch.sandbox.errors import Unauthorized
from launch.sandbox.grant_store import GrantStore
from launch.sandbox.keys import KeyRing
from launch.sandbox.oauth_models import Authorization


@dataclass(frozen=True, slots=True)
class IssuedAccessToken:
    """A freshly signed access token and its ``jti``."""

    value: str
    jti: str
    expires_in: int

    def __repr__(self) -> str:
        return f"IssuedAccessToken(jti={self.jti!r}, expires_in={self.expires_in})"


class TokenIssuer:
    """Signs and verifies the sandbox's access tokens."""

    def __init__(
        self,
        keys: KeyRing,
        grants: GrantStore,
        *,
        fhir_base: str,
        ttl: int,
        clock: Callable[[], float],
    ) -> None:
        self._keys = keys
        self._grants = grants
        self._fhir_base = fhir_base
        self._ttl = ttl
        self._clock = clock

    def issue(
        self,
        *,
        client_id: str,
        authorization: Authorization,
        scope: str,
        expires_in: int | None = None,
    ) -> IssuedAccessToken:
        """Sign an access token for this client, user, patient and granted scope.

        It lives ``expires_in`` seconds, by default the configured ``access_token_ttl``.
        """
        now = int(self._clock())
        ttl = expires_in or self._ttl
        jti = secrets.token_urlsafe(16)
        claims: dict[str, Any] = {
            "iss": self._fhir_base,
            "sub": authorization.sub,
            "aud": self._fhir_base,
            "client_id": client_id,
            "scope": scope,
            "fhirUser": authorization.fhir_user,
            "iat": now,
            "exp": now + ttl,
            "jti": jti,
        }
        if authorization.patient is not None:
            claims["patient"] = authorization.patient
        return IssuedAccessToken(self._keys.sign(claims), jti, ttl)

    def verify(self, token: str) -> dict[str, Any]:
        """Claims of a valid, unexpired, unrevoked access token; ``Unauthorized`` otherwise."""
        claims = self._keys.verify(
            token, issuer=self._fhir_base, audience=self._fhir_base, now=int(self._clock())
        )
        jti = claims.get("jti")
        if not isinstance(jti, str) or self._grants.is_jti_revoked(jti):
            raise Unauthorized("The access token is invalid or expired.")
        return claims

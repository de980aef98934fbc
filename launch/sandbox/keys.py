"""The sandbox EHR's RS256 signing key and its JWKS (RFC 7517, RFC 7518 §3.3, RFC 7519).

One RSA key signs access tokens and id_tokens; ``jwks()`` publishes the public half with its
``kid`` (the RFC 7638 thumbprint) at ``{base}/auth/jwks``. With a path, the private JWK is kept
on disk (mode 0600) so tokens survive a restart; without one it lives only in memory.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import RSAKey
from joserfc.jwt import JWTClaimsRegistry

from launch.sandbox.errors import Unauthorized

ALGORITHM = "RS256"


class SigningKey:
    """An RS256 key pair with a ``kid``; signs and verifies the sandbox's JWTs."""

    def __init__(self, key: RSAKey) -> None:
        if not key.is_private:
            raise ValueError("a signing key needs the private part")
        if not key.kid:
            key.ensure_kid()
        self._key = key

    def __repr__(self) -> str:
        return f"SigningKey(kid={self.kid!r})"

    @classmethod
    def generate(cls) -> SigningKey:
        """A fresh 2048-bit RSA key."""
        return cls(RSAKey.generate_key(2048, auto_kid=True))

    @classmethod
    def load_or_create(cls, path: Path) -> SigningKey:
        """Read the private JWK at ``path``, or generate one and write it there (mode 0600)."""
        if path.exists():
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(RSAKey.import_key(data))
        signing_key = cls.generate()
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(signing_key._key.as_dict(private=True), handle)
        return signing_key

    @property
    def kid(self) -> str:
        return str(self._key.kid)

    @property
    def private_key(self) -> RSAKey:
        """The joserfc key (for authlib's OpenID Connect id_token encoder)."""
        return self._key

    def jwks(self) -> dict[str, Any]:
        """The JSON Web Key Set with the public key only (RFC 7517 §5)."""
        public = dict(self._key.as_dict(private=False))
        public.update({"kid": self.kid, "use": "sig", "alg": ALGORITHM})
        return {"keys": [public]}

    def sign(self, claims: Mapping[str, Any]) -> str:
        """A compact JWS of ``claims`` with header ``{"alg": "RS256", "kid": …}``."""
        header = {"alg": ALGORITHM, "kid": self.kid, "typ": "JWT"}
        return jwt.encode(header, dict(claims), self._key, algorithms=[ALGORITHM])

    def verify(self, token: str, *, issuer: str, audience: str, now: int) -> dict[str, Any]:
        """Check signature, ``iss``, ``aud`` and ``exp`` (RFC 7519 §7.2); return the claims.

        Raises ``Unauthorized`` without echoing the token.
        """
        try:
            decoded = jwt.decode(token, self._key, algorithms=[ALGORITHM])
            registry = JWTClaimsRegistry(
                now=now,
                iss={"essential": True, "value": issuer},
                aud={"essential": True, "value": audience},
                exp={"essential": True},
            )
            registry.validate(decoded.claims)
        except (JoseError, ValueError, TypeError) as exc:
            raise Unauthorized("The access token is invalid or expired.") from exc
        return dict(decoded.claims)

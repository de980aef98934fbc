"""The sandbox EHR's RS256 signing keys and their JWKS (RFC 7517, RFC 7518 §3.3, RFC 7519).

A ``SigningKey`` is one RSA key with its ``kid`` (the RFC 7638 thumbprint). With a path, the
private JWK is kept on disk (mode 0600) so tokens survive a restart; without one it lives only in
memory. A ``KeyRing`` holds the current key, which signs access tokens and id_tokens, and the
older keys still accepted; ``KeyRing.jwks()`` is what ``{base}/auth/jwks`` publishes.
``KeyRing.rotate`` (``POST /_control/rotate-key``) starts signing with a new key, in memory only.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from joserfc import jws, jwt
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


class KeyRing:
    """The current signing key and the retired keys whose tokens are still accepted."""

    def __init__(self, current: SigningKey) -> None:
        self._current = current
        self._retained: list[SigningKey] = []

    def __repr__(self) -> str:
        return f"KeyRing(current={self._current.kid!r}, retained={len(self._retained)})"

    @property
    def current(self) -> SigningKey:
        return self._current

    def rotate(self, *, keep_old: bool) -> SigningKey:
        """Sign with a fresh key from now on; keep accepting the old ones only if ``keep_old``."""
        retired = self._current
        self._current = SigningKey.generate()
        self._retained = [retired, *self._retained] if keep_old else []
        return self._current

    def jwks(self) -> dict[str, Any]:
        """Every accepted key's public half, the current one first."""
        return {"keys": [k for key in self._keys() for k in key.jwks()["keys"]]}

    def sign(self, claims: Mapping[str, Any]) -> str:
        return self._current.sign(claims)

    def verify(self, token: str, *, issuer: str, audience: str, now: int) -> dict[str, Any]:
        """``SigningKey.verify`` with the key the token's ``kid`` names; ``Unauthorized`` if none."""
        try:
            kid = jws.extract_compact(token.encode("ascii")).headers().get("kid")
        except (JoseError, ValueError, UnicodeError) as exc:
            raise Unauthorized("The access token is invalid or expired.") from exc
        for key in self._keys():
            if key.kid == kid:
                return key.verify(token, issuer=issuer, audience=audience, now=now)
        raise Unauthorized("The access token is invalid or expired.")

    def _keys(self) -> list[SigningKey]:
        return [self._current, *self._retained]

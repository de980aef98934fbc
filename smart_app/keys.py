"""chartcite's own signing keys, for ``private_key_jwt`` (SMART client-confidential-asymmetric).

SMART App Launch 2.x §"Confidential clients, asymmetric": the client signs a short-lived JWT
(RFC 7523 §2.2) with RS384 or ES384 and publishes its public keys as a JWKS (here at
``/.well-known/jwks.json``). Keys rotate by ``kid``: ``rotate()`` adds a new key pair per algorithm
and the newest signs; the older ones stay published until ``retire()`` so that an EHR which cached
the JWKS still verifies what was signed just before the rotation.

The private keys are kept in one JSON file (mode 0600) in the data dir.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

ALGORITHMS = ("RS384", "ES384")
ASSERTION_TTL = 240  # seconds; SMART: exp no more than five minutes in the future


@dataclass(frozen=True)
class _Key:
    alg: str
    key: RSAKey | ECKey
    created_at: float

    @property
    def kid(self) -> str:
        return str(self.key.kid)


def _generate(alg: str) -> _Key:
    key: RSAKey | ECKey
    if alg == "RS384":
        key = RSAKey.generate_key(2048, auto_kid=True)
    else:
        key = ECKey.generate_key("P-384", auto_kid=True)
    return _Key(alg, key, time.time())


class AppKeys:
    """The app's key pairs, newest last per algorithm."""

    def __init__(self, keys: list[_Key], path: Path | None = None) -> None:
        self._keys = keys
        self._path = path
        self._mtime = self._stat()

    def _stat(self) -> float | None:
        try:
            return self._path.stat().st_mtime_ns if self._path else None
        except FileNotFoundError:
            return None

    def _fresh(self) -> None:
        """Pick up a rotation made by another process (``chartcite keys rotate``)."""
        if self._path is None or self._stat() == self._mtime:
            return
        self._keys = AppKeys.load_or_create(self._path)._keys
        self._mtime = self._stat()

    def __repr__(self) -> str:
        return f"AppKeys(kids={[k.kid for k in self._keys]})"

    @classmethod
    def generate(cls) -> AppKeys:
        return cls([_generate(alg) for alg in ALGORITHMS])

    @classmethod
    def load_or_create(cls, path: Path) -> AppKeys:
        if path.exists():
            rows = json.loads(path.read_text(encoding="utf-8"))
            keys = []
            for row in rows:
                imported = (RSAKey if row["alg"] == "RS384" else ECKey).import_key(row["jwk"])
                keys.append(_Key(row["alg"], imported, float(row["created_at"])))
            return cls(keys, path)
        made = cls.generate()
        made._path = path
        made._save()
        return made

    def _save(self) -> None:
        if self._path is None:
            return
        rows = [
            {"alg": k.alg, "created_at": k.created_at, "jwk": k.key.as_dict(private=True)}
            for k in self._keys
        ]
        self._path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(rows, handle)
        os.replace(tmp, self._path)
        self._mtime = self._stat()

    def current(self, alg: str) -> _Key:
        self._fresh()
        for key in reversed(self._keys):
            if key.alg == alg:
                return key
        raise ValueError(f"no {alg} key")

    def rotate(self) -> list[str]:
        """A new key pair per algorithm signs from now on; returns the new kids."""
        self._fresh()
        new = [_generate(alg) for alg in ALGORITHMS]
        self._keys.extend(new)
        self._save()
        return [k.kid for k in new]

    def retire(self, keep: int = 1) -> list[str]:
        """Stop publishing all but the newest ``keep`` keys per algorithm; returns dropped kids."""
        self._fresh()
        kept: list[_Key] = []
        for alg in ALGORITHMS:
            kept += [k for k in self._keys if k.alg == alg][-keep:]
        dropped = [k.kid for k in self._keys if k not in kept]
        self._keys = sorted(kept, key=lambda k: k.created_at)
        self._save()
        return dropped

    def jwks(self) -> dict[str, Any]:
        """The public JWKS (every published key, with ``alg`` and ``use``)."""
        self._fresh()
        keys = []
        for k in self._keys:
            public = k.key.as_dict(private=False)
            public.update({"alg": k.alg, "use": "sig", "kid": k.kid})
            keys.append(public)
        return {"keys": keys}

    def client_assertion(self, client_id: str, token_endpoint: str, alg: str = "RS384") -> str:
        """A fresh RFC 7523 client assertion: iss = sub = client id, aud = the token endpoint,
        a new ``jti``, ``exp`` four minutes ahead."""
        key = self.current(alg)
        now = int(time.time())
        claims = {
            "iss": client_id,
            "sub": client_id,
            "aud": token_endpoint,
            "jti": secrets.token_urlsafe(24),
            "iat": now,
            "exp": now + ASSERTION_TTL,
        }
        header = {"alg": alg, "kid": key.kid, "typ": "JWT"}
        return jwt.encode(header, claims, key.key, algorithms=[alg])

"""Encryption at rest for OAuth tokens and PKCE verifiers (AES-256-GCM, random 96-bit nonce).

The key comes from settings (``CHARTCITE_TOKEN_KEY``); in dev one is generated into the data dir.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_V1 = b"\x01"  # version 1: one key, no key id
_V2 = b"\x02"  # version 2: 4-byte key id, then nonce and ciphertext


def key_id(key: bytes) -> bytes:
    """A key's id: the first 4 bytes of SHA-256(key) (names the key, reveals nothing useful)."""
    return hashlib.sha256(b"chartcite-token-key" + key).digest()[:4]


class TokenCipher:
    """Encrypts with the current key; decrypts with whichever key a ciphertext names, so keys
    rotate: set the new key as ``CHARTCITE_TOKEN_KEY`` and the old ones as
    ``CHARTCITE_TOKEN_KEYS_RETIRED`` until every session made under them has expired."""

    def __init__(self, key: bytes, retired: tuple[bytes, ...] = ()) -> None:
        for k in (key, *retired):
            if len(k) != 32:
                raise ValueError("a token key must be 32 bytes")
        self._kid = key_id(key)
        self._aead = AESGCM(key)
        self._by_kid = {key_id(k): AESGCM(k) for k in (*retired, key)}

    @classmethod
    def from_b64(cls, value: str, retired: tuple[str, ...] = ()) -> TokenCipher:
        return cls(base64.b64decode(value), tuple(base64.b64decode(r) for r in retired))

    @property
    def kid(self) -> str:
        return self._kid.hex()

    def encrypt(self, plaintext: str, *, context: bytes = b"") -> bytes:
        nonce = os.urandom(12)
        return _V2 + self._kid + nonce + self._aead.encrypt(nonce, plaintext.encode(), context)

    def decrypt(self, blob: bytes, *, context: bytes = b"") -> str:
        if blob[:1] == _V2:
            aead = self._by_kid.get(blob[1:5])
            if aead is None:
                raise ValueError("the ciphertext names a key this server does not have")
            return aead.decrypt(blob[5:17], blob[17:], context).decode()
        if blob[:1] == _V1:  # made before key ids: whichever key opens it
            for aead in reversed(self._by_kid.values()):
                try:
                    return aead.decrypt(blob[1:13], blob[13:], context).decode()
                except InvalidTag:
                    continue
            raise InvalidTag()
        raise ValueError("unknown ciphertext version")

    def __repr__(self) -> str:
        return f"TokenCipher(kid={self.kid}, key=***)"


def new_key_b64() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


def sha256_hex(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def random_token(nbytes: int = 32) -> str:
    return secrets.token_urlsafe(nbytes)

"""Encryption at rest for OAuth tokens and PKCE verifiers (AES-256-GCM, random 96-bit nonce).

The key comes from settings (``CHARTCITE_TOKEN_KEY``); in dev one is generated into the data dir.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_VERSION = b"\x01"


class TokenCipher:
    """Encrypts and decrypts small secrets; the key never appears in a repr."""

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("the token key must be 32 bytes")
        self._aead = AESGCM(key)

    @classmethod
    def from_b64(cls, value: str) -> TokenCipher:
        return cls(base64.b64decode(value))

    def encrypt(self, plaintext: str, *, context: bytes = b"") -> bytes:
        nonce = os.urandom(12)
        return _VERSION + nonce + self._aead.encrypt(nonce, plaintext.encode(), context)

    def decrypt(self, blob: bytes, *, context: bytes = b"") -> str:
        if blob[:1] != _VERSION:
            raise ValueError("unknown ciphertext version")
        return self._aead.decrypt(blob[1:13], blob[13:], context).decode()

    def __repr__(self) -> str:
        return "TokenCipher(key=***)"


def new_key_b64() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


def sha256_hex(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def random_token(nbytes: int = 32) -> str:
    return secrets.token_urlsafe(nbytes)

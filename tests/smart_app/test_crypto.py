"""Tokens at rest: AES-256-GCM, context-bound, key never in a repr."""

from __future__ import annotations

import pytest
from cryptography.exceptions import InvalidTag

from smart_app.crypto import TokenCipher, new_key_b64


def test_roundtrip_and_ciphertext_hides_token() -> None:
    cipher = TokenCipher.from_b64(new_key_b64())
    blob = cipher.encrypt("secret-access-token", context=b"access")
    assert b"secret-access-token" not in blob
    assert cipher.decrypt(blob, context=b"access") == "secret-access-token"
    assert cipher.encrypt("same", context=b"access") != cipher.encrypt("same", context=b"access")


def test_wrong_key_context_or_tampering_fails() -> None:
    cipher = TokenCipher.from_b64(new_key_b64())
    blob = cipher.encrypt("t", context=b"access")
    with pytest.raises(InvalidTag):
        TokenCipher.from_b64(new_key_b64()).decrypt(blob, context=b"access")
    with pytest.raises(InvalidTag):
        cipher.decrypt(blob, context=b"refresh")
    with pytest.raises(InvalidTag):
        cipher.decrypt(blob[:-1] + bytes([blob[-1] ^ 1]), context=b"access")
    assert "key=***" in repr(cipher)

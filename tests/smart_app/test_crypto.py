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
    with pytest.raises(ValueError, match="names a key"):
        TokenCipher.from_b64(new_key_b64()).decrypt(blob, context=b"access")
    with pytest.raises(InvalidTag):
        cipher.decrypt(blob, context=b"refresh")
    with pytest.raises(InvalidTag):
        cipher.decrypt(blob[:-1] + bytes([blob[-1] ^ 1]), context=b"access")
    assert "key=***" in repr(cipher)


def test_keys_rotate_by_key_id() -> None:
    old, new = new_key_b64(), new_key_b64()
    before = TokenCipher.from_b64(old)
    blob = before.encrypt("refresh-token", context=b"refresh")
    rotated = TokenCipher.from_b64(new, retired=(old,))
    assert rotated.kid != before.kid
    # What the old key sealed still opens; what is sealed now names the new key.
    assert rotated.decrypt(blob, context=b"refresh") == "refresh-token"
    fresh = rotated.encrypt("access-token", context=b"access")
    assert fresh[1:5].hex() == rotated.kid and blob[1:5].hex() == before.kid
    # Once the old key is dropped, its ciphertexts are refused (the session must re-launch).
    with pytest.raises(ValueError, match="names a key"):
        TokenCipher.from_b64(new).decrypt(blob, context=b"refresh")
    assert old not in repr(rotated) and new not in repr(rotated)


def test_version_1_ciphertexts_still_open() -> None:
    """Sessions encrypted before key ids existed (one key, version byte 1)."""
    import base64
    import os

    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    key = new_key_b64()
    nonce = os.urandom(12)
    v1 = b"\x01" + nonce + AESGCM(base64.b64decode(key)).encrypt(nonce, b"legacy", b"access")
    assert TokenCipher.from_b64(new_key_b64(), retired=(key,)).decrypt(v1, context=b"access") == (
        "legacy"
    )
    with pytest.raises(InvalidTag):
        TokenCipher.from_b64(new_key_b64()).decrypt(v1, context=b"access")

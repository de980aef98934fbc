"""chartcite's private_key_jwt keys: assertions an EHR can verify from the JWKS alone, rotation."""

from __future__ import annotations

import json
import stat
import time
from pathlib import Path

import pytest
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from smart_app.keys import AppKeys

TOKEN_URL = "https://ehr.example/oauth2/token"


def _verify(keys: AppKeys, assertion: str, algs: list[str] | None = None) -> dict[str, object]:
    jwks = KeySet.import_key_set(json.loads(json.dumps(keys.jwks())))  # public half only
    token = jwt.decode(assertion, jwks, algorithms=algs or ["RS384", "ES384"])
    return dict(token.claims)


@pytest.mark.parametrize("alg", ["RS384", "ES384"])
def test_assertion_verifies_with_the_published_jwks(alg: str) -> None:
    keys = AppKeys.generate()
    before = int(time.time())
    assertion = keys.client_assertion("my-client", TOKEN_URL, alg)
    header = json.loads(
        __import__("base64").urlsafe_b64decode(assertion.split(".")[0] + "==").decode()
    )
    assert header["alg"] == alg and header["kid"] == keys.current(alg).kid
    claims = _verify(keys, assertion, [alg])
    assert claims["iss"] == claims["sub"] == "my-client"
    assert claims["aud"] == TOKEN_URL
    assert 0 < int(claims["exp"]) - before <= 300  # SMART: at most five minutes ahead
    again = _verify(keys, keys.client_assertion("my-client", TOKEN_URL, alg))
    assert again["jti"] != claims["jti"]  # a fresh jti every time (replay protection)


def test_jwks_has_no_private_parts() -> None:
    published = json.dumps(AppKeys.generate().jwks())
    for private in ('"d"', '"p"', '"q"', '"dp"', '"dq"', '"qi"'):
        assert private not in published


def test_rotation_keeps_old_keys_published_until_retired(tmp_path: Path) -> None:
    path = tmp_path / "app-keys.json"
    keys = AppKeys.load_or_create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    old = keys.client_assertion("c", TOKEN_URL)
    old_kid = keys.current("RS384").kid
    new_kids = keys.rotate()
    assert keys.current("RS384").kid in new_kids and old_kid not in new_kids
    reloaded = AppKeys.load_or_create(path)  # survives a restart
    assert _verify(reloaded, old)["iss"] == "c"  # signed before the rotation, still verifiable
    new = reloaded.client_assertion("c", TOKEN_URL)
    assert _verify(reloaded, new)["iss"] == "c"
    dropped = reloaded.retire()
    assert old_kid in dropped
    with pytest.raises(JoseError):
        _verify(reloaded, old)
    assert _verify(reloaded, new)["sub"] == "c"

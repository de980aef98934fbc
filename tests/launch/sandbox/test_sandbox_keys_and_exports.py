"""Signing key persistence, config validation, public surface, synthetic data smoke test."""

from __future__ import annotations

import importlib.util
import stat
from datetime import date
from pathlib import Path

import pytest

import launch.sandbox
from launch.sandbox import SandboxClient, SandboxConfig, SandboxStore
from launch.sandbox.errors import Unauthorized
from launch.sandbox.keys import KeyRing, SigningKey


def test_signing_key_is_persisted_privately(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "sandbox.json"
    first = SigningKey.load_or_create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = SigningKey.load_or_create(path)
    assert again.kid == first.kid
    token = first.sign({"iss": "i", "aud": "a", "exp": 2_000_000_000})
    assert again.verify(token, issuer="i", audience="a", now=1_900_000_000)["aud"] == "a"


def test_verify_rejects_other_keys_audiences_and_expired_tokens() -> None:
    key, other = SigningKey.generate(), SigningKey.generate()
    token = key.sign({"iss": "i", "aud": "a", "exp": 1000})
    with pytest.raises(Unauthorized):
        other.verify(token, issuer="i", audience="a", now=10)
    with pytest.raises(Unauthorized):
        key.verify(token, issuer="i", audience="b", now=10)
    with pytest.raises(Unauthorized):
        key.verify(token, issuer="i", audience="a", now=2000)
    assert "d" not in key.jwks()["keys"][0]
    assert key.kid in repr(key)


def test_config_urls_and_validation() -> None:
    client = SandboxClient(
        client_id="app", redirect_uris=("http://127.0.0.1:1/cb",), client_secret="TOPSECRET-42"
    )
    config = SandboxConfig(
        base_url="http://127.0.0.1:8000/ehr/", app_launch_url="http://a/launch", clients=(client,)
    )
    assert config.fhir_base == "http://127.0.0.1:8000/ehr/fhir"
    assert config.auth_url("token") == "http://127.0.0.1:8000/ehr/auth/token"
    assert "TOPSECRET" not in repr(client)
    assert "TOPSECRET" not in repr(config)
    with pytest.raises(ValueError):
        SandboxConfig(base_url="http://ehr.example/ehr", app_launch_url="x", clients=())
    with pytest.raises(ValueError):
        SandboxConfig(base_url="https://ehr.example", app_launch_url="x", clients=(client, client))
    assert SandboxConfig(base_url="https://ehr.example", app_launch_url="x", clients=()).fhir_base


def test_client_auth_methods_follow_the_credentials() -> None:
    jwks = {"keys": [{"kty": "EC", "crv": "P-384", "x": "x", "y": "y", "kid": "k"}]}
    cb = ("http://127.0.0.1:1/cb",)
    assert SandboxClient("pub", cb).auth_methods == {"none"}
    assert SandboxClient("pub", cb).is_public
    secret = SandboxClient("sym", cb, client_secret="s")
    assert secret.auth_methods == {"client_secret_basic", "client_secret_post"}
    asym = SandboxClient("asym", cb, jwks=jwks)
    assert asym.auth_methods == {"private_key_jwt"}
    assert not asym.is_public
    by_uri = SandboxClient("uri", (), jwks_uri="https://app.example/jwks.json")
    assert by_uri.auth_methods == {"private_key_jwt"}
    narrowed = SandboxClient(
        "one", cb, client_secret="s", token_endpoint_auth_method="client_secret_post"
    )
    assert narrowed.auth_methods == {"client_secret_post"}
    assert hash(asym)  # an inline JWKS does not make the client unhashable
    with pytest.raises(ValueError):
        SandboxClient("both", (), jwks=jwks, jwks_uri="https://app.example/jwks.json")
    with pytest.raises(ValueError):
        SandboxClient("bad", (), jwks={"kty": "RSA"})
    with pytest.raises(ValueError):
        SandboxClient("plain", (), jwks_uri="http://app.example/jwks.json")  # https or loopback
    with pytest.raises(ValueError):
        SandboxClient(
            "mismatch", cb, client_secret="s", token_endpoint_auth_method="private_key_jwt"
        )
    with pytest.raises(ValueError):
        SandboxClient("pub", cb, token_endpoint_auth_method="client_secret_basic")


def test_key_ring_rotation() -> None:
    first = SigningKey.generate()
    ring = KeyRing(first)
    token = ring.sign({"iss": "i", "aud": "a", "exp": 2_000_000_000})
    kept = ring.rotate(keep_old=True)
    assert [k["kid"] for k in ring.jwks()["keys"]] == [kept.kid, first.kid]
    assert ring.verify(token, issuer="i", audience="a", now=10)["aud"] == "a"
    ring.rotate(keep_old=False)
    assert len(ring.jwks()["keys"]) == 1
    with pytest.raises(Unauthorized):
        ring.verify(token, issuer="i", audience="a", now=10)
    with pytest.raises(Unauthorized):
        ring.verify("not.a.jwt", issuer="i", audience="a", now=10)


def test_public_surface_is_sorted() -> None:
    exported = launch.sandbox.__all__
    assert exported == sorted(exported)
    assert {"SandboxClient", "SandboxConfig", "SandboxStore", "create_sandbox_app"} <= set(exported)
    for name in exported:
        assert getattr(launch.sandbox, name) is not None


@pytest.mark.skipif(
    importlib.util.find_spec("launch.sandbox.synthetic") is None,
    reason="synthetic data not written yet",
)
def test_synthetic_patients_fill_the_store() -> None:
    from launch.sandbox import generate_patients

    store = SandboxStore(generate_patients(n_patients=3, seed=7, today=date(2025, 1, 1)))
    patients = store.patients()
    assert len(patients) == 3
    for patient in patients:
        assert store.search("Observation", patient["id"])
    for rtype in store.types():
        if store.is_compartment_type(rtype) and rtype != "Patient":
            for resource in store.of_type(rtype):
                assert store.compartment_owner(rtype, resource["id"]) is not None, (
                    rtype,
                    resource["id"],
                )

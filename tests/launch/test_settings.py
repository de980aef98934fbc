"""Settings: production refuses to start without what it needs, and says all of it at once."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from launch.settings import Settings


def test_every_missing_prod_setting_is_named_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CHARTCITE_TOKEN_KEY", "CHARTCITE_EHRS", "CHARTCITE_ISS_ALLOWLIST"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValidationError) as info:
        Settings(env="prod", _env_file=None)  # type: ignore[call-arg]
    text = str(info.value)
    for name in ("CHARTCITE_TOKEN_KEY", "CHARTCITE_EHRS", "CHARTCITE_PUBLIC_URL"):
        assert name in text, name


def test_prod_with_everything_starts() -> None:
    s = Settings(
        env="prod",
        token_key="A" * 43 + "=",
        iss_allowlist=["https://ehr.example/fhir"],
        public_url="https://chartcite.example",
        _env_file=None,  # type: ignore[call-arg]
    )
    assert s.redirect_uri == "https://chartcite.example/callback" and s.secure_cookies

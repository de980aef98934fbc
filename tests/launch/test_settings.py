"""Settings: production refuses to start without what it needs, and says all of it at once."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

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


def _serve(tmp_path: object, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("CHARTCITE_")}
    base |= {
        "CHARTCITE_ENV": "prod",
        "CHARTCITE_DATA_DIR": str(tmp_path),
        "CHARTCITE_MODEL_DIR": os.environ.get("CHARTCITE_MODEL_DIR", ""),
        "CHARTCITE_ISS_ALLOWLIST": '["https://ehr.example/fhir"]',
        "CHARTCITE_PUBLIC_URL": "https://chartcite.example",
        "CHARTCITE_TOKEN_KEY": base64.b64encode(os.urandom(32)).decode(),
    }
    return subprocess.run(
        [sys.executable, "-m", "launch.cli", "serve"],
        check=False,
        cwd=Path(__file__).resolve().parents[2],
        env=base | env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"CHARTCITE_TOKEN_KEY": "not-base64"}, "CHARTCITE_TOKEN_KEY is not base64 of 32 bytes"),
        ({"CHARTCITE_ENV": "prod", "CHARTCITE_ISS_ALLOWLIST": "[]"}, "CHARTCITE_EHRS"),
        ({"CHARTCITE_PORT": "eighty"}, "CHARTCITE_PORT"),
        ({}, "chartcite db upgrade"),  # a fresh embedded database: not migrated
    ],
    ids=["bad-token-key", "no-ehrs", "bad-port", "unmigrated"],
)
def test_serve_refuses_to_start_with_one_clear_line(
    tmp_path: Path, env: dict[str, str], names: str
) -> None:
    done = _serve(tmp_path, **env)
    assert done.returncode != 0
    out = (done.stdout + done.stderr).strip()
    assert "Traceback" not in out
    lines = [line for line in out.splitlines() if "RuntimeDirWarning" not in line and line.strip()]
    lines = [line for line in lines if not line.startswith("  return Path(")]
    assert len(lines) == 1 and names in lines[0], out

"""Settings: the only module that reads the environment (``CHARTCITE_`` prefix, ``.env`` supported).

``DATABASE_URL`` (without prefix) is honoured too, because that is what hosting platforms set.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import platformdirs
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_SCOPES = "launch openid fhirUser offline_access patient/*.rs"


def is_web_origin(value: str) -> bool:
    """``scheme://host[:port]`` with an http(s) scheme and nothing after (a CSP source origin)."""
    parts = urlsplit(value)
    return (
        parts.scheme in ("http", "https")
        and bool(parts.hostname)
        and parts.path in ("", "/")
        and not parts.query
        and not parts.fragment
        and not parts.username
        and not any(c in value for c in " ;,'\"")
    )


def default_data_dir() -> Path:
    """Where the embedded database, the key file and the model live unless told otherwise."""
    return Path(platformdirs.user_data_dir("chartcite", appauthor=False))


#: Benchmarks measure throughput, not the abuse limits: they run without them.
UNLIMITED = {"rate_limit_session_per_minute": 0, "rate_limit_client_per_minute": 0}


def scratch_settings(data_dir: Path, **values: Any) -> Settings:
    """Dev settings for a scratch data dir (eval, benchmarks) that still use the one embedding
    model setup built (``CHARTCITE_MODEL_DIR``, else under the configured data dir) instead of
    expecting a model in the scratch dir."""
    model_dir = Settings(env="dev").resolved_model_dir
    return Settings(env="dev", data_dir=data_dir, model_dir=model_dir, **values)


class EhrSettings(BaseModel):
    """One registered EHR (an item of ``CHARTCITE_EHRS``, a JSON list)."""

    model_config = ConfigDict(extra="forbid")

    iss: str
    client_id: str
    auth_method: Literal["none", "client_secret_basic", "client_secret_post", "private_key_jwt"] = (
        "none"
    )
    client_secret: SecretStr | None = None
    scope: str = DEFAULT_SCOPES
    aliases: list[str] = Field(default_factory=list)
    token_format: Literal["opaque", "jwt"] = "opaque"
    """How bearer tokens from this EHR are checked: RFC 7662 introspection, or its JWKS."""
    allow_without_pkce: bool = False
    name: str = ""
    frame_origins: list[str] = Field(default_factory=list)
    """Web origins of this EHR's user interface that embed chartcite in an iframe, when they
    differ from the origin of its FHIR base (``https://ehr.example.org``): ``frame-ancestors``."""


class Settings(BaseSettings):
    """Everything configurable. Secrets are ``SecretStr``; placeholders are refused outside dev."""

    model_config = SettingsConfigDict(
        env_prefix="CHARTCITE_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    env: Literal["dev", "prod"] = "prod"
    data_dir: Path = Field(default_factory=default_data_dir)
    database_url: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("DATABASE_URL", "CHARTCITE_DATABASE_URL")
    )
    host: str = "127.0.0.1"
    port: int = 8000
    public_url: str = ""
    """Public base URL of the app (no trailing slash); derived from host/port when empty."""

    ehrs: list[EhrSettings] = Field(default_factory=list)
    """The registered EHRs (``CHARTCITE_EHRS``: a JSON list of ``EhrSettings``)."""
    iss_allowlist: list[str] = Field(default_factory=list)
    """Shorthand: FHIR base URLs registered with ``client_id``/``client_secret``/``scopes``
    below (one registration each). The demo adds its own sandbox."""
    client_id: str = "chartcite"
    client_secret: SecretStr | None = None
    scopes: str = DEFAULT_SCOPES

    bulk_client_id: str = "chartcite-bulk"
    """The confidential client ``chartcite sync --bulk`` authenticates as (client credentials)."""
    bulk_client_secret: SecretStr | None = None
    bulk_auth_method: Literal["client_secret_basic", "private_key_jwt"] = "client_secret_basic"
    """SMART Backend Services: ``private_key_jwt`` signs with chartcite's keys (its JWKS at
    ``/.well-known/jwks.json``; register that URL with the EHR); the secret variant is for EHRs
    that issue one."""
    """Its secret; in dev, read from (or created in) ``data_dir/sandbox-bulk-secret``."""

    token_key: SecretStr | None = None
    token_keys_retired: list[SecretStr] = Field(default_factory=list)
    """Earlier token keys, for decrypting only (rotation: a JSON list of base64 keys)."""
    """Base64 of 32 bytes; encrypts OAuth tokens at rest. Dev generates one in the data dir."""
    max_body_bytes: int = 64 * 1024
    """Largest request body the app reads (413 above it)."""
    rate_limit_session_per_minute: int = 300
    """Requests per session (or bearer token) per moving minute on /api/* (429 + Retry-After;
    0: none)."""
    rate_limit_client_per_minute: int = 3000
    """Requests per client address per moving minute on /api/* (generous: a hospital NAT)."""
    rate_limit_store: Literal["postgres", "memory"] = "postgres"
    """Where the counts live: ``postgres`` (shared by every app process behind one address) or
    ``memory`` (each process its own: N workers then allow N times the limit)."""
    audit_key: SecretStr | None = None
    """Base64 of 32 bytes; signs audit checkpoints (HMAC-SHA256). Unset: derived from the token
    key with HKDF (``smart_app/audit_anchor.py``). Never stored in the database."""
    audit_keys_retired: list[SecretStr] = Field(default_factory=list)
    """Earlier audit keys, for verifying old checkpoints only (a JSON list of base64 keys)."""
    audit_checkpoint_every_rows: int = 100
    """The app signs a checkpoint after this many new audit rows…"""
    audit_checkpoint_seconds: float = 60.0
    """…or after this long when any row is new (and once more at shutdown)."""
    app_database_url: SecretStr | None = None
    """The app's own least-privilege connection (``CHARTCITE_APP_DATABASE_URL``). Unset: the
    owner's URL (``DATABASE_URL`` or the embedded server) with ``app_db_role`` as the user."""
    app_db_role: str = "chartcite_app"
    """The role the app connects as; ``chartcite db upgrade`` creates it and grants it DML, but
    only SELECT/INSERT on the audit tables. Empty: connect as the owner (not recommended)."""
    app_db_password: SecretStr | None = None
    """That role's password, set by ``chartcite db upgrade``; unset: generated into the data dir
    (``app-db-password``, mode 0600). The embedded server trusts its unix socket."""
    state_ttl_seconds: int = 600
    session_ttl_seconds: int = 8 * 3600
    token_check_seconds: float = 60.0
    """How often an open session's EHR token is re-checked by introspection (when offered)."""
    discovery_ttl_seconds: int = 300
    http_timeout_seconds: float = 20.0

    model_dir: Path | None = None
    embed_threads: int | None = None
    sync_page_size: int = 200
    sync_validate_workers: int = 1
    """Processes validating resources beside the event loop (0: validate inline)."""
    sync_full_every_hours: float = 24.0
    """Re-syncs within this of the last complete full sync (same or fewer scopes) are incremental;
    the next one after it is full again, which also removes what the EHR deleted."""
    sync_lease_seconds: float = 30.0
    """A running sync's worker extends its lease every third of this; a job whose lease ran out
    (or whose worker's database connection is gone) is claimed by another worker and resumed."""
    sync_poll_seconds: float = 2.0
    """How often each app process looks for sync jobs nobody holds."""
    sync_concurrency: int = 4
    """Syncs one app process runs at once; more wait in the queue for any worker."""
    sync_max_attempts: int = 3
    """Claims of one sync job (a worker died holding it) before the run is closed ``failed``."""
    fhir_request_timeout_seconds: float = 30.0
    fhir_retry_attempts: int = 5
    """Tries per FHIR request on 429/502/503/504, timeouts, resets and truncated JSON."""
    fhir_backoff_seconds: float = 0.5
    fhir_max_retry_after_seconds: float = 30.0
    """A ``Retry-After`` longer than this fails the request instead of stalling the sync."""
    fhir_url_aliases: dict[str, list[str]] = Field(default_factory=dict)
    """Other public addresses of an EHR's FHIR base (``{iss: [alias, ...]}``) whose links are followed."""
    frame_ancestors: list[str] = Field(default_factory=list)
    """More web origins that may embed the page (``frame-ancestors``), besides each registered
    EHR's FHIR-base origin and its ``frame_origins``."""

    # -- LLM (rag/llm.py): on iff CHARTCITE_ANTHROPIC_API_KEY is set --------------------------
    anthropic_api_key: SecretStr | None = None
    """Turns LLM answers on (``mode: llm``); unset, every answer is extractive."""
    anthropic_base_url: str | None = None
    """Another Messages API endpoint (a gateway, or the fake in tests); unset: Anthropic's."""
    llm_model: str = "claude-sonnet-4-5"
    llm_max_tokens: int = 2048
    llm_timeout_seconds: float = 20.0
    """The longest an answer waits on the model, retries included; then extractive."""
    llm_temperature: float | None = None
    """Sent only when set (anthropic 2.x dropped the argument; some gateways still take it)."""
    llm_retries: int = 2
    """Retries on 429/529/5xx and connection errors (exponential backoff, ``retry-after``)."""
    llm_keep_dates: bool = False
    """Send clinical dates as they are instead of shifted by a per-request random offset."""
    llm_max_evidence: int = 80
    """Evidence items per call (the ones the extractive facts cite are always sent)."""
    llm_stream: bool = True
    """Call the Messages API with ``stream: true`` (SSE) rather than one JSON response."""
    llm_input_usd_per_mtok: float = 3.0
    llm_output_usd_per_mtok: float = 15.0
    """Prices per million tokens, for the cost recorded with each answer."""

    @model_validator(mode="after")
    def _check(self) -> Settings:
        origins = [*self.frame_ancestors, *(o for e in self.ehrs for o in e.frame_origins)]
        bad = [o for o in origins if not is_web_origin(o)]
        if bad:
            raise ValueError(
                "frame_ancestors / frame_origins take web origins (scheme://host[:port], "
                "nothing after): " + ", ".join(repr(o[:80]) for o in bad)
            )
        if self.env != "dev":
            missing = []  # every missing setting at once, not one per attempt
            if self.token_key is None:
                missing.append("CHARTCITE_TOKEN_KEY (base64 of 32 bytes)")
            if not self.iss_allowlist and not self.ehrs:
                missing.append("CHARTCITE_EHRS (or CHARTCITE_ISS_ALLOWLIST)")
            if not self.public_url:
                missing.append("CHARTCITE_PUBLIC_URL (the https address EHRs redirect to)")
            if missing:
                raise ValueError("required outside dev: " + "; ".join(missing))
        return self

    def resolved_bulk_secret(self) -> str | None:
        """The bulk client's secret (dev: the demo sandbox's, shared through the data dir)."""
        if self.bulk_client_secret is not None:
            return self.bulk_client_secret.get_secret_value()
        if self.env != "dev":
            return None
        path = self.data_dir / "sandbox-bulk-secret"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(secrets.token_urlsafe(24))
            path.chmod(0o600)
        return path.read_text().strip()

    @property
    def llm_enabled(self) -> bool:
        return self.anthropic_api_key is not None and bool(
            self.anthropic_api_key.get_secret_value()
        )

    @property
    def base_url(self) -> str:
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")

    @property
    def redirect_uri(self) -> str:
        return f"{self.base_url}/callback"

    @property
    def resolved_model_dir(self) -> Path:
        """The embedding model: ``CHARTCITE_MODEL_DIR``, else under the data dir (built by setup)."""
        return self.model_dir or (self.data_dir / "models" / "all-MiniLM-L6-v2")

    @property
    def app_keys_path(self) -> Path:
        """chartcite's private_key_jwt signing keys (created on first use, mode 0600)."""
        return self.data_dir / "app-keys.json"

    @property
    def secure_cookies(self) -> bool:
        return self.base_url.startswith("https://")

    def resolved_app_db_password(self) -> str:
        """The app role's password: configured, or generated once into the data dir (0600)."""
        if self.app_db_password is not None:
            return self.app_db_password.get_secret_value()
        path = self.data_dir / "app-db-password"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:  # another process made it first
                return path.read_text().strip()
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_urlsafe(24))
        return path.read_text().strip()

"""What the app needs at run time, built once by ``launch`` and handed to the routers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncEngine

from fhir_adapters.client import RetryPolicy
from fhir_adapters.validation import Validator
from rag import Embedder
from smart_app.crypto import TokenCipher
from smart_app.oauth import ClientConfig, SmartClient

if TYPE_CHECKING:
    from smart_app.jobs import SyncJobs


@dataclass(frozen=True)
class AppConfig:
    """Plain configuration of the SMART app (``launch.settings`` maps the environment onto it)."""

    base_url: str
    client: ClientConfig
    iss_allowlist: tuple[str, ...]
    state_ttl_seconds: int = 600
    session_ttl_seconds: int = 8 * 3600
    secure_cookies: bool = False
    sync_page_size: int = 200
    sync_lease_seconds: float = 30.0
    sync_full_every_seconds: float = 24 * 3600.0
    fhir_retry: RetryPolicy = field(default_factory=RetryPolicy)
    fhir_url_aliases: dict[str, tuple[str, ...]] = field(default_factory=dict)
    cookie_name: str = "chartcite_session"


@dataclass
class AppState:
    config: AppConfig
    engine: AsyncEngine
    cipher: TokenCipher
    smart: SmartClient
    embedder: Embedder
    validator: Validator = field(default_factory=lambda: Validator(workers=0))
    jobs: SyncJobs | None = None  # set by the app factory once the state exists

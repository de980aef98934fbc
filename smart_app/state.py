"""What the app needs at run time, built once by ``launch`` and handed to the routers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncEngine

from fhir_adapters.client import RetryPolicy
from fhir_adapters.validation import Validator
from rag import Embedder
from smart_app.crypto import TokenCipher
from smart_app.ehrs import EhrRegistry
from smart_app.oauth import SmartClient

if TYPE_CHECKING:
    from rag.llm import LlmAnswerer
    from smart_app.bearer import BearerVerifier
    from smart_app.jobs import SyncJobs


@dataclass(frozen=True)
class AppConfig:
    """Plain configuration of the SMART app (``launch.settings`` maps the environment onto it)."""

    base_url: str
    ehrs: EhrRegistry
    state_ttl_seconds: int = 600
    session_ttl_seconds: int = 8 * 3600
    """The longest an app session lives; it ends sooner when the EHR token is gone."""
    secure_cookies: bool = False
    token_check_seconds: float = 60.0
    """How often a session's EHR token is re-checked (introspection, when the EHR offers it)."""
    bearer_cache_seconds: float = 30.0
    """How long an introspected bearer token's answer is reused (never past its ``exp``)."""
    sync_page_size: int = 200
    sync_lease_seconds: float = 30.0
    sync_poll_seconds: float = 2.0
    """How often a worker looks for sync jobs nobody holds (its own start one at once)."""
    sync_concurrency: int = 4
    """Syncs one app process runs at a time; more wait in the queue for any worker."""
    sync_max_attempts: int = 3
    """Claims of one sync job (each worker that died holding it counts) before it is failed."""
    sync_full_every_seconds: float = 24 * 3600.0
    fhir_retry: RetryPolicy = field(default_factory=RetryPolicy)

    @property
    def redirect_uri(self) -> str:
        return f"{self.base_url.rstrip('/')}/callback"

    def aliases(self, iss: str) -> tuple[str, ...]:
        reg = self.ehrs.for_iss(iss)
        return reg.aliases if reg else ()


@dataclass
class AppState:
    config: AppConfig
    engine: AsyncEngine
    cipher: TokenCipher
    smart: SmartClient
    embedder: Embedder
    validator: Validator = field(default_factory=lambda: Validator(workers=0))
    jobs: SyncJobs | None = None  # set by the app factory once the state exists
    bearer: BearerVerifier | None = None  # likewise
    llm: LlmAnswerer | None = None
    """Writes answers with a language model when an Anthropic key is configured (``rag.llm``)."""

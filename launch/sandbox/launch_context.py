"""EHR launch contexts (SMART App Launch 2.x, "EHR Launch": the opaque ``launch`` parameter).

``GET {base}/launch?patient=…`` records who launches the app for which patient (and optionally
which encounter and a scope restriction) under an opaque id that the app sends back as
``launch=…`` to the authorize endpoint. Contexts expire after ten minutes.

``LaunchOptions`` are the launch's extra context (``intent``, ``tenant``, ``need_patient_banner``,
``smart_style_url``; SMART App Launch 2.x §"Launch context arrives with your access_token") and
the behaviour a test asked of it: an authorize or token error, token lifetimes.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass

from launch.sandbox.store import SandboxStore

LAUNCH_TTL_SECONDS = 600
#: ``fhirUser`` of the launching clinician when the store holds no Practitioner.
FALLBACK_FHIR_USER = "Practitioner/sandbox-clinician"


@dataclass(frozen=True, slots=True)
class LaunchOptions:
    """Per-launch extras and simulated behaviour; the defaults are a well-behaved EHR."""

    #: RFC 6749 §4.1.2.1 error the authorize endpoint redirects with (``oauth_errors``).
    authorize_error: str | None = None
    #: RFC 6749 §5.2 error the code exchange answers with (``oauth_errors``).
    token_error: str | None = None
    #: Lifetime in seconds of this launch's access tokens, initial and refreshed.
    token_ttl: int | None = None
    #: Lifetime in seconds of each refresh token of this launch; ``None``: until revoked.
    refresh_ttl: int | None = None
    need_patient_banner: bool = True
    #: ``None``: the sandbox's own ``{base}/smart-style.json``.
    smart_style_url: str | None = None
    intent: str | None = None
    tenant: str | None = None


@dataclass(frozen=True, slots=True)
class LaunchContext:
    """What the EHR knew when it launched the app."""

    launch_id: str
    patient: str
    fhir_user: str
    encounter: str | None
    scope_restriction: tuple[str, ...] | None
    options: LaunchOptions
    expires_at: float


class LaunchRegistry:
    """In-memory launch contexts keyed by their opaque id."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._contexts: dict[str, LaunchContext] = {}

    def create(
        self,
        *,
        patient: str,
        fhir_user: str,
        encounter: str | None = None,
        scope_restriction: tuple[str, ...] | None = None,
        options: LaunchOptions | None = None,
    ) -> LaunchContext:
        """Record a new launch and return it (its id is 32 random url-safe characters)."""
        self._prune()
        context = LaunchContext(
            launch_id=secrets.token_urlsafe(24),
            patient=patient,
            fhir_user=fhir_user,
            encounter=encounter,
            scope_restriction=scope_restriction,
            options=options or LaunchOptions(),
            expires_at=self._clock() + LAUNCH_TTL_SECONDS,
        )
        self._contexts[context.launch_id] = context
        return context

    def get(self, launch_id: str) -> LaunchContext | None:
        """The launch with this id, or ``None`` if unknown or expired."""
        context = self._contexts.get(launch_id)
        if context is None or context.expires_at <= self._clock():
            return None
        return context

    def _prune(self) -> None:
        now = self._clock()
        for launch_id in [k for k, c in self._contexts.items() if c.expires_at <= now]:
            del self._contexts[launch_id]


def default_fhir_user(store: SandboxStore) -> str:
    """``Practitioner/<id>`` of the store's first Practitioner, else ``FALLBACK_FHIR_USER``."""
    practitioners = store.of_type("Practitioner")
    return f"Practitioner/{practitioners[0]['id']}" if practitioners else FALLBACK_FHIR_USER

"""The EHRs chartcite is registered with, and which EHR a launch, session or row belongs to.

A registration says how chartcite is known to one EHR: its FHIR base (``iss``), the client id and
how the client authenticates at the token endpoint (SMART App Launch 2.x: public,
confidential-symmetric ``client_secret_basic``/``client_secret_post``, confidential-asymmetric
``private_key_jwt``), the scopes to request, other public addresses of the same FHIR base, and how
bearer tokens that apps present are checked (RFC 7662 introspection, or the EHR's JWKS when its
access tokens are JWTs).

A patient is (EHR source, patient id) everywhere (DESIGN.md § Storage). The source key is derived
from the normalised ``iss`` so that it is the same for every worker and survives restarts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Literal

AuthMethod = Literal["none", "client_secret_basic", "client_secret_post", "private_key_jwt"]
AUTH_METHODS: tuple[AuthMethod, ...] = (
    "none",
    "client_secret_basic",
    "client_secret_post",
    "private_key_jwt",
)
TokenFormat = Literal["opaque", "jwt"]


def normalise_iss(iss: str) -> str:
    """``iss`` as compared and stored: no trailing slash."""
    return iss.rstrip("/")


def source_key(iss: str) -> str:
    """The stable key of an EHR's FHIR base (``ehr-`` and 12 hex digits of its SHA-256)."""
    return "ehr-" + hashlib.sha256(normalise_iss(iss).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class EhrRegistration:
    """How chartcite is registered with one EHR. Secrets never appear in the repr."""

    iss: str
    client_id: str
    auth_method: AuthMethod = "none"
    client_secret: str | None = field(default=None, repr=False)
    scope: str = "launch openid fhirUser offline_access patient/*.rs"
    aliases: tuple[str, ...] = ()
    token_format: TokenFormat = "opaque"
    allow_without_pkce: bool = False
    """Compat mode for an EHR that does not advertise PKCE S256: launch anyway (still sending
    S256), and log a warning at every launch. Off by default: such EHRs are refused."""
    name: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "iss", normalise_iss(self.iss))
        object.__setattr__(self, "aliases", tuple(normalise_iss(a) for a in self.aliases))
        if not self.iss.startswith(("https://", "http://")):
            raise ValueError("an EHR's iss must be an absolute http(s) URL")
        if not self.client_id:
            raise ValueError(f"the EHR {self.iss} needs a client_id")
        if self.auth_method not in AUTH_METHODS:
            raise ValueError(f"unknown client authentication method {self.auth_method!r}")
        secret_methods = ("client_secret_basic", "client_secret_post")
        if (self.auth_method in secret_methods) != bool(self.client_secret):
            raise ValueError(
                f"the EHR {self.iss}: a client secret goes with client_secret_basic/_post only"
            )
        if self.token_format not in ("opaque", "jwt"):
            raise ValueError(f"unknown token format {self.token_format!r}")

    @property
    def source(self) -> str:
        return source_key(self.iss)

    @property
    def client_type(self) -> str:
        """SMART's name for the client type this registration uses."""
        return {
            "none": "public",
            "client_secret_basic": "confidential-symmetric",
            "client_secret_post": "confidential-symmetric",
            "private_key_jwt": "confidential-asymmetric",
        }[self.auth_method]

    def with_scope(self, scope: str) -> EhrRegistration:
        """The same registration requesting other scopes (standalone launches add launch/patient)."""
        return EhrRegistration(
            self.iss,
            self.client_id,
            self.auth_method,
            self.client_secret,
            scope,
            self.aliases,
            self.token_format,
            self.allow_without_pkce,
            self.name,
        )


class EhrRegistry:
    """The registered EHRs, found by ``iss`` (or an alias of it) or by source key."""

    def __init__(self, registrations: Iterable[EhrRegistration]) -> None:
        self._by_iss: dict[str, EhrRegistration] = {}
        self._by_source: dict[str, EhrRegistration] = {}
        for reg in registrations:
            for url in (reg.iss, *reg.aliases):
                if url in self._by_iss:
                    raise ValueError(f"{url} is registered twice")
                self._by_iss[url] = reg
            self._by_source[reg.source] = reg

    def __iter__(self) -> Iterator[EhrRegistration]:
        return iter(self._by_source.values())

    def __len__(self) -> int:
        return len(self._by_source)

    def for_iss(self, iss: str) -> EhrRegistration | None:
        return self._by_iss.get(normalise_iss(iss))

    def for_source(self, source: str) -> EhrRegistration | None:
        return self._by_source.get(source)

    @property
    def issuers(self) -> tuple[str, ...]:
        return tuple(r.iss for r in self._by_source.values())

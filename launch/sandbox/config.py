"""Configuration of the sandbox EHR: where it lives, which apps are registered, token lifetimes.

Client registration follows RFC 6749 §2 (client types: a client without a secret is *public* and
authenticates with ``client_id`` only, RFC 6749 §2.1 / RFC 7591 ``token_endpoint_auth_method=none``;
one with a secret is *confidential* and uses ``client_secret_basic`` or ``client_secret_post``).
Every absolute URL the sandbox emits is derived from ``SandboxConfig.base_url``, never from the
incoming request, so the app behaves the same when mounted under another ASGI app.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit


@dataclass(frozen=True, slots=True)
class SandboxClient:
    """A registered SMART app (RFC 6749 §2): public when ``client_secret`` is ``None``."""

    client_id: str
    redirect_uris: tuple[str, ...]
    client_secret: str | None = field(default=None, repr=False)

    @property
    def is_public(self) -> bool:
        return self.client_secret is None


@dataclass(frozen=True, slots=True)
class SandboxConfig:
    """Public URLs, registered clients and lifetimes of one sandbox EHR instance."""

    base_url: str
    app_launch_url: str
    clients: tuple[SandboxClient, ...]
    access_token_ttl: int = 3600
    signing_key_path: Path | None = None

    def __post_init__(self) -> None:
        _require_secure_or_loopback(self.base_url)
        if self.access_token_ttl <= 0:
            raise ValueError("access_token_ttl must be positive")
        ids = [c.client_id for c in self.clients]
        if len(ids) != len(set(ids)):
            raise ValueError("client ids must be unique")

    @property
    def root(self) -> str:
        """``base_url`` without a trailing slash."""
        return self.base_url.rstrip("/")

    @property
    def fhir_base(self) -> str:
        """The FHIR base URL: the SMART ``iss``, the tokens' ``iss`` and ``aud``."""
        return f"{self.root}/fhir"

    def auth_url(self, name: str) -> str:
        """Absolute URL of an authorization-server endpoint (``authorize``, ``token``, …)."""
        return f"{self.root}/auth/{name}"

    def client(self, client_id: str) -> SandboxClient | None:
        """The registered client with this id, if any."""
        for client in self.clients:
            if client.client_id == client_id:
                return client
        return None


def _require_secure_or_loopback(url: str) -> None:
    """Refuse a base URL that authlib would reject at every request (RFC 6749 §3.1, RFC 8252 §7.3).

    OAuth endpoints must use TLS; plain http is only accepted for loopback hosts.
    """
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError("base_url must be an absolute http(s) URL")
    if parts.hostname == "localhost":
        return
    try:
        loopback = ipaddress.ip_address(parts.hostname).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError("base_url must use https unless the host is loopback (RFC 8252 §7.3)")

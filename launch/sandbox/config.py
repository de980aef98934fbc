"""Configuration of the sandbox EHR: where it lives, which apps are registered, token lifetimes.

Client registration follows RFC 6749 §2 and RFC 7591 §2 (``token_endpoint_auth_method``):

- no credentials: a *public* client, ``none`` (client_id only; SMART ``client-public``);
- a ``client_secret``: ``client_secret_basic`` or ``client_secret_post`` (SMART
  ``client-confidential-symmetric``);
- ``jwks`` (inline JWK Set) or ``jwks_uri``: ``private_key_jwt``, a signed RFC 7523 assertion
  (SMART ``client-confidential-asymmetric``).

``token_endpoint_auth_method`` narrows a client to one of the methods its credentials allow.
Every absolute URL the sandbox emits is derived from ``SandboxConfig.base_url``, never from the
incoming request, so the app behaves the same when mounted under another ASGI app.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

AuthMethod = Literal["none", "client_secret_basic", "client_secret_post", "private_key_jwt"]
SECRET_METHODS: frozenset[AuthMethod] = frozenset({"client_secret_basic", "client_secret_post"})


@dataclass(frozen=True, slots=True)
class SandboxClient:
    """A registered SMART app (RFC 6749 §2, RFC 7591 §2): public when it has no credentials."""

    client_id: str
    redirect_uris: tuple[str, ...]
    client_secret: str | None = field(default=None, repr=False)
    #: URL of the app's JWK Set (RFC 7591 ``jwks_uri``), fetched and cached by the sandbox.
    jwks_uri: str | None = None
    #: The app's JWK Set inline (RFC 7591 ``jwks``), public keys only.
    jwks: dict[str, Any] | None = field(default=None, hash=False)
    #: One method out of those the credentials allow; ``None``: all of them.
    token_endpoint_auth_method: AuthMethod | None = None

    def __post_init__(self) -> None:
        if self.jwks is not None and self.jwks_uri is not None:
            raise ValueError("a client has jwks or jwks_uri, not both (RFC 7591 §2)")
        if self.jwks is not None and not isinstance(self.jwks.get("keys"), list):
            raise ValueError("jwks must be a JWK Set: {'keys': [...]}")
        if self.jwks_uri is not None:
            _require_secure_or_loopback(self.jwks_uri, "jwks_uri")
        chosen = self.token_endpoint_auth_method
        if chosen is not None and chosen not in self._allowed_methods():
            raise ValueError(f"{chosen} needs other credentials than this client has")

    def _allowed_methods(self) -> frozenset[AuthMethod]:
        methods: set[AuthMethod] = set()
        if self.client_secret is not None:
            methods |= SECRET_METHODS
        if self.jwks is not None or self.jwks_uri is not None:
            methods.add("private_key_jwt")
        return frozenset(methods) if methods else frozenset({"none"})

    @property
    def auth_methods(self) -> frozenset[AuthMethod]:
        """The token endpoint authentication methods this client may use."""
        chosen = self.token_endpoint_auth_method
        return frozenset({chosen}) if chosen is not None else self._allowed_methods()

    @property
    def is_public(self) -> bool:
        return self.auth_methods == {"none"}


@dataclass(frozen=True, slots=True)
class SandboxConfig:
    """Public URLs, registered clients and lifetimes of one sandbox EHR instance."""

    base_url: str
    app_launch_url: str
    clients: tuple[SandboxClient, ...]
    access_token_ttl: int = 3600
    signing_key_path: Path | None = None

    def __post_init__(self) -> None:
        _require_secure_or_loopback(self.base_url, "base_url")
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


def _require_secure_or_loopback(url: str, name: str) -> None:
    """Refuse a URL that authlib would reject at every request (RFC 6749 §3.1, RFC 8252 §7.3).

    OAuth endpoints must use TLS; plain http is only accepted for loopback hosts.
    """
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"{name} must be an absolute http(s) URL")
    if parts.hostname == "localhost":
        return
    try:
        loopback = ipaddress.ip_address(parts.hostname).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"{name} must use https unless the host is loopback (RFC 8252 §7.3)")

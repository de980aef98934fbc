"""The registered apps' public keys (RFC 7591 §2 ``jwks`` / ``jwks_uri``, RFC 7517 JWK Sets).

SMART App Launch 2.x "client-confidential-asymmetric": an app registers its JWK Set inline or by
URL. ``ClientKeys`` imports inline sets once, at start, and fetches URL sets with an async
``httpx2`` client (``fetch_jwks``; tests inject another ``JwksFetcher``), caching each for
``MAX_AGE_SECONDS``. When an assertion names a ``kid`` the cached set lacks, the set is fetched
again once, so an app can rotate its keys. A failed fetch keeps what was cached.

authlib's client authentication is synchronous: ``prepare`` runs (awaited) before it, and
``key_set`` then answers from memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import httpx2
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from launch.sandbox.config import SandboxClient

MAX_AGE_SECONDS = 60
FETCH_TIMEOUT_SECONDS = 5.0


class JwksUnavailable(Exception):
    """The JWK Set could not be fetched or is not one (the URL is the message, never a key)."""


class JwksFetcher(Protocol):
    """Fetch the JSON document at a ``jwks_uri``."""

    async def __call__(self, url: str) -> Mapping[str, Any]: ...


async def fetch_jwks(url: str) -> Mapping[str, Any]:
    """GET ``url`` and return its JSON object; ``JwksUnavailable`` on any failure."""
    try:
        async with httpx2.AsyncClient(timeout=FETCH_TIMEOUT_SECONDS) as client:
            response = await client.get(url, headers={"Accept": "application/json"})
            response.raise_for_status()
            document = response.json()
    except (httpx2.HTTPError, ValueError) as exc:
        raise JwksUnavailable(url) from exc
    if not isinstance(document, dict):
        raise JwksUnavailable(url)
    return document


@dataclass(frozen=True, slots=True)
class _Fetched:
    keys: KeySet
    at: float


class ClientKeys:
    """Each registered client's JWK Set: inline ones imported at start, URL ones cached."""

    def __init__(
        self,
        clients: Iterable[SandboxClient],
        *,
        fetcher: JwksFetcher = fetch_jwks,
        clock: Callable[[], float],
    ) -> None:
        self._fetcher = fetcher
        self._clock = clock
        self._inline = {c.client_id: _import(c.jwks) for c in clients if c.jwks is not None}
        self._fetched: dict[str, _Fetched] = {}

    async def prepare(self, client: SandboxClient, kid: str | None) -> None:
        """Make sure ``key_set`` is fresh for this client and, if it can be, knows ``kid``."""
        url = client.jwks_uri
        if url is None:
            return
        cached = self._fetched.get(url)
        fetched_now = False
        if cached is None or self._clock() - cached.at >= MAX_AGE_SECONDS:
            await self._fetch(url)
            fetched_now = True
        if not fetched_now and not _knows(self._fetched.get(url), kid):
            await self._fetch(url)

    def key_set(self, client: SandboxClient) -> KeySet | None:
        """The client's keys as last imported or fetched; ``None`` when it has none."""
        if client.jwks_uri is not None:
            fetched = self._fetched.get(client.jwks_uri)
            return fetched.keys if fetched is not None else None
        return self._inline.get(client.client_id)

    async def _fetch(self, url: str) -> None:
        try:
            keys = _import(await self._fetcher(url))
        except (JwksUnavailable, ValueError):
            return
        self._fetched[url] = _Fetched(keys, self._clock())


def _knows(fetched: _Fetched | None, kid: str | None) -> bool:
    return fetched is not None and any(key.kid == kid for key in fetched.keys)


def _import(document: Mapping[str, Any]) -> KeySet:
    """A JWK Set from its JSON form; ``ValueError`` if it holds no usable key."""
    try:
        return KeySet.import_key_set(dict(document))  # type: ignore[arg-type]
    except (JoseError, KeyError, TypeError, ValueError) as exc:
        raise ValueError("not a JWK Set with usable keys") from exc

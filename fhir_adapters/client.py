"""FHIR REST client for one patient's compartment (the home of fhirpy).

FHIR R4 RESTful API: search paging with ``Bundle.link[next]`` (http.html#paging), the
``Patient/$everything`` operation (patient-operation-everything.html), ``Binary`` reads.
Results are plain dicts; fhirpy's typed mode is not used.

What real servers do and this client copes with:

- **Throttling and hiccups.** 429, 502, 503, 504, timeouts, resets and truncated JSON are retried with
  exponential backoff and full jitter, honouring ``Retry-After`` (seconds or an HTTP date) up to a bound;
  a server that asks for a longer wait fails the request instead of stalling the sync.
- **Expiring tokens.** A 401 calls ``refresh`` once (if given) and repeats the request with the new token.
- **``next`` links anywhere.** A link is followed only if it is on the FHIR base's exact origin and under
  its path (or under a configured alias of it). fhirpy's own check is a substring test (``base in url``),
  which passes ``https://evil.example/?https://ehr/fhir``; this client replaces it, so the bearer token
  never leaves the EHR.
- **Short result sets.** A search whose pages hold fewer matches than its ``Bundle.total`` ends with
  ``IncompleteResults`` after the pages it did get.

fhirpy opens a new aiohttp session per request; this client keeps one session (connection reuse) for its
lifetime: use it as ``async with FhirClient(...) as client``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Self
from urllib.parse import urljoin, urlsplit

import aiohttp
from fhirpy import AsyncFHIRClient
from fhirpy.base.exceptions import ResourceNotFound
from fhirpy.base.utils import get_by_path

from fhir_adapters.errors import (
    FhirAuthError,
    FhirNotFound,
    FhirServerError,
    FhirTokenRejected,
    IncompleteResults,
)

RETRY_STATUSES = frozenset({429, 502, 503, 504})
Refresh = Callable[[], Awaitable[str]]


@dataclass(frozen=True)
class RetryPolicy:
    """How hard one request tries. Delays in seconds."""

    attempts: int = 5
    base_delay: float = 0.5
    max_delay: float = 8.0
    max_retry_after: float = 30.0
    timeout: float = 30.0

    def backoff(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(max_delay, base * 2**attempt)]."""
        return random.uniform(0, min(self.max_delay, self.base_delay * 2**attempt))


def retry_after_seconds(value: str | None, *, now: datetime | None = None) -> float | None:
    """``Retry-After`` as seconds: delta-seconds or an HTTP-date (RFC 9110 §10.2.3)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def same_server(url: str, base: str) -> bool:
    """Is ``url`` on ``base``'s exact scheme, host and port, and under its path?"""
    u, b = urlsplit(url), urlsplit(base.rstrip("/"))
    if (u.scheme.lower(), u.hostname, u.port) != (b.scheme.lower(), b.hostname, b.port):
        return False
    if u.username or u.password:
        return False
    path = u.path
    return path == b.path or path.startswith(b.path + "/")


class _Transient(Exception):
    """A failure worth retrying (never shown to users; carries no response body)."""

    def __init__(self, what: str, retry_after: float | None = None) -> None:
        super().__init__(what)
        self.what = what
        self.retry_after = retry_after


class _TokenRejected(Exception):
    pass


class _Fhirpy(AsyncFHIRClient):
    """fhirpy's client with a strict same-server check and one reused aiohttp session."""

    def __init__(self, base: str, aliases: tuple[str, ...], timeout: float) -> None:
        super().__init__(base, url_aliases=list(aliases))
        self.token = ""
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.session: aiohttp.ClientSession | None = None

    def _build_request_url(self, path: str, params: Any) -> str:
        if "://" in path:
            url = self._replace_url_alias(path)
            if not same_server(url, self.url):
                raise FhirServerError(
                    "the EHR sent a link outside its FHIR base; it was not followed"
                )
            return url
        return str(super()._build_request_url(path, params))

    def _build_request_headers(self) -> dict[str, str]:
        headers = dict(super()._build_request_headers())
        headers["Authorization"] = f"Bearer {self.token}"
        return headers

    async def _do_request(  # type: ignore[override]
        self,
        method: str,
        path: str,
        data: Any = None,
        params: Any = None,
        extra_headers: Any = None,
        *,
        returning_status: bool = False,
    ) -> Any:
        url = self._build_request_url(path, params)
        if self.session is None:
            self.session = aiohttp.ClientSession(timeout=self.timeout)
        try:
            async with self.session.request(
                method, url, headers=self._build_request_headers()
            ) as r:
                if 200 <= r.status < 300:
                    raw = await r.text()
                    try:
                        return json.loads(raw) if raw else None
                    except json.JSONDecodeError:
                        raise _Transient("truncated or invalid JSON") from None
                await r.read()
                if r.status == 401:
                    raise _TokenRejected()
                if r.status == 403:
                    raise FhirAuthError("the EHR refused access (403)")
                if r.status in (404, 410):
                    raise ResourceNotFound(str(r.status))
                if r.status in RETRY_STATUSES:
                    raise _Transient(
                        f"HTTP {r.status}", retry_after_seconds(r.headers.get("Retry-After"))
                    )
                raise FhirServerError(f"the EHR returned HTTP {r.status}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _Transient(type(exc).__name__) from None

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None


class FhirClient:
    """A patient-context FHIR client authorised with the session's bearer token."""

    def __init__(
        self,
        base_url: str,
        access_token: str,
        *,
        aliases: tuple[str, ...] = (),
        retry: RetryPolicy | None = None,
        refresh: Refresh | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        timeout: float | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.retry = retry or RetryPolicy()
        if timeout is not None:
            self.retry = RetryPolicy(**{**self.retry.__dict__, "timeout": timeout})
        self._client = _Fhirpy(self.base_url, aliases, self.retry.timeout)
        self._client.token = access_token
        self._refresh = refresh
        self._refresh_lock = asyncio.Lock()
        self._sleep = sleep
        #: requests, retries, refreshes: for progress and benchmarks.
        self.stats: Counter[str] = Counter()

    def __repr__(self) -> str:
        return f"FhirClient({self.base_url!r}, token=***)"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._client.close()

    async def _call(self, path: str, params: dict[str, Any] | None = None) -> Any:
        refreshed = False
        attempt = 0
        while True:
            self.stats["requests"] += 1
            sent_with = self._client.token
            try:
                return await self._client.execute(path, method="get", params=params)
            except _TokenRejected:
                if self._refresh is None or refreshed:
                    raise FhirTokenRejected(
                        "the EHR rejected the session's token (401); launch again"
                    ) from None
                refreshed = True
                # Concurrent requests that all got 401 refresh once: the others wait and reuse the
                # new token (a second refresh would spend a rotated refresh token).
                async with self._refresh_lock:
                    if self._client.token == sent_with:
                        self.stats["refreshes"] += 1
                        self._client.token = await self._refresh()
            except _Transient as exc:
                attempt += 1
                if attempt >= self.retry.attempts:
                    raise FhirServerError(
                        f"the EHR kept failing ({exc.what}, {attempt} tries)"
                    ) from None
                delay = exc.retry_after
                if delay is not None and delay > self.retry.max_retry_after:
                    raise FhirServerError(
                        f"the EHR asked to wait {delay:.0f} s (more than "
                        f"{self.retry.max_retry_after:.0f} s)"
                    ) from None
                self.stats["retries"] += 1
                await self._sleep(delay if delay is not None else self.retry.backoff(attempt))

    async def capabilities(self) -> dict[str, Any]:
        return await self._call("metadata")  # type: ignore[no-any-return]

    async def read(self, resource_type: str, resource_id: str) -> dict[str, Any] | None:
        try:
            return await self._call(f"{resource_type}/{resource_id}")  # type: ignore[no-any-return]
        except ResourceNotFound:
            return None

    def resolve(self, link: str) -> str:
        """An absolute URL for a link in a response; relative links resolve against the base."""
        return link if "://" in link else urljoin(self.base_url + "/", link.lstrip("/"))

    async def pages(self, path: str, params: dict[str, Any]) -> AsyncIterator[list[dict[str, Any]]]:
        """Yield each page's resources, following ``next`` links to the end.

        The next page is requested before the current one is yielded, so the EHR serves it while
        the caller validates and stores (use ``contextlib.aclosing`` so an abandoned iteration
        cancels that request). Raises ``IncompleteResults`` after the last page if fewer matches
        arrived than the first page's ``Bundle.total`` promised.
        """
        try:
            bundle = await self._call(path, params)
        except ResourceNotFound:
            raise FhirNotFound(f"the EHR has no {path.split('/')[-1]} endpoint (404)") from None
        total = bundle.get("total") if isinstance(bundle, dict) else None
        matched = 0
        ahead: asyncio.Task[Any] | None = None
        try:
            while True:
                if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
                    raise FhirServerError(
                        "the EHR answered a search with something other than a Bundle"
                    )
                entries = [e for e in bundle.get("entry") or [] if e.get("resource")]
                matched += sum(
                    1 for e in entries if (e.get("search") or {}).get("mode", "match") == "match"
                )
                next_link = get_by_path(bundle, ["link", {"relation": "next"}, "url"])
                if next_link:
                    ahead = asyncio.create_task(self._next_page(str(next_link)))
                yield [e["resource"] for e in entries]
                if ahead is None:
                    break
                bundle, ahead = await ahead, None
        finally:
            if ahead is not None:
                ahead.cancel()
                with contextlib.suppress(BaseException):
                    await ahead
        if isinstance(total, int) and matched < total:
            raise IncompleteResults(f"{matched} of {total} results arrived")

    async def _next_page(self, link: str) -> Any:
        try:
            return await self._call(self.resolve(link))
        except ResourceNotFound:
            raise FhirServerError("a next page of the search is gone (404)") from None

    async def binary(self, url: str) -> dict[str, Any] | None:
        """The ``Binary`` resource an attachment ``url`` names (``Binary/x`` or under the base).

        ``None`` when the url is not a Binary on this server (it is not fetched: the token stays).
        """
        absolute = self.resolve(url)
        if not same_server(absolute, self.base_url):
            return None
        parts = absolute[len(self.base_url) + 1 :].split("?")[0].split("/")
        if len(parts) != 2 or parts[0] != "Binary" or not parts[1]:
            return None
        return await self.read("Binary", parts[1])

    @staticmethod
    def supports_everything(capabilities: dict[str, Any]) -> bool:
        for rest in capabilities.get("rest") or []:
            for op in rest.get("operation") or []:
                if op.get("name") == "everything":
                    return True
            for res in rest.get("resource") or []:
                if res.get("type") == "Patient" and any(
                    op.get("name") == "everything" for op in res.get("operation") or []
                ):
                    return True
        return False

"""Bulk Data Access client (FHIR Bulk Data IG 2.0 "Export"): kick-off, status polling, NDJSON files.

``BulkClient`` kicks off ``Patient/$export`` (or a system ``$export``) with ``Prefer: respond-async``,
polls the status URL honouring ``Retry-After`` (bounded per wait and in total), and streams every
output file to disk line by line. Like the FHIR client, it sends its bearer token only to URLs on the
FHIR base's exact origin and path (a status or file URL elsewhere is an error, never followed), and
retries 429/502/503/504 and connection errors with backoff. A stored file holds only complete lines.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self
from urllib.parse import urlencode

import aiohttp

from fhir_adapters.client import RETRY_STATUSES, RetryPolicy, retry_after_seconds, same_server
from fhir_adapters.errors import FhirServerError, FhirTokenRejected

Progress = Callable[[str], Awaitable[None] | None]


@dataclass(frozen=True)
class ExportFile:
    type: str
    path: Path
    lines: int
    bytes: int


class BulkClient:
    """One Bulk Data export from one FHIR server, with a system-level bearer token."""

    def __init__(
        self,
        base_url: str,
        access_token: str,
        *,
        retry: RetryPolicy | None = None,
        max_wait_seconds: float = 3600.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.retry = retry or RetryPolicy()
        self.max_wait = max_wait_seconds
        self._token = access_token
        self._sleep = sleep
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"BulkClient({self.base_url!r}, token=***)"

    async def __aenter__(self) -> Self:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.retry.timeout,
                                          sock_read=self.retry.timeout)
        )  # fmt: skip
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    def _url(self, url: str) -> str:
        absolute = url if "://" in url else f"{self.base_url}/{url.lstrip('/')}"
        if not same_server(absolute, self.base_url):
            raise FhirServerError("the EHR named a bulk URL outside its FHIR base; not followed")
        return absolute

    async def _request(
        self, method: str, url: str, *, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        assert self._session is not None, "use BulkClient as an async context manager"
        target = self._url(url)
        attempt = 0
        while True:
            try:
                async with self._session.request(
                    method,
                    target,
                    headers={
                        "Authorization": f"Bearer {self._token}",
                        "Accept": "application/fhir+json",
                        **(headers or {}),
                    },
                ) as r:
                    body = await r.read()
                    if r.status == 401:
                        raise FhirTokenRejected("the EHR rejected the bulk token (401)")
                    if r.status not in RETRY_STATUSES:
                        return r.status, {k.lower(): v for k, v in r.headers.items()}, body
                    wait = retry_after_seconds(r.headers.get("Retry-After"))
                    what = f"HTTP {r.status}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                wait, what = None, type(exc).__name__
            attempt += 1
            if attempt >= self.retry.attempts:
                raise FhirServerError(f"the EHR kept failing ({what}, {attempt} tries)")
            if wait is not None and wait > self.retry.max_retry_after:
                raise FhirServerError(f"the EHR asked to wait {wait:.0f} s")
            await self._sleep(wait if wait is not None else self.retry.backoff(attempt))

    async def kick_off(
        self, *, level: str = "Patient", types: list[str] | None = None, since: str | None = None
    ) -> str:
        """Start an export; returns its status URL."""
        path = "Patient/$export" if level == "Patient" else "$export"
        query = [("_outputFormat", "application/fhir+ndjson")]
        if types:
            query.append(("_type", ",".join(types)))
        if since:
            query.append(("_since", since))
        url = f"{self.base_url}/{path}?{urlencode(query)}"
        status, headers, _ = await self._request("GET", url, headers={"Prefer": "respond-async"})
        location = headers.get("content-location")
        if status != 202 or not location:
            raise FhirServerError(f"the EHR did not accept the bulk export (HTTP {status})")
        return self._url(location)

    async def wait(self, status_url: str, progress: Progress | None = None) -> dict[str, Any]:
        """Poll until the manifest is ready (202 → wait ``Retry-After``; 200 → manifest)."""
        started = time.monotonic()
        while True:
            status, headers, body = await self._request("GET", status_url)
            if status == 200:
                manifest: dict[str, Any] = _json(body)
                if not isinstance(manifest.get("output"), list):
                    raise FhirServerError("the bulk manifest has no output list")
                return manifest
            if status != 202:
                raise FhirServerError(f"the bulk export failed (HTTP {status})")
            wait = retry_after_seconds(headers.get("retry-after"))
            wait = min(wait if wait is not None else 1.0, self.retry.max_retry_after)
            if time.monotonic() - started + wait > self.max_wait:
                raise FhirServerError(f"the bulk export did not finish in {self.max_wait:.0f} s")
            if progress is not None:
                note = progress(f"export {headers.get('x-progress', 'in progress')}")
                if note is not None:
                    await note
            await self._sleep(wait)

    async def download(
        self, manifest: dict[str, Any], folder: Path, progress: Progress | None = None
    ) -> list[ExportFile]:
        """Stream every output file to ``folder`` (one ``.ndjson`` per output entry)."""
        assert self._session is not None
        folder.mkdir(parents=True, exist_ok=True)
        files: list[ExportFile] = []
        outputs = manifest["output"]
        for n, out in enumerate(outputs, 1):
            rtype, url = str(out.get("type", "unknown")), str(out.get("url", ""))
            target = folder / f"{n:03d}-{''.join(c for c in rtype if c.isalnum())}.ndjson"
            count = out.get("count") if isinstance(out.get("count"), int) else None
            files.append(await self._fetch_file(rtype, self._url(url), target, count))
            if progress is not None:
                note = progress(f"downloaded {n}/{len(outputs)} files")
                if note is not None:
                    await note
        return files

    async def _fetch_file(
        self, rtype: str, url: str, target: Path, count: int | None
    ) -> ExportFile:
        """A file, retried until whole: its last line parses and its line count is the
        manifest's ``count`` (a dropped connection can look like a clean end)."""
        assert self._session is not None
        attempt = 0
        while True:
            try:
                got = await self._stream(rtype, url, target)
                if count is not None and got.lines != count:
                    raise _Retry()
                return got
            except (aiohttp.ClientError, TimeoutError, _Retry) as exc:
                attempt += 1
                if attempt >= self.retry.attempts:
                    raise FhirServerError(
                        f"a bulk file could not be read ({type(exc).__name__}, {attempt} tries)"
                    ) from None
                await self._sleep(self.retry.backoff(attempt))

    async def _stream(self, rtype: str, url: str, target: Path) -> ExportFile:
        assert self._session is not None
        headers = {"Authorization": f"Bearer {self._token}", "Accept": "application/fhir+ndjson"}
        lines = size = 0
        partial = target.with_suffix(".part")
        async with self._session.get(url, headers=headers) as r:
            if r.status == 401:
                raise FhirTokenRejected("the EHR rejected the bulk token (401)")
            if r.status in RETRY_STATUSES:
                raise _Retry()
            if r.status != 200:
                raise FhirServerError(f"a bulk file answered HTTP {r.status}")
            with partial.open("wb") as out:
                pending = b""
                async for chunk in r.content.iter_chunked(1 << 16):
                    pending += chunk
                    *complete, pending = pending.split(b"\n")
                    for line in complete:
                        if line.strip():
                            out.write(line + b"\n")
                            lines += 1
                            size += len(line) + 1
                if pending.strip():
                    try:  # no final newline: complete only if it parses
                        json.loads(pending)
                    except ValueError:
                        raise _Retry() from None
                    out.write(pending + b"\n")
                    lines += 1
                    size += len(pending) + 1
        partial.replace(target)
        return ExportFile(rtype, target, lines, size)


class _Retry(Exception):
    pass


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        raise FhirServerError("the EHR answered bulk status with invalid JSON") from None

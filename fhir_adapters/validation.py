"""Validating pages of resources off the event loop: a small process pool for fhir.resources.

fhir.resources (pydantic) validation is pure CPU under the GIL, and it is most of a sync's fetch
cost (measured: ~0.3 ms a resource in JSON mode). ``Validator(workers=1)`` runs it in a separate
process, so on two cores it overlaps with the next page's HTTP and the previous page's storage;
``workers=0`` validates inline (tests of the pure functions, tiny deployments). Workers are spawned
(never forked from a process with threads), warmed up once, and exit within a second when their
parent dies, however it died. Only resource JSON and the reasons
(field paths and error types, never values) cross the process boundary.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from fhir_adapters.normalize import (
    InvalidResource,
    resource_type_of,
    validate,
    validate_json,
    warm_up,
)


def check_json(items: list[tuple[str, str]]) -> list[str | None]:
    """For each (resourceType, JSON text): ``None`` if valid, else the reason (runs in a worker)."""
    out: list[str | None] = []
    for rtype, raw in items:
        try:
            validate_json(rtype, raw)
            out.append(None)
        except InvalidResource as exc:
            out.append(exc.reason)
    return out


def check(resources: list[Any]) -> list[str | None]:
    out: list[str | None] = []
    for r in resources:
        try:
            validate(r)
            out.append(None)
        except InvalidResource as exc:
            out.append(exc.reason)
    return out


def _worker_start(parent: int) -> None:
    """Warm the models, and exit if the parent dies (a ``kill -9`` must not leave workers)."""

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
    warm_up()


class Validator:
    """Checks resources against their R4B models, in a worker process when ``workers`` > 0."""

    def __init__(self, workers: int = 1) -> None:
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None
        if workers > 0:
            self._pool = ProcessPoolExecutor(
                max_workers=workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_worker_start,
                initargs=(os.getpid(),),
            )

    def __repr__(self) -> str:
        return f"Validator(workers={self.workers})"

    async def check(
        self, resources: list[Any], texts: list[str | None] | None = None
    ) -> list[str | None]:
        """``None`` per valid resource, else why it is invalid (same order). ``texts`` are the
        resources' JSON where the caller already has it."""
        if not resources:
            return []
        if self._pool is None:
            return check(resources)
        given = texts or [None] * len(resources)
        # The shape checks run here, on the dicts at hand: the worker gets only (type, text), and
        # does not parse the text into dicts a second time.
        verdicts: list[str | None] = [None] * len(resources)
        sent: list[int] = []
        items: list[tuple[str, str]] = []
        for i, (r, t) in enumerate(zip(resources, given, strict=True)):
            try:
                rtype = resource_type_of(r)
            except InvalidResource as exc:
                verdicts[i] = exc.reason
                continue
            sent.append(i)
            items.append((rtype, t if t is not None else json.dumps(r)))
        if items:
            loop = asyncio.get_running_loop()
            got = await loop.run_in_executor(self._pool, check_json, items)
            for i, reason in zip(sent, got, strict=True):
                verdicts[i] = reason
        return verdicts

    async def start(self) -> None:
        """Spawn and warm the workers now (not during the first sync)."""
        if self._pool is not None:
            loop = asyncio.get_running_loop()
            await asyncio.gather(
                *(loop.run_in_executor(self._pool, check_json, []) for _ in range(self.workers))
            )

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

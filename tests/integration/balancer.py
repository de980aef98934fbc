"""A round-robin TCP load balancer on loopback, for tests of several app workers behind one address.

Each new connection goes to the next backend in turn; a backend that refuses (a killed worker) is
skipped for the next one, as a load balancer's health check would. Counts connections per backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import Counter


class RoundRobin:
    def __init__(self, port: int, backends: list[int]) -> None:
        self.port, self.backends = port, backends
        self.served: Counter[int] = Counter()
        self.log: list[int] = []  # the backend of each connection, in order
        self._next = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="round-robin")
        self._server: asyncio.Server | None = None

    def start(self) -> None:
        self._thread.start()
        assert self._ready.wait(10), "the balancer did not start"

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
            self._loop.stop()

        self._loop.call_soon_threadsafe(lambda: self._loop.create_task(close()))
        self._thread.join(10)
        self._loop.close()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", self.port)
        )
        self._ready.set()
        self._loop.run_forever()

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        for _ in range(len(self.backends)):
            port = self.backends[self._next % len(self.backends)]
            self._next += 1
            try:
                streams = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                continue
            self.served[port] += 1
            self.log.append(port)
            return streams
        raise ConnectionRefusedError("no backend is up")

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await self._connect()
        except OSError:
            writer.close()
            return

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            with contextlib.suppress(OSError):
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

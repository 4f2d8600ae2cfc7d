"""Helpers for the bounded-wait tests: a TCP proxy that can freeze a database (`loyalty serve` in a subprocess
is `tests.api_support.serve`)."""
from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator

from sqlalchemy.engine import make_url

from tests.api_support import free_port


class FreezingProxy:
    """A TCP proxy on 127.0.0.1 in front of a database. Frozen, it stops forwarding in both directions
    but keeps every socket open and keeps accepting: what a stopped (SIGSTOP) database looks like."""

    def __init__(self, target_host: str, target_port: int):
        self.target = (target_host, target_port)
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        self._ready.wait(5)

    def freeze(self) -> None:
        """Stop forwarding (sockets stay open); done when this returns."""
        asyncio.run_coroutine_threadsafe(self._set(False), self._loop).result(5)

    def thaw(self) -> None:
        """Forward again, including what was held back."""
        asyncio.run_coroutine_threadsafe(self._set(True), self._loop).result(5)

    def cut(self) -> None:
        """Lose the database: close every open connection and refuse new ones until `restore`."""
        asyncio.run_coroutine_threadsafe(self._cut(True), self._loop).result(5)

    def restore(self) -> None:
        """Accept and forward connections again after `cut`."""
        asyncio.run_coroutine_threadsafe(self._cut(False), self._loop).result(5)

    async def _cut(self, cut: bool) -> None:
        self._refusing = cut
        if cut:
            for writer in list(self._writers):
                writer.close()

    async def _set(self, running: bool) -> None:
        if running:
            self._gate.set()
        else:
            self._gate.clear()

    def close(self) -> None:
        """Stop the proxy, closing every socket it holds."""
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    async def _shutdown(self) -> None:
        tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._gate = asyncio.Event()
        self._gate.set()
        self._refusing = False
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", self.port))
        self._loop.call_soon(self._ready.set)
        self._loop.run_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._gate.wait()
        if self._refusing:
            writer.close()
            return
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, upstream_writer))
        await asyncio.gather(self._pump(reader, upstream_writer), self._pump(upstream_reader, writer),
                             return_exceptions=True)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                await self._gate.wait()  # frozen: hold the data, keep the socket
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()


@contextlib.contextmanager
def frozen_capable(db_url: str) -> Iterator[tuple[FreezingProxy, str]]:
    """A proxy in front of the PostgreSQL of `db_url`, and the same URL through the proxy."""
    url = make_url(db_url)
    proxy = FreezingProxy(url.host or "127.0.0.1", url.port or 5432)
    try:
        yield proxy, url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    finally:
        proxy.thaw()
        proxy.close()

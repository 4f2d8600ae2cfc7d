"""uvicorn settings for `loyalty serve`: bounds on what one client can make the server hold or wait for.

uvicorn's httptools protocol (the fast one) bounds neither the request head nor the time it takes to
arrive: four 64 MB header lines took a server from 104 to 360 MiB, and a client sending a header byte
now and then held its connection for good. `BoundedHttpToolsProtocol` adds, per connection:
- the request head (request line and headers) at most `max_head_bytes`, and at most `max_headers`
  header lines: 431 and the connection closed (counted as bytes arrive, before the parser buffers them);
- the request head complete within `head_timeout` seconds of its first byte, or of the connection's
  opening (slowloris): 408 and closed.
The idle keep-alive timeout is uvicorn's own (`timeout_keep_alive`), and so is the bound on open
connections (`limit_concurrency`: beyond it, requests get 503 and their connection is closed); slow
bodies are cut by the request guard (`api.limits.BODY_TIMEOUT`).

uvicorn is given the class by import string (`PROTOCOL`): with `--workers N` each worker process imports it, so
its limits are the LOYALTY_* settings that `loyalty serve` exported, read once per process.
"""
from __future__ import annotations

import asyncio
from functools import cache

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from api.limits import Limits, ServeSettings

PROTOCOL = "api.server:BoundedHttpToolsProtocol"  # uvicorn's `http=`
_REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


@cache
def _configured_limits() -> Limits:
    return ServeSettings.from_env().limits


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with bounds on the request head's size, header count and arrival time."""

    @property
    def limits(self) -> Limits:
        """This process's limits: the LOYALTY_* settings."""
        return _configured_limits()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._in_head, self._head_bytes, self._header_count, self._refusal = True, 0, 0, None
        self._head_timer: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        self._start_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            if self._head_timer is None:
                self._start_head_timer()
            room = self.limits.max_head_bytes - self._head_bytes
            if len(data) > room:
                # Feed what fits: if the head ends within it, the rest is body or the next request.
                super().data_received(data[:room])
                if self._in_head and not self.transport.is_closing():
                    self._refuse(431, f"the request head is over {self.limits.max_head_bytes:,} bytes")
                    return
                if data[room:] and not self.transport.is_closing():
                    self.data_received(data[room:])
                return
            self._head_bytes += len(data)
        super().data_received(data)

    def on_message_begin(self) -> None:
        self._in_head, self._header_count = True, 0
        super().on_message_begin()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > self.limits.max_headers:
            self._refusal = 431
            raise ValueError("too many headers")  # stops the parser; answered in send_400_response
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head, self._head_bytes = False, 0
        self._cancel_head_timer()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        # The request's body has been read: what the parser sees next is the next request's head. (Not
        # when the response completes: a pipelined request's head may already be parsed by then, and its
        # body would be counted as head bytes.)
        super().on_message_complete()
        self._in_head, self._head_bytes = True, 0

    def send_400_response(self, msg: str) -> None:
        if self._refusal == 431:
            self._refuse(431, f"more than {self.limits.max_headers} header lines")
            return
        super().send_400_response(msg)

    def _start_head_timer(self) -> None:
        self._cancel_head_timer()
        self._head_timer = self.loop.call_later(self.limits.head_timeout, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._in_head and not self.transport.is_closing():
            if self._head_bytes:
                self._refuse(408, f"the request head did not arrive within {self.limits.head_timeout:g} s")
            else:  # nothing sent at all: nobody to answer
                self.transport.close()

    def _refuse(self, status: int, why: str) -> None:
        """Answer `status` with a one-line reason and close the connection (the request is never run)."""
        self.logger.warning("request refused (%d): %s", status, why)
        self._cancel_head_timer()
        body = why.encode("ascii", "replace")
        self.transport.write(b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\n"
                             b"connection: close\r\n\r\n%s" % (status, _REASONS[status], len(body), body))
        self.transport.close()
        self._in_head = False


assert httptools  # the protocol above needs it (uvicorn[standard] installs it)

"""The bounds of `loyalty serve`, in one place: the HTTP server, the request guard and the CLI's options
(their defaults) read them here. Why each value: README, "Limits of `loyalty serve`"."""
from __future__ import annotations

from dataclasses import dataclass

# A request's whole database work (key check, claim, route, commit): above the API statement
# timeout (5 s), so a slow statement fails with the database's own error first.
REQUEST_TIMEOUT = 10.0
# A body (at most 2 MiB) must arrive within this: a client dribbling bytes holds a connection and
# memory, and 2 MiB at 100 kB/s takes 20 s.
BODY_TIMEOUT = 30.0


@dataclass(frozen=True)
class Limits:
    """The HTTP server's bounds on what one client can make it hold or wait for."""

    max_head_bytes: int = 32 * 1024  # browsers and proxies send a few kB; nginx's default buffers total 32 kB
    max_headers: int = 100  # the same bound as Python's http.client; our clients send about ten
    head_timeout: float = 10.0  # a request head is a few hundred bytes: seconds are plenty even on a bad link
    keep_alive: int = 5  # idle seconds before a kept-alive connection is closed (uvicorn's default)
    max_connections: int = 1000  # each open connection costs a few kB and a file descriptor

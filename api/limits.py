"""The settings of `loyalty serve`, in one place: each one's option, environment variable, default, bounds and
help. The CLI builds its options from them, and every worker process reads them back from the environment
(`ServeSettings.from_env`), validated the same way (pydantic, as typer does). Why each bound's value: README,
"Limits of `loyalty serve`"."""
from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Annotated, Any, Literal, get_type_hints

from service.errors import SettingError

# pydantic is imported where settings are validated: `loyalty --help` reads these defaults without it.
if TYPE_CHECKING:
    from pydantic import TypeAdapter

# A request's whole database work (key check, claim, route, commit): above the API statement
# timeout (5 s), so a slow statement fails with the database's own error first.
REQUEST_TIMEOUT = 10.0
# How long `loyalty serve` admits an API key it verified without reading it again: a key revoked by
# `loyalty apikey revoke` is refused at most this long after (reading it per request cost more CPU than the
# benefits read it guards).
KEY_CACHE_SECONDS = 5.0
# A body (at most 2 MiB) must arrive within this: a client dribbling bytes holds a connection and
# memory, and 2 MiB at 100 kB/s takes 20 s.
BODY_TIMEOUT = 30.0

LogLevel = Literal["critical", "error", "warning", "info", "debug"]


@dataclass(frozen=True)
class Limits:
    """The HTTP server's bounds on what one client can make it hold or wait for."""

    max_head_bytes: int = 32 * 1024  # browsers and proxies send a few kB; nginx's default buffers total 32 kB
    max_headers: int = 100  # the same bound as Python's http.client; our clients send about ten
    head_timeout: float = 10.0  # a request head is a few hundred bytes: seconds are plenty even on a bad link
    keep_alive: int = 5  # idle seconds before a kept-alive connection is closed (uvicorn's default)
    max_connections: int = 1000  # each open connection costs a few kB and a file descriptor


_LIMITS = Limits()


@dataclass(frozen=True)
class Setting:
    """How one setting is given: its environment variable, inclusive bounds (numbers) and help."""

    env: str
    help: str
    low: float | None = None
    high: float | None = None


def _setting(env: str, default: Any, help: str, low: float | None = None, high: float | None = None) -> Any:
    return field(default=default, metadata={"setting": Setting(env, help, low, high)})


@dataclass(frozen=True)
class ServeSettings:
    """Every setting of `loyalty serve` (the option `--hold-seconds` is the field `hold_seconds`)."""

    host: str = _setting("LOYALTY_HOST", "127.0.0.1", "Address to listen on.")
    port: int = _setting("LOYALTY_PORT", 8080, "Port to listen on.", 1, 65_535)
    workers: int = _setting(
        "LOYALTY_WORKERS", 1, "Worker processes answering on the port, each with its own database pool and rules "
        "watcher; 1 serves from this process.", 1, 64)
    log_level: LogLevel = _setting("LOYALTY_LOG_LEVEL", "info", "uvicorn's log level.")
    hold_seconds: int = _setting(
        "LOYALTY_HOLD_SECONDS", 900, "How long a quote holds its single-use entitlements.", 1, 7 * 24 * 3600)
    reload_seconds: float = _setting(
        "LOYALTY_RELOAD_SECONDS", 1.0, "How often to look for new or changed rule files (see `loyalty rules "
        "activate`).", 0.1, 30)
    scheduler: bool = _setting(
        "LOYALTY_SCHEDULER", False, "Also run the review and expiry jobs (see `loyalty scheduler`), once, in the "
        "process `loyalty serve` started: never in the workers.")
    dispatch: bool = _setting(
        "LOYALTY_DISPATCH", False, "Also send webhook deliveries (see `loyalty dispatch`), from the process "
        "`loyalty serve` started: never in the workers.")
    request_timeout: float = _setting(
        "LOYALTY_API_REQUEST_TIMEOUT", REQUEST_TIMEOUT, "Seconds a request's database work may take before it "
        "answers 503 (a frozen database).", 0.5, 3600)
    head_timeout: float = _setting(
        "LOYALTY_API_HEAD_TIMEOUT", _LIMITS.head_timeout, "Seconds a request's line and headers may take to arrive "
        "(slow clients are cut off: 408).", 0.5, 600)
    body_timeout: float = _setting(
        "LOYALTY_API_BODY_TIMEOUT", BODY_TIMEOUT, "Seconds a request body may take to arrive (408).", 0.5, 3600)
    keep_alive: int = _setting(
        "LOYALTY_API_KEEP_ALIVE", _LIMITS.keep_alive, "Seconds an idle kept-alive connection stays open.", 1, 3600)
    max_head_bytes: int = _setting(
        "LOYALTY_API_MAX_HEAD_BYTES", _LIMITS.max_head_bytes, "Largest request line plus headers, in bytes (431 "
        "beyond).", 1024, 1024 * 1024)
    max_headers: int = _setting(
        "LOYALTY_API_MAX_HEADERS", _LIMITS.max_headers, "Most header lines in a request (431 beyond).", 8, 1000)
    max_connections: int = _setting(
        "LOYALTY_API_MAX_CONNECTIONS", _LIMITS.max_connections, "Open connections, per worker process, from which "
        "on every request is answered 503 and its connection closed.", 1, 100_000)

    @staticmethod
    def setting(name: str) -> Setting:
        """How the field `name` is given (its variable, bounds and help)."""
        return _FIELDS[name].metadata["setting"]

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> ServeSettings:
        """The settings from LOYALTY_* variables (unset or empty: the default); SettingError names a bad one."""
        from pydantic import ValidationError

        values = {}
        for name, adapter in _adapters().items():
            variable = cls.setting(name).env
            raw = environ.get(variable)
            if not raw:  # as the CLI treats an empty variable: unset
                continue
            try:
                values[name] = adapter.validate_python(raw.strip())
            except ValidationError as exc:
                raise SettingError(f"{variable}={raw[:60]!r} is not valid: {exc.errors()[0]['msg']}") from None
        return cls(**values)

    def to_env(self) -> dict[str, str]:
        """The LOYALTY_* variables that `from_env` reads back as these settings."""
        return {self.setting(name).env: str(value).lower() if isinstance(value, bool) else str(value)
                for name, value in asdict(self).items()}

    @property
    def limits(self) -> Limits:
        """The HTTP server's bounds among these settings."""
        return Limits(max_head_bytes=self.max_head_bytes, max_headers=self.max_headers,
                      head_timeout=self.head_timeout, keep_alive=self.keep_alive,
                      max_connections=self.max_connections)


_FIELDS = {f.name: f for f in fields(ServeSettings)}


@functools.cache
def _adapters() -> dict[str, TypeAdapter]:
    """The same validation typer applies to the options (it builds these pydantic types from min and max)."""
    from pydantic import Field, TypeAdapter

    return {name: TypeAdapter(Annotated[kind, Field(ge=ServeSettings.setting(name).low,
                                                    le=ServeSettings.setting(name).high)])
            for name, kind in get_type_hints(ServeSettings).items()}

"""The id of the request being served (`X-Request-ID`), for log lines and problem documents."""
from __future__ import annotations

from contextvars import ContextVar, Token

_REQUEST_ID: ContextVar[str | None] = ContextVar("loyalty_request_id", default=None)


def current_request_id() -> str | None:
    """The X-Request-ID of the request being served, or None outside a request."""
    return _REQUEST_ID.get()


def set_request_id(request_id: str | None) -> Token:
    """Make `request_id` the current request's id; give the token back to `reset_request_id` when done."""
    return _REQUEST_ID.set(request_id)


def reset_request_id(token: Token) -> None:
    """Restore the id that was current before `set_request_id`."""
    _REQUEST_ID.reset(token)

"""Errors of the use cases that a caller (CLI or HTTP) turns into a message and a status."""
from __future__ import annotations


class NotFoundError(LookupError):
    """The client, event or entitlement named does not exist."""


class InputError(ValueError):
    """A request parameter that does not make sense (unknown product, naive timestamp)."""

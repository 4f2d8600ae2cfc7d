"""Errors of the use cases that a caller (CLI or HTTP) turns into a message and a status."""
from __future__ import annotations


class NotFoundError(LookupError):
    """The client, event, quote or reward named does not exist."""


class InputError(ValueError):
    """A request parameter that does not make sense (unknown product, naive timestamp)."""


class ConflictError(RuntimeError):
    """The request is valid but the state forbids it (quote already resolved, too few points).

    `code` names the conflict for programs; `facts` carries the figures the message quotes.
    """

    def __init__(self, message: str, code: str, **facts: object):
        super().__init__(message)
        self.code = code
        self.facts = facts


class ReviewInterruptedError(RuntimeError):
    """A review stopped half-way because the database stopped answering; `review_id` finishes it."""

    def __init__(self, message: str, review_id: str):
        super().__init__(message)
        self.review_id = review_id


class SettingError(ValueError):
    """A LOYALTY_* setting out of range or not a number (e.g. a timeout); the message names the variable."""

"""Request bodies of the HTTP API (its answers are the typed models the services return)."""
from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field


def _amount_text(value: object) -> object:
    # A JSON float cannot carry an exact amount (0.1 has no binary form), so it is refused, not rounded.
    if isinstance(value, float):
        raise ValueError("send the amount as a decimal string such as \"30000000.00\" or an integer, not a float")
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


Amount = Annotated[str, BeforeValidator(_amount_text), Field(
    max_length=40, description="loan amount in the programme's currency: a decimal string (or a JSON integer), "
                               "never a float", examples=["30000000.00"])]
Text = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f\x7f]+$")]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class QuoteRequest(_Body):
    """A loan application to price."""

    product: Annotated[str, Field(min_length=1, max_length=64, examples=["working_capital"])]
    amount: Amount


class CommitRequest(_Body):
    """The booked loan, for the audit trail."""

    loan_id: Text | None = None


class RedemptionRequest(_Body):
    """The catalogue reward to spend points on."""

    reward_id: Annotated[str, Field(min_length=1, max_length=96, examples=["rate-cut-5"])]


class ReversalRequest(_Body):
    """Why the event is reversed, for the audit trail."""

    reason: Annotated[str, Field(max_length=500)] = ""

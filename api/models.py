"""Request bodies of the HTTP API (its answers are the typed models the services return)."""
from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import AfterValidator, AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field


def _amount_text(value: object) -> object:
    # A JSON float cannot carry an exact amount (0.1 has no binary form), so it is refused, not rounded.
    if isinstance(value, float):
        raise ValueError("send the amount as a decimal string such as \"30000000.00\" or an integer, not a float")
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


Amount = Annotated[str, BeforeValidator(_amount_text), Field(
    max_length=40, description="loan amount in the programme's currency: a decimal string (or a JSON integer), "
                               "never a float", examples=["30000000.00"])]
Text = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f\x7f]+$")]


def _plausible_year(moment: datetime) -> datetime:
    # The CLI's bound (cli/output.py): a typo such as 20266 or 0026 is refused, not stored.
    if not 1900 <= moment.year <= 2999:
        raise ValueError("the year must be between 1900 and 2999")
    return moment


MomentIn = Annotated[AwareDatetime, AfterValidator(_plausible_year), Field(
    description="ISO 8601 with a zone, e.g. 2027-06-30T00:00:00Z", examples=["2027-06-30T00:00:00Z"])]


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


class PinRequest(_Body):
    """Pin a client to a tier until a moment (`loyalty tier set`)."""

    tier: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[^\x00-\x1f\x7f]+$", examples=["diamond"])]
    until: MomentIn
    reason: Annotated[str, Field(min_length=1, max_length=500, pattern=r"\S", examples=["strategic account"])]
    author: Text | None = Field(None, description="who decided; default: the API key's name")


class ReviewRequest(_Body):
    """Start a tier review, or a dry run of one (`loyalty review`)."""

    dry_run: bool = Field(False, description="decide and report, write nothing")
    as_of: MomentIn | None = Field(None, description="the review's moment; default now (for `review_id`, the "
                                                     "moment it was started with)")
    review_id: Annotated[str, Field(pattern=r"^[A-Za-z0-9._:-]{1,64}$")] | None = Field(
        None, description="finish an interrupted review (or name a new one), as `loyalty review --id`")

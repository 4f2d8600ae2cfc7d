"""The pages of a tier review: ranges of client ids that processes sharing the review claim one at a time.

A page is claimed in a short transaction (on PostgreSQL with FOR UPDATE SKIP LOCKED, so two processes
never wait for each other's claim; SQLite's write lock serialises claims anyway), and finished in the
transaction that writes it, held by the claim: a process whose claim was taken over writes nothing.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, Connection, and_, func, insert, or_, select, true, update

from storage.models import Client, ReviewPage

PAGES = ReviewPage.__table__
CLIENTS = Client.__table__


@dataclass(frozen=True)
class Page:
    """A page of a review: clients after `after` up to `last` (None: no bound on that side)."""

    number: int
    after: str | None
    last: str | None


def bounds(client_ids: list[str], size: int) -> list[Page]:
    """Pages of `size` clients over `client_ids` (sorted); the first and last are open-ended, so every
    client, even one that arrives later, falls in exactly one page."""
    cuts = client_ids[size - 1:-1:size]
    return [Page(number, cuts[number - 1] if number else None, cuts[number] if number < len(cuts) else None)
            for number in range(len(cuts) + 1)]


def create(conn: Connection, review_id: str, pages: list[Page]) -> None:
    """Record the pages of a review, none claimed."""
    conn.execute(insert(PAGES), [{"review_id": review_id, "page": page.number, "after_client_id": page.after,
                                  "last_client_id": page.last} for page in pages])


def recorded(conn: Connection, review_id: str) -> bool:
    """Whether the review's pages are recorded."""
    return conn.execute(select(PAGES.c.page).where(PAGES.c.review_id == review_id).limit(1)).first() is not None


def within(page: Page, client_id: ColumnElement) -> ColumnElement[bool]:
    """The condition that a client id column is in a page: a range, which reads far faster than a list of
    the page's thousands of ids."""
    return and_(true(), *([client_id > page.after] if page.after is not None else []),
                *([client_id <= page.last] if page.last is not None else []))


def clients(conn: Connection, page: Page) -> list[str]:
    """The ids of the clients in a page, in order."""
    return list(conn.execute(select(CLIENTS.c.client_id).where(within(page, CLIENTS.c.client_id))
                             .order_by(CLIENTS.c.client_id)).scalars())


def claimants(conn: Connection, review_id: str, unfinished_only: bool = False,
              live_at: datetime | None = None) -> set[str]:
    """Every process that claimed a page of the review; with `unfinished_only`, a page not yet written;
    with `live_at`, a claim that had not run out by then."""
    query = select(PAGES.c.claimed_by).where(PAGES.c.review_id == review_id, PAGES.c.claimed_by.is_not(None))
    if unfinished_only:
        query = query.where(PAGES.c.finished_at.is_(None))
    if live_at is not None:
        query = query.where(PAGES.c.claimed_until > live_at)
    return set(conn.execute(query.distinct()).scalars())


def claim(conn: Connection, review_id: str, holder: str, now: datetime, until: datetime,
          gone: set[str]) -> Page | None:
    """Claim the first page not written and not claimed by a live process (its claim ran out, or its
    holder is among `gone`) for `holder` until `until`; None if there is none."""
    query = select(PAGES.c.page, PAGES.c.after_client_id, PAGES.c.last_client_id).where(
        PAGES.c.review_id == review_id, PAGES.c.finished_at.is_(None),
        or_(PAGES.c.claimed_by.is_(None), PAGES.c.claimed_until <= now, PAGES.c.claimed_by.in_(sorted(gone)))
    ).order_by(PAGES.c.page).limit(1)
    if conn.dialect.name != "sqlite":
        query = query.with_for_update(skip_locked=True)
    row = conn.execute(query).first()
    if row is None:
        return None
    conn.execute(update(PAGES).where(PAGES.c.review_id == review_id, PAGES.c.page == row.page)
                 .values(claimed_by=holder, claimed_until=until))
    return Page(*row)


def hold(conn: Connection, review_id: str, page: Page, holder: str) -> bool:
    """At the start of a page's write transaction: whether `holder` still has the page (False: another
    process took it over, and this one must write nothing). On PostgreSQL the page's row stays locked
    until the transaction ends, so a process taking the page over skips it meanwhile."""
    query = select(PAGES.c.page).where(PAGES.c.review_id == review_id, PAGES.c.page == page.number,
                                       PAGES.c.claimed_by == holder, PAGES.c.finished_at.is_(None))
    if conn.dialect.name != "sqlite":
        query = query.with_for_update()
    return conn.execute(query).first() is not None


def finish(conn: Connection, review_id: str, page: Page, now: datetime, outcome: str) -> None:
    """Record a page written, with its outcome, in the transaction that wrote it."""
    conn.execute(update(PAGES).where(PAGES.c.review_id == review_id, PAGES.c.page == page.number)
                 .values(finished_at=now, outcome=outcome))


def release(conn: Connection, review_id: str, holder: str, now: datetime) -> None:
    """Give up `holder`'s claims: pages not yet written go to others at once, and its claims of pages
    written no longer count as a process at work."""
    conn.execute(update(PAGES).where(PAGES.c.review_id == review_id, PAGES.c.claimed_by == holder,
                                     PAGES.c.finished_at.is_(None)).values(claimed_by=None, claimed_until=None))
    conn.execute(update(PAGES).where(PAGES.c.review_id == review_id, PAGES.c.claimed_by == holder,
                                     PAGES.c.claimed_until > now).values(claimed_until=now))


def unfinished(conn: Connection, review_id: str) -> int:
    """How many pages of the review are not written yet."""
    return conn.execute(select(func.count()).select_from(PAGES).where(
        PAGES.c.review_id == review_id, PAGES.c.finished_at.is_(None))).scalar_one()


def outcomes(conn: Connection, review_id: str, skip: Iterable[int] = ()) -> dict[int, str]:
    """The outcome of each written page of the review but those numbered in `skip`, by page number."""
    return dict(conn.execute(select(PAGES.c.page, PAGES.c.outcome).where(
        PAGES.c.review_id == review_id, PAGES.c.finished_at.is_not(None), PAGES.c.page.not_in(sorted(skip)))).all())

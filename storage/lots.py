"""The `points_lot` projection: kept by the ledger's write path, read by expiry, checked by verify."""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import Connection, bindparam, select, update

from rewards.kinds import Reason
from rewards.lots import Account, Lot
from storage.bulk import insert_rows
from storage.models import Client, LedgerEntry, PointsLot

LOT = PointsLot.__table__
ENTRY = LedgerEntry.__table__
CLIENT = Client.__table__
WRITE_OFF = "write-off"  # rule id of the credit that pays back a shortfall (see rewards.lots)


class NegativeBalanceError(ValueError):
    """A write would leave a client with fewer points than zero."""


def record(conn: Connection, rows: list[dict]) -> None:
    """Keep the lots in step with the points entries `rows`, in the caller's transaction.

    Earnings open lots; the other entries are booked as rewards.lots says. Raises
    NegativeBalanceError if a client's debits outrun its lots and write-offs.
    """
    earned = [row for row in rows if _is_earning(row)]
    insert_rows(conn, LOT, [{"client_id": row["client_id"], "event_id": row["event_id"], "rule_id": row["rule_id"],
                             "earned_at": row["valid_from"], "points": row["points"], "remaining": row["points"]}
                            for row in earned])
    others = [row for row in rows if row["points"] and not _is_earning(row)]
    if not others:
        return
    accounts = _accounts_for(conn, others)
    touched: dict[int, Lot] = {}
    for row in others:
        try:
            changed = accounts[row["client_id"]].book(row["reason"], row["points"], (row["event_id"], row["rule_id"]))
        except ValueError as exc:
            raise NegativeBalanceError(f"client {row['client_id']}: {exc}") from None
        touched.update((lot.id, lot) for lot in changed)  # type: ignore[misc]
    for client_id, account in accounts.items():
        if account.shortfall:
            raise NegativeBalanceError(f"client {client_id} would have {account.shortfall:,} points fewer than none")
    if touched:
        conn.execute(update(LOT).where(LOT.c.id == bindparam("lot_id"))
                     .values(remaining=bindparam("left"), expired=bindparam("gone")),
                     [{"lot_id": lot_id, "left": lot.remaining, "gone": lot.expired} for lot_id, lot in touched.items()])


def shortfall(conn: Connection, client_id: str, rows: list[dict]) -> int:
    """The points that `rows` (debits about to be written for one client) would leave uncovered: what a
    write-off entry must give back so the balance stops at zero."""
    debits = [row for row in rows if row["points"] and not _is_earning(row)]
    if not debits:
        return 0
    account = _accounts_for(conn, debits)[client_id]
    for row in debits:
        account.book(row["reason"], row["points"], (row["event_id"], row["rule_id"]))
    return account.shortfall


def _is_earning(row: dict) -> bool:
    return row["reason"] == Reason.EARN and row["points"] > 0


def _accounts_for(conn: Connection, rows: list[dict]) -> dict[str, Account]:
    """The open lots of the clients of `rows`, with the lots the rows name (spent or not)."""
    named = {(row["event_id"], row["rule_id"]) for row in rows if row["reason"] in (Reason.EXPIRE, Reason.REVERSE)}
    return open_accounts(conn, sorted({row["client_id"] for row in rows}), named)


def open_accounts(conn: Connection, client_ids: list[str], named: set[tuple[str, str]] = frozenset()) -> dict[str, Account]:
    """Each client's lots with points left, oldest first, and the lots `named` by (event, rule) even if empty."""
    accounts = {client_id: Account([]) for client_id in client_ids}
    wanted = LOT.c.remaining > 0
    if named:
        wanted = wanted | LOT.c.event_id.in_(sorted({event_id for event_id, _ in named}))
    query = select(LOT).where(LOT.c.client_id.in_(client_ids), wanted).order_by(LOT.c.client_id, LOT.c.earned_at, LOT.c.id)
    for row in conn.execute(query):
        if row.remaining > 0 or (row.event_id, row.rule_id) in named:
            accounts[row.client_id].lots.append(_lot(row))
    return accounts


def open_lots_earned_by(conn: Connection, latest: datetime, client_ids: Iterable[str] | None = None) -> list[Lot]:
    """Lots with points left that were earned at or before `latest`, per client oldest first."""
    query = select(LOT).where(LOT.c.remaining > 0, LOT.c.earned_at <= latest) \
        .order_by(LOT.c.client_id, LOT.c.earned_at, LOT.c.id)
    if client_ids is not None:
        query = query.where(LOT.c.client_id.in_(list(client_ids)))
    return [_lot(row) for row in conn.execute(query)]


def lot_clients(conn: Connection, latest: datetime) -> list[str]:
    """Clients holding points earned at or before `latest`."""
    query = select(LOT.c.client_id).where(LOT.c.remaining > 0, LOT.c.earned_at <= latest).distinct()
    return sorted(conn.execute(query).scalars())


def _lot(row) -> Lot:  # noqa: ANN001 - a result row
    return Lot(row.client_id, row.event_id, row.rule_id, row.earned_at, row.points, row.remaining, row.expired,
               row.id)


def verify(conn: Connection) -> list[str]:
    """Replay every client's points entries into lots and compare with the projection and the balances."""
    problems: list[str] = []
    stored: dict[tuple[str, str], dict] = {(row.event_id, row.rule_id): dict(row._mapping)
                                           for row in conn.execute(select(LOT))}
    balances = dict(conn.execute(select(CLIENT.c.client_id, CLIENT.c.points_balance)).all())
    query = select(ENTRY.c.id, ENTRY.c.client_id, ENTRY.c.reason, ENTRY.c.points, ENTRY.c.event_id,
                   ENTRY.c.rule_id, ENTRY.c.valid_from).where(ENTRY.c.points != 0) \
        .order_by(ENTRY.c.client_id, ENTRY.c.id)
    accounts: dict[str, Account] = defaultdict(lambda: Account([]))
    for row in conn.execute(query):
        account = accounts[row.client_id]
        try:
            if row.reason == Reason.EARN and row.points > 0:
                account.earn(Lot(row.client_id, row.event_id, row.rule_id, row.valid_from, row.points, row.points))
            else:
                account.book(row.reason, row.points, (row.event_id, row.rule_id))
        except ValueError as exc:
            problems.append(f"entry {row.id} (client {row.client_id}): {exc}")
    for client_id, account in accounts.items():
        if account.shortfall:
            problems.append(f"client {client_id}: debits exceed its lots by {account.shortfall:,} points")
        if account.balance != balances.get(client_id, 0):
            problems.append(f"client {client_id}: lots hold {account.balance:,} points but the balance is "
                            f"{balances.get(client_id, 0):,}")
        for lot in account.lots:
            row = stored.pop(lot.source, None)
            if row is None:
                problems.append(f"client {client_id}: no lot for the points of event {lot.event_id} rule {lot.rule_id}")
            elif (row["client_id"], row["points"], row["remaining"], row["expired"], row["earned_at"]) != \
                    (client_id, lot.points, lot.remaining, lot.expired, lot.earned_at):
                problems.append(f"lot {row['id']} (event {lot.event_id} rule {lot.rule_id}): {row['remaining']} of "
                                f"{row['points']} left and {row['expired']} expired, but the entries say "
                                f"{lot.remaining} left and {lot.expired} expired")
    for client_id, balance in balances.items():
        if balance < 0:
            problems.append(f"client {client_id}: negative points balance {balance:,}")
    problems.extend(f"lot {row['id']} (event {source[0]} rule {source[1]}) has no earning entry"
                    for source, row in stored.items())
    return problems


def expiry_detail(lot: Lot, expires: datetime) -> dict:
    """What an expiry entry records about its lot."""
    return {"lot": lot.id, "earned_at": lot.earned_at.isoformat(), "expires_at": expires.isoformat(),
            "earned": lot.points}


"""The `points_lot` projection: kept by the ledger's write path, read by expiry, checked by verify."""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import Connection, bindparam, insert, select, update

from rewards.kinds import Reason
from rewards.lots import Account, Lot
from storage.models import Client, LedgerEntry, PointsLot

LOT = PointsLot.__table__
ENTRY = LedgerEntry.__table__
CLIENT = Client.__table__
WRITE_OFF = "write-off"  # rule id of the credit that pays back a shortfall (see rewards.lots)


class NegativeBalanceError(ValueError):
    """A write would leave a client with fewer points than zero."""


def record(conn: Connection, rows: list[dict]) -> None:
    """Keep the lots in step with the points entries `rows`, in the caller's transaction.

    Earnings open lots; debits take the oldest lots; expiries take from their own lot; write-offs
    pay back a shortfall. Raises NegativeBalanceError if a client's debits outrun its lots.
    """
    earned = [row for row in rows if row["reason"] == Reason.EARN and row["points"] > 0]
    if earned:
        conn.execute(insert(LOT), [{"client_id": row["client_id"], "event_id": row["event_id"],
                                    "rule_id": row["rule_id"], "earned_at": row["valid_from"],
                                    "points": row["points"], "remaining": row["points"]} for row in earned])
    others = [row for row in rows if row["points"] and not (row["reason"] == Reason.EARN and row["points"] > 0)]
    if not others:
        return
    accounts = open_accounts(conn, sorted({row["client_id"] for row in others}))
    touched: dict[int, Lot] = {}
    for row in others:
        account = accounts[row["client_id"]]
        if row["reason"] == Reason.EXPIRE:
            lot = account.expire((row["event_id"], row["rule_id"]), -row["points"])
            touched[lot.id] = lot  # type: ignore[index]
        elif row["points"] < 0:
            touched.update((lot.id, lot) for lot, _ in account.debit(-row["points"]))
        else:
            try:
                account.write_off(row["points"])
            except ValueError as exc:
                raise NegativeBalanceError(f"client {row['client_id']}: a credit of {row['points']} points that "
                                           f"is not an earning must pay back a shortfall: {exc}") from None
    for client_id, account in accounts.items():
        if account.shortfall:
            raise NegativeBalanceError(f"client {client_id} would have {account.shortfall:,} points fewer than none")
    if touched:
        conn.execute(update(LOT).where(LOT.c.id == bindparam("lot_id")).values(remaining=bindparam("left")),
                     [{"lot_id": lot_id, "left": lot.remaining} for lot_id, lot in touched.items()])


def open_accounts(conn: Connection, client_ids: list[str]) -> dict[str, Account]:
    """Each client's lots with points left, oldest first."""
    accounts = {client_id: Account([]) for client_id in client_ids}
    query = select(LOT).where(LOT.c.client_id.in_(client_ids), LOT.c.remaining > 0) \
        .order_by(LOT.c.client_id, LOT.c.earned_at, LOT.c.id)
    for row in conn.execute(query):
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
    return Lot(row.client_id, row.event_id, row.rule_id, row.earned_at, row.points, row.remaining, row.id)


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
            elif row.reason == Reason.EXPIRE:
                account.expire((row.event_id, row.rule_id), -row.points)
            elif row.points < 0:
                account.debit(-row.points)
            else:
                account.write_off(row.points)
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
            elif (row["client_id"], row["points"], row["remaining"], row["earned_at"]) != \
                    (client_id, lot.points, lot.remaining, lot.earned_at):
                problems.append(f"lot {row['id']} (event {lot.event_id} rule {lot.rule_id}): {row['remaining']} of "
                                f"{row['points']} left, but the entries say {lot.remaining} of {lot.points}")
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


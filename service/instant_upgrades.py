"""Instant upgrades: a client whose activity makes it qualify for a tier the policy lists under
`review.instant_upgrade` moves there with that activity, not at the next review.

Checked once per ingest batch, in the batch's transaction, for the clients the batch touched: their
metrics are measured at the batch's latest valid event moment under a programme in force (a single
event through the API is its own batch, so there it is that event's moment; a batch shared out among
ingest processes is measured at the whole batch's moment, so the outcome does not depend on how many
processes applied it), and a move takes effect then, or just after the client's latest applied
activity if that is later. Pinned clients stay where the pin holds them.
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection

from engine.metrics import place
from engine.programme import CompiledProgramme
from rewards.caps import months_before
from rewards.tier_policy import instant_target
from rewards.tiers import TIER_RULE_PREFIX
from service.tier_moves import TierMove, effective_moment, move_rows
from storage import clients as client_store
from storage import ledger, standing
from storage.metrics import client_metrics


def apply_instant_upgrades(conn: Connection, programme: CompiledProgramme, client_ids: list[str], moment: datetime,
                           now: datetime) -> list[TierMove]:
    """Move the clients among `client_ids` (already locked) that qualify at `moment` for an instant-upgrade tier."""
    instant = programme.model.review.instant_upgrade
    if not instant or not client_ids:
        return []
    tiers = programme.tier_ids
    highest = max(tiers.index(tier) for tier in instant)
    in_force = client_store.tiers_as_of(conn, moment, client_ids)
    below = [cid for cid, state in in_force.items()
             if state.tier is not None and tiers.index(state.tier) < highest and not state.decided_later]
    if not below:
        return []
    pinned = standing.pins_in_force(conn, moment, below)
    candidates = [cid for cid in below if cid not in pinned]
    window = programme.model.review.window_months
    metrics = client_metrics(conn, moment, months_before(moment, window), window, programme.currency, candidates)
    moves = []
    for client_id in candidates:
        if client_id not in metrics:
            continue
        placement = place(programme.model.tiers, metrics[client_id])
        target = instant_target(in_force[client_id].tier, placement.tier, tiers, instant)  # type: ignore[arg-type]
        if target is not None:
            above = tiers[tiers.index(target) + 1:tiers.index(target) + 2]
            moves.append((client_id, target, placement.reasons(target, *above)))
    if not moves:
        return []
    movers = [client_id for client_id, _, _ in moves]
    latest = client_store.last_activity(conn, movers)
    held = ledger.active_entitlements_by_rule_prefix(conn, movers, TIER_RULE_PREFIX)
    done, tier_rows, entries = [], [], []
    for client_id, target, reasons in moves:
        state = in_force[client_id]
        start = effective_moment(moment, latest.get(client_id), state.since)
        move = TierMove(client_id, state.tier, target, start, f"instant upgrade: qualifies for {target}",  # type: ignore[arg-type]
                        reasons)
        tier_row, move_entries = move_rows(programme, move, held[client_id], now)
        tier_rows.append(tier_row)
        entries.extend(move_entries)
        done.append(move)
    client_store.insert_tier_assignments(conn, tier_rows)
    ledger.append(conn, entries)
    standing.close_graces(conn, [{"client_id": move.client_id, "ended_at": move.effective_from, "ended_by": None,
                                  "outcome": "moved"} for move in done])
    return done

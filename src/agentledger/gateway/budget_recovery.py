"""Counters from the ledger, on start: what the budget counters are is what the ledger says.

A reservation its process never settled (a crash, a kill) is closed here: charged its estimate (`expire`, noted),
then corrected to the call's actual cost when the call's request row is on the books (`adjust`). Then the
counters are loaded with the ledger's sums, these entries included. With Redis the counters outlive a gateway,
so this runs only when Redis holds none yet (a new or flushed Redis): the ledger is the source of truth.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from agentledger.core.budgets import parse_counter_key
from agentledger.core.ids import new_id
from agentledger.core.model import LedgerEntry, TraceEvent
from agentledger.limits.base import MAX_COUNTER, Charge, Counters, Standing
from agentledger.store.budgets import BudgetStore

log = logging.getLogger(__name__)


def closing_entries(
    open_rows: list[dict[str, Any]], actual: dict[tuple[str, str], int | None], now: datetime
) -> list[LedgerEntry]:
    """For each open (reservation, counter): `expire` at the estimate, then `adjust` to the recorded cost when
    the call's request row says what it was (`actual[(workspace, request_id)]`)."""
    entries: list[LedgerEntry] = []
    for row in open_rows:
        held = int(row["reserved"])
        common = dict(
            workspace_id=row["workspace_id"],
            budget_id=row["budget_id"],
            counter_key=row["counter_key"],
            at=now,
            reservation_id=row["reservation_id"],
            request_id=row["request_id"],
            run_id=row["run_id"],
        )
        entries.append(
            LedgerEntry(
                entry_id=new_id("led"),
                kind="expire",
                reserved_delta=-held,
                spent_delta=held,
                note="open at restart: charged its estimate",
                **common,
            )
        )
        cost = actual.get((row["workspace_id"], row["request_id"])) if row["request_id"] else None
        if cost is not None and cost != held:
            entries.append(
                LedgerEntry(
                    entry_id=new_id("led"),
                    kind="adjust",
                    reserved_delta=0,
                    spent_delta=cost - held,
                    note="corrected from the call's record",
                    **common,
                )
            )
    return entries


async def recover(
    budgets: BudgetStore,
    request_cost: Callable[[str, str], Awaitable[int | None]],
    counters: Counters,
    commit: Callable[[list[TraceEvent]], Awaitable[None]],
    now: datetime,
) -> int:
    """Close the open reservations in the ledger, then load the counters from it. Returns how many closed."""
    open_rows = await budgets.open_reservations()
    actual: dict[tuple[str, str], int | None] = {}
    for row in open_rows:
        if row["request_id"] and (row["workspace_id"], row["request_id"]) not in actual:
            actual[(row["workspace_id"], row["request_id"])] = await request_cost(
                row["workspace_id"], row["request_id"]
            )
    entries = closing_entries(open_rows, actual, now)
    if entries:
        await commit(list(entries))
        log.warning("closed %d budget reservations left open by a stopped process", len(open_rows))
    totals = await budgets.totals()
    await counters.load({k: loadable(k, spent, reserved) for k, (spent, reserved) in totals.items()}, {})
    return len(open_rows)


def loadable(key: str, spent: int, reserved: int) -> Standing:
    """A counter as the ledger sums it, within what counters hold (limits.base MAX_COUNTER): a ledger past that
    (some $9.2 billion on one counter) must not stop the gateway from starting for every workspace, so it is
    loaded at the bound, logged, and its budget stays exhausted."""
    # Sums read while other replicas write can catch a settle whose reserve is in a later batch: never below 0.
    held = min(max(reserved, 0), MAX_COUNTER)
    kept = min(max(spent, -MAX_COUNTER), MAX_COUNTER - held)
    if (kept, held) != (spent, max(reserved, 0)):
        log.error(
            "budget counter %s: the ledger sums to spent %d, reserved %d, past what a counter holds; loaded as %d, %d",
            key,
            spent,
            reserved,
            kept,
            held,
        )
    return Standing(kept, held)


async def reconcile_expired(
    expired: list[tuple[str, dict[str, int]]], budgets: BudgetStore, counters: Counters, now: datetime
) -> list[TraceEvent]:
    """Reservations the counters expired (no settle reached them within their ttl) → ledger entries.

    The ledger decides. Still open there: the call vanished, charged its estimate (`expire`). Unknown there (its
    process died within `batch_interval_ms` of admitting the call, before its reserve was written): the same
    charge, with nothing to take back out of `reserved` (`expire` with a reserved_delta of 0), so the ledger
    still sums to the counters. Already settled there (the counters missed the settle: Redis was down, a process
    died after writing it): the counters, which just charged the estimate, are corrected to what the ledger
    charged, and the ledger gains nothing."""
    open_now: list[tuple[str, dict[str, int], frozenset[str]]] = []
    for reservation_id, amounts in expired:
        workspace_id = parse_counter_key(next(iter(amounts)))[0] if amounts else ""
        sums = await budgets.reservation(workspace_id, reservation_id) if workspace_id else {}
        still = {k: a for k, a in amounts.items() if (sums[k][1] if k in sums else a) != 0}
        if still:
            open_now.append((reservation_id, still, frozenset(k for k in still if k not in sums)))
        fixes = [Charge(k, None, sums[k][2] - a) for k, a in amounts.items() if k in sums and sums[k][1] == 0]
        if fixes:
            await counters.add(fixes)
    return expiry_entries(open_now, now)


def expiry_entries(expired: list[tuple[str, dict[str, int], frozenset[str]]], now: datetime) -> list[TraceEvent]:
    """Ledger entries for reservations the counters expired that the ledger holds open (or never saw: the keys of
    the third item): charged the estimate."""
    entries: list[TraceEvent] = []
    for reservation_id, amounts, unwritten in expired:
        for key, amount in amounts.items():
            workspace_id, budget_id, _ = parse_counter_key(key)
            entries.append(
                LedgerEntry(
                    workspace_id=workspace_id,
                    entry_id=new_id("led"),
                    budget_id=budget_id,
                    counter_key=key,
                    kind="expire",
                    reserved_delta=0 if key in unwritten else -amount,
                    spent_delta=amount,
                    at=now,
                    reservation_id=reservation_id,
                    note="not settled within reservation_ttl: charged its estimate",
                )
            )
    return entries

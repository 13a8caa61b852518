"""Budgets, rate limits, the budget ledger and alerts in SQL: the store's budget domain, composed by SQLStore.

The ledger is append-only; the trace writer inserts its entries and alerts with the call's records
(`SQLStore._apply`). Everything here is management (create, list, delete), the reads of the API, and what the
gateway needs on start: the active budgets and limits, and the ledger's sums to rebuild the counters from.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy import and_, func, literal, select, update
from sqlalchemy.engine import Connection

from agentledger.core.budgets import (
    STATIC_VIEWS_KEPT,
    Action,
    Budget,
    Decision,
    Period,
    PolicyReport,
    RateLimit,
    Scope,
    governance_dict,
    static_view,
)
from agentledger.core.model import BudgetAlert, LedgerEntries, LedgerEntry
from agentledger.core.money import format_usd
from agentledger.store import schema as t

if TYPE_CHECKING:
    from agentledger.store.sql import SQLStore

# totals(): a ledger delta's low bits, summed apart from the rest on SQLite (its SUM overflows past 2^63).
_LOW_BITS = 20
_LOW_MASK = (1 << _LOW_BITS) - 1


# Each budget window's static view as JSON text without its closing brace, by (budget, counter key); the budget
# kept by, as core.budgets._STATIC_VIEWS (a changed budget is equal to none before it, but a dict finds by identity).
_STATIC_TEXT: dict[tuple[Budget, str], tuple[Budget, bytes]] = {}


def _static_text(b: Budget, key: str, now: datetime) -> bytes:
    kept = _STATIC_TEXT.get((b, key))
    if kept is not None and kept[0] is b:
        return kept[1]
    text = orjson.dumps(static_view(b, key, now))[:-1]
    if key.count("|") == 3:  # a counter key names its window: the view holds as long as it does
        if len(_STATIC_TEXT) >= STATIC_VIEWS_KEPT:
            _STATIC_TEXT.clear()  # past windows and deleted budgets, mostly
        _STATIC_TEXT[(b, key)] = (b, text)
    return text


def stored_governance(governance: dict[str, Any] | PolicyReport | None) -> dict[str, Any] | None:
    """A request row's `governance` as the writer stores it: `governance_dict`, with the budget views of an allowed
    call (most calls) as JSON text made from each window's static part, kept once, and the call's numbers
    (`orjson.Fragment`, written as it is). The same JSON as the views' dicts: building those was most of the
    writer's work a governed call. Refusals and policy verdicts keep their dicts: the audit reads their budgets."""
    if (
        not isinstance(governance, PolicyReport)
        or governance.decision is not Decision.ALLOWED
        or governance.policy is not None
        or not governance.budgets
    ):
        return governance_dict(governance)
    views: list[Any] = []
    for f in governance.figures:  # (the dynamic part of `Figures.view`, in its order)
        tail = (
            f',"spent_usd":"{format_usd(f.spent)}","reserved_usd":"{format_usd(f.reserved)}",'
            f'"remaining_usd":"{f.remaining_usd}","remaining_nanos":{f.remaining},"percent_used":'
            f"{orjson.dumps(f.percent_used).decode()}}}"
        )
        views.append(orjson.Fragment(_static_text(f.budget, f.key, governance.at) + tail.encode()))
    return governance.as_dict(views)


def ledger_values(e: LedgerEntry) -> dict[str, Any]:
    return {
        "workspace_id": e.workspace_id,
        "id": e.entry_id,
        "budget_id": e.budget_id,
        "counter_key": e.counter_key,
        "kind": e.kind,
        "reserved_delta": e.reserved_delta,
        "spent_delta": e.spent_delta,
        "reservation_id": e.reservation_id,
        "request_id": e.request_id,
        "step_id": e.step_id,
        "run_id": e.run_id,
        "note": e.note,
        "at": e.at,
    }


def fold_ledger(ledger: dict[tuple[str, str], dict[str, Any]], m: LedgerEntries) -> None:
    """`m`'s rows, as `ledger_values` of its entries would be, into `ledger` by (workspace_id, id) (the first kept)."""
    ws, kind, reserved, spent, at = m.workspace_id, m.kind, m.reserved_delta, m.spent_delta, m.at
    rid, request_id, step_id, run_id = m.reservation_id, m.request_id, m.step_id, m.run_id
    for i, (budget_id, key) in enumerate(m.counters):
        ident = m.entry_id(i)
        if (ws, ident) in ledger:
            continue
        ledger[(ws, ident)] = {
            "workspace_id": ws,
            "id": ident,
            "budget_id": budget_id,
            "counter_key": key,
            "kind": kind,
            "reserved_delta": reserved,
            "spent_delta": spent,
            "reservation_id": rid,
            "request_id": request_id,
            "step_id": step_id,
            "run_id": run_id,
            "note": None,
            "at": at,
        }


def alert_values(a: BudgetAlert) -> dict[str, Any]:
    return {
        "workspace_id": a.workspace_id,
        "budget_id": a.budget_id,
        "window_key": a.window_key,
        "threshold": a.threshold,
        "spent_nanos": a.spent_nanos,
        "limit_nanos": a.limit_nanos,
        "request_id": a.request_id,
        "run_id": a.run_id,
        "at": a.at,
    }


def budget_of(r: dict[str, Any]) -> Budget:
    return Budget(
        workspace_id=r["workspace_id"],
        id=r["id"],
        scope=Scope(r["scope"]),
        value=r["scope_value"],
        limit_nanos=int(r["limit_nanos"]),
        period=Period(r["period"]),
        anchor=r["anchor"],
        action=Action(r["action"]),
        thresholds=tuple(r["thresholds"] or ()),
        property_name=r["property"],
        throttle_rpm=r["throttle_rpm"],
    )


def rate_limit_of(r: dict[str, Any]) -> RateLimit:
    return RateLimit(
        workspace_id=r["workspace_id"],
        id=r["id"],
        scope=Scope(r["scope"]),
        value=r["scope_value"],
        property_name=r["property"],
        requests_per_minute=r["requests_per_minute"],
        tokens_per_minute=r["tokens_per_minute"],
        concurrent=r["concurrent"],
    )


class BudgetStore:
    """The budget domain of an SQLStore (its connections, threads and error mapping)."""

    def __init__(self, store: SQLStore) -> None:
        self.store = store

    async def create_budget(self, row: dict[str, Any]) -> None:
        await self.store._insert_row(t.budgets, row, "Budget")

    async def create_rate_limit(self, row: dict[str, Any]) -> None:
        await self.store._insert_row(t.rate_limits, row, "Rate limit")

    async def list_budgets(self, workspace_id: str) -> list[dict[str, Any]]:
        c = t.budgets.c
        stmt = select(t.budgets).where(c.workspace_id == workspace_id, c.deleted_at.is_(None)).order_by(c.created_at)
        return await self.store._select(stmt)

    async def get_budget(self, workspace_id: str, budget_id: str) -> dict[str, Any] | None:
        c = t.budgets.c
        rows = await self.store._select(
            select(t.budgets).where(c.workspace_id == workspace_id, c.id == budget_id, c.deleted_at.is_(None))
        )
        return rows[0] if rows else None

    async def scope_exists(self, workspace_id: str, scope: Scope, value: str | None) -> bool:
        """Whether the department, agent or virtual key a budget or rate limit names exists (a workspace,
        workflow or property value needs no object)."""
        store = self.store
        if scope is Scope.DEPARTMENT:
            return any(d["id"] == value for d in await store.list_departments(workspace_id))
        if scope is Scope.AGENT:
            return value is not None and await store.get_agent(workspace_id, value) is not None
        if scope is Scope.VIRTUAL_KEY:
            return any(k["id"] == value for k in await store.list_virtual_keys(workspace_id))
        return True

    async def list_rate_limits(self, workspace_id: str) -> list[dict[str, Any]]:
        c = t.rate_limits.c
        stmt = (
            select(t.rate_limits).where(c.workspace_id == workspace_id, c.deleted_at.is_(None)).order_by(c.created_at)
        )
        return await self.store._select(stmt)

    async def delete(self, table_name: str, workspace_id: str, ident: str, now: datetime) -> bool:
        table = t.budgets if table_name == "budgets" else t.rate_limits
        c = table.c

        def run(conn: Connection) -> bool:
            res = conn.execute(
                update(table)
                .where(and_(c.workspace_id == workspace_id, c.id == ident, c.deleted_at.is_(None)))
                .values(deleted_at=now)
            )
            return bool(res.rowcount)

        return await self.store._write(run)

    async def active(self, workspace_id: str) -> tuple[list[Budget], list[RateLimit]]:
        """What governs this workspace's calls now (cached by the gateway, invalidated on change)."""
        budgets = [budget_of(r) for r in await self.list_budgets(workspace_id)]
        limits = [rate_limit_of(r) for r in await self.list_rate_limits(workspace_id)]
        return budgets, limits

    async def ledger(
        self,
        workspace_id: str,
        *,
        budget_id: str | None = None,
        run_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
        budget_ids: Sequence[str] | None = None,
    ) -> list[dict[str, Any]]:
        """Newest first; `budget_ids`: only these budgets' entries (a department admin's)."""
        c = t.budget_ledger.c
        where = [c.workspace_id == workspace_id]
        if budget_id is not None:
            where.append(c.budget_id == budget_id)
        if budget_ids is not None:
            where.append(c.budget_id.in_(list(budget_ids)))
        if run_id is not None:
            where.append(c.run_id == run_id)
        if since is not None:
            where.append(c.at >= since)
        if until is not None:
            where.append(c.at < until)
        stmt = select(t.budget_ledger).where(*where).order_by(c.at.desc(), c.id.desc()).limit(limit)
        return await self.store._select(stmt, query=True)

    async def alerts(
        self, workspace_id: str, *, since: datetime | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        c = t.budget_alerts.c
        where = [c.workspace_id == workspace_id]
        if since is not None:
            where.append(c.at >= since)
        stmt = select(t.budget_alerts).where(*where).order_by(c.at.desc()).limit(limit)
        return await self.store._select(stmt, query=True)

    async def totals(self, keys: Sequence[str] | None = None) -> dict[str, tuple[int, int]]:
        """Σ (spent_delta, reserved_delta) per counter key: what the counters are, by the ledger.

        Exact however large: PostgreSQL sums BIGINT as NUMERIC, but SQLite's SUM raises "integer overflow" past
        2^63 (a counter's entries at the per-event bound add up to that after ~9,200 of them, which stopped the
        gateway at start). There each delta is summed as its high and low parts (delta >> 20, delta & 2^20-1;
        arithmetic shifts, so negatives split too), each sum far inside a BIGINT, and joined in Python."""
        c = t.budget_ledger.c
        parts: list[Any]
        if self.store.is_sqlite:
            parts = [
                func.sum(col.op(">>")(_LOW_BITS)) if high else func.sum(col.op("&")(_LOW_MASK))
                for col in (c.spent_delta, c.reserved_delta)
                for high in (True, False)
            ]
        else:
            parts = [func.sum(c.spent_delta), literal(0), func.sum(c.reserved_delta), literal(0)]
        stmt = select(c.counter_key, *parts).group_by(c.counter_key)
        if keys is not None:
            stmt = stmt.where(c.counter_key.in_(list(keys)))
        shift = 1 << _LOW_BITS if self.store.is_sqlite else 1

        def run(conn: Connection) -> dict[str, tuple[int, int]]:
            return {
                key: (int(s_hi or 0) * shift + int(s_lo or 0), int(r_hi or 0) * shift + int(r_lo or 0))
                for key, s_hi, s_lo, r_hi, r_lo in conn.execute(stmt)
            }

        return await self.store._read(run, query=True)

    async def open_reservations(self) -> list[dict[str, Any]]:
        """Reservations whose reserve no settle, release or expiry has closed (their process stopped meanwhile):
        one row per (reservation, counter) with what is still reserved, the call's request and run."""
        c = t.budget_ledger.c
        held = func.sum(c.reserved_delta)
        stmt = (
            select(
                c.workspace_id,
                c.reservation_id,
                c.budget_id,
                c.counter_key,
                held.label("reserved"),
                func.max(c.request_id).label("request_id"),
                func.max(c.run_id).label("run_id"),
                func.min(c.at).label("at"),
            )
            .where(c.reservation_id.is_not(None))
            .group_by(c.workspace_id, c.reservation_id, c.budget_id, c.counter_key)
            .having(held != 0)
        )
        return await self.store._select(stmt)

    async def reservation(self, workspace_id: str, reservation_id: str) -> dict[str, tuple[str, int, int]]:
        """One reservation's entries summed per counter: counter key → (budget id, Σ reserved_delta, Σ
        spent_delta). Open while its reserved sum is not zero; once closed, the spent sum is what it charged.
        Empty when no such reservation was ever made."""
        c = t.budget_ledger.c
        stmt = (
            select(c.counter_key, c.budget_id, func.sum(c.reserved_delta), func.sum(c.spent_delta))
            .where(c.workspace_id == workspace_id, c.reservation_id == reservation_id)
            .group_by(c.counter_key, c.budget_id)
        )

        def run(conn: Connection) -> dict[str, tuple[str, int, int]]:
            return {key: (budget, int(r or 0), int(s or 0)) for key, budget, r, s in conn.execute(stmt)}

        return await self.store._read(run)

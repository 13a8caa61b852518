"""The finance summary's SQL (GET /api/finance/summary): P&L measures grouped and bucketed, read from kept rows.

Every grouping but `run` reads the ledger's rollups (core.books): the hourly and daily ones (whole days from
the daily rows, the hours around them from the hourly ones, as the costs analytics read them), the session
rollup, or an indexed property's. `run` reads `run_totals` through the runs started in the window (its rows
are runs, its time a run's start). So a read touches the kept rows of its window, never the events.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Select, and_, func, select, union_all
from sqlalchemy.engine import Connection

from agentledger.core.books import MONEY_MEASURES, NO_SESSION, carry_of, hour_window
from agentledger.core.errors import InvalidRequest
from agentledger.store import schema as t
from agentledger.store.base import FINANCE_GROUPS, FinanceQuery, FinanceSummary
from agentledger.store.books import declared
from agentledger.store.queries import (
    MEMBER_GROUP,
    carried,
    check_group_by,
    day_spans,
    exact_sum,
    member_labels_query,
    order_amount,
    owner_key,
    time_bucket,
    with_members,
)

# group_by → the hourly (and daily) rollup's column
_ROLLUP_GROUP = {
    "workspace": "workspace_id",
    "department": "department_id",
    "agent": "agent_id",
    "workflow": "workflow",
    "endpoint": "endpoint_id",
}
MAX_SUMMARY_RUNS = 200_000  # runs a `group_by=run` window may hold (its rows are sorted whole)
_CARRIES = tuple(carry_of(m) for m in MONEY_MEASURES)
# What a source row carries, summed per group: `calls` are ledger events (a run's: its steps).
_SUMMED = ("calls", "errors", *MONEY_MEASURES, *_CARRIES)


def check_finance_group(group_by: str) -> str | None:
    """The property name of `property.<name>`, else None; a 400 for anything the summary does not group by."""
    return check_group_by(group_by, FINANCE_GROUPS)


def _measures(table: Any, calls: str) -> list[Any]:
    return [table.c[calls].label("calls"), *[table.c[c] for c in _SUMMED[1:]]]


def _rollup_rows(workspace_id: str, q: FinanceQuery, sqlite: bool, name: str | None) -> Any:
    """The kept ledger rows of the window, as (key, [bucket], *_SUMMED)."""
    since, until = hour_window(q.since, q.until)
    spans: list[tuple[Any, str, datetime | None, datetime | None]]
    if name is not None:
        roll, conditions = t.rollup_properties, [t.rollup_properties.c.name == name]
        spans = [(roll, "hour", since, until)]
    elif q.group_by == "session":
        roll, conditions = t.rollup_sessions, []
        spans = [(roll, "hour", since, until)]
    else:
        roll, conditions = t.rollup_hourly, []
        spans = day_spans(since, until) if q.bucket != "hour" else [(roll, "hour", since, until)]
    parts = []
    for table, column, lo, hi in spans:
        at = table.c[column]
        if name is not None:
            key = table.c.value
        elif q.group_by == "session":
            key = func.nullif(table.c.session_id, NO_SESSION)
        elif q.group_by == MEMBER_GROUP:  # the key's owner, folded at read time (store.queries.owner_key)
            key = owner_key(table)
        else:
            key = table.c[_ROLLUP_GROUP[q.group_by]]
        cols = [key.label("key")]
        if q.bucket is not None:
            cols.append(time_bucket(at, q.bucket, sqlite=sqlite).label("bucket"))
        part = select(*cols, *_measures(table, "events")).where(
            table.c.workspace_id == workspace_id, *(conditions if table is roll else [])
        )
        if lo is not None:
            part = part.where(at >= lo)
        if hi is not None:
            part = part.where(at < hi)
        parts.append(part)
    return (parts[0] if len(parts) == 1 else union_all(*parts)).subquery("u")


def _run_rows(workspace_id: str, q: FinanceQuery, sqlite: bool) -> Any:
    """The runs started in the window with their kept totals, as (key, [bucket], *_SUMMED)."""
    since, until = hour_window(q.since, q.until)
    r, k = t.runs.c, t.run_totals.c
    cols = [r.id.label("key")]
    if q.bucket is not None:
        cols.append(time_bucket(r.started_at, q.bucket, sqlite=sqlite).label("bucket"))
    cols += [func.coalesce(c, 0).label(c.name) for c in _measures(t.run_totals, "steps")]
    stmt = select(*cols).select_from(
        t.runs.outerjoin(t.run_totals, and_(k.workspace_id == r.workspace_id, k.run_id == r.id))
    )
    return _in_window(stmt.where(r.workspace_id == workspace_id), since, until).subquery("u")


def _in_window(stmt: Select[Any], since: datetime | None, until: datetime | None) -> Select[Any]:
    r = t.runs.c
    if since is not None:
        stmt = stmt.where(r.started_at >= since)
    if until is not None:
        stmt = stmt.where(r.started_at < until)
    return stmt


def _sums(u: Any) -> list[Any]:
    return [
        func.sum(u.c.calls).label("calls"),
        func.sum(u.c.errors).label("errors"),
        *[exact_sum(u.c[m]).label(m) for m in MONEY_MEASURES],
        *[func.sum(u.c[c]).label(c) for c in _CARRIES],
    ]


def _ordered(u: Any, q: FinanceQuery, sqlite: bool) -> Select[Any]:
    """Groups by bucket, then the most revenue, then the most cost (earners first, then spenders), then key."""
    group = [u.c.key] + ([u.c.bucket] if q.bucket is not None else [])
    stmt = select(*group, *_sums(u)).group_by(*group)
    if q.group_by != "run":  # a run without steps is still a run; a rollup row whose events all moved is not
        stmt = stmt.having(func.sum(u.c.calls) != 0)
    earned, spent = order_amount(u, "revenue_nanos", sqlite=sqlite), order_amount(u, "cost_nanos", sqlite=sqlite)
    order = [*group[1:], earned.desc(), spent.desc(), u.c.key]
    return stmt.order_by(*order).limit(q.limit + 1)


def _count_runs(conn: Connection, workspace_id: str, q: FinanceQuery) -> int:
    """The runs a `run` grouping would read, counted up to the bound + 1 (an index-only scan)."""
    ids = select(t.runs.c.id).where(t.runs.c.workspace_id == workspace_id)
    ids = _in_window(ids, *hour_window(q.since, q.until)).limit(MAX_SUMMARY_RUNS + 1)
    return int(conn.execute(select(func.count()).select_from(ids.subquery())).scalar() or 0)


def summary(conn: Connection, workspace_id: str, q: FinanceQuery) -> FinanceSummary:
    """The summary's rows (at most `q.limit`) and totals over all of them, read in the caller's snapshot."""
    sqlite = conn.dialect.name == "sqlite"
    name = check_finance_group(q.group_by)
    if name is not None and (workspace_id, name) not in declared(conn, workspace_id):
        raise InvalidRequest(
            f"group_by={q.group_by}: the summary reads kept rollups, and property {name!r} is not indexed: declare it "
            "(POST /api/analytics/properties).",
            param="group_by",
        )
    if q.group_by == "run":
        if _count_runs(conn, workspace_id, q) > MAX_SUMMARY_RUNS:
            raise InvalidRequest(
                f"group_by=run reads every run started in the window, at most {MAX_SUMMARY_RUNS}: narrow 'from'/'to'.",
                param="group_by",
            )
        u = _run_rows(workspace_id, q, sqlite)
    else:
        u = _rollup_rows(workspace_id, q, sqlite, name)
    rows = [_joined(r) for r in conn.execute(_ordered(u, q, sqlite))]
    more = len(rows) > q.limit
    if more:
        rows = rows[: q.limit]
        totals = _joined(conn.execute(select(*_sums(u))).one())
    else:
        totals = {k: sum(r[k] for r in rows) for k in ("calls", "errors", *MONEY_MEASURES)}
    if q.group_by == MEMBER_GROUP:
        ids = sorted({r["key"] for r in rows if r["key"] is not None})
        with_members(rows, [r._mapping for r in conn.execute(member_labels_query(workspace_id, ids))] if ids else [])
    return FinanceSummary(rows, totals, more)


def _joined(r: Any) -> dict[str, Any]:
    row = carried(dict(r._mapping))
    for k in ("calls", "errors", *MONEY_MEASURES):
        row[k] = int(row.get(k) or 0)
    return row


__all__ = ["MAX_SUMMARY_RUNS", "check_finance_group", "summary"]

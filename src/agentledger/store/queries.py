"""Read queries shared by both backends: run totals and cost rollups, computed from the rows themselves.

Totals are aggregated at read time rather than kept as counters, so they can never drift from the steps
they sum. Model-call steps mirror their gateway request; a cost rollup therefore reads every request plus
only those steps that did not come through the gateway, and nothing is counted twice.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import BigInteger, Select, and_, case, func, literal, select, union_all
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.types import TypeDecorator

from agentledger.core.errors import InvalidRequest
from agentledger.store import schema as t
from agentledger.store.base import GROUP_COLUMNS, CostQuery, RunFilter

_TOTALS = (
    "cost_nanos",
    "input_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "output_tokens",
    "reasoning_tokens",
)


class _ExactInt(TypeDecorator[int]):
    """An exact integer however the backend hands it over: PostgreSQL's SUM(bigint) is NUMERIC (a Decimal),
    SQLite's exact_sum a decimal string."""

    impl = BigInteger
    cache_ok = True

    def process_result_value(self, value: Any, dialect: Any) -> int | None:
        return None if value is None else int(value)


class exact_sum(FunctionElement[int]):  # noqa: N801 (an SQL function, named like one)
    """SUM of a bounded, non-negative BIGINT column that cannot overflow on either store.

    PostgreSQL sums BIGINT into NUMERIC: exact, never overflows. SQLite's SUM raises "integer overflow" past
    2^63, which 9,224 events at the $1M bound would reach. So on SQLite each value is split into base-10^5
    digits v = d2·10^10 + d1·10^5 + d0; with every value ≤ 10^15 (core.bounds) each digit is ≤ 10^5, and
    each digit's SUM stays below 2^63 for fewer than 9.2·10^13 rows, more than a SQLite file can hold
    (docs/architecture.md, "Bounds"). The digit sums are carried and joined as a decimal string in SQL.
    """

    type = _ExactInt()
    name = "exact_sum"
    inherit_cache = True


@compiles(exact_sum)
def _exact_sum(element: exact_sum, compiler: SQLCompiler, **kw: Any) -> str:
    return f"SUM({compiler.process(element.clauses, **kw)})"


@compiles(exact_sum, "sqlite")
def _exact_sum_sqlite(element: exact_sum, compiler: SQLCompiler, **kw: Any) -> str:
    v = compiler.process(element.clauses, **kw)
    d0, d1, d2 = f"SUM(({v}) % 100000)", f"SUM(({v}) / 100000 % 100000)", f"SUM(({v}) / 10000000000)"
    t1 = f"({d1} + {d0} / 100000)"  # the middle digit sum with the carry from the lowest
    return f"(CAST({d2} + {t1} / 100000 AS TEXT) || printf('%05d', {t1} % 100000) || printf('%05d', {d0} % 100000))"


def runs_query(workspace_id: str, flt: RunFilter, *, run_id: str | None = None) -> Select[Any]:
    s = t.steps.c
    totals = (
        select(
            s.run_id,
            *[exact_sum(getattr(s, k)).label(k) for k in _TOTALS],
            func.count().label("steps"),
            func.sum(case((s.kind == "model_call", 1), else_=0)).label("model_calls"),
            func.sum(case((s.status == "error", 1), else_=0)).label("errors"),
            func.sum(case((s.attempt > 1, 1), else_=0)).label("retries"),
            func.sum(case((s.kind == "model_call", s.latency_ms), else_=0)).label("model_latency_ms"),
        )
        .where(s.workspace_id == workspace_id)
        .group_by(s.run_id)
    )
    if run_id is not None:
        totals = totals.where(s.run_id == run_id)
    sub = totals.subquery()
    r = t.runs.c
    stmt = select(
        t.runs,
        *[
            func.coalesce(getattr(sub.c, k), 0).label(k)
            for k in (*_TOTALS, "steps", "model_calls", "errors", "retries")
        ],
        func.coalesce(sub.c.model_latency_ms, 0.0).label("model_latency_ms"),
    ).select_from(t.runs.outerjoin(sub, sub.c.run_id == r.id))
    stmt = stmt.where(r.workspace_id == workspace_id)
    if run_id is not None:
        return stmt.where(r.id == run_id)
    for value, col in (
        (flt.agent_id, r.agent_id),
        (flt.session_id, r.session_id),
        (flt.workflow, r.workflow),
        (flt.status, r.status),
    ):
        if value is not None:
            stmt = stmt.where(col == value)
    if flt.since is not None:
        stmt = stmt.where(r.started_at >= flt.since)
    if flt.until is not None:
        stmt = stmt.where(r.started_at < flt.until)
    return stmt.order_by(r.started_at.desc(), r.id).limit(flt.limit).offset(flt.offset)


def _ledger() -> Any:
    """Every costed event once: all gateway requests, plus steps that did not come through the gateway."""
    r, s = t.requests.c, t.steps.c
    cols = (
        "workspace_id",
        "department_id",
        "virtual_key_id",
        "agent_id",
        "run_id",
        "session_id",
        "model",
        "provider",
        "prompt_id",
        "properties",
        "started_at",
        *_TOTALS,
    )
    return union_all(
        select(*[getattr(r, c) for c in cols], literal(1).label("requests")),
        select(*[getattr(s, c) for c in cols], literal(0).label("requests")).where(s.request_id.is_(None)),
    ).subquery("ledger")


_GROUP_FIELD = {
    "workspace": "workspace_id",
    "department": "department_id",
    "agent": "agent_id",
    "virtual_key": "virtual_key_id",
    "session": "session_id",
    "run": "run_id",
    "model": "model",
    "provider": "provider",
    "prompt": "prompt_id",
}


def costs_query(workspace_id: str, q: CostQuery, *, sqlite: bool) -> Select[Any]:
    led = _ledger()
    src: Any = led
    if q.group_by == "workflow":
        src = led.outerjoin(t.runs, and_(t.runs.c.workspace_id == led.c.workspace_id, t.runs.c.id == led.c.run_id))
        key = t.runs.c.workflow
    elif q.group_by.startswith("property."):
        name = q.group_by.removeprefix("property.")
        if not name:
            raise InvalidRequest("group_by=property.<name> needs a property name.", param="group_by")
        key = led.c.properties[name].as_string()
    elif q.group_by in _GROUP_FIELD:
        key = led.c[_GROUP_FIELD[q.group_by]]
    else:
        choices = ", ".join((*GROUP_COLUMNS, "property.<name>"))
        raise InvalidRequest(f"group_by must be one of {choices}.", param="group_by")

    group: list[Any] = [key.label("key")]
    if q.interval is not None:
        group.append(_bucket(led.c.started_at, q.interval, sqlite=sqlite).label("bucket"))
    stmt = (
        select(
            *group,
            func.count().label("events"),
            func.sum(led.c.requests).label("requests"),
            *[exact_sum(led.c[k]).label(k) for k in _TOTALS],
        )
        .select_from(src)
        .where(led.c.workspace_id == workspace_id)
    )
    if q.since is not None:
        stmt = stmt.where(led.c.started_at >= q.since)
    if q.until is not None:
        stmt = stmt.where(led.c.started_at < q.until)
    keys = [g for g in group]
    order = [keys[1]] if len(keys) > 1 else []
    # Ordering only: SQLite's TOTAL() is a float and never overflows, where its SUM() would.
    by_cost = func.total(led.c.cost_nanos) if sqlite else func.sum(led.c.cost_nanos)
    return stmt.group_by(*keys).order_by(*order, by_cost.desc(), keys[0])


def _bucket(col: Any, interval: str, *, sqlite: bool) -> Any:
    fmt = {"hour": ("%Y-%m-%dT%H:00:00Z", 'YYYY-MM-DD"T"HH24:00:00"Z"'), "day": ("%Y-%m-%d", "YYYY-MM-DD")}
    if interval not in fmt:
        raise InvalidRequest("interval must be 'hour' or 'day'.", param="interval")
    if sqlite:
        return func.strftime(fmt[interval][0], col)
    return func.to_char(func.timezone("UTC", col), fmt[interval][1])


__all__ = ["costs_query", "exact_sum", "runs_query"]

"""Read queries shared by both backends: runs with their totals, session paths and cost rollups.

Totals and rollups are kept at write time (core.books, store.books), so a read touches the rows it returns, not
the events they sum. Model-call steps mirror their gateway request; the ledger (`ledger`, what cost rollups
count) is therefore every request plus only those steps that did not come through the gateway.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import BigInteger, Select, and_, case, func, literal, literal_column, or_, select, union_all
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.types import TypeDecorator

from agentledger.core.books import (
    COST_UNIT,
    ESTIMATED_SOURCES,
    LEDGER_MEASURES,
    MONEY_MEASURES,
    NO_SESSION,
    NOT_TOOL_KINDS,
    PAYMENT_COLUMNS,
    RUN_MEASURES,
    carry_of,
    hour_window,
)
from agentledger.core.errors import InvalidRequest
from agentledger.core.marks import decision_label, mark_of, property_label
from agentledger.store import schema as t
from agentledger.store.base import GROUP_COLUMNS, CostQuery, RequestFilter, RunFilter, SessionFilter

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
    SQLite's exact_sum the text 'hi,lo' (see there)."""

    impl = BigInteger
    cache_ok = True

    def process_result_value(self, value: Any, dialect: Any) -> int | None:
        if value is None:
            return None
        if isinstance(value, str) and "," in value:
            hi, lo = value.split(",")
            return int(hi) * _SPLIT + int(lo)
        return int(value)


_SPLIT = 10**9


class exact_sum(FunctionElement[int]):  # noqa: N801 (an SQL function, named like one)
    """SUM of a BIGINT column that cannot overflow on either store, negative values included (an outbound
    payment refunded is a negative cost).

    PostgreSQL sums BIGINT into NUMERIC: exact, never overflows. SQLite's SUM raises "integer overflow" past
    2^63, which 9,224 events at the $1M bound would reach. So on SQLite each value is split in two at 10^9 with
    SQLite's truncating `/` and `%`, v = hi·10^9 + lo, both parts of v's sign: every |lo| is below 10^9, so
    their SUM stays within 2^63 for 9.2·10^9 rows; every |hi| is at most 2^63/10^9 ≈ 9.2·10^9 (2·10^6 for an
    event's own value: a payment's amount plus its fee, core.bounds), so theirs too for 10^9 rows of kept
    totals or 4.6·10^12 events — more than a SQLite file holds (docs/architecture.md, "Bounds"). The two sums
    come back as the text 'hi,lo' and are joined in Python (`_ExactInt`), exactly, whatever their signs.
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
    return f"(CAST(SUM(({v}) / {_SPLIT}) AS TEXT) || ',' || CAST(SUM(({v}) % {_SPLIT}) AS TEXT))"


def carried(row: dict[str, Any]) -> dict[str, Any]:
    """A row of kept totals with every money measure joined back: `x_nanos` + `x_carry`·10^15 (core.books)."""
    for measure in MONEY_MEASURES:
        carry = row.pop(carry_of(measure), None)
        if carry:
            row[measure] = int(row[measure] or 0) + int(carry) * COST_UNIT
    return row


def kept_measures(table: Any, measures: tuple[str, ...]) -> list[Any]:
    """The columns of `measures` and of the carries of the money measures among them."""
    return [table.c[m] for m in measures] + [table.c[carry_of(m)] for m in MONEY_MEASURES if m in measures]


def runs_query(workspace_id: str, flt: RunFilter, *, run_id: str | None = None) -> Select[Any]:
    """Runs with their kept totals (core.books), newest first by (started_at, id).

    A page is read off one index (schema: ix_runs_ws_*) and stops at `limit`: the cursor continues below the
    last row seen, so page 1000 costs what page 1 does; `offset` still works but reads what it skips. A decision
    or property filter reads the run marks' index instead (ix_run_marks_ws_mark: a mark's runs by their start),
    each further one a probe of the marks' primary key."""
    r, k = t.runs.c, t.run_totals.c
    totals = [
        func.coalesce(c, 0.0 if c.name == "model_latency_ms" else 0).label(c.name)
        for c in kept_measures(t.run_totals, RUN_MEASURES)
    ]
    marks = _marks_of(flt)
    if run_id is None and marks:
        return _marked_runs(workspace_id, flt, marks, totals)
    stmt = (
        select(t.runs, *totals)
        .select_from(t.runs.outerjoin(t.run_totals, and_(k.workspace_id == r.workspace_id, k.run_id == r.id)))
        .where(r.workspace_id == workspace_id)
    )
    if run_id is not None:
        return stmt.where(r.id == run_id)
    stmt = stmt.where(*_run_conditions(flt))
    stmt = newest_first(stmt, r.started_at, r.id, flt.cursor, flt.since, flt.until)
    return stmt.limit(flt.limit).offset(flt.offset)


def _run_conditions(flt: RunFilter) -> list[Any]:
    r = t.runs.c
    pairs = (
        (flt.agent_id, r.agent_id),
        (flt.session_id, r.session_id),
        (flt.workflow, r.workflow),
        (flt.status, r.status),
        (flt.endpoint_id, r.endpoint_id),
    )
    return [col == value for value, col in pairs if value is not None]


def _marks_of(flt: RunFilter) -> list[str]:
    labels = [decision_label(flt.decision)] if flt.decision is not None else []
    labels += [property_label(name, value) for name, value in flt.properties]
    return list(dict.fromkeys(mark_of(label) for label in labels))


def _marked_runs(workspace_id: str, flt: RunFilter, marks: list[str], totals: list[Any]) -> Select[Any]:
    """The runs list filtered by marks: the first mark's runs in order off its index, joined to their runs by
    primary key, each further mark a probe of its primary key; the other filters are checked on the runs met."""
    r, k = t.runs.c, t.run_totals.c
    first = t.run_marks.alias("mark_0")
    m = first.c
    joined = first.join(t.runs, and_(r.workspace_id == m.workspace_id, r.id == m.run_id))
    for i, mark in enumerate(marks[1:], 1):
        more = t.run_marks.alias(f"mark_{i}")
        joined = joined.join(
            more, and_(more.c.workspace_id == m.workspace_id, more.c.run_id == m.run_id, more.c.mark == mark)
        )
    joined = joined.outerjoin(t.run_totals, and_(k.workspace_id == m.workspace_id, k.run_id == m.run_id))
    stmt = select(t.runs, *totals).select_from(joined).where(m.workspace_id == workspace_id, m.mark == marks[0])
    stmt = stmt.where(*_run_conditions(flt))
    # The mark's start is its run's (store/marks.py): the same order and cursor as the unfiltered list.
    stmt = newest_first(stmt, m.started_at, m.run_id, flt.cursor, flt.since, flt.until)
    return stmt.limit(flt.limit).offset(flt.offset)


def newest_first(
    stmt: Select[Any],
    at: Any,
    key: Any,
    cursor: tuple[datetime, str] | None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> Select[Any]:
    """`stmt` in [since, until) by `at`, newest first by (`at`, `key`), continued below `cursor` (keyset paging:
    the first conjunct bounds the index range, the second skips the rows of that instant already seen)."""
    if since is not None:
        stmt = stmt.where(at >= since)
    if until is not None:
        stmt = stmt.where(at < until)
    if cursor is not None:
        last_at, last_key = cursor
        stmt = stmt.where(at <= last_at, or_(at < last_at, key < last_key))
    return stmt.order_by(at.desc(), key.desc())


def session_paths_query(workspace_id: str, session_id: str | list[str]) -> Select[Any]:
    """The kept paths of one session (or of several: each row then names its `session_id`), by primary key."""
    p = t.session_paths.c
    measures = [c for c in kept_measures(t.session_paths, LEDGER_MEASURES) if c.name != "events"]
    stmt = select(p.path, p.events.label("count"), *measures).where(p.workspace_id == workspace_id, p.events != 0)
    if isinstance(session_id, list):
        stmt = stmt.add_columns(p.session_id).where(p.session_id.in_(session_id))
    else:
        stmt = stmt.where(p.session_id == session_id)
    return stmt.order_by(p.path.asc().nulls_last())


def sessions_query(workspace_id: str, flt: SessionFilter) -> Select[Any]:
    """Sessions, most recently active first by (last_seen_at, id), off ix_sessions_ws_seen; the cursor continues
    below the last row seen (as runs_query's)."""
    s = t.sessions.c
    stmt = select(t.sessions).where(s.workspace_id == workspace_id)
    return newest_first(stmt, s.last_seen_at, s.id, flt.cursor).limit(flt.limit)


def session_run_counts_query(workspace_id: str, session_ids: list[str]) -> Select[Any]:
    """How many runs each of `session_ids` has (ix_runs_ws_session)."""
    r = t.runs.c
    return (
        select(r.session_id, func.count().label("run_count"))
        .where(r.workspace_id == workspace_id, r.session_id.in_(session_ids))
        .group_by(r.session_id)
    )


def requests_query(workspace_id: str, flt: RequestFilter) -> Select[Any]:
    """Gateway requests newest first by (started_at, id), read down ix_requests_started_ws (time first): the
    filters are checked on the rows met, the cursor continues below the last row seen. The stored response body
    and the request hash are left out."""
    r = t.requests.c
    cols = [c for c in t.requests.c if c.name not in ("response_body", "request_hash")]
    stmt = select(*cols).where(r.workspace_id == workspace_id)
    for value, col in (
        (flt.model, r.model),
        (flt.provider, r.provider),
        (flt.status, r.status),
        (flt.decision, r.policy_decision),
    ):
        if value is not None:
            stmt = stmt.where(col == value)
    return newest_first(stmt, r.started_at, r.id, flt.cursor, flt.since, flt.until).limit(flt.limit)


# What a ledger row carries: its attribution, time, status, cost and tokens (also what core.books.Books reads of
# one, with a step's kind and payment columns: STEP_BOOK_COLUMNS).
LEDGER_COLUMNS = (
    "workspace_id",
    "department_id",
    "virtual_key_id",
    "agent_id",
    "run_id",
    "session_id",
    "session_path",
    "prompt_id",
    "model",
    "provider",
    "properties",
    "started_at",
    "status",
    "cost_source",
    *_TOTALS,
)
STEP_BOOK_COLUMNS = ("kind", *PAYMENT_COLUMNS)


def ledger_measures(c: Any, is_request: bool) -> list[Any]:
    """What one event adds to LEDGER_MEASURES but `events` (one each), as SQL over its table's columns `c`: the
    rule core.books.Books applies when it books the event, for the recomputation that checks it."""
    cost = c.cost_nanos if is_request else case((c.kind == "model_attempt", 0), else_=c.cost_nanos)
    tokens = [c[f] if is_request else case((c.kind == "model_attempt", 0), else_=c[f]) for f in _TOTALS[1:]]
    zero = literal_column("0", BigInteger)
    return [
        literal(int(is_request)).label("requests"),
        case((c.status == "error", 1), else_=0).label("errors"),
        cost.label("cost_nanos"),
        *[v.label(f) for v, f in zip(tokens, _TOTALS[1:], strict=True)],
        *[(zero if is_request else c[m]).label(m) for m in PAYMENT_COLUMNS],
        (zero if is_request else case((c.kind.in_(NOT_TOOL_KINDS), 0), else_=cost)).label("tool_spend_nanos"),
        case((c.cost_source.in_(ESTIMATED_SOURCES), cost), else_=0).label("estimated_cost_nanos"),
    ]


def ledger_part(c: Any, is_request: bool, attribution: tuple[str, ...] = LEDGER_COLUMNS[:12]) -> Select[Any]:
    """One table's events of the ledger: `attribution` columns and the measures (`ledger_measures`); a step
    counts only when it did not come through the gateway (its request is counted)."""
    part = select(*[c[k] for k in attribution], *ledger_measures(c, is_request))
    return part if is_request else part.where(c.request_id.is_(None))


def ledger(workspace_id: str | None, since: datetime | None = None, until: datetime | None = None) -> Any:
    """Every costed event once — all gateway requests, plus steps that did not come through the gateway —
    started in [since, until), with what it adds to the books (`ledger_measures`); and the same outer-joined to
    its run (for the run's `workflow`). Each table is its own branch, an index range scan (schema:
    ix_requests_started_ws, ix_steps_ws_started)."""
    r, s = t.requests.c, t.steps.c
    parts = []
    for c, is_request in ((r, True), (s, False)):
        part = ledger_part(c, is_request)
        if workspace_id is not None:
            part = part.where(c.workspace_id == workspace_id)
        if since is not None:
            part = part.where(c.started_at >= since)
        if until is not None:
            part = part.where(c.started_at < until)
        parts.append(part)
    led = union_all(*parts).subquery("ledger")
    runs = t.runs.c
    joined = led.outerjoin(t.runs, and_(runs.workspace_id == led.c.workspace_id, runs.id == led.c.run_id))
    return led, joined


# group_by → the hourly rollup's column (core.books.HOURLY_DIMS)
_HOURLY_GROUP = {
    "workspace": "workspace_id",
    "department": "department_id",
    "agent": "agent_id",
    "virtual_key": "virtual_key_id",
    "workflow": "workflow",
    "model": "model",
    "provider": "provider",
    "prompt": "prompt_id",
}
_RAW_GROUP = {**_HOURLY_GROUP, "session": "session_id", "run": "run_id"}
MEMBER_GROUP = "member"  # the owner of the rows' virtual key, looked up at read time (owner_key)


def owner_key(table: Any) -> Any:
    """The member owning a kept row's virtual key (`virtual_keys.owner_member_id`), looked up per row by primary
    key: a key's spend is its owner's, folded at read time, so giving or taking a key moves its whole history.
    NULL for a key without an owner and for calls without a key."""
    vk = t.virtual_keys.c
    return (
        select(vk.owner_member_id)
        .where(vk.workspace_id == table.c.workspace_id, vk.id == table.c.virtual_key_id)
        .scalar_subquery()
    )


def member_labels_query(workspace_id: str, member_ids: list[str]) -> Select[Any]:
    """The email and name of the members a `group_by=member` answer names (a second small query)."""
    m = t.members.c
    return select(m.id, m.email, m.name).where(m.workspace_id == workspace_id, m.id.in_(member_ids))


def with_members(rows: list[dict[str, Any]], found: Any) -> list[dict[str, Any]]:
    """Each row with its `member` ({id, email, name}; None for the keys without an owner) from
    `member_labels_query`'s rows."""
    labels = {m["id"]: {"id": m["id"], "email": m["email"], "name": m["name"]} for m in (dict(r) for r in found)}
    for row in rows:
        row["member"] = labels.get(row["key"])
    return rows


def check_group_by(group_by: str, groups: tuple[str, ...] = GROUP_COLUMNS) -> str | None:
    """The property name of `property.<name>`, else None; a 400 for anything but `groups` (the costs analytics'
    by default; the finance summary passes its own)."""
    if group_by.startswith("property."):
        name = group_by.removeprefix("property.")
        if not name:
            raise InvalidRequest("group_by=property.<name> needs a property name.", param="group_by")
        return name
    if group_by not in groups:
        choices = ", ".join((*groups, "property.<name>"))
        raise InvalidRequest(f"group_by must be one of {choices}.", param="group_by")
    return None


def kept_source(q: CostQuery, indexed: bool) -> tuple[Any, Any, list[Any]] | None:
    """The kept rollup that answers `q` (table, key column, extra conditions), or None: the events must be read."""
    if q.group_by in _HOURLY_GROUP:
        roll = t.rollup_hourly
        return roll, roll.c[_HOURLY_GROUP[q.group_by]], []
    if q.group_by == MEMBER_GROUP:
        return t.rollup_hourly, owner_key(t.rollup_hourly), []
    if q.group_by == "session":
        return t.rollup_sessions, func.nullif(t.rollup_sessions.c.session_id, NO_SESSION), []
    name = check_group_by(q.group_by)
    if name is not None and indexed:
        roll = t.rollup_properties
        return roll, roll.c.value, [roll.c.name == name]
    return None


def raw_key(q: CostQuery, led: Any) -> Any:
    name = check_group_by(q.group_by)
    if name is not None:
        return led.c.properties[name].as_string()
    if q.group_by == "workflow":
        # Looked up per event by primary key: a join would hash the whole runs table.
        runs = t.runs.c
        return (
            select(runs.workflow)
            .where(runs.workspace_id == led.c.workspace_id, runs.id == led.c.run_id)
            .scalar_subquery()
        )
    return led.c[_RAW_GROUP[q.group_by]]


def costs_query(workspace_id: str, q: CostQuery, *, sqlite: bool, indexed: bool = False) -> Select[Any]:
    """Costs grouped by `q.group_by` (and bucketed by `q.interval`) over whole hours (core.books.hour_window):
    from the kept rollups, or from the events when no rollup keeps the grouping (the store bounds how many it
    reads: `scan_count_query`)."""
    since, until = hour_window(q.since, q.until)
    measures = ("events", "requests", "cost_nanos", *_TOTALS[1:], "cost_carry")
    source = kept_source(q, indexed)
    if source is not None:
        roll, key, conditions = source
        spans: list[tuple[Any, str, datetime | None, datetime | None]] = [(roll, "hour", since, until)]
        if roll is t.rollup_hourly and q.interval != "hour":
            spans = day_spans(since, until)
        parts = []
        for table, column, lo, hi in spans:
            at = table.c[column]
            if q.group_by == MEMBER_GROUP:
                key_col = owner_key(table)
            else:
                key_col = key if table is roll else table.c[key.name]
            cols = [key_col.label("key")]
            if q.interval is not None:
                cols.append(time_bucket(at, q.interval, sqlite=sqlite).label("bucket"))
            part = select(*cols, *[table.c[m] for m in measures]).where(
                table.c.workspace_id == workspace_id, *conditions
            )
            if lo is not None:
                part = part.where(at >= lo)
            if hi is not None:
                part = part.where(at < hi)
            parts.append(part)
        rows: Any = parts[0] if len(parts) == 1 else union_all(*parts)
    else:
        led, _ = ledger(workspace_id, since, until)
        cols = [raw_key(q, led).label("key")]
        if q.interval is not None:
            cols.append(time_bucket(led.c.started_at, q.interval, sqlite=sqlite).label("bucket"))
        rows = select(
            *cols,
            literal(1).label("events"),
            led.c.requests,
            *[led.c[m] for m in _TOTALS],
            literal(0).label("cost_carry"),
        ).select_from(led)
    u = rows.subquery("u")
    group = [u.c.key] + ([u.c.bucket] if q.interval is not None else [])
    by_cost = order_amount(u, "cost_nanos", sqlite=sqlite)
    return (
        select(
            *group,
            func.sum(u.c.events).label("events"),
            func.sum(u.c.requests).label("requests"),
            *[exact_sum(u.c[m]).label(m) for m in _TOTALS],
            func.sum(u.c.cost_carry).label("cost_carry"),
        )
        .group_by(*group)
        .having(func.sum(u.c.events) != 0)
        .order_by(*group[1:], by_cost.desc(), u.c.key)
    )


def order_amount(u: Any, measure: str, *, sqlite: bool) -> Any:
    """A money measure of `u` summed per group with its carry, for ordering only: SQLite's TOTAL() is a float
    and never overflows, where its SUM() would."""
    total = func.total if sqlite else func.sum
    return total(u.c[carry_of(measure)]) * literal_column(str(COST_UNIT)) + total(u.c[measure])


Span = tuple[Any, str, datetime | None, datetime | None]  # a kept table, its time column, [from, to)


def day_spans(since: datetime | None, until: datetime | None) -> list[Span]:
    """An hour-aligned window as the whole days inside it (rollup_daily) and the hours around them
    (rollup_hourly): the same sums, from 24 times fewer rows over a month."""
    hours = [(t.rollup_hourly, "hour", since, until)]
    try:
        first = None if since is None else _next_day(since)
    except OverflowError:  # since falls on the calendar's last day: no whole day follows it
        return hours
    last = None if until is None else until.replace(hour=0)
    if first is not None and last is not None and first >= last:
        return hours
    spans: list[Span] = [(t.rollup_daily, "day", first, last)]
    if since is not None and first != since:
        spans.append((t.rollup_hourly, "hour", since, first))
    if until is not None and last != until:
        spans.append((t.rollup_hourly, "hour", last, until))
    return spans


def _next_day(ts: datetime) -> datetime:
    day = ts.replace(hour=0)
    return day if day == ts else day + timedelta(days=1)


def scan_count_query(workspace_id: str, q: CostQuery, cap: int) -> Select[Any]:
    """How many events a grouping without a rollup would read, counted up to `cap` + 1 (an index-only scan)."""
    led, _ = ledger(workspace_id, *hour_window(q.since, q.until))
    return select(func.count()).select_from(select(led.c.workspace_id).limit(cap + 1).subquery())


def time_bucket(col: Any, interval: str, *, sqlite: bool) -> Any:
    pg_format = {"hour": 'YYYY-MM-DD"T"HH24:00:00"Z"', "day": "YYYY-MM-DD"}
    if interval not in pg_format:
        raise InvalidRequest("interval must be 'hour' or 'day'.", param="interval")
    if sqlite:
        # The stored text is 'YYYY-MM-DD HH:MM:SS.ffffff' (UTC, store.bulk.sqlite_datetime): cutting it is
        # exact and costs a fraction of parsing it with strftime, over every rollup row of a chart.
        day = func.substr(col, 1, 10)
        return day if interval == "day" else day + "T" + func.substr(col, 12, 2) + ":00:00Z"
    return func.to_char(func.timezone("UTC", col), pg_format[interval])


__all__ = [
    "carried",
    "costs_query",
    "exact_sum",
    "ledger",
    "member_labels_query",
    "owner_key",
    "requests_query",
    "with_members",
    "runs_query",
    "scan_count_query",
    "session_paths_query",
    "session_run_counts_query",
    "sessions_query",
]

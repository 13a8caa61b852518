"""The books' SQL: apply core.books deltas, recompute every kept row from the raw rows, verify and rebuild.

`apply` runs inside the trace batch's transaction (store.sql). `recompute` is the independent path: plain
GROUP BY over `requests` and `steps`, the way totals were computed at read time before they were kept; `verify`
compares it with what is kept, `rebuild` replaces what is kept with it (and fills the tables when migration
0003 creates them).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Table, bindparam, case, delete, func, literal, literal_column, select, type_coerce
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from agentledger.core.books import (
    COST_UNIT,
    ESTIMATED_SOURCES,
    FINANCE_MEASURES,
    HOURLY_DIMS,
    LEDGER_MEASURES,
    MONEY_MEASURES,
    NO_SESSION,
    NOT_TOOL_KINDS,
    PAYMENT_COLUMNS,
    RUN_DIMS,
    RUN_MEASURES,
    Books,
    Key,
    carry_of,
    dims_key,
    split_money,
)
from agentledger.core.rollup import TOKEN_FIELDS
from agentledger.store import marks as marks_sql, retention as retention_sql, schema as t
from agentledger.store.bulk import BulkStatement
from agentledger.store.queries import exact_sum, kept_measures, ledger

# Each kept table: its name in core.books.Books, its key columns (Books' key order) and its measures.
KEPT: dict[str, tuple[Table, tuple[str, ...], tuple[str, ...]]] = {
    "runs": (t.run_totals, ("workspace_id", "run_id"), RUN_MEASURES),
    "paths": (t.session_paths, ("workspace_id", "session_id", "path"), LEDGER_MEASURES),
    "hourly": (t.rollup_hourly, ("workspace_id", "hour", *HOURLY_DIMS), LEDGER_MEASURES),
    "daily": (t.rollup_daily, ("workspace_id", "day", *HOURLY_DIMS), LEDGER_MEASURES),
    "sessions": (t.rollup_sessions, ("workspace_id", "hour", "session_id"), LEDGER_MEASURES),
    "properties": (t.rollup_properties, ("workspace_id", "name", "hour", "value"), LEDGER_MEASURES),
}
# The hash column that stands for long labels in a primary key, and the labels it covers.
_HASHED = {
    "paths": ("path_key", ("path",)),
    "hourly": ("dims_key", HOURLY_DIMS),
    "daily": ("dims_key", HOURLY_DIMS),
    "properties": ("value_key", ("value",)),
}
_UNIT: Any = literal_column(str(COST_UNIT), BigInteger)


def _row(name: str, key: Key, measures: list[Any]) -> dict[str, Any]:
    _, cols, names = KEPT[name]
    row = dict(zip(cols, key, strict=True))
    if name in _HASHED:
        column, labels = _HASHED[name]
        row[column] = dims_key(tuple(row[label] for label in labels))
    row.update(zip(names, measures, strict=True))
    for measure, carry in _CARRIES:
        row[measure], row[carry] = split_money(row[measure])
    return row


_CARRIES = tuple((m, carry_of(m)) for m in MONEY_MEASURES)


def _upsert(table: Table, columns: Iterable[str], sqlite_dialect: bool) -> Any:
    stmt = (sqlite.insert if sqlite_dialect else postgresql.insert)(table)
    old, new = table.c, stmt.excluded
    pk = [c.name for c in table.primary_key.columns]
    counters = [c for c in columns if c not in pk and c in old and not _is_label(table, c)]
    money = {name for pair in _CARRIES for name in pair}
    sets: dict[str, Any] = {c: old[c] + new[c] for c in counters if c not in money}
    for measure, carry in _CARRIES:
        if measure in counters:
            # Both remainders are in [0, 10^15), so their sum is non-negative and `//` (SQL integer division)
            # floors: the remainder stays in [0, 10^15) and the carry takes the rest, of any sign.
            both = old[measure] + new[measure]
            sets[measure] = both % _UNIT
            sets[carry] = old[carry] + new[carry] + both // _UNIT
    return stmt.on_conflict_do_update(index_elements=pk, set_=sets)


def _is_label(table: Table, column: str) -> bool:
    return column in ("path", "value", *HOURLY_DIMS) and not table.c[column].primary_key


class BookKeeper:
    """Applies Books to the kept tables with statements compiled once (store.bulk)."""

    def __init__(self, dialect: Any) -> None:
        self.dialect = dialect
        self.sqlite = dialect.name == "sqlite"
        self._statements: dict[str, BulkStatement] = {}

    def apply(self, conn: Connection, books: Books) -> None:
        for name, deltas in books.tables().items():
            table = KEPT[name][0]
            # Sorted by key: concurrent writers (PostgreSQL replicas) then lock shared rows in one order and
            # cannot deadlock on them.
            rows = [_row(name, key, deltas[key]) for key in sorted(deltas, key=_sortable)]
            stmt = self._statements.get(name)
            if stmt is None:
                keys = list(rows[0])
                stmt = self._statements[name] = BulkStatement(
                    _upsert(table, keys, self.sqlite), table, keys, self.dialect
                )
            stmt.run(conn, rows)


def _sortable(key: Key) -> tuple[Any, ...]:
    return tuple((v is not None, "" if v is None else v) for v in key)


# -- recomputation from the raw rows ---------------------------------------------------------------------------


def _hour(col: Any, sqlite_dialect: bool, unit: str = "hour") -> Any:
    if sqlite_dialect:  # the text SQLAlchemy stores a DATETIME as (store.bulk.sqlite_datetime)
        fmt = "%Y-%m-%d %H:00:00.000000" if unit == "hour" else "%Y-%m-%d 00:00:00.000000"
        return type_coerce(func.strftime(fmt, col), t.TS)
    return func.timezone("UTC", func.date_trunc(unit, func.timezone("UTC", col)))


def _ledger_sums(led: Any) -> list[Any]:
    return [
        func.count().label("events"),
        func.sum(led.c.requests).label("requests"),
        func.sum(led.c.errors).label("errors"),
        *[exact_sum(led.c[k]).label(k) for k in LEDGER_MEASURES[3:]],
    ]


def _run_sums(s: Any) -> list[Any]:
    """RUN_MEASURES over a run's steps, as core.books.Books folds them."""
    part = s.kind == "model_attempt"  # an attempt's cost and tokens are its model_call's
    cost = case((part, 0), else_=s.cost_nanos)
    return [
        func.count(),
        func.sum(case((s.kind == "model_call", 1), else_=0)),
        func.sum(case((s.attempt > 1, 1), else_=0)),
        func.sum(case((s.kind == "model_call", func.coalesce(s.latency_ms, 0.0)), else_=0.0)),
        func.sum(case((s.status == "error", 1), else_=0)),
        exact_sum(cost),
        *[exact_sum(case((part, 0), else_=s[k])) for k in TOKEN_FIELDS],
        *[exact_sum(s[k]) for k in PAYMENT_COLUMNS],
        exact_sum(case((s.kind.in_(NOT_TOOL_KINDS), 0), else_=cost)),
        exact_sum(case((s.cost_source.in_(ESTIMATED_SOURCES), cost), else_=0)),
    ]


assert len(FINANCE_MEASURES) == len(PAYMENT_COLUMNS) + 2  # _run_sums and ledger_measures spell them out


def recompute(conn: Connection, workspace_id: str | None = None) -> dict[str, dict[Key, list[Any]]]:
    """Every kept row as the raw rows make it, keyed as core.books keys it; measures in KEPT's order."""
    lite = conn.dialect.name == "sqlite"
    s = t.steps.c
    runs = (
        select(s.workspace_id, s.run_id, *_run_sums(s)).group_by(s.workspace_id, s.run_id).where(s.run_id.is_not(None))
    )
    if workspace_id is not None:
        runs = runs.where(s.workspace_id == workspace_id)
    out: dict[str, dict[Key, list[Any]]] = {"runs": _keyed(conn, runs, 2)}

    led, joined = ledger(workspace_id)
    hour = _hour(led.c.started_at, lite).label("hour")
    sums = _ledger_sums(led)
    by_run = dict(zip(RUN_DIMS, (t.runs.c.workflow, t.runs.c.endpoint_id), strict=True))
    dims = [by_run[d] if d in by_run else led.c[d] for d in HOURLY_DIMS]
    out["hourly"] = _keyed(
        conn,
        select(led.c.workspace_id, hour, *dims, *sums).select_from(joined).group_by(led.c.workspace_id, hour, *dims),
        2 + len(HOURLY_DIMS),
    )
    day = _hour(led.c.started_at, lite, "day").label("day")
    out["daily"] = _keyed(
        conn,
        select(led.c.workspace_id, day, *dims, *sums).select_from(joined).group_by(led.c.workspace_id, day, *dims),
        2 + len(HOURLY_DIMS),
    )
    in_session = led.c.session_id.is_not(None)
    session = func.coalesce(led.c.session_id, NO_SESSION).label("session_id")
    out["sessions"] = _keyed(
        conn, select(led.c.workspace_id, hour, session, *sums).group_by(led.c.workspace_id, hour, session), 3
    )
    out["paths"] = _keyed(
        conn,
        select(led.c.workspace_id, led.c.session_id, led.c.session_path, *sums)
        .where(in_session)
        .group_by(led.c.workspace_id, led.c.session_id, led.c.session_path),
        3,
    )
    out["properties"] = {}
    for ws, name in declared(conn, workspace_id):
        out["properties"].update(_recompute_property(conn, ws, name))
    return out


def _recompute_property(conn: Connection, workspace_id: str, name: str) -> dict[Key, list[Any]]:
    led, _ = ledger(workspace_id)
    hour = _hour(led.c.started_at, conn.dialect.name == "sqlite").label("hour")
    value = led.c.properties[name].as_string()
    stmt = select(literal(workspace_id), literal(name), hour, value, *_ledger_sums(led)).group_by(hour, value)
    return _keyed(conn, stmt, 4)


def rebuild_property(conn: Connection, workspace_id: str, name: str) -> int:
    """Fill the rollups of one indexed property from the events (in the caller's transaction)."""
    roll = t.rollup_properties
    conn.execute(delete(roll).where(roll.c.workspace_id == workspace_id, roll.c.name == name))
    rows = _recompute_property(conn, workspace_id, name)
    if rows:
        BookKeeper(conn.dialect).apply(conn, Books(properties=rows))
    return len(rows)


def _keyed(conn: Connection, stmt: Any, width: int) -> dict[Key, list[Any]]:
    return {tuple(r[:width]): [_number(v) for v in r[width:]] for r in conn.execute(stmt)}


def _number(v: Any) -> Any:
    return v if isinstance(v, float) else int(v or 0)


def declared(conn: Connection, workspace_id: str | None = None) -> list[tuple[str, str]]:
    """The indexed properties, as (workspace_id, name)."""
    c = t.indexed_properties.c
    stmt = select(c.workspace_id, c.name).order_by(c.workspace_id, c.name)
    if workspace_id is not None:
        stmt = stmt.where(c.workspace_id == workspace_id)
    return [(r[0], r[1]) for r in conn.execute(stmt)]


def declared_in(conn: Connection, workspaces: Iterable[str]) -> list[tuple[str, str]]:
    """The indexed properties of these workspaces (the trace writer's question, once per batch)."""
    return [(r[0], r[1]) for r in conn.execute(_DECLARED_IN, {"workspaces": sorted(workspaces)})]


# Built once: the trace writer asks this for every batch, and building the SELECT cost more than running it.
_DECLARED_IN = select(t.indexed_properties.c.workspace_id, t.indexed_properties.c.name).where(
    t.indexed_properties.c.workspace_id.in_(bindparam("workspaces", expanding=True))
)


def kept(conn: Connection, workspace_id: str | None = None) -> dict[str, dict[Key, list[Any]]]:
    """What the kept tables hold, in recompute's shape (money joined back from its remainders and carries)."""
    out: dict[str, dict[Key, list[Any]]] = {}
    for name, (table, cols, measures) in KEPT.items():
        columns = kept_measures(table, measures)
        stmt = select(*[table.c[c] for c in cols], *columns)
        if workspace_id is not None:
            stmt = stmt.where(table.c.workspace_id == workspace_id)
        rows: dict[Key, list[Any]] = {}
        money = [measures.index(m) for m in MONEY_MEASURES if m in measures]
        width = len(cols) + len(measures)
        for r in conn.execute(stmt):
            values = [_number(v) for v in r[len(cols) : width]]
            for at, carry in zip(money, r[width:], strict=True):
                values[at] += int(carry) * COST_UNIT
            if any(values):  # a row whose events all moved elsewhere (a retried request) counts for nothing
                rows[tuple(r[: len(cols)])] = values
        out[name] = rows
    return out


@dataclass(frozen=True, slots=True)
class Mismatch:
    table: str
    key: Key
    kept: list[Any] | None
    recomputed: list[Any] | None

    def describe(self) -> str:
        """The row and, when it is kept and recomputed both, each measure that differs by name (a run total has
        17 of them: a list of numbers would leave the reader counting)."""
        if self.kept is None or self.recomputed is None:
            return f"{self.table} {_show(self.key)}: kept {_list(self.kept)}, recomputed {_list(self.recomputed)}"
        names = KEPT[self.table][2] if self.table in KEPT else MARK_MEASURES
        differ = [
            f"{name} kept {a}, recomputed {b}"
            for name, a, b in zip(names, self.kept, self.recomputed, strict=True)
            if not _same(a, b)
        ]
        return f"{self.table} {_show(self.key)}: " + "; ".join(differ)


def _show(key: Key) -> str:
    return "(" + ", ".join(_value(v) for v in key) + ")"


def _list(values: list[Any] | None) -> str:
    return "None" if values is None else "[" + ", ".join(_value(v) for v in values) + "]"


def _value(v: Any) -> str:
    return v.isoformat() if isinstance(v, datetime) else repr(v)


# A run mark's row in a Mismatch (table "marks"): key (workspace, run, what it stands for), its time.
MARK_MEASURES = ("started_at",)


def compare(
    kept_rows: Mapping[str, Mapping[Key, list[Any]]], recomputed: Mapping[str, Mapping[Key, list[Any]]]
) -> list[Mismatch]:
    """Every row that differs. Latency sums are floats, added in another order: equal within 1e-9."""
    out = []
    for name in KEPT:
        a, b = kept_rows.get(name, {}), recomputed.get(name, {})
        for key in sorted(a.keys() | b.keys(), key=_sortable):
            x, y = a.get(key), b.get(key)
            if x is None or y is None or not all(_same(p, q) for p, q in zip(x, y, strict=True)):
                out.append(Mismatch(name, key, x, y))
    return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-6)
    return bool(a == b)


def verify(conn: Connection, workspace_id: str | None = None) -> list[Mismatch]:
    """Kept against recomputed, read in one snapshot (the caller's transaction). Where retention deleted rows, only
    what they cannot have touched is compared (store/retention.py): the kept books outlive their rows. Run marks
    too (store/marks.py), as table "marks"."""
    found = compare(kept(conn, workspace_id), recompute(conn, workspace_id))
    since = retention_sql.horizons(conn, workspace_id)
    if since and found:
        checked = retention_sql.comparable_keys(conn, ((m.table, m.key) for m in found), since)
        found = [m for m in found if (m.table, m.key) in checked]
    marks = marks_sql.differences(conn, workspace_id, _checkable(conn, since))
    return found + [
        Mismatch("marks", key, None if at is None else [at], None if want is None else [want])
        for key, at, want in marks
    ]


def _checkable(conn: Connection, since: Mapping[str, datetime]) -> Callable[[list[Any]], set[Any]]:
    """Which run marks retention cannot have left without their rows (none pruned: all of them)."""

    def checkable(keys: list[Any]) -> set[Any]:
        if not since:
            return set(keys)
        return {key for _, key in retention_sql.comparable_keys(conn, (("marks", k) for k in keys), since)}

    return checkable


def rebuild(conn: Connection, workspace_id: str | None = None) -> int:
    """Replace every kept row with its recomputation, run marks too; returns how many rows are kept now. Runs in
    the caller's transaction; on PostgreSQL writers are held off meanwhile (`lock_writers`), or a batch committed
    between the recomputation and the replacement would be lost from the books."""
    if conn.dialect.name == "postgresql":
        lock_writers(conn)
    # Rows retention deleted cannot be counted again: what the kept books say of them stays as it is.
    since = retention_sql.horizons(conn, workspace_id)
    pruned = _pruned(conn, kept(conn, workspace_id), since) if since else {}
    # Deleting first also takes SQLite's write lock before the recomputation reads: no batch of another
    # process can commit between the two.
    for table, _, _ in KEPT.values():
        stmt = delete(table)
        if workspace_id is not None:
            stmt = stmt.where(table.c.workspace_id == workspace_id)
        conn.execute(stmt)
    fresh = recompute(conn, workspace_id)
    if since:
        fresh = _pruned(conn, fresh, since, keep=True)
        for name, rows in pruned.items():
            fresh[name].update(rows)
    keeper = BookKeeper(conn.dialect)
    total = 0
    for name, rows in fresh.items():
        if rows:
            keeper.apply(conn, Books(**{name: dict(rows)}))
            total += len(rows)
    return total + marks_sql.rebuild(conn, workspace_id, _checkable(conn, since))


def rebuild_marks(conn: Connection, workspace_id: str | None = None) -> int:
    """Replace the kept run marks only (their migration fills them so)."""
    if conn.dialect.name == "postgresql":
        lock_writers(conn)
    return marks_sql.rebuild(conn, workspace_id, _checkable(conn, retention_sql.horizons(conn, workspace_id)))


def _pruned(
    conn: Connection, books: dict[str, dict[Key, list[Any]]], since: Mapping[str, datetime], *, keep: bool = False
) -> dict[str, dict[Key, list[Any]]]:
    """The rows of `books` that retention may have made uncheckable (`keep`: the others)."""
    keys = [(name, key) for name, rows in books.items() for key in rows]
    checked = retention_sql.comparable_keys(conn, keys, since)
    return {
        name: {key: row for key, row in rows.items() if ((name, key) in checked) is keep}
        for name, rows in books.items()
    }


def lock_writers(conn: Connection) -> None:
    """PostgreSQL: hold off trace writes for the rest of the transaction (they take ROW EXCLUSIVE on these)."""
    conn.exec_driver_sql("LOCK TABLE requests, steps IN SHARE MODE")

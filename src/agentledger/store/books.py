"""The books' SQL: apply core.books deltas, recompute every kept row from the raw rows, verify and rebuild.

`apply` runs inside the trace batch's transaction (store.sql). `recompute` is the independent path: plain
GROUP BY over `requests` and `steps`, the way totals were computed at read time before they were kept; `verify`
compares it with what is kept, `rebuild` replaces what is kept with it (and fills the tables when migration
0003 creates them).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Table, bindparam, case, delete, func, literal, literal_column, select, type_coerce
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from agentledger.core.books import (
    COST_UNIT,
    HOURLY_DIMS,
    LEDGER_MEASURES,
    NO_SESSION,
    RUN_MEASURES,
    Books,
    Key,
    dims_key,
    split_cost,
)
from agentledger.core.rollup import TOKEN_FIELDS
from agentledger.store import schema as t
from agentledger.store.bulk import BulkStatement
from agentledger.store.queries import exact_sum, ledger

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
    row["cost_nanos"], row["cost_carry"] = split_cost(row["cost_nanos"])
    return row


def _upsert(table: Table, columns: Iterable[str], sqlite_dialect: bool) -> Any:
    stmt = (sqlite.insert if sqlite_dialect else postgresql.insert)(table)
    old, new = table.c, stmt.excluded
    pk = [c.name for c in table.primary_key.columns]
    counters = [c for c in columns if c not in pk and c in old and not _is_label(table, c)]
    sets: dict[str, Any] = {c: old[c] + new[c] for c in counters if c not in ("cost_nanos", "cost_carry")}
    # Both remainders are in [0, 10^15), so their sum is non-negative and `//` (SQL integer division) floors.
    sets["cost_nanos"] = (old.cost_nanos + new.cost_nanos) % _UNIT
    sets["cost_carry"] = old.cost_carry + new.cost_carry + (old.cost_nanos + new.cost_nanos) // _UNIT
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
        *[exact_sum(led.c[k]).label(k) for k in ("cost_nanos", *TOKEN_FIELDS)],
    ]


def recompute(conn: Connection, workspace_id: str | None = None) -> dict[str, dict[Key, list[Any]]]:
    """Every kept row as the raw rows make it, keyed as core.books keys it; measures in KEPT's order."""
    lite = conn.dialect.name == "sqlite"
    s = t.steps.c
    runs = (
        select(
            s.workspace_id,
            s.run_id,
            func.count(),
            func.sum(case((s.kind == "model_call", 1), else_=0)),
            func.sum(case((s.status == "error", 1), else_=0)),
            func.sum(case((s.attempt > 1, 1), else_=0)),
            func.sum(case((s.kind == "model_call", func.coalesce(s.latency_ms, 0.0)), else_=0.0)),
            exact_sum(case((s.kind == "model_attempt", 0), else_=s.cost_nanos)),
            *[exact_sum(case((s.kind == "model_attempt", 0), else_=s[k])) for k in TOKEN_FIELDS],
        )
        .group_by(s.workspace_id, s.run_id)
        .where(s.run_id.is_not(None))
    )
    if workspace_id is not None:
        runs = runs.where(s.workspace_id == workspace_id)
    out: dict[str, dict[Key, list[Any]]] = {"runs": _keyed(conn, runs, 2)}

    led, joined = ledger(workspace_id)
    hour = _hour(led.c.started_at, lite).label("hour")
    sums = _ledger_sums(led)
    dims = [led.c[d] if d != "workflow" else t.runs.c.workflow for d in HOURLY_DIMS]
    out["hourly"] = _keyed(
        conn,
        select(led.c.workspace_id, hour, *dims, *sums).select_from(joined).group_by(led.c.workspace_id, hour, *dims),
        9,
    )
    day = _hour(led.c.started_at, lite, "day").label("day")
    out["daily"] = _keyed(
        conn,
        select(led.c.workspace_id, day, *dims, *sums).select_from(joined).group_by(led.c.workspace_id, day, *dims),
        9,
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
    """What the kept tables hold, in recompute's shape (cost joined back from its remainder and carry)."""
    out: dict[str, dict[Key, list[Any]]] = {}
    for name, (table, cols, measures) in KEPT.items():
        stmt = select(*[table.c[c] for c in (*cols, *measures)], table.c.cost_carry)
        if workspace_id is not None:
            stmt = stmt.where(table.c.workspace_id == workspace_id)
        rows: dict[Key, list[Any]] = {}
        cost = measures.index("cost_nanos")
        for r in conn.execute(stmt):
            values = [_number(v) for v in r[len(cols) : -1]]
            values[cost] += int(r[-1]) * COST_UNIT
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
        return f"{self.table} {_show(self.key)}: kept {self.kept}, recomputed {self.recomputed}"


def _show(key: Key) -> str:
    return "(" + ", ".join(v.isoformat() if isinstance(v, datetime) else repr(v) for v in key) + ")"


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
    """Kept against recomputed, read in one snapshot (the caller's transaction)."""
    return compare(kept(conn, workspace_id), recompute(conn, workspace_id))


def rebuild(conn: Connection, workspace_id: str | None = None) -> int:
    """Replace every kept row with its recomputation; returns how many rows are kept now. Runs in the caller's
    transaction; on PostgreSQL writers are held off meanwhile (`lock_writers`), or a batch committed between
    the recomputation and the replacement would be lost from the books."""
    if conn.dialect.name == "postgresql":
        lock_writers(conn)
    # Deleting first also takes SQLite's write lock before the recomputation reads: no batch of another
    # process can commit between the two.
    for table, _, _ in KEPT.values():
        stmt = delete(table)
        if workspace_id is not None:
            stmt = stmt.where(table.c.workspace_id == workspace_id)
        conn.execute(stmt)
    fresh = recompute(conn, workspace_id)
    keeper = BookKeeper(conn.dialect)
    total = 0
    for name, rows in fresh.items():
        if rows:
            keeper.apply(conn, Books(**{name: dict(rows)}))
            total += len(rows)
    return total


def lock_writers(conn: Connection) -> None:
    """PostgreSQL: hold off trace writes for the rest of the transaction (they take ROW EXCLUSIVE on these)."""
    conn.exec_driver_sql("LOCK TABLE requests, steps IN SHARE MODE")

"""Trace rows written with the driver's own `executemany`, from statements SQLAlchemy compiled once.

SQLAlchemy Core's executemany spent ~0.1 ms of CPU per gateway call on parameter processing (JSON and
datetime bind processors, insertmanyvalues bookkeeping), a third of the gateway's whole CPU per call and
time the writer thread holds the interpreter (docs/benchmark.md). Here a statement is compiled once per
column set, values are converted to what the driver takes (JSON text; on SQLite the same datetime text
SQLAlchemy writes) and handed to sqlite3 / psycopg directly, inside the caller's SQLAlchemy transaction.
Reads still go through SQLAlchemy, so what is written here must read back exactly as SQLAlchemy would
have written it: a contract test compares rows written both ways.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import JSON, Table
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.exc import DBAPIError

from agentledger.store.schema import UTCDateTime


def sqlite_datetime(value: datetime) -> str:
    """SQLAlchemy's SQLite DATETIME text (UTC, always with microseconds), which its reader parses back."""
    v = value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo is not None else value
    return v.isoformat(" ", "microseconds")


def _json_columns(table: Table, keys: Sequence[str]) -> list[str]:
    return [c.name for c in table.c if isinstance(c.type, JSON) and c.name in keys]


def _as_driver_values(
    row: dict[str, Any], json: Sequence[str], datetimes: Sequence[str], texts: dict[int, str] | None = None
) -> dict[str, Any]:
    """A copy of `row` with JSON columns as JSON text and (SQLite) datetimes as SQLAlchemy's text; the row itself
    is left as it was (the books fold it after the write). `texts`: datetimes already converted, by id() (rows
    often share one: a call's ledger entries are of one instant); the caller keeps the rows alive meanwhile."""
    if not json and not datetimes:
        return row
    row = dict(row)
    for k in json:
        v = row[k]
        row[k] = None if v is None else orjson.dumps(v).decode()
    for k in datetimes:
        v = row[k]
        if v is not None:
            if texts is None:
                row[k] = sqlite_datetime(v)
                continue
            text = texts.get(id(v))
            if text is None:
                text = texts[id(v)] = sqlite_datetime(v)
            row[k] = text
    return row


@contextmanager
def _driver_cursor(conn: Connection, sql: str) -> Iterator[Any]:
    """The DB-API cursor of `conn`'s connection, closed afterwards; a driver error is raised as SQLAlchemy would
    raise it (OperationalError, IntegrityError, ...): callers tell an unreachable store from a bad row by those
    classes."""
    dbapi = conn.dialect.loaded_dbapi
    cursor = conn.connection.cursor()
    try:
        yield cursor
    except dbapi.Error as exc:
        raise DBAPIError.instance(sql, None, exc, dbapi.Error) from exc
    finally:
        cursor.close()


def execute_once(conn: Connection, sql: str, params: dict[str, Any]) -> None:
    """One statement with its parameters through the driver, in the caller's transaction: one round trip, where an
    executemany of a few rows costs psycopg a pipeline's CPU."""
    with _driver_cursor(conn, sql) as cursor:
        cursor.execute(sql, params)


class BulkStatement:
    def __init__(self, stmt: Any, table: Table, keys: Sequence[str], dialect: Dialect) -> None:
        compiled = stmt.compile(dialect=dialect, column_keys=list(keys))
        extra = sorted(set(compiled.params) - set(keys))
        if extra:  # only row values are bound here: write constants with literal_column
            raise ValueError(f"bulk statement binds values that are not row columns: {extra}")
        self.sql = str(compiled)
        self.order = list(compiled.positiontup) if compiled.positional else None
        # A row → its parameters in one C call (a generator over ~35 columns a row was a fifth of the writer); a
        # tuple even for one column (itemgetter of one key returns the bare value).
        self._positional: Callable[[dict[str, Any]], Any] | None = None
        if self.order:
            get = operator.itemgetter(*self.order)
            self._positional = get if len(self.order) > 1 else lambda values: (get(values),)
        self.keys = tuple(keys)
        self.json = _json_columns(table, keys)
        self.rowcount = -1  # of the last run without `returning`: the rows it changed, as the driver counts them
        sqlite = dialect.name == "sqlite"
        self.datetimes = [c.name for c in table.c if sqlite and isinstance(c.type, UTCDateTime) and c.name in keys]

    def run(self, conn: Connection, rows: Sequence[dict[str, Any]], *, returning: bool = False) -> list[Any]:
        """Execute for every row; the rows are left as they were.

        `returning` (PostgreSQL, a statement with RETURNING): the rows each execution returned, in order; a
        conflict that inserted nothing returns none. sqlite3's executemany cannot return rows."""
        params: list[Any] = []
        texts: dict[int, str] | None = {} if self.datetimes else None
        for row in rows:
            values = _as_driver_values(row, self.json, self.datetimes, texts)
            params.append(self._positional(values) if self._positional is not None else values)
        out: list[Any] = []
        with _driver_cursor(conn, self.sql) as cursor:
            if returning:
                cursor.executemany(self.sql, params, returning=True)
                while True:
                    out.extend(cursor.fetchall())
                    if not cursor.nextset():
                        break
            else:
                cursor.executemany(self.sql, params)
                self.rowcount = cursor.rowcount
        return out

    def first(self, conn: Connection, row: dict[str, Any]) -> tuple[Any, ...] | None:
        """Execute once for `row`: the first row it returned (a statement with RETURNING), or None."""
        values = _as_driver_values(row, self.json, self.datetimes)
        params = self._positional(values) if self._positional is not None else values
        with _driver_cursor(conn, self.sql) as cursor:
            cursor.execute(self.sql, params)
            rows = cursor.fetchall()  # to the end: SQLite finishes the statement before its commit
        return tuple(rows[0]) if rows else None


class CopyInsert:
    """PostgreSQL: insert rows not stored yet with `COPY` into a temporary table, then one `INSERT … SELECT …
    ON CONFLICT DO NOTHING RETURNING` into the table: the server parses and plans one statement per batch
    instead of one per row (executemany), which is most of its CPU per step. Returns the (workspace_id, id) of
    the rows it inserted. The staging table lives as long as the connection and empties at each commit."""

    def __init__(self, table: Table, keys: Sequence[str]) -> None:
        cols = ", ".join(f'"{k}"' for k in keys)
        stage = f"{table.name}_stage"
        self.keys = tuple(keys)
        self.json = _json_columns(table, keys)
        self.create = (
            f"CREATE TEMPORARY TABLE IF NOT EXISTS {stage} ON COMMIT DELETE ROWS AS "
            f"SELECT {cols} FROM {table.name} WITH NO DATA"
        )
        self.copy = f"COPY {stage} ({cols}) FROM STDIN"
        self.insert = (
            f"INSERT INTO {table.name} ({cols}) SELECT {cols} FROM {stage} "
            "ON CONFLICT DO NOTHING RETURNING workspace_id, id"
        )
        self._values = operator.itemgetter(*keys)

    def run(self, conn: Connection, rows: Sequence[dict[str, Any]]) -> list[Any]:
        with _driver_cursor(conn, self.insert) as cursor:
            cursor.execute(self.create)
            with cursor.copy(self.copy) as copy:
                for row in rows:
                    copy.write_row(self._values(_as_driver_values(row, self.json, ())))
            cursor.execute(self.insert)
            return list(cursor.fetchall())

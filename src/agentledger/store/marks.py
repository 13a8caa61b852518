"""Run marks in SQL (core/marks.py says what a row gives): written in the trace batch's transaction, recomputed from
the raw rows for `rollups verify` and `rebuild`, read by the runs list's decision and property filters.

Writes (store.sql `_apply`, for exactly the rows a batch inserted, so a replay adds nothing):

* A mark's `started_at` is its run's, so a filtered page pages by the runs list's own (started_at, id). A row whose
  run is not stored yet (steps may come before their run) marks it with its own time, the earliest of such rows
  winning; the batch that creates the run then gives its marks the run's time (`MarkKeeper.write`'s `created`).
  Until then the run is not listed at all (the list joins `runs`), so the interim time is never seen.
* A failed request replaced by its retry (same x-request-id) takes back the property marks only it gave (`unmark`):
  rare (a retry with other property headers), and it reads the run's rows only then.
* Inserts are sorted by key and `ON CONFLICT DO NOTHING` for runs that exist: a mark already kept (most rows of a
  run repeat its marks) is a probe of the primary key, no write, no lock. One statement a batch at most, besides
  the rare ones above; the rows of a batch that share their properties are read once.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any, cast

import orjson
from sqlalchemy import JSON, and_, bindparam, case, delete, exists, or_, select, type_coerce, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from agentledger.core.marks import Label, describe, mark_of, property_labels, row_labels
from agentledger.store import schema as t
from agentledger.store.bulk import BulkStatement, execute_once

MarkKey = tuple[str, str, str]  # (workspace_id, run_id, mark)
_COLUMNS = ("workspace_id", "run_id", "mark", "started_at")
_MARKS = t.run_marks
# The runs a batch created: the marks their rows gave before they existed take their start (SET from the key
# `started_at`, bound as the column's own type).
_SETTLE = update(_MARKS).where(_MARKS.c.workspace_id == bindparam("b_ws"), _MARKS.c.run_id == bindparam("b_run"))

# PostgreSQL: the new marks' insert and the created runs' settling as one statement, whatever the number of rows: one
# round trip, and each set of rows one JSON parameter (orjson), which the driver sends as it is, where adapting
# arrays of text and times cost it twice the CPU. The two see the same snapshot: a mark inserted here has its run's
# start already, and one settled here is one the insert finds and leaves.
_PG_SETTLE = (
    "UPDATE run_marks AS m SET started_at = v.started_at "
    "FROM json_to_recordset(%(settle)s::json) AS v(b_ws varchar, b_run varchar, started_at timestamptz) "
    "WHERE m.workspace_id = v.b_ws AND m.run_id = v.b_run"
)
_PG_INSERT = (
    "INSERT INTO run_marks (workspace_id, run_id, mark, started_at) "
    "SELECT workspace_id, run_id, mark, started_at FROM json_to_recordset(%(marks)s::json) "
    "AS x(workspace_id varchar, run_id varchar, mark varchar, started_at timestamptz) ON CONFLICT DO NOTHING"
)
_PG_SETTLE_INSERT = f"WITH settled AS ({_PG_SETTLE}) {_PG_INSERT}"


class MarkKeeper:
    """Writes the marks of a batch's new rows with statements compiled once (store.bulk)."""

    def __init__(self, dialect: Any) -> None:
        self.dialect = dialect
        insert = (sqlite.insert if dialect.name == "sqlite" else postgresql.insert)(_MARKS)
        self._insert = BulkStatement(insert.on_conflict_do_nothing(), _MARKS, _COLUMNS, dialect)
        # Rows of a run not stored yet: the earliest one's time (any other would depend on the order they came in).
        earliest = insert.on_conflict_do_update(
            index_elements=["workspace_id", "run_id", "mark"],
            set_={"started_at": insert.excluded.started_at},
            where=insert.excluded.started_at < _MARKS.c.started_at,
        )
        self._earliest = BulkStatement(earliest, _MARKS, _COLUMNS, dialect)
        self._settle = BulkStatement(_SETTLE, _MARKS, ("started_at", "b_ws", "b_run"), dialect)
        self._pg = dialect.name == "postgresql"
        self._hashed: dict[Label, str] = {}

    def write(
        self,
        conn: Connection,
        requests: Iterable[Mapping[str, Any]],
        steps: Iterable[Mapping[str, Any]],
        starts: Mapping[tuple[str, str], datetime],
        created: Iterable[Mapping[str, Any]] = (),
    ) -> None:
        """The marks of new request and step rows (`starts`: the start of each of their runs that is stored), and
        the runs the batch `created` (their rows): the marks their rows gave before they existed take their start."""
        known: dict[tuple[str, str, Label], datetime] = {}
        early: dict[tuple[str, str, Label], datetime] = {}
        # The rows of a batch mostly share their properties (one object per call or step batch): each (run, object)
        # is read once. Not for a run not stored yet, whose marks take the earliest of its rows' times.
        read: set[tuple[str, str, int]] = set()
        for source, is_request in ((requests, True), (steps, False)):
            for row in source:
                run = row["run_id"]
                properties = row["properties"]
                check = not is_request and row["kind"] == "policy_check"
                # Most rows: no property, no policy check (this runs for every row a batch inserts).
                if run is None or not (properties or check):
                    continue
                ws = row["workspace_id"]
                at = starts.get((ws, run))
                if at is not None and not check:
                    seen = (ws, run, id(properties))
                    if seen in read:
                        continue
                    read.add(seen)
                for label in set(row_labels(row, is_request)):
                    key = (ws, run, label)
                    if at is not None:
                        known[key] = at
                    else:
                        held = early.get(key)
                        early[key] = row["started_at"] if held is None else min(held, row["started_at"])
        settle = [{"started_at": r["started_at"], "b_ws": r["workspace_id"], "b_run": r["id"]} for r in created]
        rows = self._rows(known)
        if self._pg:
            # One statement (one round trip) for both: each is a few rows in most batches, where the statement's
            # own cost is the most of it.
            if settle or rows:
                sql = _PG_SETTLE_INSERT if settle and rows else _PG_SETTLE if settle else _PG_INSERT
                execute_once(conn, sql, {"settle": orjson.dumps(settle).decode(), "marks": orjson.dumps(rows).decode()})
        else:
            if settle:
                self._settle.run(conn, settle)
            if rows:
                self._insert.run(conn, rows)
        if early:
            self._earliest.run(conn, self._rows(early))

    def _rows(self, marks: Mapping[tuple[str, str, Label], datetime]) -> list[dict[str, Any]]:
        # Sorted: two writers (PostgreSQL replicas) inserting the same new marks wait on each other in one order,
        # never in a cycle.
        rows = [
            {"workspace_id": ws, "run_id": run, "mark": self._mark(label), "started_at": at}
            for (ws, run, label), at in marks.items()
        ]
        rows.sort(key=_key)
        return rows

    def _mark(self, label: Label) -> str:
        # Most batches repeat a few labels (a run's property values): each is hashed once per process.
        mark = self._hashed.get(label)
        if mark is None:
            if len(self._hashed) > 100_000:
                self._hashed.clear()
            mark = self._hashed[label] = mark_of(label)
        return mark

    def unmark(self, conn: Connection, replaced: Iterable[tuple[Mapping[str, Any] | None, Mapping[str, Any]]]) -> None:
        """Requests a retry replaced (old row, new row): the property marks only the old row gave go."""
        for old, new in replaced:
            if old is None or old["run_id"] is None:
                continue
            gone = property_labels(old)
            if new["run_id"] == old["run_id"]:
                gone -= property_labels(new)
            ws, run = old["workspace_id"], old["run_id"]
            for label in sorted(gone):
                if not _still_given(conn, ws, run, old["id"], label):
                    m = _MARKS.c
                    conn.execute(
                        delete(_MARKS).where(m.workspace_id == ws, m.run_id == run, m.mark == self._mark(label))
                    )


def _key(row: Mapping[str, Any]) -> tuple[str, str, str]:
    return row["workspace_id"], row["run_id"], row["mark"]


def _still_given(conn: Connection, ws: str, run: str, request_id: str, label: Label) -> bool:
    """Whether another row of the run carries the property (its run's rows, by ix_requests_ws_run and
    ix_steps_ws_run)."""
    _, name, value = label
    r, s = t.requests.c, t.steps.c
    stmt = select(
        or_(
            exists().where(
                r.workspace_id == ws, r.run_id == run, r.id != request_id, r.properties[name].as_string() == value
            ),
            exists().where(s.workspace_id == ws, s.run_id == run, s.properties[name].as_string() == value),
        )
    )
    return bool(conn.execute(stmt).scalar())


def delete_runs(conn: Connection, workspace_id: str, run_ids: list[str]) -> None:
    """Retention: the marks of runs it deleted."""
    m = _MARKS.c
    conn.execute(delete(_MARKS).where(m.workspace_id == workspace_id, m.run_id.in_(run_ids)))


# -- recomputation from the raw rows (rollups verify and rebuild) ------------------------------------------------
Recomputed = dict[MarkKey, tuple[datetime, Label, bool]]  # time, what it stands for, whether its run is stored


def recompute(conn: Connection, workspace_id: str | None = None) -> Recomputed:
    """Every mark the raw rows give, with its time: the run's start, or (run not stored) its rows' earliest. Read
    row by row (a server-side cursor on PostgreSQL): which marks a row gives is core.marks' rule, in Python."""
    found: Recomputed = {}
    hashed: dict[Label, str] = {}
    for row, is_request in _rows(conn, workspace_id):
        labels = set(row_labels(row, is_request))
        if not labels:
            continue
        ws, run, run_at = row["workspace_id"], row["run_id"], row["run_started_at"]
        at = _utc(run_at if run_at is not None else row["started_at"])
        for label in labels:
            mark = hashed.get(label)
            if mark is None:
                mark = hashed[label] = mark_of(label)
            key = (ws, run, mark)
            held = found.get(key)
            if held is None or at < held[0]:
                found[key] = (at, label, run_at is not None)
    return found


def _rows(conn: Connection, workspace_id: str | None) -> Iterator[tuple[Mapping[str, Any], bool]]:
    r, s, runs = t.requests.c, t.steps.c, t.runs.c
    for c, is_request in ((r, True), (s, False)):
        columns = [c.workspace_id, c.run_id, c.started_at, c.properties, runs.started_at.label("run_started_at")]
        if not is_request:
            # Only a policy check's attributes say anything here: the others' are not read.
            report = type_coerce(case((c.kind == "policy_check", c.attributes), else_=None), JSON)
            columns += [c.kind, report.label("attributes")]
        table = t.requests if is_request else t.steps
        joined = table.outerjoin(t.runs, and_(runs.workspace_id == c.workspace_id, runs.id == c.run_id))
        stmt = select(*columns).select_from(joined).where(c.run_id.is_not(None))
        if workspace_id is not None:
            stmt = stmt.where(c.workspace_id == workspace_id)
        # On the statement, not the connection (whose options would stay set for what it runs next).
        for row in conn.execute(stmt.execution_options(yield_per=5000)):
            yield cast(Mapping[str, Any], row._mapping), is_request


def kept(conn: Connection, workspace_id: str | None = None) -> dict[MarkKey, tuple[datetime, datetime | None]]:
    """Every kept mark: its time, and its run's start (None: the run is not stored)."""
    m, runs = _MARKS.c, t.runs.c
    joined = _MARKS.outerjoin(t.runs, and_(runs.workspace_id == m.workspace_id, runs.id == m.run_id))
    stmt = select(m.workspace_id, m.run_id, m.mark, m.started_at, runs.started_at).select_from(joined)
    if workspace_id is not None:
        stmt = stmt.where(m.workspace_id == workspace_id)
    return {(r[0], r[1], r[2]): (_utc(r[3]), None if r[4] is None else _utc(r[4])) for r in conn.execute(stmt)}


def differences(
    conn: Connection, workspace_id: str | None, checkable: Any
) -> list[tuple[tuple[str, str, str], datetime | None, datetime | None]]:
    """(key named by its label, kept time or None, recomputed time or None) for each mark that differs.

    `checkable(keys)`: the marks among `keys` whose runs retention cannot have pruned (store/retention.py). A mark
    the rows give must be kept, at its time, always (the rows that give it are there). One kept but given by no row
    is stale, unless retention may have deleted the rows that gave it; its time must still be its run's. The time
    of a mark whose run is not stored yet is not compared: nothing reads it (the list joins `runs`), and the rows
    that set it may since have been replaced or pruned."""
    have, want = kept(conn, workspace_id), recompute(conn, workspace_id)
    out: list[tuple[tuple[str, str, str], datetime | None, datetime | None]] = []
    for key, (at, label, has_run) in want.items():
        held = have.get(key)
        if held is None or (has_run and held[0] != at):
            out.append(((key[0], key[1], describe(label)), None if held is None else held[0], at))
    extra = [key for key in have if key not in want]
    unsure = set(extra) - checkable(extra) if extra else set()
    for key in extra:
        at, run_at = have[key]
        if key not in unsure:
            out.append((key, at, None))
        elif run_at is not None and at != run_at:
            out.append((key, at, run_at))
    out.sort(key=lambda d: d[0])
    return out


def rebuild(conn: Connection, workspace_id: str | None, checkable: Any) -> int:
    """Replace the kept marks with the rows' (in the caller's transaction, writers held off); a mark retention may
    have left without its rows (`checkable` says which not) stays, at its run's time. Returns how many are kept."""
    have, want = kept(conn, workspace_id), recompute(conn, workspace_id)
    marks = {key: at for key, (at, _, _) in want.items()}
    extra = [key for key in have if key not in want]
    for key in set(extra) - (checkable(extra) if extra else set()):
        at, run_at = have[key]
        marks[key] = run_at or at
    stmt = delete(_MARKS)
    if workspace_id is not None:
        stmt = stmt.where(_MARKS.c.workspace_id == workspace_id)
    conn.execute(stmt)
    rows = sorted(
        ({"workspace_id": ws, "run_id": run, "mark": mark, "started_at": at} for (ws, run, mark), at in marks.items()),
        key=_key,
    )
    for i in range(0, len(rows), 5000):
        conn.execute(_MARKS.insert(), rows[i : i + 5000])
    return len(rows)


def _utc(at: datetime) -> datetime:
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)

"""Retention in SQL: the settings, the job's horizons, and the batches that delete expired rows or null their bodies
(core/retention.py says which; retention/job.py paces them; docs/retention.md).

Every batch is one short transaction over at most `limit` rows found through an index on time (or the primary key),
walked by a keyset cursor, so a batch's cost is bounded whatever the table's size and rows kept back (see below) are
not read again in the same sweep. On SQLite a batch runs on the store's writer thread, like every write, between two
trace batches; on PostgreSQL on a query thread (lower OS priority) with its own connection: deleting old rows takes
no lock that the inserts of new ones wait on. Several replicas do not sweep at once (an advisory lock per batch).

A step, request or policy hit is deleted once it, its run and its session all started before the cutoff: run totals
and session paths of a run (session) that started after it then still add up to its rows (`rollups verify`), and a
hit goes with the step or request it was read from. A run is deleted once it started before the cutoff and none of
its steps or requests is left; a session once it was last seen before the cutoff and no run of it is left. Their run
totals, marks, controls and session paths go with them; the time-bucketed rollups stay (analytics over pruned windows
keep their figures). A run that stays keeps the marks its deleted rows gave it, as it keeps their totals.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import bindparam, delete, literal, null, or_, select, text, true, tuple_, update
from sqlalchemy.engine import Connection

from agentledger.core.retention import Retention, comparable
from agentledger.store import schema as t

if TYPE_CHECKING:
    from agentledger.store.sql import SQLStore

T = TypeVar("T")
Cursor = tuple[Any, ...] | None
# Any constant: the key of PostgreSQL's advisory lock that keeps two replicas from sweeping at once.
_PG_LOCK = text("SELECT pg_try_advisory_xact_lock(7340017011)")
_SETTINGS = ("bodies_days", "traces_days", "audit_days")


@dataclass(frozen=True, slots=True)
class Due:
    """A workspace with something to expire, and where its last sweep left off."""

    workspace_id: str
    settings: Retention
    bodies_horizon: datetime | None


@dataclass(frozen=True, slots=True)
class Batch:
    """One batch's work: rows read (`seen`), rows deleted or changed (`done`), where the next batch starts (`cursor`,
    None: nothing is left), and whether another replica held the sweep (`busy`: nothing was done)."""

    seen: int
    done: int
    cursor: Cursor
    busy: bool = False


class RetentionStore:
    def __init__(self, store: SQLStore) -> None:
        self.store = store

    # -- settings (PUT/GET /api/retention) -----------------------------------------------------------------------
    async def get(self, workspace_id: str) -> dict[str, Any]:
        """The settings (null days when never set) and the job's state."""
        c = t.retention.c
        rows = await self.store._select(select(t.retention).where(c.workspace_id == workspace_id))
        row = rows[0] if rows else {}
        return {
            **{name: row.get(name) for name in _SETTINGS},
            "updated_at": row.get("updated_at"),
            "updated_by": row.get("updated_by"),
            "traces_horizon": row.get("traces_horizon"),
            "bodies_horizon": row.get("bodies_horizon"),
            "swept_at": row.get("swept_at"),
        }

    async def put(self, workspace_id: str, settings: Retention, by: str | None, now: datetime) -> None:
        """Replace the settings; what the job has done (its horizons) stays."""
        values = {**settings.view(), "updated_at": now, "updated_by": by}

        def run(conn: Connection) -> None:
            stmt = self.store._insert(t.retention).values(workspace_id=workspace_id, **values)
            conn.execute(stmt.on_conflict_do_update(index_elements=["workspace_id"], set_=values))

        await self.store._write(run)

    # -- the job --------------------------------------------------------------------------------------------------
    async def due(self) -> list[Due]:
        c = t.retention.c
        rows = await self.store._select(
            select(t.retention).where(
                or_(c.bodies_days.is_not(None), c.traces_days.is_not(None), c.audit_days.is_not(None))
            )
        )
        return [Due(r["workspace_id"], Retention(*(r[name] for name in _SETTINGS)), r["bodies_horizon"]) for r in rows]

    async def advance(self, workspace_id: str, column: str, at: datetime) -> None:
        """Move a horizon forward to `at` (never back). The trace horizon moves before any row is deleted, so a
        `rollups verify` reading in between never compares a window being pruned."""
        c = t.retention.c
        current = c[column]
        stmt = (
            update(t.retention)
            .where(c.workspace_id == workspace_id, or_(current.is_(None), current < at))
            .values({column: at})
        )
        await self.store._write(lambda conn: conn.execute(stmt))

    async def swept(self, workspace_id: str, at: datetime) -> None:
        stmt = update(t.retention).where(t.retention.c.workspace_id == workspace_id).values(swept_at=at)
        await self.store._write(lambda conn: conn.execute(stmt))

    async def delete_batch(self, kind: str, workspace_id: str, before: datetime, cursor: Cursor, limit: int) -> Batch:
        """Delete up to `limit` expired rows of `kind` (steps, requests, policy_hits, runs, sessions) after `cursor`."""
        work = _DELETES[kind]
        return await self._batch(lambda conn: work(conn, workspace_id, before, cursor, limit))

    async def null_batch(
        self, kind: str, workspace_id: str, start: datetime | None, before: datetime, cursor: Cursor, limit: int
    ) -> Batch:
        """Null the bodies of up to `limit` rows of `kind` (requests, steps, runs) that started in [start, before)."""
        work = _NULLS[kind]
        return await self._batch(lambda conn: work(conn, workspace_id, start, before, cursor, limit))

    async def _batch(self, work: Callable[[Connection], Batch]) -> Batch:
        store = self.store
        if store.is_sqlite:
            return await store._write(work)

        def run() -> Batch:
            with store.engine.begin() as conn:
                if not conn.execute(_PG_LOCK).scalar():
                    return Batch(0, 0, None, busy=True)
                return work(conn)

        return await store._run(store._queries, run)


# -- the batches -----------------------------------------------------------------------------------------------------
def _after(columns: tuple[Any, ...], cursor: Cursor) -> Any:
    if cursor is None:
        return true()
    # Bound with the columns' own types: a time must be written as the column stores it (UTC, on SQLite as text).
    return tuple_(*columns) > tuple_(*(literal(v, c.type) for v, c in zip(cursor, columns, strict=True)))


def _page(conn: Connection, stmt: Any, limit: int, width: int = 2) -> tuple[list[Any], Cursor]:
    rows = list(conn.execute(stmt.limit(limit)).all())
    # The last row read is where the next batch starts; fewer rows than asked: nothing is left.
    return rows, (tuple(rows[-1][:width]) if len(rows) == limit else None)


# Which of a batch's rows to keep is asked about the batch's own ids, one index probe each. Not with an EXISTS per
# row, nor an IN list: PostgreSQL may answer either by hashing the whole table it reads (cheaper on a small table or
# with stale statistics; autovacuum may be off), which a batch must never do on a large one. A LATERAL subquery with
# LIMIT 1 is always a probe. SQLite plans an IN list on an index as probes.
def _among(
    conn: Connection, table: str, column: str, ws: str, ids: Iterable[Any], since: tuple[str, datetime] | None = None
) -> set[Any]:
    """The values among `ids` that some row of `table` in workspace `ws` has in `column` (with `since`: whose
    column `since[0]` is at or after `since[1]`)."""
    wanted = sorted({i for i in ids if i is not None})
    if not wanted:
        return set()
    later = f" AND t.{since[0]} >= :since" if since else ""
    params: dict[str, Any] = {"ws": ws, "since": since[1] if since else None}
    if conn.dialect.name == "postgresql":
        sql = (
            "SELECT v.id FROM unnest(CAST(:ids AS text[])) AS v(id) CROSS JOIN LATERAL "
            f"(SELECT 1 FROM {table} t WHERE t.workspace_id = :ws AND t.{column} = v.id{later} LIMIT 1) AS hit"
        )
        return {row[0] for row in conn.execute(text(sql), {**params, "ids": wanted})}
    stmt = text(f"SELECT DISTINCT t.{column} FROM {table} t WHERE t.workspace_id = :ws AND t.{column} IN :ids{later}")
    stmt = stmt.bindparams(bindparam("ids", expanding=True))
    if since:  # bound as the column stores it (SQLite: UTC text)
        stmt = stmt.bindparams(bindparam("since", type_=t.TS))
    return {row[0] for row in conn.execute(stmt, {**params, "ids": wanted})}


def _young(conn: Connection, ws: str, rows: list[Any], before: datetime) -> tuple[set[str], set[str]]:
    """The runs and the sessions of `rows` that started at or after the cutoff: their rows stay with them."""
    runs = _among(conn, "runs", "id", ws, (row.run_id for row in rows), ("started_at", before))
    sessions = _among(conn, "sessions", "id", ws, (row.session_id for row in rows), ("first_seen_at", before))
    return runs, sessions


def _delete_steps(conn: Connection, ws: str, before: datetime, cursor: Cursor, limit: int) -> Batch:
    s = t.steps.c
    stmt = (
        select(s.started_at, s.seq, s.run_id, s.session_id)
        .where(s.workspace_id == ws, s.started_at < before, _after((s.started_at, s.seq), cursor))
        .order_by(s.started_at, s.seq)
    )
    rows, nxt = _page(conn, stmt, limit)
    runs, sessions = _young(conn, ws, rows, before)
    gone = [r.seq for r in rows if r.run_id not in runs and r.session_id not in sessions]
    if gone:
        conn.execute(delete(t.steps).where(s.seq.in_(gone)))
    return Batch(len(rows), len(gone), nxt)


def _trace_deleter(table: Any, at: str) -> Callable[[Connection, str, datetime, Cursor, int], Batch]:
    """A batch of `table`'s expired rows (keyed by workspace and id; `at`: their start) by (`at`, id), deleted
    when neither their run nor their session is young: requests, and the policy hits read off a step or request
    (the hit has its row's start, run and session, so it goes in the sweep that deletes that row)."""
    c = table.c

    def delete_batch(conn: Connection, ws: str, before: datetime, cursor: Cursor, limit: int) -> Batch:
        when = c[at]
        stmt = (
            select(when, c.id, c.run_id, c.session_id)
            .where(c.workspace_id == ws, when < before, _after((when, c.id), cursor))
            .order_by(when, c.id)
        )
        rows, nxt = _page(conn, stmt, limit)
        runs, sessions = _young(conn, ws, rows, before)
        gone = [r.id for r in rows if r.run_id not in runs and r.session_id not in sessions]
        if gone:
            conn.execute(delete(table).where(c.workspace_id == ws, c.id.in_(gone)))
        return Batch(len(rows), len(gone), nxt)

    return delete_batch


def _delete_fetch_replays(conn: Connection, ws: str, before: datetime, cursor: Cursor, limit: int) -> Batch:
    """Fetch answers kept for replay (store/fetch_replays.py) feed no totals: they go once they started before the
    cutoff, whatever their run. A repeat of a pruned one's x-request-id is then a fresh fetch."""
    f = t.fetch_replays.c
    stmt = (
        select(f.started_at, f.id)
        .where(f.workspace_id == ws, f.started_at < before, _after((f.started_at, f.id), cursor))
        .order_by(f.started_at, f.id)
    )
    rows, nxt = _page(conn, stmt, limit)
    gone = [r.id for r in rows]
    if gone:
        conn.execute(delete(t.fetch_replays).where(f.workspace_id == ws, f.id.in_(gone)))
    return Batch(len(rows), len(gone), nxt)


def _delete_runs(conn: Connection, ws: str, before: datetime, cursor: Cursor, limit: int) -> Batch:
    r = t.runs.c
    stmt = (
        select(r.started_at, r.id)
        .where(r.workspace_id == ws, r.started_at < before, _after((r.started_at, r.id), cursor))
        .order_by(r.started_at, r.id)
    )
    rows, nxt = _page(conn, stmt, limit)
    ids = [row.id for row in rows]
    busy = _among(conn, "steps", "run_id", ws, ids) | _among(conn, "requests", "run_id", ws, ids)
    gone = [i for i in ids if i not in busy]
    if gone:
        # Its totals, marks and control describe only it: nothing reads them once it is gone.
        conn.execute(delete(t.run_totals).where(t.run_totals.c.workspace_id == ws, t.run_totals.c.run_id.in_(gone)))
        mk = t.run_marks.c
        conn.execute(delete(t.run_marks).where(mk.workspace_id == ws, mk.run_id.in_(gone)))
        rc = t.run_controls.c
        conn.execute(delete(t.run_controls).where(rc.workspace_id == ws, rc.run_id.in_(gone)))
        conn.execute(delete(t.runs).where(r.workspace_id == ws, r.id.in_(gone)))
    return Batch(len(rows), len(gone), nxt)


def _delete_sessions(conn: Connection, ws: str, before: datetime, cursor: Cursor, limit: int) -> Batch:
    # No index on time here (one would cost every trace write): the workspace's sessions are read by key, `limit` a
    # batch, once a sweep; sessions are far fewer than steps.
    x = t.sessions.c
    stmt = select(x.id, x.last_seen_at).where(x.workspace_id == ws, _after((x.id,), cursor)).order_by(x.id)
    rows, nxt = _page(conn, stmt, limit, width=1)
    expired = [row.id for row in rows if _aware(row.last_seen_at) < before]
    busy = _among(conn, "runs", "session_id", ws, expired)
    gone = [i for i in expired if i not in busy]
    if gone:
        p = t.session_paths.c
        conn.execute(delete(t.session_paths).where(p.workspace_id == ws, p.session_id.in_(gone)))
        conn.execute(delete(t.sessions).where(x.workspace_id == ws, x.id.in_(gone)))
    return Batch(len(rows), len(gone), nxt)


def _window(when: Any, start: datetime | None, before: datetime) -> Any:
    return when < before if start is None else (when >= start) & (when < before)


def _nuller(table: Any, key: str, bodies: tuple[str, ...], by_workspace: bool = True) -> Any:
    """A batch of `table`'s rows in [start, before) by (started_at, `key`), their `bodies` set to NULL (the rows,
    and every figure kept from them, stay)."""
    c = table.c

    def null_batch(
        conn: Connection, ws: str, start: datetime | None, before: datetime, cursor: Cursor, limit: int
    ) -> Batch:
        when, k = c.started_at, c[key]
        stmt = (
            select(when, k)
            .where(c.workspace_id == ws, _window(when, start, before), _after((when, k), cursor))
            .order_by(when, k)
        )
        rows, nxt = _page(conn, stmt, limit)
        keys = [row[1] for row in rows]
        done = 0
        if keys:
            # A step's seq is unique across workspaces; the other keys are unique within one.
            scope = [c.workspace_id == ws] if by_workspace else []
            changed = conn.execute(
                update(table)
                .where(*scope, k.in_(keys), or_(*(c[b].is_not(None) for b in bodies)))
                .values({b: null() for b in bodies})
            )
            done = changed.rowcount
        return Batch(len(rows), done, nxt)

    return null_batch


_DELETES: dict[str, Callable[[Connection, str, datetime, Cursor, int], Batch]] = {
    # Steps, requests and hits first: a run (session) is deleted only once none of its rows is left.
    "steps": _delete_steps,
    "requests": _trace_deleter(t.requests, "started_at"),
    "policy_hits": _trace_deleter(t.policy_hits, "at"),
    "fetch_replays": _delete_fetch_replays,
    "runs": _delete_runs,
    "sessions": _delete_sessions,
}
_NULLS: dict[str, Callable[[Connection, str, datetime | None, datetime, Cursor, int], Batch]] = {
    "requests": _nuller(t.requests, "id", ("response_body",)),
    "steps": _nuller(t.steps, "seq", ("input", "output"), by_workspace=False),
    "runs": _nuller(t.runs, "id", ("output",)),
    "fetch_replays": _nuller(t.fetch_replays, "id", ("body",)),
}
DELETED = tuple(_DELETES)
NULLED = tuple(_NULLS)


# -- rollups verify and rebuild after pruning (store/books.py) -------------------------------------------------------
def horizons(conn: Connection, workspace_id: str | None = None) -> dict[str, datetime]:
    """Each workspace's trace horizon: rows that started before it may have been deleted."""
    c = t.retention.c
    stmt = select(c.workspace_id, c.traces_horizon).where(c.traces_horizon.is_not(None))
    if workspace_id is not None:
        stmt = stmt.where(c.workspace_id == workspace_id)
    return {ws: _aware(at) for ws, at in conn.execute(stmt)}


def _aware(at: datetime) -> datetime:
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at


def _young_ids(
    conn: Connection, table: str, found: Mapping[str, set[str]], since: Mapping[str, datetime]
) -> dict[str, set[str]]:
    """By workspace, the runs (sessions) among `found` that started at or after the workspace's horizon."""
    if table == "runs":
        c, started = t.runs.c, t.runs.c.started_at
    else:
        c, started = t.sessions.c, t.sessions.c.first_seen_at
    young: dict[str, set[str]] = {}
    for ws, ids in found.items():
        listed, mine = sorted(ids), young.setdefault(ws, set())
        for i in range(0, len(listed), 500):
            stmt = select(c.id).where(c.workspace_id == ws, c.id.in_(listed[i : i + 500]), started >= since[ws])
            mine.update(row[0] for row in conn.execute(stmt))
    return young


def comparable_keys(
    conn: Connection, keys: Iterable[tuple[str, tuple[Any, ...]]], since: Mapping[str, datetime]
) -> set[tuple[str, tuple[Any, ...]]]:
    """The (table, key) pairs among `keys` that `rollups verify` can check against the raw rows (core.retention)."""
    keys = list(keys)
    # Run totals and run marks ("marks": workspace, run, mark) are checked for young runs, session paths for young
    # sessions.
    of_runs = {"runs", "marks"}
    subjects: dict[str, dict[str, set[str]]] = {"runs": {}, "paths": {}}
    for table, key in keys:
        subject = "runs" if table in of_runs else table
        if subject in subjects and key[0] in since:
            subjects[subject].setdefault(key[0], set()).add(key[1])
    runs = _young_ids(conn, "runs", subjects["runs"], since)
    young = {"runs": runs, "marks": runs, "paths": _young_ids(conn, "sessions", subjects["paths"], since)}
    none: set[str] = set()
    return {
        (table, key)
        for table, key in keys
        if comparable(table, key, since.get(key[0]), young.get(table, {}).get(key[0], none))
    }

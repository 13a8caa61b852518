"""SQLStore: the Store protocol over SQLAlchemy Core, for SQLite (embedded default) and PostgreSQL.

One implementation serves both because SQLAlchemy Core already is the dialect seam; the differences
(upsert syntax, SQLite pragmas, time buckets) are confined to a few helpers below. Blocking database
calls run on executors so the event loop never waits on I/O: one writer thread (SQLite allows one
writer; batching makes it enough for PostgreSQL too) and a small reader pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TypeVar

from sqlalchemy import (
    and_,
    bindparam,
    case,
    create_engine,
    delete,
    event,
    func,
    insert,
    literal,
    literal_column,
    select,
    text,
    union_all,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError, TimeoutError as PoolTimeout
from sqlalchemy.sql.elements import TextClause

from agentledger.core.alerts import from_budget_alert
from agentledger.core.books import NO_RUN, PAYMENT_COLUMNS, Books, RunDims
from agentledger.core.budgets import PolicyReport
from agentledger.core.errors import Conflict, InvalidRequest, StoreBusy, StoreUnavailable
from agentledger.core.finance import payment_books, payment_values
from agentledger.core.model import (
    NO_RETRY,
    AdminPrincipal,
    Alert,
    Attribution,
    AuditRecord,
    BudgetAlert,
    Fallback,
    LedgerEntries,
    LedgerEntry,
    Payment,
    Principal,
    ProofState,
    ProviderRoute,
    RequestRecord,
    RetryPolicy,
    Role,
    RunEnd,
    RunStart,
    RunStatus,
    StepKind,
    StepRecord,
    TraceEvent,
)
from agentledger.core.pricing import Price
from agentledger.store import (
    audit as audit_sql,
    books as books_sql,
    budgets as budgets_sql,
    finance as finance_sql,
    finance_queries,
    governance as governance_sql,
    schema as t,
    webhooks as webhooks_sql,
)
from agentledger.store.base import (
    CostQuery,
    FinanceQuery,
    FinanceSummary,
    RequestClaim,
    RequestFilter,
    RunFilter,
    SessionFilter,
    StoredResponse,
    WriteResult,
)
from agentledger.store.books import BookKeeper
from agentledger.store.bulk import BulkStatement, CopyInsert
from agentledger.store.marks import MarkKeeper
from agentledger.store.policy_hits import hit_rows
from agentledger.store.queries import (
    LEDGER_COLUMNS,
    MEMBER_GROUP,
    STEP_BOOK_COLUMNS,
    carried,
    check_group_by,
    costs_query,
    kept_source,
    member_labels_query,
    requests_query,
    runs_query,
    scan_count_query,
    session_paths_query,
    session_run_counts_query,
    sessions_query,
    with_members,
)
from agentledger.threads import name_os_thread

log = logging.getLogger(__name__)
T = TypeVar("T")

# Faults of the database's availability (down, refused, reset, timed out, pool exhausted), as opposed to faults
# of a statement or its values. `_read`/`_write` turn them into StoreUnavailable (503, Retry-After).
UNAVAILABLE = (OperationalError, InterfaceError, PoolTimeout, OSError)
# PostgreSQL: an unreachable database must answer fast rather than hold requests (libpq's default connect
# timeout is unbounded, the pool's 30 s). Keepalives and tcp_user_timeout notice a peer that vanished without
# closing the connection (a partition) in seconds, not the kernel's ~15 minutes.
PG_CONNECT_ARGS: dict[str, Any] = {
    "connect_timeout": 3,
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
    "tcp_user_timeout": 10_000,
    # psycopg prepares a statement run five times on a connection, and PostgreSQL then settles on a generic plan,
    # costed once, without the values and with the table as small as it was then; with no statistics (autovacuum
    # off) that plan was an index scan of the whole workspace for a run's steps, 181M rows read at 300k steps.
    # Custom plans see the values and the table's current size every time, for a fraction of a millisecond.
    "options": "-c plan_cache_mode=force_custom_plan",
}
PG_POOL_TIMEOUT = 2.0
CLAIM_PURGE_INTERVAL = 60.0  # seconds between purges of expired idempotency claims
# A cost grouping no rollup keeps (`run`, a property not declared indexed) reads the events of its window:
# at most this many (docs/api.md, "Bounds"), about a second of reading.
MAX_SCAN_EVENTS = 200_000
WORKFLOW_CACHE_SIZE = 100_000  # runs whose workflow, paid endpoint and start the writer remembers
ANALYZE_FIRST = 10_000  # events written before the first statistics refresh (then at each doubling)
# The trace tables and every kept one (the list was written out once, and missed rollup_daily when it came).
ANALYZED = (
    "steps",
    "requests",
    "runs",
    "sessions",
    "policy_hits",  # two of its indexes lead with the workspace: without statistics the planner cannot tell them apart
    *(table.name for table, _, _ in books_sql.KEPT.values()),
)
# What the books need of a request row that a retry replaces (its properties also say which marks it gave).
_REQUEST_BOOK_COLUMNS = ("id", *LEDGER_COLUMNS)
# What the writer remembers of a run: its dimensions for the books, its start for its marks (neither ever changes).
_RunFacts = tuple[RunDims, datetime]


def pg_claim_statement(done: str, key: str = ":rid") -> TextClause:
    """PostgreSQL: find the completed answer of an x-request-id (`done`, a SELECT of it), or else claim the id
    (`key`, the claim's bind), in one statement (one round trip). ON CONFLICT serializes concurrent claimants
    across processes: the loser sees the winner's row and claims nothing unless its lease has run out (a crashed
    holder). Times are the database's, so the clocks of the gateway hosts do not matter."""
    return text(
        f"""
WITH done AS ({done}), claimed AS (
    INSERT INTO idempotency_claims AS c (workspace_id, request_id, holder, expires_at)
    SELECT :ws, {key}, :holder, now() + make_interval(secs => :lease)
    WHERE NOT EXISTS (SELECT 1 FROM done)
    ON CONFLICT (workspace_id, request_id) DO UPDATE
        SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at
        WHERE c.expires_at < now()
    RETURNING 1
)
SELECT EXISTS (SELECT 1 FROM claimed) AS claimed, done.*
FROM (SELECT 1) AS one LEFT JOIN done ON true
"""
    )


_PG_CLAIM = pg_claim_statement(
    "SELECT request_hash, http_status, response_body, response_content_type, run_id, cost_nanos FROM requests "
    "WHERE workspace_id = :ws AND id = :rid AND status = 'ok'"
)


def _utc(value: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; everything leaving the store is aware UTC.
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _row(r: Any) -> dict[str, Any]:
    out = dict(r._mapping)
    for k, v in out.items():
        if isinstance(v, datetime):
            out[k] = _utc(v)
    return out


class SQLStore:
    def __init__(self, url: str, *, readers: int = 4, queries: int = 2, durable_commits: bool = True) -> None:
        """`durable_commits`: a commit is on disk when it returns (SQLite `synchronous=FULL`; PostgreSQL's
        default). False (durability=batched) trades the last moments before an OS crash for less waiting:
        SQLite `synchronous=NORMAL` (WAL: safe from a process crash, not from power loss) and PostgreSQL
        `synchronous_commit=off` on trace writes."""
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        self.durable_commits = durable_commits
        if self.is_sqlite:
            self.engine: Engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
            synchronous = "FULL" if durable_commits else "NORMAL"
            event.listen(self.engine, "connect", lambda conn, _rec: _sqlite_pragmas(conn, synchronous))
        else:
            self.engine = create_engine(
                url,
                pool_size=readers + queries + 1,
                max_overflow=4,
                pool_pre_ping=True,
                pool_timeout=PG_POOL_TIMEOUT,
                connect_args=PG_CONNECT_ARGS,
            )
        self._last_claim_purge = time.monotonic()
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="store-writer", initializer=name_os_thread)
        # Trace-write statements, built once: building an upsert per row cost ~1 ms of CPU (and GIL) a row.
        self._statements: dict[tuple[str, ...], Any] = {}
        self._readers = ThreadPoolExecutor(readers, thread_name_prefix="store-reader", initializer=name_os_thread)
        # The query API's reads (runs, sessions, costs, verify) get their own few threads, at a lower OS
        # priority: however many dashboards poll, they queue here, and the writer and the hot path's lookups
        # (keys, routes, claims on `_readers`) keep their CPU (docs/architecture.md, "Reads and writes").
        self._queries = ThreadPoolExecutor(queries, thread_name_prefix="store-query", initializer=_lower_priority)
        # Trace batches go through one connection kept by the writer thread: checking one out of the pool per
        # batch cost a pre-ping round trip each time. It is dropped (and reopened) after an availability fault.
        self._trace_conn: Connection | None = None
        # Behind the trace journal (pipeline/journal.py) a trace batch's commit needs no fsync of its own: the
        # journal holds the batch until `sync_log` has made the commits durable (SQLite only; set by the app).
        self.journaled = False
        # SQLite: single statements committed without an fsync of their own (`lazy_first`), on a connection kept
        # by the writer thread with `synchronous=NORMAL` for good (the pragma is per connection).
        self._lazy_conn: Connection | None = None
        self._books = BookKeeper(self.engine.dialect)
        self._marks = MarkKeeper(self.engine.dialect)
        self._written = 0  # trace events this process has written (writer thread only)
        self._analyze_at = ANALYZE_FIRST
        self._copies: dict[tuple[str, ...], CopyInsert] = {}
        self._lookups: dict[tuple[str, tuple[str, ...], bool], Any] = {}
        self._booked_before_stmt: Any = None
        self._run_end_stmt: Any = None
        self._claim_restore = finance_sql.claim_restore_statement(self._insert(t.x402_payments))
        # Run workflows, paid endpoints and starts the books have looked up (writer thread only): the rollups group by
        # the first two, run marks take the start.
        self._workflow_cache: dict[tuple[str, str], _RunFacts] = {}
        self._pending_workflows: dict[tuple[str, str], _RunFacts] = {}
        self.budgets = budgets_sql.BudgetStore(self)
        self.governance = governance_sql.GovernanceStore(self)
        self.audit = audit_sql.AuditStore(self)

    # -- plumbing ---------------------------------------------------------------------------------------
    async def _read(self, fn: Callable[[Connection], T], *, query: bool = False) -> T:
        def run() -> T:
            with self.engine.connect() as conn:
                return fn(conn)

        return await self._run(self._queries if query else self._readers, run)

    async def _write(self, fn: Callable[[Connection], T]) -> T:
        def run() -> T:
            with self.engine.begin() as conn:
                return fn(conn)

        return await self._run(self._writer, run)

    async def _autocommit(self, fn: Callable[[Connection], T]) -> T:
        """Single-statement writes on the reader pool, each its own transaction: for the hot path's idempotency
        claims, which must not queue behind trace batches on the writer thread, and need no BEGIN/COMMIT round
        trips (one statement is atomic by itself). PostgreSQL only (SQLite has one writer)."""

        def run() -> T:
            with self.engine.connect() as conn:
                return fn(conn.execution_options(isolation_level="AUTOCOMMIT"))

        return await self._run(self._readers, run)

    async def _run(self, executor: ThreadPoolExecutor, run: Callable[[], T]) -> T:
        try:
            return await asyncio.get_running_loop().run_in_executor(executor, run)
        except PoolTimeout as exc:
            raise StoreBusy("The database is busy; retry shortly.") from exc
        except UNAVAILABLE as exc:
            raise StoreUnavailable("The database is unavailable; retry shortly.") from exc

    def _insert(self, table: Any) -> Any:
        return (sqlite.insert if self.is_sqlite else postgresql.insert)(table)

    async def migrate(self) -> None:
        from agentledger.store.migrate import upgrade

        await asyncio.get_running_loop().run_in_executor(self._writer, upgrade, self.engine)

    async def lazy_write(self, fn: Callable[[Connection], T]) -> T:
        """PostgreSQL: a single-statement write committed without a log flush of its own (the statement on the
        reader pool, as `_autocommit`, with `synchronous_commit = off` while it runs): visible at once, durable with
        the next durable commit, which flushes the log up to there. SQLite's is `lazy_first`."""
        assert not self.is_sqlite
        return await self._autocommit(_without_flush(fn) if self.durable_commits else fn)

    async def lazy_first(self, stmt: BulkStatement, row: dict[str, Any]) -> tuple[Any, ...] | None:
        """SQLite: one statement run for `row` through the driver, its first returned row (or None), committed
        without an fsync of its own in a transaction of its own on the writer thread, on a connection kept with
        `synchronous=NORMAL` (WAL keeps commits in order: durable with the next durable commit). Through the driver:
        SQLAlchemy's execute, begin and commit cost ~0.1 ms of the writer's CPU around a statement that costs SQLite
        a few tens of µs, and a paid call's proof claim waits for all of it."""
        assert self.is_sqlite

        def run() -> tuple[Any, ...] | None:
            conn = self._lazy_conn
            if conn is None:
                conn = self._lazy_conn = self._connect_unsynced()
            raw = conn.connection  # the driver's connection: no SQLAlchemy transaction is ever begun on it
            try:
                try:
                    first = stmt.first(conn, row)
                    raw.commit()
                except BaseException:
                    with contextlib.suppress(Exception):
                        raw.rollback()
                    raise
            except UNAVAILABLE:
                self._lazy_conn = None
                with contextlib.suppress(Exception):
                    conn.invalidate()
                raise
            return first

        return await self._run(self._writer, run)

    def _connect_unsynced(self) -> Connection:
        """A connection whose commits skip SQLite's fsync (`synchronous=NORMAL`, a per-connection pragma)."""
        conn = self.engine.connect()
        conn.exec_driver_sql("PRAGMA synchronous=NORMAL")
        conn.commit()  # SQLAlchemy's autobegun transaction; SQLite begins none for a PRAGMA
        return conn

    def _drop_kept_conns(self) -> None:
        self._drop_trace_conn()
        conn, self._lazy_conn = self._lazy_conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    async def aclose(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._writer, self._drop_kept_conns)
        self._writer.shutdown(wait=True)
        self._readers.shutdown(wait=True)
        self._queries.shutdown(wait=True)
        self.engine.dispose()

    # -- trace writes -----------------------------------------------------------------------------------
    async def write_batch(self, events: Sequence[TraceEvent]) -> WriteResult:
        # Only faults of the database's availability are retryable; anything else (IntegrityError, DataError, a
        # value the driver cannot adapt) is about the events themselves and is raised, as the protocol says.
        try:
            await asyncio.get_running_loop().run_in_executor(self._writer, self._write_trace, events)
        except UNAVAILABLE as exc:
            log.warning("store write failed, will retry: %s", exc)
            return WriteResult.FAILURE
        return WriteResult.SUCCESS

    def _write_trace(self, events: Sequence[TraceEvent]) -> None:
        """Runs on the writer thread: one transaction on the kept trace connection."""
        conn = self._trace_conn
        if conn is None:
            unsynced = self.is_sqlite and self.journaled
            conn = self._trace_conn = self._connect_unsynced() if unsynced else self.engine.connect()
        self._pending_workflows.clear()
        try:
            with conn.begin():
                if not self.durable_commits and not self.is_sqlite:
                    conn.exec_driver_sql("SET LOCAL synchronous_commit = off")
                self._apply(conn, events)
        except UNAVAILABLE:
            self._drop_trace_conn()
            raise
        # Remembered once committed: a rolled-back batch may have read a run that its retry finds otherwise.
        if len(self._workflow_cache) + len(self._pending_workflows) > WORKFLOW_CACHE_SIZE:
            self._workflow_cache.clear()
        self._workflow_cache.update(self._pending_workflows)
        self._written += len(events)
        if not self.is_sqlite and self._written >= self._analyze_at:
            self._analyze(conn)

    def _analyze(self, conn: Connection) -> None:
        """PostgreSQL: refresh the planner's statistics of the trace and kept tables, each time this process has
        written twice as many events as at the last refresh (from 10,000), so plans hold where autovacuum is off.

        Without statistics every index keeps the size it had when created (one page, on an empty table): they
        all cost the same to the planner, which then read a whole workspace through a time index to find one
        request by its primary key. ANALYZE samples a bounded number of rows (tens of milliseconds at 1M steps);
        it runs here on the writer thread, between two batches, and its lock lets other writers (replicas)
        insert meanwhile. A failure only postpones it."""
        self._analyze_at = max(2 * self._written, ANALYZE_FIRST)
        try:
            with conn.begin():
                conn.exec_driver_sql(f"ANALYZE {', '.join(ANALYZED)}")
        except UNAVAILABLE:
            self._drop_trace_conn()
        except Exception:  # statistics are an optimization: never let them fail a write that succeeded
            log.warning("ANALYZE failed; the planner keeps its old statistics", exc_info=True)

    def sync_log(self) -> None:
        """Make every commit so far durable (blocking; off the writer thread): SQLite's WAL fsynced, through a
        descriptor of its own, without the database's lock. Committed frames are in the WAL until a checkpoint
        copies them into the database file, which `synchronous=NORMAL` fsyncs after each checkpoint, so when the
        WAL is absent (checkpointed and removed) there is nothing left to sync. No-op on PostgreSQL: its commits
        are durable already."""
        if not self.is_sqlite or self.engine.url.database in (None, "", ":memory:"):
            return
        try:
            fd = os.open(f"{self.engine.url.database}-wal", os.O_RDONLY)
        except FileNotFoundError:
            return
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _drop_trace_conn(self) -> None:
        conn, self._trace_conn = self._trace_conn, None
        if conn is not None:
            with contextlib.suppress(Exception):  # a connection that already failed may fail to close too
                conn.invalidate()
                conn.close()

    def _apply(self, conn: Connection, events: Sequence[TraceEvent]) -> None:
        """One executemany per table, in dependency order, after folding repeats of a key within the batch;
        then the books (core.books) for exactly the rows this batch inserted or replaced.

        Folding keeps the row-at-a-time semantics (a completed request is final, a session keeps its first
        and latest sighting, a step id is written once) and is required on PostgreSQL, where one multi-row
        upsert may not touch a row twice.
        """
        sessions: dict[tuple[str, str], dict[str, Any]] = {}
        runs: dict[tuple[str, str], dict[str, Any]] = {}
        requests: dict[tuple[str, str], dict[str, Any]] = {}
        steps: dict[tuple[str, str], dict[str, Any]] = {}
        ends: list[RunEnd] = []
        ledger: dict[tuple[str, str], dict[str, Any]] = {}
        alerts: dict[tuple[str, str, str, int], dict[str, Any]] = {}
        raised: dict[tuple[str, str], dict[str, Any]] = {}  # core.model.Alert rows, by (workspace_id, id)
        audits: list[AuditRecord] = []
        proofs: list[ProofState] = []
        for ev in events:
            if isinstance(ev, AuditRecord):
                audits.append(ev)
                continue
            if isinstance(ev, ProofState):
                proofs.append(ev)
                continue
            if isinstance(ev, RunEnd):
                ends.append(ev)
                continue
            if isinstance(ev, LedgerEntries):
                budgets_sql.fold_ledger(ledger, ev)
                continue
            if isinstance(ev, LedgerEntry):
                ledger.setdefault((ev.workspace_id, ev.entry_id), budgets_sql.ledger_values(ev))
                continue
            if isinstance(ev, BudgetAlert):
                key4 = (ev.workspace_id, ev.budget_id, ev.window_key, ev.threshold)
                alerts.setdefault(key4, budgets_sql.alert_values(ev))
                # Its alert's key is the budget alert's own (budget, window, threshold): both are new, or neither.
                webhooks_sql.fold(raised, from_budget_alert(ev))
                continue
            if isinstance(ev, Alert):
                webhooks_sql.fold(raised, ev)
                continue
            _fold_session(sessions, ev.attribution, ev.started_at)
            if isinstance(ev, RequestRecord):
                if isinstance(ev.governance, PolicyReport):  # a model call's ledger entries (PolicyReport.ledger)
                    for entries in ev.governance.ledger(ev.request_id, ev.attribution.run_id):
                        budgets_sql.fold_ledger(ledger, entries)
                values = _request_values(ev)
                key = (values["workspace_id"], values["id"])
                held = requests.get(key)
                if held is None or held["status"] != "ok":
                    requests[key] = values
            elif isinstance(ev, StepRecord):
                steps.setdefault((ev.attribution.workspace_id, ev.step_id), _step_values(ev))
            elif isinstance(ev, RunStart):
                runs.setdefault((ev.attribution.workspace_id, ev.run_id), _run_values(ev))
        if sessions:
            self._bulk(conn, t.sessions, self._session_upsert, list(sessions.values()))
        created = self._insert_new(conn, t.runs, runs) if runs else []
        moved: list[tuple[dict[str, Any], bool, RunDims]] = []
        if created:
            for run in created:  # what _run_facts would read back: a run's first sighting is its row
                key = (run["workspace_id"], run["id"])
                self._pending_workflows[key] = ((run["workflow"], run["endpoint_id"]), run["started_at"])
            moved = self._booked_before(conn, created)
        transitions = self._write_requests(conn, requests) if requests else []
        new_steps = self._insert_new(conn, t.steps, steps) if steps else []
        if transitions or new_steps or moved:
            self._keep_books(conn, transitions, new_steps, moved, created)
        elif created:  # the marks their rows gave before they existed take their start
            self._marks.write(conn, (), (), {}, created)
        if ledger:  # entry ids are unique: a replayed batch inserts nothing twice
            self._bulk(conn, t.budget_ledger, self._ledger_insert, list(ledger.values()))
        if alerts:
            self._bulk(conn, t.budget_alerts, self._alert_insert, list(alerts.values()))
        if raised:  # only alerts this batch inserted enqueue deliveries: a replay enqueues nothing twice
            webhooks_sql.record_alerts(conn, self._insert_new(conn, t.alerts, raised), self._insert, datetime.now(UTC))
        if ends:
            self._end_runs(conn, ends)
        for proof in proofs:  # with the sale's last records: its proof's state is never behind its books
            restore = finance_sql.claim_restore_params(proof)
            if restore is not None:
                conn.execute(self._claim_restore, restore)
            conn.execute(finance_sql.proof_state_update(), finance_sql.proof_state_params(proof))
        hits = hit_rows(new_steps, transitions)  # like the decisions below, from the rows this batch inserted
        if hits:
            self._bulk(conn, t.policy_hits, self._hit_insert, list(hits.values()))
        # Last: the chains' head locks are held from here to the commit only. Decisions come from the rows this
        # batch inserted, so a replay adds none (store/audit.py).
        decided = audit_sql.decisions(new_steps, transitions)
        if audits or decided:
            self.audit.append(conn, audits, datetime.now(UTC), fresh=decided)

    def _end_runs(self, conn: Connection, ends: list[RunEnd]) -> None:
        if self._run_end_stmt is None:  # built once: a statement per call cost more CPU than running it
            c = t.runs.c
            self._run_end_stmt = (
                update(t.runs)
                .where(and_(c.workspace_id == bindparam("e_ws"), c.id == bindparam("e_id")))
                .values(
                    status=bindparam("e_status"),
                    ended_at=bindparam("e_ended_at"),
                    error=bindparam("e_error"),
                    output=bindparam("e_output"),
                )
            )
        for end in ends:
            conn.execute(
                self._run_end_stmt,
                {
                    "e_ws": end.workspace_id,
                    "e_id": end.run_id,
                    "e_status": end.status.value,
                    "e_ended_at": end.ended_at,
                    "e_error": end.error,
                    "e_output": end.output,
                },
            )

    def _existing(
        self, conn: Connection, table: Any, keys: Iterable[tuple[str, str]], columns: Sequence[str], *, lock: bool
    ) -> dict[tuple[str, str], dict[str, Any]]:
        """The stored rows among `keys` (workspace_id, id), with `columns`; `lock` takes them FOR UPDATE."""
        by_ws: dict[str, list[str]] = {}
        for ws, ident in keys:
            by_ws.setdefault(ws, []).append(ident)
        found: dict[tuple[str, str], dict[str, Any]] = {}
        # Built once per shape: constructing the SELECT cost more CPU than running it, on every gateway call.
        shape = (table.name, tuple(columns), lock and not self.is_sqlite)
        stmt = self._lookups.get(shape)
        if stmt is None:
            c = table.c
            stmt = select(*[c[k] for k in columns]).where(
                c.workspace_id == bindparam("ws"), c.id.in_(bindparam("ids", expanding=True))
            )
            if shape[2]:
                stmt = stmt.with_for_update()
            self._lookups[shape] = stmt
        for ws, ids in by_ws.items():
            for i in range(0, len(ids), 500):
                for r in conn.execute(stmt, {"ws": ws, "ids": ids[i : i + 500]}):
                    row = dict(r._mapping)
                    found[(row["workspace_id"], row["id"])] = row
        return found

    def _insert_new(
        self, conn: Connection, table: Any, rows: dict[tuple[str, str], dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """Insert the rows whose (workspace_id, id) is not stored yet; returns those it inserted.

        SQLite has one writer (this thread), so the rows not found before the insert are the ones it inserts.
        PostgreSQL may have other writers (replicas): RETURNING says which rows this statement inserted."""

        def build() -> Any:
            return self._insert(table).on_conflict_do_nothing()

        def pg_build() -> Any:
            return build().returning(table.c.workspace_id, table.c.id)

        if self.is_sqlite and table is t.steps:
            # Most batches are all new: insert, and only when the driver counts fewer rows than sent, ask which
            # are new (those past the highest seq before the insert: this thread is the only writer).
            before = conn.exec_driver_sql("SELECT max(seq) FROM steps").scalar() or 0
            values = list(rows.values())
            if self._bulk_count(conn, table, build, values) == len(values):
                return values
            new = conn.execute(select(t.steps.c.workspace_id, t.steps.c.id).where(t.steps.c.seq > before))
            inserted = {(r[0], r[1]) for r in new}
            return [row for key, row in rows.items() if key in inserted]
        if self.is_sqlite:
            stored = self._existing(conn, table, rows, ("workspace_id", "id"), lock=False)
            fresh = [row for key, row in rows.items() if key not in stored]
            if fresh:
                self._bulk(conn, table, build, fresh)
            return fresh
        values = list(rows.values())
        if table is t.steps:  # the bulk of what is written: COPY (store.bulk.CopyInsert)
            keys = tuple(values[0])
            copier = self._copies.get(keys)
            if copier is None:
                copier = self._copies[keys] = CopyInsert(table, keys)
            returned = copier.run(conn, values)
        else:
            returned = self._bulk(conn, table, pg_build, values, returning=True)
        inserted = {(r[0], r[1]) for r in returned}
        return [row for key, row in rows.items() if key in inserted]

    def _write_requests(
        self, conn: Connection, requests: dict[tuple[str, str], dict[str, Any]]
    ) -> list[tuple[dict[str, Any] | None, dict[str, Any]]]:
        """Insert new requests and replace failed ones (a retry under the same x-request-id); a completed request
        is final. Returns (replaced row or None, new row) for each row written."""
        new = self._insert_new(conn, t.requests, requests)
        out: list[tuple[dict[str, Any] | None, dict[str, Any]]] = [(None, row) for row in new]
        inserted = {(row["workspace_id"], row["id"]) for row in new}
        rest = [key for key in requests if key not in inserted]
        if not rest:
            return out
        # Locked (PostgreSQL), so the row replaced is the row read: another writer's retry waits for this one.
        stored = self._existing(conn, t.requests, rest, _REQUEST_BOOK_COLUMNS, lock=True)
        replace = [requests[key] for key in rest if stored[key]["status"] != "ok"]
        if replace:
            self._bulk(conn, t.requests, self._request_upsert, replace)
            out += [(stored[(row["workspace_id"], row["id"])], row) for row in replace]
        return out

    def _booked_before(
        self, conn: Connection, runs: list[dict[str, Any]]
    ) -> list[tuple[dict[str, Any], bool, RunDims]]:
        """The ledger rows booked before their run existed (steps sent without it), for runs this batch created
        with a workflow or a paid endpoint: they were booked under neither and move to the run's.
        (row, is_request, the run's dimensions). One statement per workspace, however many runs it created."""
        dims: dict[str, dict[str, RunDims]] = {}
        for run in runs:
            if run["workflow"] is not None or run["endpoint_id"] is not None:
                dims.setdefault(run["workspace_id"], {})[run["id"]] = (run["workflow"], run["endpoint_id"])
        found: list[tuple[dict[str, Any], bool, RunDims]] = []
        if not dims:
            return found
        if self._booked_before_stmt is None:
            r, s = t.requests.c, t.steps.c
            none: list[Any] = [literal(None).label("kind"), *[literal(0).label(c) for c in PAYMENT_COLUMNS]]
            ws: Any = bindparam("ws")
            ids: Any = bindparam("ids", expanding=True)
            # Built once: every paid call's run makes this lookup, and building it cost more than running it.
            self._booked_before_stmt = union_all(
                select(*[r[k] for k in LEDGER_COLUMNS], *none, literal(True).label("is_request")).where(
                    r.workspace_id == ws, r.run_id.in_(ids)
                ),
                select(*[s[k] for k in (*LEDGER_COLUMNS, *STEP_BOOK_COLUMNS)], literal(False)).where(
                    s.workspace_id == ws, s.run_id.in_(ids), s.request_id.is_(None)
                ),
            )
        for ws_id, by_run in dims.items():
            stmt, params = self._booked_before_stmt, {"ws": ws_id, "ids": sorted(by_run)}
            for row in conn.execute(stmt, params):
                values = dict(row._mapping)
                is_request = bool(values.pop("is_request"))
                found.append((values, is_request, by_run[values["run_id"]]))
        return found

    def _keep_books(
        self,
        conn: Connection,
        requests: list[tuple[dict[str, Any] | None, dict[str, Any]]],
        steps: list[dict[str, Any]],
        moved: list[tuple[dict[str, Any], bool, RunDims]],
        created: list[dict[str, Any]],
    ) -> None:
        rows = [row for pair in requests for row in pair if row is not None] + steps + [m[0] for m in moved]
        facts = self._run_facts(conn, {(r["workspace_id"], r["run_id"]) for r in rows if r["run_id"]})
        dims = {key: known[0] for key, known in facts.items()}
        # Read after this batch's rows are in: a property declared meanwhile either is seen here, or its
        # backfill (which waits for this transaction on PostgreSQL, and runs on this thread on SQLite) sees them.
        indexed: dict[str, frozenset[str]] = {}
        for ws, name in books_sql.declared_in(conn, {r["workspace_id"] for r in rows}):
            indexed[ws] = indexed.get(ws, frozenset()) | {name}
        none: frozenset[str] = frozenset()
        books = Books()
        for old, new in requests:
            if old is not None:
                ws = old["workspace_id"]
                books.request(old, dims.get((ws, old["run_id"]), NO_RUN), indexed.get(ws, none), -1)
            ws = new["workspace_id"]
            books.request(new, dims.get((ws, new["run_id"]), NO_RUN), indexed.get(ws, none))
        for step in steps:
            ws = step["workspace_id"]
            books.step(step, dims.get((ws, step["run_id"]), NO_RUN), indexed.get(ws, none))
        for row, is_request, run in moved:
            books.move(row, is_request, NO_RUN, run, indexed.get(row["workspace_id"], none))
        self._books.apply(conn, books)
        starts = {key: known[1] for key, known in facts.items()}
        self._marks.write(conn, (new for _, new in requests), steps, starts, created)
        if any(old is not None for old, _ in requests):
            self._marks.unmark(conn, requests)

    def _run_facts(self, conn: Connection, runs: set[tuple[str, str]]) -> dict[tuple[str, str], _RunFacts]:
        """The workflow and paid endpoint, and the start, of each stored run among `runs` (fixed when the run is
        created, so remembered across batches)."""
        known: dict[tuple[str, str], _RunFacts] = {}
        for key in runs:
            found = self._pending_workflows.get(key) or self._workflow_cache.get(key)
            if found is not None:
                known[key] = found
        missing = runs - known.keys()
        if missing:
            for key, row in self._existing(
                conn, t.runs, missing, ("workspace_id", "id", "workflow", "endpoint_id", "started_at"), lock=False
            ).items():
                known[key] = self._pending_workflows[key] = ((row["workflow"], row["endpoint_id"]), row["started_at"])
        return known

    def _statement(self, table: Any, build: Callable[[], Any], keys: tuple[str, ...]) -> BulkStatement:
        # One statement per builder, table and column set (an insert and an upsert of the same rows differ).
        cache_key = (build.__qualname__, table.name, *keys)
        stmt = self._statements.get(cache_key)
        if stmt is None:
            stmt = self._statements[cache_key] = BulkStatement(build(), table, keys, self.engine.dialect)
        return stmt

    def _bulk_count(self, conn: Connection, table: Any, build: Callable[[], Any], rows: list[dict[str, Any]]) -> int:
        """`_bulk`, returning how many rows the statement changed."""
        stmt = self._statement(table, build, tuple(rows[0]))
        stmt.run(conn, rows)
        return int(stmt.rowcount)

    def _bulk(
        self,
        conn: Connection,
        table: Any,
        build: Callable[[], Any],
        rows: list[dict[str, Any]],
        *,
        returning: bool = False,
    ) -> list[Any]:
        return self._statement(table, build, tuple(rows[0])).run(conn, rows, returning=returning)

    def _ledger_insert(self) -> Any:
        return self._insert(t.budget_ledger).on_conflict_do_nothing()

    def _alert_insert(self) -> Any:
        # A threshold is crossed once per window: a second crossing (another replica, a replay) changes nothing.
        return self._insert(t.budget_alerts).on_conflict_do_nothing()

    def _hit_insert(self) -> Any:
        # A hit's id is its call's and policy's (core.policy_hits.hit_id): a retried call's hits are its first try's.
        return self._insert(t.policy_hits).on_conflict_do_nothing()

    def _session_upsert(self) -> Any:
        stmt = self._insert(t.sessions)
        excluded = stmt.excluded
        return stmt.on_conflict_do_update(
            index_elements=["workspace_id", "id"],
            set_={
                "name": func.coalesce(excluded.name, t.sessions.c.name),
                "last_seen_at": case(
                    (excluded.last_seen_at > t.sessions.c.last_seen_at, excluded.last_seen_at),
                    else_=t.sessions.c.last_seen_at,
                ),
            },
        )

    def _request_upsert(self) -> Any:
        stmt = self._insert(t.requests)
        # A failed attempt may be retried under the same x-request-id; a completed one is final.
        return stmt.on_conflict_do_update(
            index_elements=["workspace_id", "id"],
            set_={c.name: stmt.excluded[c.name] for c in t.requests.c if c.name not in ("workspace_id", "id")},
            where=t.requests.c.status != literal_column("'ok'"),
        )

    # -- governance -------------------------------------------------------------------------------------
    async def _insert_row(self, table: Any, row: dict[str, Any], what: str) -> None:
        def run(conn: Connection) -> None:
            conn.execute(insert(table).values(**row))

        await self._write_or_conflict(run, what)

    async def _write_or_conflict(self, fn: Callable[[Connection], T], what: str) -> T:
        """`_write`, with a constraint violation as a 409 (Conflict) naming `what`."""
        try:
            return await self._write(fn)
        except IntegrityError as exc:
            raise Conflict(f"{what} already exists or refers to something that does not.") from exc

    async def _select(self, stmt: Any, *, query: bool = False) -> list[dict[str, Any]]:
        return await self._read(lambda conn: [_row(r) for r in conn.execute(stmt)], query=query)

    async def create_workspace(self, workspace_id: str, name: str, now: datetime) -> None:
        await self._insert_row(t.workspaces, {"id": workspace_id, "name": name, "created_at": now}, "Workspace")

    async def list_workspaces(self, workspace_id: str) -> list[dict[str, Any]]:
        return await self._select(select(t.workspaces).where(t.workspaces.c.id == workspace_id))

    async def create_department(self, workspace_id: str, department_id: str, name: str, now: datetime) -> None:
        row = {"workspace_id": workspace_id, "id": department_id, "name": name, "created_at": now}
        await self._insert_row(t.departments, row, "Department")

    async def list_departments(self, workspace_id: str) -> list[dict[str, Any]]:
        c = t.departments.c
        return await self._select(select(t.departments).where(c.workspace_id == workspace_id).order_by(c.created_at))

    async def create_agent(
        self, workspace_id: str, agent_id: str, department_id: str, name: str, kind: str, now: datetime
    ) -> None:
        row = dict(
            workspace_id=workspace_id, id=agent_id, department_id=department_id, name=name, kind=kind, created_at=now
        )
        await self._insert_row(t.agents, row, "Agent")

    async def list_agents(self, workspace_id: str) -> list[dict[str, Any]]:
        c = t.agents.c
        return await self._select(select(t.agents).where(c.workspace_id == workspace_id).order_by(c.created_at))

    async def get_agent(self, workspace_id: str, agent_id: str) -> dict[str, Any] | None:
        c = t.agents.c
        rows = await self._select(select(t.agents).where(c.workspace_id == workspace_id, c.id == agent_id))
        return rows[0] if rows else None

    async def create_virtual_key(self, row: dict[str, Any]) -> None:
        await self._insert_row(t.virtual_keys, row, "Virtual key")

    async def list_virtual_keys(self, workspace_id: str) -> list[dict[str, Any]]:
        c = t.virtual_keys.c
        stmt = select(*[col for col in t.virtual_keys.c if col.name != "key_hash"]).where(
            c.workspace_id == workspace_id
        )
        return await self._select(stmt.order_by(c.created_at))

    async def revoke_virtual_key(self, workspace_id: str, key_id: str, now: datetime) -> str | None:
        c = t.virtual_keys.c

        def run(conn: Connection) -> str | None:
            where = and_(c.workspace_id == workspace_id, c.id == key_id)
            key_hash = conn.execute(select(c.key_hash).where(where)).scalar()
            conn.execute(update(t.virtual_keys).where(where, c.revoked_at.is_(None)).values(revoked_at=now))
            return key_hash

        return await self._write(run)

    async def principal_for_key(self, key_hash: str) -> Principal | None:
        c = t.virtual_keys.c
        rows = await self._select(select(t.virtual_keys).where(c.key_hash == key_hash, c.revoked_at.is_(None)))
        if not rows:
            return None
        r = rows[0]
        return Principal(
            workspace_id=r["workspace_id"],
            department_id=r["department_id"],
            virtual_key_id=r["id"],
            agent_id=r["agent_id"],
            allowed_models=tuple(r["allowed_models"] or ()),
        )

    async def create_provider_key(self, row: dict[str, Any]) -> None:
        await self._insert_row(t.provider_keys, row, "Provider key")

    async def list_provider_keys(self, workspace_id: str) -> list[dict[str, Any]]:
        c = t.provider_keys.c
        cols = [col for col in t.provider_keys.c if col.name != "api_key_encrypted"]
        return await self._select(select(*cols).where(c.workspace_id == workspace_id).order_by(c.created_at))

    async def revoke_provider_key(self, workspace_id: str, key_id: str, now: datetime) -> bool:
        c = t.provider_keys.c

        def run(conn: Connection) -> bool:
            res = conn.execute(
                update(t.provider_keys)
                .where(c.workspace_id == workspace_id, c.id == key_id, c.revoked_at.is_(None))
                .values(revoked_at=now)
            )
            return bool(res.rowcount)

        return await self._write(run)

    async def provider_routes(self, workspace_id: str, decrypt: Any) -> list[ProviderRoute]:
        c = t.provider_keys.c
        rows = await self._select(
            select(t.provider_keys)
            .where(c.workspace_id == workspace_id, c.revoked_at.is_(None))
            .order_by(c.priority.desc(), c.created_at)
        )
        return [
            ProviderRoute(
                id=r["id"],
                workspace_id=workspace_id,
                name=r["name"],
                provider=r["provider"],
                kind=r["kind"],
                base_url=r["base_url"],
                api_key=decrypt(r["api_key_encrypted"]) if r["api_key_encrypted"] else None,
                models=tuple(r["models"]),
                priority=r["priority"],
                fallbacks=tuple(Fallback(f.get("key"), f.get("model")) for f in r["fallbacks"] or ()),
                retry=RetryPolicy(**r["retry"]) if r["retry"] else NO_RETRY,
                options=r["options"] or {},
            )
            for r in rows
        ]

    async def create_admin_token(self, row: dict[str, Any]) -> None:
        await self._insert_row(t.admin_tokens, row, "Admin token")

    async def admin_for_token(self, token_hash: str) -> AdminPrincipal | None:
        c = t.admin_tokens.c
        rows = await self._select(select(t.admin_tokens).where(c.token_hash == token_hash, c.revoked_at.is_(None)))
        if not rows:
            return None
        return AdminPrincipal(workspace_id=rows[0]["workspace_id"], token_id=rows[0]["id"], role=Role(rows[0]["role"]))

    async def add_price_override(self, row: dict[str, Any]) -> None:
        await self._insert_row(t.price_overrides, row, "Price override")

    async def list_price_overrides(self, workspace_id: str) -> list[dict[str, Any]]:
        c = t.price_overrides.c
        return await self._select(select(t.price_overrides).where(c.workspace_id == workspace_id).order_by(c.model))

    async def price_overrides(self, workspace_id: str) -> dict[str, list[Price]]:
        out: dict[str, list[Price]] = {}
        for r in await self.list_price_overrides(workspace_id):
            out.setdefault(r["model"], []).append(
                Price(
                    input_mtok=Decimal(r["input_mtok"]),
                    output_mtok=Decimal(r["output_mtok"]),
                    cached_input_mtok=Decimal(r["cached_input_mtok"]) if r["cached_input_mtok"] else None,
                    cache_write_mtok=Decimal(r["cache_write_mtok"]) if r["cache_write_mtok"] else None,
                    effective_from=r["effective_from"],
                    origin="workspace_override",
                )
            )
        return out

    async def list_all_workspaces(self) -> list[dict[str, Any]]:
        """Every workspace (the CLI's view; the API only ever sees its own)."""
        return await self._select(select(t.workspaces).order_by(t.workspaces.c.created_at, t.workspaces.c.id))

    async def list_admin_tokens(self, workspace_id: str) -> list[dict[str, Any]]:
        c = t.admin_tokens.c
        cols = [col for col in t.admin_tokens.c if col.name != "token_hash"]
        return await self._select(select(*cols).where(c.workspace_id == workspace_id).order_by(c.created_at))

    async def revoke_admin_token(self, workspace_id: str, token_id: str, now: datetime) -> bool:
        c = t.admin_tokens.c

        def run(conn: Connection) -> bool:
            res = conn.execute(
                update(t.admin_tokens)
                .where(c.workspace_id == workspace_id, c.id == token_id, c.revoked_at.is_(None))
                .values(revoked_at=now)
            )
            return bool(res.rowcount)

        return await self._write(run)

    # -- trace queries ----------------------------------------------------------------------------------
    async def stored_response(self, workspace_id: str, request_id: str) -> StoredResponse | None:
        c = t.requests.c
        rows = await self._select(
            select(
                c.request_hash, c.http_status, c.response_body, c.response_content_type, c.run_id, c.cost_nanos
            ).where(c.workspace_id == workspace_id, c.id == request_id, c.status == "ok")
        )
        return _stored_response(rows[0]) if rows else None

    async def claim_request(self, workspace_id: str, request_id: str, holder: str, lease: float) -> RequestClaim:
        if self.is_sqlite:
            # One process is SQLite's only writer, and its in-memory claim already serializes duplicates.
            stored = await self.stored_response(workspace_id, request_id)
            return RequestClaim(stored, claimed=stored is None)
        purge = time.monotonic() - self._last_claim_purge > CLAIM_PURGE_INTERVAL
        if purge:
            self._last_claim_purge = time.monotonic()

        def run(conn: Connection) -> RequestClaim:
            if purge:
                # Claims of completed ids are superseded by their request rows, those of crashed holders by
                # expiry: neither is needed once expired.
                c = t.idempotency_claims.c
                conn.execute(delete(t.idempotency_claims).where(c.expires_at < func.now()))
            params = {"ws": workspace_id, "rid": request_id, "holder": holder, "lease": lease}
            r = conn.execute(_PG_CLAIM, params).one()
            stored = _stored_response(r._mapping)
            return RequestClaim(stored, claimed=stored is None and bool(r.claimed))

        return await self._autocommit(run)

    async def release_claim(self, workspace_id: str, request_id: str, holder: str) -> None:
        if self.is_sqlite:
            return
        c = t.idempotency_claims.c

        def run(conn: Connection) -> None:
            conn.execute(
                delete(t.idempotency_claims).where(
                    c.workspace_id == workspace_id, c.request_id == request_id, c.holder == holder
                )
            )

        await self._autocommit(run)

    async def list_runs(self, workspace_id: str, flt: RunFilter) -> list[dict[str, Any]]:
        return [carried(r) for r in await self._select(runs_query(workspace_id, flt), query=True)]

    async def get_run(self, workspace_id: str, run_id: str) -> dict[str, Any] | None:
        rows = await self._select(runs_query(workspace_id, RunFilter(limit=1), run_id=run_id))
        return carried(rows[0]) if rows else None

    async def run_identity(self, workspace_id: str, run_id: str) -> dict[str, Any] | None:
        """A run's department, agent, session and workflow by primary key: what ingest checks a batch against,
        without the totals (get_run's join)."""
        c = t.runs.c
        rows = await self._select(
            select(c.department_id, c.agent_id, c.session_id, c.workflow).where(
                c.workspace_id == workspace_id, c.id == run_id
            )
        )
        return rows[0] if rows else None

    async def run_steps(self, workspace_id: str, run_id: str) -> list[dict[str, Any]]:
        c = t.steps.c
        return await self._select(
            select(t.steps).where(c.workspace_id == workspace_id, c.run_id == run_id).order_by(c.started_at, c.seq),
            query=True,
        )

    async def step_exists(self, workspace_id: str, step_ids: Sequence[str]) -> set[str]:
        if not step_ids:
            return set()
        c = t.steps.c
        rows = await self._select(select(c.id).where(c.workspace_id == workspace_id, c.id.in_(list(step_ids))))
        return {r["id"] for r in rows}

    async def get_session(self, workspace_id: str, session_id: str) -> dict[str, Any] | None:
        c = t.sessions.c
        rows = await self._select(select(t.sessions).where(c.workspace_id == workspace_id, c.id == session_id))
        if not rows:
            return None
        session = rows[0]
        session["runs"] = await self.list_runs(workspace_id, RunFilter(session_id=session_id, limit=1000))
        paths = await self._select(session_paths_query(workspace_id, session_id), query=True)
        session["paths"] = [carried(r) for r in paths]
        return session

    async def get_request(self, workspace_id: str, request_id: str) -> dict[str, Any] | None:
        c = t.requests.c
        cols = [col for col in t.requests.c if col.name not in ("response_body", "request_hash")]
        rows = await self._select(select(*cols).where(c.workspace_id == workspace_id, c.id == request_id), query=True)
        return rows[0] if rows else None

    async def list_sessions(self, workspace_id: str, flt: SessionFilter) -> list[dict[str, Any]]:
        sessions = await self._select(sessions_query(workspace_id, flt), query=True)
        ids = [s["id"] for s in sessions]
        if not ids:
            return []
        counts = await self._select(session_run_counts_query(workspace_id, ids), query=True)
        run_count = {r["session_id"]: int(r["run_count"]) for r in counts}
        paths: dict[str, list[dict[str, Any]]] = {}
        for row in await self._select(session_paths_query(workspace_id, ids), query=True):
            paths.setdefault(row.pop("session_id"), []).append(carried(row))
        for s in sessions:
            s["run_count"] = run_count.get(s["id"], 0)
            s["paths"] = paths.get(s["id"], [])
        return sessions

    async def list_requests(self, workspace_id: str, flt: RequestFilter) -> list[dict[str, Any]]:
        return await self._select(requests_query(workspace_id, flt), query=True)

    async def costs(self, workspace_id: str, query: CostQuery) -> list[dict[str, Any]]:
        name = check_group_by(query.group_by)
        indexed = name is not None and name in await self.indexed_properties(workspace_id)
        if kept_source(query, indexed) is None:
            scanned = await self._read(
                lambda conn: conn.execute(scan_count_query(workspace_id, query, MAX_SCAN_EVENTS)).scalar(), query=True
            )
            if (scanned or 0) > MAX_SCAN_EVENTS:
                raise InvalidRequest(
                    f"group_by={query.group_by} is counted from the events themselves, at most {MAX_SCAN_EVENTS} "
                    "of them: narrow 'from'/'to'"
                    + (" or declare the property indexed (POST /api/analytics/properties)." if name else "."),
                    param="group_by",
                )
        rows = await self._select(costs_query(workspace_id, query, sqlite=self.is_sqlite, indexed=indexed), query=True)
        if query.group_by == MEMBER_GROUP:  # the owners' email and name: a second small query
            ids = sorted({r["key"] for r in rows if r["key"] is not None})
            with_members(rows, await self._select(member_labels_query(workspace_id, ids), query=True) if ids else [])
        return [carried(r) for r in rows]

    async def finance_summary(self, workspace_id: str, query: FinanceQuery) -> FinanceSummary:
        """P&L measures grouped from the kept rows (store/finance_queries.py), its rows and totals read in one
        snapshot: a batch committed in between would otherwise make the totals disagree with the rows."""

        def run() -> FinanceSummary:
            with self.engine.connect() as conn:
                if self.is_sqlite:
                    # pysqlite opens no transaction for a SELECT: each would read its own snapshot.
                    conn.exec_driver_sql("BEGIN")
                else:
                    conn = conn.execution_options(isolation_level="REPEATABLE READ")
                try:
                    return finance_queries.summary(conn, workspace_id, query)
                finally:
                    conn.rollback()

        return await self._run(self._queries, run)

    # -- the books: indexed properties, verify and rebuild ----------------------------------------------------------
    async def indexed_properties(self, workspace_id: str) -> list[str]:
        return [name for _, name in await self._read(lambda conn: books_sql.declared(conn, workspace_id))]

    async def declare_property(self, workspace_id: str, name: str, now: datetime) -> bool:
        """Keep rollups for `property.<name>` from now on, filled from the events already stored (in the same
        transaction, with trace writes held off). False if it was declared already."""

        def run(conn: Connection) -> bool:
            if not self.is_sqlite:
                books_sql.lock_writers(conn)
            if name in [n for _, n in books_sql.declared(conn, workspace_id)]:
                return False
            conn.execute(insert(t.indexed_properties).values(workspace_id=workspace_id, name=name, created_at=now))
            books_sql.rebuild_property(conn, workspace_id, name)
            return True

        try:
            return await self._write(run)
        except IntegrityError as exc:  # declared by another process meanwhile, or the workspace is gone
            raise Conflict(f"Property {name!r} is already indexed or the workspace does not exist.") from exc

    async def verify_books(self, workspace_id: str | None = None) -> list[books_sql.Mismatch]:
        """Kept totals and rollups against a recomputation from the raw rows, in one snapshot."""

        def run() -> list[books_sql.Mismatch]:
            with self.engine.connect() as conn:
                if not self.is_sqlite:
                    conn = conn.execution_options(isolation_level="REPEATABLE READ")
                with conn.begin():
                    return books_sql.verify(conn, workspace_id)

        return await self._run(self._queries, run)

    async def rebuild_books(self, workspace_id: str | None = None) -> int:
        """Replace the kept totals and rollups with their recomputation (on the writer, so no batch interleaves)."""

        def run(conn: Connection) -> int:
            return books_sql.rebuild(conn, workspace_id)

        return await self._write(run)


def _stored_response(r: Mapping[Any, Any]) -> StoredResponse | None:
    """A completed request's answer as kept for replay; None when there is no completed request (the claim's
    outer join found none). Its body is None when it was not kept (omitted, or pruned by retention): the id is
    still taken, so a repeat must not be forwarded again."""
    if r["request_hash"] is None:
        return None
    body = r["response_body"]
    return StoredResponse(
        r["request_hash"],
        r["http_status"],
        None if body is None else bytes(body),
        r["response_content_type"] or "",
        r["run_id"],
        r["cost_nanos"],
    )


QUERY_NICE = 10  # how much lower the query threads' OS priority is (Linux `nice`; 19 is the lowest)


def _lower_priority() -> None:
    """Lower this thread's scheduling priority (Linux: setpriority on a thread id affects that thread alone)."""
    name_os_thread()
    with contextlib.suppress(AttributeError, OSError):  # not Linux, or not permitted: the pool still bounds reads
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), QUERY_NICE)


def _sqlite_pragmas(dbapi_conn: Any, synchronous: str) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute(f"PRAGMA synchronous={synchronous}")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    # SQLite's default page cache is 2 MB per connection: past a few hundred thousand steps, every insert into
    # the step indexes (random ids) and every rollup upsert read pages from the OS again. 64 MB per connection.
    cur.execute("PRAGMA cache_size=-65536")
    cur.close()


def _fold_session(sessions: dict[tuple[str, str], dict[str, Any]], a: Attribution, at: datetime) -> None:
    if a.session_id is None:
        return
    held = sessions.get((a.workspace_id, a.session_id))
    if held is None:
        sessions[(a.workspace_id, a.session_id)] = dict(
            workspace_id=a.workspace_id, id=a.session_id, name=a.session_name, first_seen_at=at, last_seen_at=at
        )
        return
    held["first_seen_at"] = min(held["first_seen_at"], at)
    held["last_seen_at"] = max(held["last_seen_at"], at)
    held["name"] = a.session_name or held["name"]


def _attribution_values(a: Attribution) -> dict[str, Any]:
    return dict(
        workspace_id=a.workspace_id,
        department_id=a.department_id,
        virtual_key_id=a.virtual_key_id,
        agent_id=a.agent_id,
        run_id=a.run_id,
        session_id=a.session_id,
        session_path=a.session_path,
        prompt_id=a.prompt_id,
        prompt_version=a.prompt_version,
        properties=a.properties,
    )


def _usage_values(usage: Any, cost_nanos: int, cost_source: Any) -> dict[str, Any]:
    return dict(
        input_tokens=usage.input_tokens if usage else 0,
        cached_input_tokens=usage.cached_input_tokens if usage else 0,
        cache_write_tokens=usage.cache_write_tokens if usage else 0,
        output_tokens=usage.output_tokens if usage else 0,
        reasoning_tokens=usage.reasoning_tokens if usage else 0,
        cost_nanos=cost_nanos,
        cost_source=cost_source.value if cost_source else None,
    )


def _run_values(ev: RunStart) -> dict[str, Any]:
    a = ev.attribution
    return dict(
        workspace_id=a.workspace_id,
        id=ev.run_id,
        department_id=a.department_id,
        virtual_key_id=a.virtual_key_id,
        agent_id=a.agent_id,
        session_id=a.session_id,
        workflow=ev.workflow,
        name=ev.name,
        status=RunStatus.RUNNING.value,
        started_at=ev.started_at,
        metadata=ev.metadata,
        endpoint_id=ev.endpoint_id,
    )


def _request_values(r: RequestRecord) -> dict[str, Any]:
    return dict(
        id=r.request_id,
        **_attribution_values(r.attribution),
        session_name=r.attribution.session_name,
        endpoint=r.endpoint,
        provider=r.provider,
        model=r.model,
        stream=r.stream,
        status=r.status.value,
        http_status=r.http_status,
        attempts=r.attempt,
        **_usage_values(r.usage, r.cost_nanos, r.cost_source),
        latency_ms=r.latency_ms,
        ttft_ms=r.ttft_ms,
        error_code=r.error_code,
        error_message=r.error_message,
        request_hash=r.request_hash,
        response_body=r.response_body,
        response_content_type=r.response_content_type,
        started_at=r.started_at,
        ended_at=r.ended_at,
        requested_model=r.requested_model,
        provider_key=r.provider_key,
        route_attempts=r.route_attempts,
        policy_decision=r.policy_decision,
        governance=budgets_sql.stored_governance(r.governance),
    )


def _step_values(s: StepRecord) -> dict[str, Any]:
    # One literal, no helper dicts: this runs for every step written (tens of thousands a second).
    a, u = s.attribution, s.usage
    row = {
        "id": s.step_id,
        "parent_id": s.parent_id,
        "request_id": s.request_id,
        "workspace_id": a.workspace_id,
        "department_id": a.department_id,
        "virtual_key_id": a.virtual_key_id,
        "agent_id": a.agent_id,
        "run_id": s.run_id,
        "session_id": a.session_id,
        "session_path": a.session_path,
        "prompt_id": a.prompt_id,
        "prompt_version": a.prompt_version,
        "properties": a.properties,
        "kind": s.kind.value,
        "name": s.name,
        "status": s.status.value,
        "model": s.model,
        "provider": s.provider,
        "input_tokens": u.input_tokens if u else 0,
        "cached_input_tokens": u.cached_input_tokens if u else 0,
        "cache_write_tokens": u.cache_write_tokens if u else 0,
        "output_tokens": u.output_tokens if u else 0,
        "reasoning_tokens": u.reasoning_tokens if u else 0,
        "cost_nanos": s.cost_nanos,
        "cost_source": s.cost_source.value if s.cost_source else None,
        "branch": s.branch,
        "attempt": s.attempt,
        "error": s.error,
        "input": s.input,
        "output": s.output,
        "attributes": (
            budgets_sql.stored_governance(s.attributes) if isinstance(s.attributes, PolicyReport) else s.attributes
        ),
        "latency_ms": s.latency_ms,
        "started_at": s.started_at,
        "ended_at": s.ended_at,
        "payment": None,
        "revenue_nanos": 0,
        "refund_nanos": 0,
        "fee_nanos": 0,
        "payment_out_nanos": 0,
    }
    if s.payment is not None and s.kind is StepKind.PAYMENT:
        _with_payment(row, s.payment)
    return row


def _with_payment(row: dict[str, Any], p: Payment) -> None:
    """A payment step's row: its payment, and the cost and measures it decides (core.finance), whoever built the
    record, so the books add up."""
    paid = payment_books(p)
    row["cost_nanos"] = paid.cost
    row["payment"] = payment_values(p)
    row["revenue_nanos"] = paid.revenue
    row["refund_nanos"] = paid.refund
    row["fee_nanos"] = paid.fee
    row["payment_out_nanos"] = paid.payment_out


def _without_flush(run: Callable[[Connection], T]) -> Callable[[Connection], T]:
    """PostgreSQL: `run` committed without waiting for its WAL flush (`synchronous_commit = off` for this
    connection while it runs)."""

    def lazy(conn: Connection) -> T:
        conn.exec_driver_sql("SET synchronous_commit = off")
        try:
            return run(conn)
        finally:
            conn.exec_driver_sql("RESET synchronous_commit")

    return lazy

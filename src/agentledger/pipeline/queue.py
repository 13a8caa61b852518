"""Trace events → batched, idempotent store writes, off the request's hot path, with a durability promise.

Two modes (setting `durability`, docs/architecture.md "Durability"):

* **strict** — `commit()` hands back a future that completes once the events are *durable*: committed by
  the store (PostgreSQL commit; SQLite with `synchronous=FULL`), appended to the journal (SQLite: see
  pipeline/journal.py) or fsynced to the local spool. The gateway releases a response only after that, so a
  `kill -9` loses no acknowledged record. The worker writes as soon as anything is queued, and whatever
  arrives while a write is in progress forms the next batch: group commit, one transaction and one fsync for
  many requests, with no batching window to wait out. With a journal, two workers: one appends batches to
  the journal and acknowledges them, the other writes what the journal holds to the store behind it.
* **batched** — `commit()` returns None and the response does not wait; the worker gathers events for
  `interval` before writing. A crash loses what was queued or in flight: at most about one `interval`
  plus one write of records.

`emit()` (no waiting, in either mode) is for records nobody is waiting on, e.g. a client that hung up.

When the store fails, the batch goes to the spool (fsync) and the store is not tried again until a
backoff has passed (a circuit breaker): during an outage requests wait for a local fsync, not for
retries against a dead database. While the spool holds anything, new batches are appended behind it, so
events reach the store in the order they were emitted; the spool is replayed (every write is idempotent)
once the backoff passes, then cleared. A batch the store rejects outright (it raises: a poison event) is
written one event at a time, so only the bad events are skipped, logged and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from agentledger.core.errors import AgentLedgerError, StoreUnavailable
from agentledger.core.model import (
    Alert,
    AuditRecord,
    BudgetAlert,
    LedgerEntries,
    LedgerEntry,
    ProofState,
    RunEnd,
    RunStart,
    StepRecord,
    TraceEvent,
)
from agentledger.pipeline.journal import Journal, JournalLocked
from agentledger.pipeline.spool import Spool
from agentledger.store.base import Store, WriteResult
from agentledger.threads import name_os_thread

log = logging.getLogger(__name__)
T = TypeVar("T")
X = TypeVar("X")


class Durability(enum.StrEnum):
    STRICT = "strict"
    BATCHED = "batched"


@dataclass
class PipelineStats:
    emitted: int = 0
    written: int = 0
    batches: int = 0
    failures: int = 0
    spooled: int = 0
    replayed: int = 0
    rejected: int = 0  # events the store refused on their contents: skipped and logged
    dropped: int = 0  # events lost because the store was down and nothing could be spooled


_Item = tuple[Sequence[TraceEvent], "asyncio.Future[None] | None"]
# A batch the journal holds (its sequence), or could not take (None: its callers' futures wait for the store).
_Journaled = tuple[int | None, list[TraceEvent], list[_Item]]


class TracePipeline:
    def __init__(
        self,
        store: Store,
        *,
        spool: Spool | None = None,
        max_batch: int = 500,
        interval: float = 0.02,
        retries: int = 1,
        durability: Durability | str = Durability.BATCHED,
        backoff: tuple[float, float] = (0.05, 2.0),
        journal: Journal | None = None,
        sync: Callable[[], None] | None = None,
        on_journal: Callable[[], None] | None = None,
        release_every: float = 0.25,
    ) -> None:
        """`journal`: strict mode acknowledges from it (SQLite); `on_journal` is called once this process holds it
        (the store may then commit trace batches without an fsync). `sync`: makes the store's commits so far
        durable (`SQLStore.sync_log`); the journal lets go of what the store holds after it, at most every
        `release_every` seconds (so it stays about as large as that much traffic)."""
        self.store = store
        self.spool = spool
        self.max_batch = max_batch
        self.interval = interval
        self.retries = retries
        self.durability = Durability(durability)
        self.journal = journal if self.durability is Durability.STRICT else None
        # The journal's file work, one thread (the Journal is not thread-safe), never the event loop.
        self._journal_thread = (
            ThreadPoolExecutor(1, thread_name_prefix="trace-journal", initializer=name_os_thread)
            if self.journal
            else None
        )
        self._journaled: deque[_Journaled] = deque()
        self._journaled_events = 0
        self._store_wake = asyncio.Event()
        self._hurry = asyncio.Event()  # the store worker must not gather: someone waits for the store
        self._journal_closed = False  # the journal worker has stopped: the store worker ends once it is drained
        self._journal_hold = False  # a batch the journal held was lost downstream: keep the journal for a restart
        self._sync = sync
        self._on_journal = on_journal
        self._release_every = release_every
        self._release_at = 0.0
        self._written_seq: int | None = None  # the last journaled batch the store (or the spool) has
        self.stats = PipelineStats()
        self._queue: deque[_Item] = deque()
        self._queued_events = 0
        # Events queued so far, and events done (written, spooled or given up on): FIFO, so a flush waits for
        # the count at its call, not for an empty queue (which under steady load never comes).
        self._seq = 0
        self._done_seq = 0
        self._flushes: list[tuple[int, asyncio.Future[None]]] = []
        # Runs whose RunStart is queued or being written: until it is done, the store may not show the run yet.
        self._pending_runs: Counter[tuple[str, str]] = Counter()
        self._wake = asyncio.Event()
        self._deferred: asyncio.TimerHandle | None = None  # when deferred events must be written at the latest
        self._deferrals: deque[tuple[int, float]] = deque()  # each deferred put: (its last event's seq, due time)
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._backoff_min, self._backoff_max = backoff
        self._backoff = self._backoff_min
        self._retry_at = 0.0  # monotonic time before which the store is not tried (the spool takes batches)

    @property
    def depth(self) -> int:
        return self._queued_events + self._journaled_events

    @property
    def journal_pending(self) -> int:
        """Events past the journal (acknowledged, in strict mode) that the store does not hold yet: its lag."""
        return self._journaled_events

    @property
    def strict(self) -> bool:
        return self.durability is Durability.STRICT

    @property
    def spool_pending(self) -> bool:
        """True while the spool holds batches the store has not taken yet (see /readyz)."""
        return self.spool is not None and self.spool.pending()

    def start(self) -> None:
        if self._task is None:
            if self.journal is not None and not self.journal.opened:
                raise RuntimeError("a pipeline with a journal must `recover()` before it starts")
            work = self._run_journaled() if self.journal is not None else self._run()
            self._task = asyncio.create_task(work, name="trace-pipeline")

    async def recover(self) -> None:
        """Write what an earlier process acknowledged from its journal but the store may not hold. Call before
        anything reads the store (the budget counters are loaded from it) and before `start`."""
        if self.journal is None:
            return
        journal = self.journal
        try:
            await self._in_journal_thread(journal.open)
        except JournalLocked as exc:
            self._without_journal(exc)
            return
        if self._on_journal is not None:
            self._on_journal()
        batches = await self._in_journal_thread(journal.recover)
        count = sum(len(b) for b in batches)
        if count:
            log.warning("trace journal: writing %d events an earlier process acknowledged", count)
        dropped = self.stats.dropped
        for events in _coalesce(batches, self.max_batch):
            await self._write(events)
        self.stats.replayed += count
        if self.stats.dropped == dropped:  # else: the store and the spool both failed; the next start tries again
            await self._in_journal_thread(journal.release_recovered)  # (empty segments of a clean stop too)

    def _without_journal(self, why: JournalLocked) -> None:
        """Another live gateway holds this database's journal (two processes on one SQLite file): this one answers
        on the store's own commit instead, as strict mode did before the journal; the holder keeps its journal."""
        log.warning("%s; this gateway waits for the store's commits instead", why)
        self.journal = None
        if self._journal_thread is not None:
            self._journal_thread.shutdown(wait=False)
            self._journal_thread = None

    def _in_journal_thread(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        return asyncio.get_running_loop().run_in_executor(self._journal_thread, fn, *args)

    def pending_run(self, workspace_id: str, run_id: str) -> bool:
        """True while an event of this run (its start, a step, its end), queued in this process, is not written
        yet: a read of the store that does not find the run, or reads its totals, must `flush` first."""
        return (workspace_id, run_id) in self._pending_runs

    async def settle_run(self, workspace_id: str, run_id: str) -> None:
        """Wait until what this process acknowledged of the run is in the store (a run guard reads its totals)."""
        if (workspace_id, run_id) in self._pending_runs:
            await self.flush()

    def _put(self, events: Sequence[TraceEvent], fut: asyncio.Future[None] | None, *, wake: bool = True) -> None:
        self._queue.append((events, fut))
        self._queued_events += len(events)
        self._seq += len(events)
        for ev in events:
            if (key := _run_key(ev)) is not None:
                self._pending_runs[key] += 1
        self.stats.emitted += len(events)
        self._idle.clear()
        if wake:
            self._wake.set()

    def defer(self, events: Sequence[TraceEvent]) -> None:
        """Queue events that need not be written at once: they go with the next batch another event starts,
        or within `interval`. A budget reservation's ledger entries are such: written alone, their own commit
        (an fsync, in strict mode) was one more write per call ahead of the call's records, which waited for it;
        gone with the call's own batch, they cost nothing more, and a crash a call outlives by `interval`
        still finds them."""
        self._put(events, None, wake=False)
        loop = asyncio.get_running_loop()
        self._deferrals.append((self._seq, loop.time() + self.interval))
        if self._deferred is None:
            self._deferred = loop.call_later(self.interval, self._deferred_due)

    def _deferred_due(self) -> None:
        """The oldest deferral's time: wake the worker if it is still queued, else look again when the oldest one
        still queued is due. (Waking at the first deferral's time whatever happened meanwhile wrote the newer
        ones early, in a batch of their own, about one call in twenty at one call at a time.)"""
        self._deferred = None
        taken = self._seq - self._queued_events  # events the worker has taken off the queue (FIFO)
        deferrals = self._deferrals
        while deferrals and deferrals[0][0] <= taken:
            deferrals.popleft()
        if not deferrals:
            return
        loop = asyncio.get_running_loop()
        wait = deferrals[0][1] - loop.time()
        if wait <= 0:
            self._wake.set()
            wait = self.interval  # to see that the batch took them (or what it left)
        self._deferred = loop.call_later(wait, self._deferred_due)

    def emit(self, event: TraceEvent) -> None:
        """Queue an event for writing. Never blocks, never raises, never waits for durability."""
        self._put((event,), None)

    def commit(self, events: Sequence[TraceEvent]) -> asyncio.Future[None] | None:
        """Queue one request's events; in strict mode, a future that completes once they are durable.

        The future fails (AgentLedgerError) only if an event could not be made durable at all: the store
        rejected it as malformed, or the store was down and the spool failed too.
        """
        if not self.strict:
            self._put(events, None)
            return None
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._put(events, fut)
        return fut

    async def submit(self, events: Sequence[TraceEvent]) -> None:
        """Queue events and wait until they are in the store (or spooled if the store is down), not only in the
        journal: what submits (admin writes and their audit events, a run's steps) reads the store next."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._put(events, fut)
        await fut
        if self.journal is not None:
            await self.flush()

    async def flush(self) -> None:
        """Wait until everything emitted so far has been written (or spooled), not for what comes later."""
        if self._done_seq >= self._seq:
            return
        if self._task is None:  # not started: nothing will ever write it; wait for the queue to empty as before
            await self._idle.wait()
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._flushes.append((self._seq, fut))
        self._wake.set()
        self._hurry.set()
        await fut

    def _done(self, events: Sequence[TraceEvent]) -> None:
        self._done_seq += len(events)
        for ev in events:
            if (key := _run_key(ev)) is not None:
                self._pending_runs[key] -= 1
                if self._pending_runs[key] <= 0:
                    del self._pending_runs[key]
        if self._flushes:
            waiting = []
            for target, fut in self._flushes:
                if target <= self._done_seq:
                    if not fut.done():
                        fut.set_result(None)
                else:
                    waiting.append((target, fut))
            self._flushes = waiting

    async def aclose(self) -> None:
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None
        if self.journal is not None and self._journal_thread is not None:
            await self._in_journal_thread(self.journal.close)
            self._journal_thread.shutdown()
            self.journal = None

    # -- the worker -------------------------------------------------------------------------------------------
    async def _run(self) -> None:
        await self._replay_spool()
        while True:
            if not self._queue:
                self._idle.set()
                if self._closing:
                    self._retry_at = 0.0  # one last try, so a clean stop leaves no spool behind if it can
                    await self._replay_spool()
                    return
                self._wake.clear()
                if await self._wait_for_work() and not self._closing and not self.strict:
                    # Gather a fuller batch: the first event's arrival starts a short window.
                    await asyncio.sleep(self.interval)
                continue
            batch, events = self._take()
            try:
                lost = await self._write(events)
            finally:
                self._done(events)
            _answer(batch, lost)

    def _take(self) -> tuple[list[_Item], list[TraceEvent]]:
        """The next batch off the queue: whole items, up to `max_batch` events (at least one item)."""
        batch = _pop_batch(self._queue, lambda item: item[0], self.max_batch)
        events = [ev for evs, _ in batch for ev in evs]
        self._queued_events -= len(events)
        return batch, events

    async def _wait_for_work(self, wake: asyncio.Event | None = None) -> bool:
        """Sleep until events arrive (True) or, with a spool to replay, until the backoff has passed (False)."""
        wake = wake or self._wake
        if not self.spool_pending:
            await wake.wait()
            return True
        timeout = max(self._retry_at - time.monotonic(), 0.001)
        try:
            await asyncio.wait_for(wake.wait(), timeout)
            return True
        except TimeoutError:
            await self._replay_spool()
            return False

    # -- the workers with a journal -----------------------------------------------------------------------------
    async def _run_journaled(self) -> None:
        store = asyncio.create_task(self._store_from_journal(), name="trace-store-writer")
        try:
            await self._journal_worker()
        finally:
            self._journal_closed = True
            self._store_wake.set()
            self._hurry.set()
            await store

    async def _journal_worker(self) -> None:
        """Queue → journal: a batch is acknowledged once the journal holds it, then handed to the store worker.
        Whatever arrives while an append is in progress forms the next batch (group commit, as without one)."""
        journal = self.journal
        assert journal is not None
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            batch, events = self._take()
            seq: int | None
            try:
                seq = await self._in_journal_thread(journal.append, events)
            except Exception:  # a full disk, an event pickle refuses: its callers wait for the store instead
                log.exception(
                    "trace journal: append failed; %d events go to the store before their answer", len(events)
                )
                seq = None
            if seq is not None:
                _answer(batch, set())
            self._journaled.append((seq, events, batch if seq is None else []))
            self._journaled_events += len(events)
            self._store_wake.set()
            if seq is None:
                self._hurry.set()

    async def _gather(self, since: float) -> None:
        """Nobody waits for the store behind the journal: gather a fuller batch until `interval` has passed since
        `since`, as batched mode does (one commit and one pass of the books for many calls, and less of the
        writer's CPU competing with the calls being served for the interpreter), unless a reader waits for it
        (`flush`), a caller whose batch the journal could not take, or a full batch is already waiting."""
        wait = since + self.interval - time.monotonic()
        if wait > 0 and not self._hurry.is_set() and not self._flushes and not self._journal_closed:
            # (a flush's own hurry may have gone to the last batch, hence the check of _flushes)
            if self._journaled_events < self.max_batch:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._hurry.wait(), wait)
        self._hurry.clear()

    async def _store_from_journal(self) -> None:
        """Journal → store, in order, with the retries, circuit breaker and spool of the worker without one; the
        journal lets go of a batch once the store (or the spool) holds it durably."""
        journal = self.journal
        assert journal is not None
        await self._replay_spool()
        began = 0.0  # when the last write began
        while True:
            if not self._journaled:
                if self._journal_closed:
                    self._idle.set()
                    self._retry_at = 0.0
                    await self._replay_spool()
                    await self._release()  # a clean stop leaves nothing to write again at the next start
                    return
                self._store_wake.clear()
                if not self._queue:
                    self._idle.set()
                if await self._wait_for_work(self._store_wake):
                    began = time.monotonic()  # an idle writer's batch gathers for `interval` from its first event
                continue
            # At most one write an `interval`: what arrived while the last one ran waits out the rest of it, so a
            # dearer write (a governed call's ledger rows) does not make for more and smaller batches.
            await self._gather(began)
            began = time.monotonic()
            items = _pop_batch(self._journaled, lambda item: item[1], self.max_batch)
            events = [ev for _, evs, _ in items for ev in evs]
            self._journaled_events -= len(events)
            dropped = self.stats.dropped
            try:
                lost = await self._write(events)
            finally:
                self._done(events)
            for _, _, waiting in items:
                _answer(waiting, lost)
            if self.stats.dropped != dropped:
                self._journal_hold = True  # neither the store nor the spool took them: the journal keeps them
            held = [seq for seq, _, _ in items if seq is not None]
            if held and not self._journal_hold:
                self._written_seq = held[-1]
                if time.monotonic() >= self._release_at:
                    await self._release()

    async def _release(self) -> None:
        """Let the journal go of what the store holds: its commits made durable first (`sync`), off the writer."""
        journal, seq = self.journal, self._written_seq
        if journal is None or seq is None or self._journal_hold:
            return
        self._release_at = time.monotonic() + self._release_every
        try:
            if self._sync is not None:
                await asyncio.to_thread(self._sync)
            await self._in_journal_thread(journal.release, seq)
        except OSError:
            log.warning("trace journal: could not release written batches", exc_info=True)

    async def _write(self, events: list[TraceEvent]) -> set[int]:
        """Write (or spool) a batch; returns the id() of each event that was not made durable."""
        if not await self._replay_spool():
            return await self._to_spool(events)  # keep emission order: behind what is already spooled
        delay = 0.05
        for attempt in range(self.retries + 1):
            result, rejected = await self._attempt(events)
            if result is WriteResult.SUCCESS:
                self.stats.written += len(events) - len(rejected)
                self.stats.batches += 1
                self._backoff = self._backoff_min
                return rejected
            self.stats.failures += 1
            if attempt < self.retries:
                await asyncio.sleep(delay)
                delay *= 4
        self._open_circuit()
        return await self._to_spool(events)

    def _open_circuit(self) -> None:
        self._retry_at = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, self._backoff_max)

    async def _to_spool(self, events: list[TraceEvent]) -> set[int]:
        if self.spool is None:
            log.error("dropping %d trace events: store unavailable and no spool configured", len(events))
            self.stats.dropped += len(events)
            return {id(ev) for ev in events}
        try:
            await asyncio.to_thread(self.spool.append, events)
        except OSError:
            log.exception("dropping %d trace events: store unavailable and the spool failed", len(events))
            self.stats.dropped += len(events)
            return {id(ev) for ev in events}
        self.stats.spooled += len(events)
        return set()

    async def _attempt(self, events: list[TraceEvent]) -> tuple[WriteResult, set[int]]:
        """One write. FAILURE means retry later; if the store raises instead, isolate the events it rejects."""
        try:
            return await self.store.write_batch(events), set()
        except StoreUnavailable:
            return WriteResult.FAILURE, set()  # an outage, however reported, is retried, never taken for poison
        except Exception:  # recording never breaks serving: a bad batch is logged, not raised
            log.warning("store rejected a batch; writing its %d events one by one", len(events), exc_info=True)
        rejected: list[TraceEvent] = []
        for ev in events:
            try:
                if await self.store.write_batch([ev]) is not WriteResult.SUCCESS:
                    return WriteResult.FAILURE, set()  # the store went down meanwhile: retry the batch (idempotent)
            except StoreUnavailable:
                return WriteResult.FAILURE, set()
            except Exception:
                log.exception("skipping a trace event the store rejects: %s", _describe(ev))
                rejected.append(ev)
        self.stats.rejected += len(rejected)
        return WriteResult.SUCCESS, {id(ev) for ev in rejected}

    async def _replay_spool(self) -> bool:
        """Write the spooled batches in order; True if the spool is now empty."""
        if self.spool is None or not self.spool.pending():
            return True  # (spelled out, not `spool_pending`: it narrows `self.spool` for what follows)
        if time.monotonic() < self._retry_at:
            return False
        batches = _coalesce(await asyncio.to_thread(self.spool.read), self.max_batch)
        for events in batches:
            result, _ = await self._attempt(events)
            if result is not WriteResult.SUCCESS:
                # Still down. Batches already replayed stay in the spool and are written again next time:
                # writes are idempotent, and rewriting the file here could tear it.
                self.stats.failures += 1
                self._open_circuit()
                return False
        self.stats.replayed += sum(len(b) for b in batches)
        self._backoff = self._backoff_min
        with contextlib.suppress(OSError):
            await asyncio.to_thread(self.spool.clear)
        return not self.spool.pending()


def _pop_batch(items: deque[X], events_of: Callable[[X], Sequence[TraceEvent]], limit: int) -> list[X]:
    """Whole items off the front of `items`, up to `limit` events in all (at least one item)."""
    taken: list[X] = []
    count = 0
    while items and (not taken or count + len(events_of(items[0])) <= limit):
        item = items.popleft()
        taken.append(item)
        count += len(events_of(item))
    return taken


def _run_key(ev: TraceEvent) -> tuple[str, str] | None:
    """The run an event starts, ends or adds to (its totals), if any."""
    if isinstance(ev, StepRecord | RunStart):
        return ev.attribution.workspace_id, ev.run_id
    if isinstance(ev, RunEnd):
        return ev.workspace_id, ev.run_id
    return None


def _answer(batch: list[_Item], lost: set[int]) -> None:
    """Complete the futures of a batch's callers: failed for those with an event that was not made durable."""
    for evs, fut in batch:
        if fut is None or fut.done():
            continue
        if lost and any(id(ev) in lost for ev in evs):
            fut.set_exception(AgentLedgerError("A trace event could not be recorded."))
        else:
            fut.set_result(None)


def _coalesce(batches: list[list[TraceEvent]], limit: int) -> list[list[TraceEvent]]:
    """Spooled batches joined, in order, into writes of up to `limit` events. An outage in strict mode spools
    a batch per write, often one call's events: replayed one transaction each, 150 calls cut off for 6 s took
    1.8 s to write back, and the calls arriving meanwhile waited behind them (tests/integration/test_store_outage.py).
    Joining them changes nothing else: every write is idempotent, and a batch the store rejects is still
    written an event at a time."""
    joined: list[list[TraceEvent]] = []
    for events in batches:
        if joined and len(joined[-1]) + len(events) <= limit:
            joined[-1].extend(events)
        else:
            joined.append(list(events))
    return joined


def _describe(ev: TraceEvent) -> str:
    if isinstance(ev, AuditRecord):
        return f"audit event {ev.event_id!r} ({ev.action}) in workspace {ev.workspace_id!r}"
    if isinstance(ev, LedgerEntries):
        return f"ledger entries {ev.entry_stem!r}… ({ev.kind}) in workspace {ev.workspace_id!r}"
    key = next(
        getattr(ev, k)
        for k in ("step_id", "entry_id", "request_id", "run_id", "budget_id", "proof_id")
        if hasattr(ev, k)
    )
    if isinstance(ev, RunEnd | LedgerEntry | BudgetAlert | Alert | ProofState):  # events without an attribution
        workspace = ev.workspace_id
    else:
        workspace = ev.attribution.workspace_id
    return f"{type(ev).__name__} {key!r} in workspace {workspace!r}"

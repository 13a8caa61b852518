"""Trace events → batched, idempotent store writes, off the request's hot path.

`emit()` never blocks and never raises into a request. A single worker drains the queue in batches
(up to `max_batch` events, or whatever arrived within `interval`). When the store refuses a batch the
worker retries with backoff and then spools it to disk, so an acknowledged record is not lost; spooled
batches are replayed first once the store answers again. `aclose()` drains everything before returning.
A batch the store rejects outright (it raises: a poison event) is written one event at a time, so only the
bad events are skipped, logged and counted; retrying it whole would fail forever and take the good ones along.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from agentledger.core.errors import AgentLedgerError
from agentledger.core.model import RunEnd, TraceEvent
from agentledger.pipeline.spool import Spool
from agentledger.store.base import Store, WriteResult

log = logging.getLogger(__name__)


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


class TracePipeline:
    def __init__(
        self,
        store: Store,
        *,
        spool: Spool | None = None,
        max_batch: int = 500,
        interval: float = 0.02,
        retries: int = 3,
    ) -> None:
        self.store = store
        self.spool = spool
        self.max_batch = max_batch
        self.interval = interval
        self.retries = retries
        self.stats = PipelineStats()
        self._queue: deque[tuple[TraceEvent, asyncio.Future[None] | None]] = deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = False
        self._task: asyncio.Task[None] | None = None

    @property
    def depth(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="trace-pipeline")

    def emit(self, event: TraceEvent) -> None:
        """Queue an event for writing. Never blocks, never raises."""
        self._queue.append((event, None))
        self.stats.emitted += 1
        self._idle.clear()
        self._wake.set()

    async def submit(self, events: Sequence[TraceEvent]) -> None:
        """Queue events and wait until they are durable (written, or spooled if the store is down)."""
        loop = asyncio.get_running_loop()
        futures = []
        for ev in events:
            fut: asyncio.Future[None] = loop.create_future()
            self._queue.append((ev, fut))
            futures.append(fut)
        self.stats.emitted += len(events)
        self._idle.clear()
        self._wake.set()
        await asyncio.gather(*futures)

    async def flush(self) -> None:
        """Wait until everything emitted so far has been written."""
        if self._queue:
            self._idle.clear()
            self._wake.set()
        await self._idle.wait()

    async def aclose(self) -> None:
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None

    async def _run(self) -> None:
        await self._replay_spool()
        while True:
            if not self._queue:
                self._idle.set()
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                if not self._closing:
                    # Gather a fuller batch: the first event's arrival starts a short window.
                    await asyncio.sleep(self.interval)
            batch = [self._queue.popleft() for _ in range(min(self.max_batch, len(self._queue)))]
            if batch:
                lost = await self._write([ev for ev, _ in batch])
                for ev, fut in batch:
                    if fut is not None and not fut.done():
                        if id(ev) in lost:
                            fut.set_exception(AgentLedgerError("A trace event could not be recorded."))
                        else:
                            fut.set_result(None)

    async def _write(self, events: list[TraceEvent]) -> set[int]:
        """Write (or spool) a batch; returns the id() of each event that was not made durable."""
        delay = 0.05
        for attempt in range(self.retries + 1):
            result, rejected = await self._attempt(events)
            if result is WriteResult.SUCCESS:
                self.stats.written += len(events) - len(rejected)
                self.stats.batches += 1
                if self.spool is not None and self.spool.pending():
                    await self._replay_spool()
                return rejected
            self.stats.failures += 1
            if attempt < self.retries:
                await asyncio.sleep(delay)
                delay *= 4
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
        except Exception:  # recording never breaks serving: a bad batch is logged, not raised
            log.warning("store rejected a batch; writing its %d events one by one", len(events), exc_info=True)
        rejected: list[TraceEvent] = []
        for ev in events:
            try:
                if await self.store.write_batch([ev]) is not WriteResult.SUCCESS:
                    return WriteResult.FAILURE, set()  # the store went down meanwhile: retry the batch (idempotent)
            except Exception:
                log.exception("skipping a trace event the store rejects: %s", _describe(ev))
                rejected.append(ev)
        self.stats.rejected += len(rejected)
        return WriteResult.SUCCESS, {id(ev) for ev in rejected}

    async def _replay_spool(self) -> None:
        if self.spool is None or not self.spool.pending():
            return
        batches = await asyncio.to_thread(self.spool.read)
        for events in batches:
            result, _ = await self._attempt(events)
            if result is not WriteResult.SUCCESS:
                return  # still down; keep the spool for next time
            self.stats.replayed += len(events)
        with contextlib.suppress(OSError):
            await asyncio.to_thread(self.spool.clear)


def _describe(ev: TraceEvent) -> str:
    key = next(getattr(ev, k) for k in ("step_id", "request_id", "run_id") if hasattr(ev, k))
    workspace = ev.workspace_id if isinstance(ev, RunEnd) else ev.attribution.workspace_id
    return f"{type(ev).__name__} {key!r} in workspace {workspace!r}"

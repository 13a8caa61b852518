"""TracePipeline over a real SQLStore (SQLite): batching, flush, graceful shutdown, spooling, poison events.

An outage is simulated by `FlakyStore`, a wrapper at our own seam around the real store that answers
FAILURE while `down` is set, exactly as SQLStore does when its database is unreachable.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest
from sqlalchemy import func, select

from agentledger.core.errors import AgentLedgerError
from agentledger.core.model import (
    Attribution,
    RunEnd,
    RunStart,
    RunStatus,
    StepKind,
    StepRecord,
    StepStatus,
    TraceEvent,
)
from agentledger.pipeline.queue import TracePipeline
from agentledger.pipeline.spool import Spool
from agentledger.store import schema as t
from agentledger.store.base import Store, WriteResult
from agentledger.store.sql import SQLStore

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


class FlakyStore:
    """The real store, except that `write_batch` reports a retryable failure while `down` is set."""

    def __init__(self, real: SQLStore) -> None:
        self.real = real
        self.down = False
        self.calls = 0
        self.gate: asyncio.Event | None = None  # when set up, every write waits for it (a hung store)

    async def write_batch(self, events: Any) -> WriteResult:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.down:
            return WriteResult.FAILURE
        return await self.real.write_batch(events)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


@pytest.fixture
def flaky(store: SQLStore) -> FlakyStore:
    return FlakyStore(store)


@pytest.fixture
def ws() -> str:
    return f"ws-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    return Spool(tmp_path / "spool" / "trace.spool")


def make_pipeline(store: Any, spool: Spool | None = None, **kw: Any) -> TracePipeline:
    kw.setdefault("interval", 0.001)
    kw.setdefault("retries", 2)
    pipeline = TracePipeline(cast(Store, store), spool=spool, **kw)
    pipeline.start()
    return pipeline


def step(ws: str, i: int, **kw: Any) -> StepRecord:
    values: dict[str, Any] = dict(
        step_id=f"step-{i}",
        run_id="run-1",
        attribution=Attribution(workspace_id=ws, run_id="run-1"),
        kind=StepKind.TOOL_CALL,
        name=f"tool-{i}",
        status=StepStatus.OK,
        started_at=T0 + timedelta(milliseconds=i),
    )
    values.update(kw)
    return StepRecord(**values)


def poison(ws: str, i: int) -> StepRecord:
    return step(ws, i, name=None)  # violates NOT NULL: the store can never accept it


def run_start(ws: str) -> RunStart:
    return RunStart(run_id="run-1", attribution=Attribution(workspace_id=ws, run_id="run-1"), started_at=T0)


def steps_written(store: SQLStore, ws: str) -> int:
    with store.engine.connect() as conn:
        stmt = select(func.count()).select_from(t.steps).where(t.steps.c.workspace_id == ws)
        return int(conn.execute(stmt).scalar_one())


async def test_emit_never_blocks_even_when_the_store_hangs(flaky: FlakyStore, store: SQLStore, ws: str) -> None:
    flaky.gate = asyncio.Event()
    pipeline = make_pipeline(flaky)
    pipeline.emit(step(ws, 0))
    await asyncio.sleep(0.01)  # the worker is now stuck inside write_batch
    started = time.perf_counter()
    for i in range(1, 5001):
        pipeline.emit(step(ws, i))
    assert time.perf_counter() - started < 1.0
    assert pipeline.depth == 5000
    assert pipeline.stats.emitted == 5001
    flaky.gate.set()
    await pipeline.aclose()
    assert steps_written(store, ws) == 5001


async def test_events_are_written_in_batches_and_flush_waits(store: SQLStore, ws: str) -> None:
    pipeline = make_pipeline(store, max_batch=100, interval=0.05)
    for i in range(250):
        pipeline.emit(step(ws, i))
    await pipeline.flush()
    assert steps_written(store, ws) == 250  # readable as soon as flush returns
    assert pipeline.depth == 0
    assert (pipeline.stats.emitted, pipeline.stats.written, pipeline.stats.batches) == (250, 250, 3)
    await pipeline.flush()  # nothing pending: returns at once
    await pipeline.aclose()


async def test_flush_waits_for_what_came_before_it_not_for_an_empty_queue(store: SQLStore, ws: str) -> None:
    """Under steady load the queue is never empty: a flush (every /api read does one) must still return once
    the events emitted before it are written, while later ones keep arriving."""
    pipeline = make_pipeline(store, max_batch=50, interval=0.001)
    pipeline.emit(step(ws, 0))
    flushed = asyncio.create_task(pipeline.flush())
    i = 1
    deadline = time.monotonic() + 10
    while not flushed.done() and time.monotonic() < deadline:
        pipeline.emit(step(ws, i))  # more keeps coming, faster than one batch a turn
        i += 1
        await asyncio.sleep(0)
    assert flushed.done(), "flush waited for events emitted after it"
    assert steps_written(store, ws) >= 1 and pipeline.depth > 0
    await pipeline.aclose()


async def test_a_queued_run_start_is_pending_until_written(store: SQLStore, ws: str) -> None:
    pipeline = make_pipeline(store, interval=0.05)
    assert not pipeline.pending_run(ws, "run-1")
    pipeline.emit(run_start(ws))
    assert pipeline.pending_run(ws, "run-1") and not pipeline.pending_run("other", "run-1")
    await pipeline.flush()
    assert not pipeline.pending_run(ws, "run-1")
    assert await store.run_identity(ws, "run-1") == {
        "department_id": None,
        "agent_id": None,
        "session_id": None,
        "workflow": None,
    }
    await pipeline.aclose()


async def test_submit_returns_once_the_events_are_durable(store: SQLStore, ws: str) -> None:
    pipeline = make_pipeline(store, interval=0.05)
    await pipeline.submit([run_start(ws), step(ws, 1), step(ws, 2)])
    assert steps_written(store, ws) == 2
    assert await store.get_run(ws, "run-1") is not None
    await pipeline.aclose()


async def test_graceful_shutdown_loses_nothing(store: SQLStore, ws: str) -> None:
    pipeline = make_pipeline(store, max_batch=500, interval=0.02)
    for i in range(2000):
        pipeline.emit(step(ws, i))
    await pipeline.aclose()
    assert steps_written(store, ws) == 2000
    assert pipeline.stats.written == 2000 and pipeline.stats.batches == 4
    assert pipeline.depth == 0


async def test_store_down_retries_then_spools_and_replays_on_recovery(
    flaky: FlakyStore, store: SQLStore, spool: Spool, ws: str
) -> None:
    flaky.down = True
    pipeline = make_pipeline(flaky, spool, retries=2, backoff=(0.2, 0.2))
    for i in range(10):
        pipeline.emit(step(ws, i))
    await pipeline.flush()
    assert flaky.calls == 3  # one try and two retries
    assert (pipeline.stats.failures, pipeline.stats.spooled, pipeline.stats.written) == (3, 10, 0)
    assert spool.pending() and [len(b) for b in spool.read()] == [10]
    assert steps_written(store, ws) == 0

    # Within the backoff the store is not tried at all: durable means spooled, behind what is there.
    await pipeline.submit([step(ws, 10)])
    assert flaky.calls == 3
    assert pipeline.stats.spooled == 11 and [len(b) for b in spool.read()] == [10, 1]

    flaky.down = False
    # The backoff (0.2 s) passes; the worker replays the spool without waiting for new events (polled: a busy
    # machine may take longer than the backoff to get there).
    deadline = time.monotonic() + 5
    while spool.pending() and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert steps_written(store, ws) == 11 and not spool.pending() and not spool.path.exists()
    pipeline.emit(step(ws, 11))
    await pipeline.flush()
    assert steps_written(store, ws) == 12
    assert (pipeline.stats.written, pipeline.stats.replayed) == (1, 11)
    await pipeline.aclose()


async def test_while_the_spool_holds_events_new_ones_queue_behind_them(
    flaky: FlakyStore, store: SQLStore, spool: Spool, ws: str
) -> None:
    """Order matters: a run's start spooled during an outage must reach the store before its end."""
    flaky.down = True
    pipeline = make_pipeline(flaky, spool, retries=0, backoff=(60.0, 60.0))
    await pipeline.submit([run_start(ws)])
    flaky.down = False  # back, but the circuit stays open for the backoff: the end goes behind the start
    end = RunEnd(ws, "run-1", RunStatus.SUCCEEDED, T0 + timedelta(seconds=1), None, None)
    await pipeline.submit([end])
    assert [type(b[0]).__name__ for b in spool.read()] == ["RunStart", "RunEnd"]
    pipeline._retry_at = 0.0  # the backoff is over
    await pipeline.aclose()
    run = await store.get_run(ws, "run-1")
    assert run is not None and run["status"] == "succeeded"


async def test_strict_mode_commit_resolves_once_the_events_are_in_the_store(store: SQLStore, ws: str) -> None:
    pipeline = make_pipeline(store, durability="strict", interval=5.0)
    fut = pipeline.commit([run_start(ws), step(ws, 1)])
    assert fut is not None and not fut.done()
    started = time.perf_counter()
    await fut
    # Strict mode writes at once (group commit), never waiting out the batching interval.
    assert time.perf_counter() - started < 2.0
    assert steps_written(store, ws) == 1
    await pipeline.aclose()


async def test_strict_mode_groups_what_arrives_during_a_write(flaky: FlakyStore, store: SQLStore, ws: str) -> None:
    flaky.gate = asyncio.Event()
    pipeline = make_pipeline(flaky, durability="strict")
    first = pipeline.commit([step(ws, 0)])
    await asyncio.sleep(0.01)  # the worker is inside the first write
    rest = [pipeline.commit([step(ws, i)]) for i in range(1, 101)]
    flaky.gate.set()
    await asyncio.gather(*[f for f in [first, *rest] if f is not None])
    assert flaky.calls == 2  # one transaction for the first, one for the 100 that queued behind it
    assert steps_written(store, ws) == 101
    await pipeline.aclose()


async def test_batched_mode_commit_does_not_wait(store: SQLStore, ws: str) -> None:
    pipeline = make_pipeline(store, durability="batched")
    assert pipeline.commit([step(ws, 1)]) is None
    await pipeline.aclose()
    assert steps_written(store, ws) == 1


async def test_a_spool_left_by_a_previous_process_is_replayed_at_start(store: SQLStore, spool: Spool, ws: str) -> None:
    spool.append([run_start(ws), step(ws, 1)])
    spool.append([step(ws, 1), step(ws, 2)])  # replays are idempotent
    pipeline = make_pipeline(store, spool)
    await pipeline.aclose()  # the worker replays the spool first thing, before any new event
    assert pipeline.stats.replayed == 4
    assert steps_written(store, ws) == 2
    assert not spool.pending()


async def test_spooled_batches_are_replayed_joined_into_store_sized_writes(
    flaky: FlakyStore, spool: Spool, ws: str
) -> None:
    # An outage in strict mode spools a batch per write; replayed one transaction each, the calls arriving after
    # the restore waited behind them all (1.8 s for a 6 s cut at 25 calls a second).
    spool.append([run_start(ws)])
    for i in range(1, 12):
        spool.append([step(ws, i)])
    pipeline = make_pipeline(flaky, spool, max_batch=5)
    await pipeline.aclose()
    assert flaky.calls == 3  # 12 events in writes of at most 5, in their spooled order
    assert pipeline.stats.replayed == 12
    assert steps_written(flaky.real, ws) == 11
    assert not spool.pending()


async def test_a_torn_tail_in_the_spool_is_ignored(store: SQLStore, spool: Spool, ws: str) -> None:
    spool.append([step(ws, 1)])
    spool.append([step(ws, 2), step(ws, 3)])
    with spool.path.open("ab") as f:  # a crash in the middle of a third append
        f.write((5000).to_bytes(4, "big") + b"\x80\x05partial")
    assert [len(b) for b in spool.read()] == [1, 2]

    # After a restart, batches spooled behind the torn record must stay readable.
    reopened = Spool(spool.path)
    reopened.append([step(ws, 4)])
    assert [[s.step_id for s in b] for b in reopened.read()] == [  # type: ignore[union-attr]
        ["step-1"],
        ["step-2", "step-3"],
        ["step-4"],
    ]
    pipeline = make_pipeline(store, reopened)
    await pipeline.aclose()
    assert steps_written(store, ws) == 4
    assert not reopened.pending()


async def test_a_length_prefix_cut_short_is_a_torn_tail_too(spool: Spool, ws: str) -> None:
    spool.append([step(ws, 1)])
    with spool.path.open("ab") as f:
        f.write(b"\x00\x00")
    assert [len(b) for b in Spool(spool.path).read()] == [1]
    assert spool.path.stat().st_size > 2


async def test_a_poison_event_is_skipped_and_counted_and_the_rest_written(
    store: SQLStore, spool: Spool, ws: str, caplog: pytest.LogCaptureFixture
) -> None:
    pipeline = make_pipeline(store, spool)
    events: list[TraceEvent] = [run_start(ws), step(ws, 1), poison(ws, 2), step(ws, 3)]
    with caplog.at_level(logging.ERROR, logger="agentledger.pipeline.queue"):
        for ev in events:
            pipeline.emit(ev)
        await pipeline.flush()
    assert steps_written(store, ws) == 2
    assert await store.get_run(ws, "run-1") is not None
    s = pipeline.stats
    assert (s.rejected, s.written, s.batches, s.failures, s.spooled, s.dropped) == (1, 3, 1, 0, 0, 0)
    assert "step-2" in caplog.text
    assert not spool.pending()  # a poison batch is not retried forever, nor spooled

    pipeline.emit(step(ws, 4))  # the worker is alive and well
    await pipeline.flush()
    assert steps_written(store, ws) == 3
    await pipeline.aclose()


async def test_submit_reports_an_event_the_store_rejects(store: SQLStore, ws: str) -> None:
    pipeline = make_pipeline(store)
    with pytest.raises(AgentLedgerError):
        await pipeline.submit([run_start(ws), step(ws, 1), poison(ws, 2)])
    assert steps_written(store, ws) == 1
    await pipeline.submit([step(ws, 3)])
    assert steps_written(store, ws) == 2
    await pipeline.aclose()


async def test_a_poison_event_in_the_spool_does_not_block_the_replay(store: SQLStore, spool: Spool, ws: str) -> None:
    spool.append([step(ws, 1), poison(ws, 2)])
    spool.append([step(ws, 3)])
    pipeline = make_pipeline(store, spool)
    await pipeline.aclose()
    assert steps_written(store, ws) == 2
    assert (pipeline.stats.replayed, pipeline.stats.rejected) == (3, 1)
    assert not spool.pending()


async def test_without_a_spool_an_outage_drops_and_counts(flaky: FlakyStore, ws: str) -> None:
    flaky.down = True
    pipeline = make_pipeline(flaky, None, retries=0)
    with pytest.raises(AgentLedgerError):
        await pipeline.submit([step(ws, 1), step(ws, 2)])
    assert (pipeline.stats.dropped, pipeline.stats.failures) == (2, 1)
    await pipeline.aclose()


async def test_a_failing_spool_does_not_kill_the_worker(
    flaky: FlakyStore, store: SQLStore, tmp_path: Path, ws: str
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    broken = Spool(tmp_path / "spool")
    broken.path = blocker / "trace.spool"  # appending fails with NotADirectoryError
    flaky.down = True
    pipeline = make_pipeline(flaky, broken, retries=0)
    pipeline.emit(step(ws, 1))
    await pipeline.flush()
    assert pipeline.stats.dropped == 1
    flaky.down = False
    pipeline.emit(step(ws, 2))
    await pipeline.flush()
    assert steps_written(store, ws) == 1
    await pipeline.aclose()


async def test_deferred_events_ride_with_the_next_batch(flaky: FlakyStore, store: SQLStore, ws: str) -> None:
    """A reservation's ledger entries (TracePipeline.defer) are not a write of their own: the next commit
    carries them, in one batch."""
    pipeline = make_pipeline(flaky, durability="strict", interval=5.0)
    await asyncio.sleep(0.05)  # the writer is idle, waiting for work, as between calls
    pipeline.defer([step(ws, 0)])
    await asyncio.sleep(0.05)
    assert flaky.calls == 0 and steps_written(store, ws) == 0  # nothing woke the writer for it
    fut = pipeline.commit([step(ws, 1)])
    assert fut is not None
    await fut
    assert (flaky.calls, steps_written(store, ws)) == (1, 2)
    await pipeline.aclose()


async def test_a_deferral_a_batch_took_wakes_nothing_later(flaky: FlakyStore, store: SQLStore, ws: str) -> None:
    """Deferred events a commit carried need no write at their due time; one deferred later is due an interval
    after its own deferral, not at the first one's: by then the next commit has carried it too."""
    pipeline = make_pipeline(flaky, durability="strict", interval=1.0)
    await asyncio.sleep(0.05)
    pipeline.defer([step(ws, 0)])
    first = pipeline.commit([step(ws, 1)])
    assert first is not None
    await first
    await asyncio.sleep(0.7)
    pipeline.defer([step(ws, 2)])  # due 1 s from now: after the first deferral's time (0.3 s from now)
    await asyncio.sleep(0.5)
    assert (flaky.calls, steps_written(store, ws)) == (1, 2)  # the first deferral's time woke no write
    second = pipeline.commit([step(ws, 3)])
    assert second is not None
    await second
    await asyncio.sleep(0.1)
    assert (flaky.calls, steps_written(store, ws)) == (2, 4)
    await pipeline.aclose()


async def test_deferred_events_are_written_within_the_interval_alone(store: SQLStore, ws: str) -> None:
    pipeline = make_pipeline(store, durability="strict", interval=0.05)
    pipeline.defer([step(ws, 0)])
    deadline = time.monotonic() + 2
    while steps_written(store, ws) == 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert steps_written(store, ws) == 1
    await pipeline.aclose()

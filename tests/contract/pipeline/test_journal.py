"""The trace journal (pipeline/journal.py) on real files, and the strict pipeline that acknowledges through it
over a real SQLStore (SQLite): answers wait for the journal, not the store; the store catches up behind it;
a crash's leftovers are written at the next start; nothing is released before the store holds it."""

from __future__ import annotations

import asyncio
import os
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from agentledger.api.health import health_routes
from agentledger.core.budgets import (
    Action,
    Budget,
    Decision,
    Figures,
    Period,
    PolicyReport,
    RateLimit,
    Scope,
    flat,
)
from agentledger.core.model import (
    BudgetAlert,
    LedgerEntries,
    Payment,
    PaymentDirection,
    PaymentProtocol,
    PaymentStatus,
    ProofState,
    RunEnd,
    RunStatus,
    StepKind,
    TraceEvent,
)
from agentledger.pipeline.journal import Journal, JournalLocked, journal_dir, record_bytes
from agentledger.pipeline.queue import TracePipeline
from agentledger.store.base import Store, WriteResult
from agentledger.store.sql import SQLStore
from tests.contract.pipeline.test_pipeline import FlakyStore, step, steps_written
from tests.contract.store.test_store_contract import T0, request_record, run_start, step as store_step


def segments(directory: Path) -> dict[str, int]:
    """Each segment's bytes of records (a segment's file is longer: zeros written ahead)."""
    return {p.name: record_bytes(p) for p in sorted(directory.glob("*.seg"))}


def opened(directory: Path, **kw: Any) -> Journal:
    j = Journal(directory, **kw)
    j.open()
    return j


@pytest.fixture
def ws() -> str:
    return f"ws-{uuid.uuid4().hex[:10]}"


# -- the journal's files ---------------------------------------------------------------------------------------


def test_every_kind_of_trace_event_comes_back_from_the_journal_exactly(tmp_path: Path, ws: str) -> None:
    """Events are pickled by their fields (core/model.py `pickled_by_fields`): each kind, nested records and
    enums included, must come back equal, or a crash's replay would write something else than was answered."""
    at = T0 + timedelta(microseconds=7)
    payment = Payment(
        direction=PaymentDirection.INBOUND,
        status=PaymentStatus.SETTLED,
        amount_nanos=10_000_000,
        protocol=PaymentProtocol.X402,
        fee_nanos=250_000,
        counterparty="0xabc",
    )
    budget = Budget(ws, "b1", Scope.DEPARTMENT, "dep", 10**9, Period.MONTH, T0, Action.BLOCK_REQUESTS)
    limit = RateLimit(ws, "rl1", Scope.WORKSPACE, None, requests_per_minute=60)
    figures = (Figures(budget, f"b|{ws}|b1|0", 5, 7),)
    report = PolicyReport(Decision.ALLOWED, None, *flat(figures), (limit,), "rsv_1", 7, None, {"rule": "r1"}, at)
    ledger = LedgerEntries(ws, "reserve", 5, 0, at, "rsv_1", (("b1", "k1"), ("b2", "k2")), "led_1r", "req-1")
    events: list[TraceEvent] = [
        request_record(ws, governance={"decision": "allowed", "budgets": [{"remaining_usd": "1.000000000"}]}),
        request_record(ws, "req-2", governance=report),
        store_step(ws, kind=StepKind.PAYMENT, payment=payment, attributes={"a": [1, 2.5, None]}),
        run_start(ws, metadata={"k": "v"}),
        RunEnd(ws, "run-1", RunStatus.FAILED, at, error="boom"),
        ledger,
        *ledger.entries(),
        BudgetAlert(ws, "b1", "0", 80, 800, 1000, at, request_id="req-1"),
        ProofState(ws, "proof-1", "settled", at, reference="local:0x1", claim={"id": "proof-1", "claimed_at": at}),
    ]
    j = opened(tmp_path / "j")
    j.append(events)
    j.close()
    [back] = opened(tmp_path / "j").recover()
    assert back == events
    assert back[1].governance.as_dict() == report.as_dict()  # what the writer stores
    assert [type(e) for e in back] == [type(e) for e in events]


def test_what_was_appended_is_recovered_by_the_next_process_in_order(tmp_path: Path, ws: str) -> None:
    j = opened(tmp_path / "j")
    assert [j.append([step(ws, i)]) for i in range(3)] == [1, 2, 3]
    j.close()  # (a crash: nothing released)
    again = opened(tmp_path / "j")
    assert [[e.step_id for e in b] for b in again.recover()] == [["step-0"], ["step-1"], ["step-2"]]
    again.release_recovered()
    assert segments(tmp_path / "j") == {}
    again.close()
    assert opened(tmp_path / "j").recover() == []


def test_a_torn_or_corrupt_record_ends_the_segment_and_was_never_acknowledged(tmp_path: Path, ws: str) -> None:
    j = opened(tmp_path / "j")
    j.append([step(ws, 0)])
    j.append([step(ws, 1)])
    j.close()
    seg = tmp_path / "j" / "1.seg"
    padded = seg.read_bytes()
    whole = padded[: record_bytes(seg)]
    assert len(padded) > len(whole) and not any(padded[len(whole) :])  # records are written into zeros
    seg.write_bytes(whole[:-3])  # a crash mid-append: the length says more than the file holds
    assert [b[0].step_id for b in opened_again(tmp_path)] == ["step-0"]
    seg.write_bytes(whole[:-3] + bytes(len(padded) - len(whole) + 3))  # the same, into zeros written ahead
    assert [b[0].step_id for b in opened_again(tmp_path)] == ["step-0"]
    flipped = bytearray(whole)
    flipped[-1] ^= 0xFF  # same length, other bytes (a sector that never reached the disk)
    seg.write_bytes(bytes(flipped))
    assert [b[0].step_id for b in opened_again(tmp_path)] == ["step-0"]
    seg.write_bytes(whole + b"\0" * 64)  # a file extended by zeros (delayed allocation, then a crash)
    assert [b[0].step_id for b in opened_again(tmp_path)] == ["step-0", "step-1"]


def opened_again(tmp_path: Path) -> list[list[Any]]:
    j = opened(tmp_path / "j")
    try:
        return cast(list[list[Any]], j.recover())
    finally:
        j.close()


def test_an_emptied_segment_is_written_again_from_its_start_and_reads_only_what_came_after(
    tmp_path: Path, ws: str
) -> None:
    j = opened(tmp_path / "j")
    seqs = [j.append([step(ws, i, name="x" * 300)]) for i in range(3)]
    seg = tmp_path / "j" / "1.seg"
    length = seg.stat().st_size
    j.release(seqs[-1])  # the store holds all three: zeros over them
    assert segments(tmp_path / "j") == {"1.seg": 0}
    j.append([step(ws, 9)])  # shorter than what it overwrites: the old records' bytes after it are zeros
    assert seg.stat().st_size == length  # the zeros written ahead are used again, the file does not grow
    j.close()
    assert [b[0].step_id for b in opened_again(tmp_path)] == ["step-9"]


def test_release_empties_the_live_segment_and_deletes_the_full_ones(tmp_path: Path, ws: str) -> None:
    j = opened(tmp_path / "j", segment_bytes=1)  # every record ends its segment
    seqs = [j.append([step(ws, i)]) for i in range(4)]
    assert list(segments(tmp_path / "j")) == ["1.seg", "2.seg", "3.seg", "4.seg"]
    j.release(seqs[1])  # the store holds the first two
    assert list(segments(tmp_path / "j")) == ["3.seg", "4.seg"]
    j.release(seqs[3])  # all of it: the live segment is emptied, not deleted
    assert segments(tmp_path / "j") == {"4.seg": 0}
    j.append([step(ws, 9)])
    j.close()
    assert [b[0].step_id for b in opened_again(tmp_path)] == ["step-9"]


def test_release_keeps_a_segment_with_a_record_the_store_does_not_hold(tmp_path: Path, ws: str) -> None:
    j = opened(tmp_path / "j")
    first, _second = j.append([step(ws, 0)]), j.append([step(ws, 1)])
    j.release(first)
    assert segments(tmp_path / "j")["1.seg"] > 0  # step-1 is still only here
    j.close()
    assert [b[0].step_id for b in opened_again(tmp_path)] == ["step-0", "step-1"]


def test_an_earlier_process_segments_survive_release_until_they_are_written(tmp_path: Path, ws: str) -> None:
    j = opened(tmp_path / "j", segment_bytes=1)
    j.append([step(ws, 0)])
    j.close()
    j = opened(tmp_path / "j", segment_bytes=1)
    j.recover()
    j.release(j.append([step(ws, 1)]))  # the new record is in the store; the recovered one is not, yet
    assert "1.seg" in segments(tmp_path / "j")
    j.release_recovered()
    assert "1.seg" not in segments(tmp_path / "j")
    j.close()


def test_one_process_at_a_time(tmp_path: Path) -> None:
    j = opened(tmp_path / "j")
    with pytest.raises(JournalLocked, match="one gateway per SQLite database"):
        opened(tmp_path / "j")
    j.close()
    opened(tmp_path / "j").close()


def test_an_append_that_fails_leaves_nothing_behind(tmp_path: Path, ws: str, monkeypatch: pytest.MonkeyPatch) -> None:
    j = opened(tmp_path / "j")
    j.append([step(ws, 0)])

    def no_space(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fdatasync", no_space)
    with pytest.raises(OSError):
        j.append([step(ws, 1)])
    monkeypatch.undo()
    j.append([step(ws, 2)])
    j.close()
    assert [b[0].step_id for b in opened_again(tmp_path)] == ["step-0", "step-2"]


def test_the_journal_sits_beside_a_sqlite_database_file_only() -> None:
    assert journal_dir("sqlite:////data/a/agentledger.db") == Path("/data/a/agentledger.db-trace-journal")
    assert journal_dir("sqlite://") is None
    assert journal_dir("sqlite:///:memory:") is None
    assert journal_dir("postgresql+psycopg://u@127.0.0.1/test") is None


# -- the pipeline with a journal --------------------------------------------------------------------------------


def journaled(store: Any, directory: Path, **kw: Any) -> TracePipeline:
    kw.setdefault("retries", 0)
    kw.setdefault("backoff", (0.01, 0.05))
    return TracePipeline(cast(Store, store), durability="strict", journal=Journal(directory), **kw)


async def test_commit_resolves_once_journaled_while_the_store_is_behind(
    store: SQLStore, tmp_path: Path, ws: str
) -> None:
    held = FlakyStore(store)
    held.gate = asyncio.Event()
    pipeline = journaled(held, tmp_path / "j")
    await pipeline.recover()
    pipeline.start()
    futs = [pipeline.commit([step(ws, i)]) for i in range(20)]
    await asyncio.wait_for(asyncio.gather(*[f for f in futs if f is not None]), 5)
    assert steps_written(store, ws) == 0  # acknowledged from the journal alone
    assert sum(segments(tmp_path / "j").values()) > 0
    flushed = asyncio.ensure_future(pipeline.flush())  # reads wait for the store, not the journal
    await asyncio.sleep(0.05)
    assert not flushed.done()
    held.gate.set()
    await asyncio.wait_for(flushed, 5)
    assert steps_written(store, ws) == 20
    await pipeline.aclose()
    assert segments(tmp_path / "j") == {"1.seg": 0}  # all released: nothing to write again at the next start


async def test_a_crash_leftover_is_written_before_the_next_start_and_only_once(
    store: SQLStore, tmp_path: Path, ws: str
) -> None:
    left = opened(tmp_path / "j")
    left.append([step(ws, 0), step(ws, 1)])
    left.append([step(ws, 1), step(ws, 2)])  # a batch the store took already before the crash: written again
    left.close()
    pipeline = journaled(store, tmp_path / "j")
    await pipeline.recover()
    assert steps_written(store, ws) == 3  # before start: the budget counters load from the store next
    assert pipeline.stats.replayed == 4
    assert segments(tmp_path / "j") == {}
    pipeline.start()
    await pipeline.aclose()


async def test_an_outage_keeps_the_journal_until_the_store_has_the_batches(
    store: SQLStore, tmp_path: Path, ws: str
) -> None:
    held = FlakyStore(store)
    held.down = True
    pipeline = journaled(held, tmp_path / "j")  # no spool: only the journal holds the batches meanwhile
    await pipeline.recover()
    pipeline.start()
    fut = pipeline.commit([step(ws, 0)])
    assert fut is not None
    await asyncio.wait_for(fut, 5)  # answered: the journal has it
    await asyncio.sleep(0.1)  # the store worker failed and gave up on it (no spool): the journal keeps it
    assert pipeline.stats.dropped == 1
    assert sum(segments(tmp_path / "j").values()) > 0
    held.down = False
    await pipeline.aclose()
    restarted = journaled(store, tmp_path / "j")
    await restarted.recover()
    assert steps_written(store, ws) == 1
    restarted.start()
    await restarted.aclose()


async def test_a_journal_that_fails_falls_back_to_waiting_for_the_store(
    store: SQLStore, tmp_path: Path, ws: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = FlakyStore(store)
    pipeline = journaled(held, tmp_path / "j")
    await pipeline.recover()
    pipeline.start()

    def broken(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", broken)
    held.gate = asyncio.Event()
    fut = pipeline.commit([step(ws, 0)])
    assert fut is not None
    await asyncio.sleep(0.1)
    assert not fut.done()  # not in the journal: the answer waits for the store
    held.gate.set()
    await asyncio.wait_for(fut, 5)
    assert steps_written(store, ws) == 1
    await pipeline.aclose()


async def test_the_journal_lets_go_only_after_the_store_commits_are_synced(
    store: SQLStore, tmp_path: Path, ws: str
) -> None:
    """Behind the journal the store commits without an fsync: `sync` (SQLStore.sync_log) must run before a
    record leaves the journal, while the journal still holds it."""
    seen: list[int] = []

    def sync() -> None:
        seen.append(sum(segments(tmp_path / "j").values()))
        store.sync_log()

    pipeline = journaled(store, tmp_path / "j", sync=sync, release_every=0.0)
    await pipeline.recover()
    pipeline.start()
    fut = pipeline.commit([step(ws, 0)])
    assert fut is not None
    await fut
    await pipeline.flush()
    await pipeline.aclose()
    assert seen and seen[0] > 0  # synced while the journal still held the batch
    assert segments(tmp_path / "j") == {"1.seg": 0}
    assert steps_written(store, ws) == 1


async def test_a_second_gateway_on_the_database_answers_on_the_store_commit(
    store: SQLStore, tmp_path: Path, ws: str, caplog: pytest.LogCaptureFixture
) -> None:
    first = journaled(store, tmp_path / "j")
    await first.recover()
    first.start()
    held = FlakyStore(store)
    second = journaled(held, tmp_path / "j")
    await second.recover()  # the journal is the first one's: this one goes without
    second.start()
    assert second.journal is None and "in use by another gateway" in caplog.text
    held.gate = asyncio.Event()
    fut = second.commit([step(ws, 0)])
    assert fut is not None
    await asyncio.sleep(0.05)
    assert not fut.done()  # no journal: the answer waits for the store
    held.gate.set()
    await asyncio.wait_for(fut, 5)
    assert steps_written(store, ws) == 1
    await second.aclose()
    await first.aclose()


async def test_metrics_say_which_gateway_has_the_journal_and_how_far_the_store_lags(
    store: SQLStore, tmp_path: Path, ws: str
) -> None:
    held = FlakyStore(store)
    first = journaled(held, tmp_path / "j")
    await first.recover()
    first.start()
    second = journaled(store, tmp_path / "j")
    await second.recover()
    second.start()
    held.gate = asyncio.Event()  # the first one's store takes nothing for now
    fut = first.commit([step(ws, 0), step(ws, 1)])
    assert fut is not None
    await asyncio.wait_for(fut, 5)  # answered from the journal
    assert metrics_of(first) | metrics_of(second, "second") == {
        "agentledger_trace_journal_enabled": 1,
        "agentledger_trace_journal_pending_events": 2,
        "second agentledger_trace_journal_enabled": 0,
        "second agentledger_trace_journal_pending_events": 0,
    }
    held.gate.set()
    await first.flush()
    assert metrics_of(first)["agentledger_trace_journal_pending_events"] == 0
    await second.aclose()
    await first.aclose()


def metrics_of(pipeline: TracePipeline, prefix: str = "") -> dict[str, int]:
    """The journal's lines of GET /metrics, through the route itself."""
    app = Starlette(routes=health_routes(cast(Store, None), pipeline))
    text = TestClient(app).get("/metrics").text
    pairs = (line.split() for line in text.splitlines() if line.startswith("agentledger_trace_journal"))
    return {(f"{prefix} " if prefix else "") + name: int(value) for name, value in pairs}


async def test_a_clean_stop_leaves_nothing_that_blocks_the_next_process(
    store: SQLStore, tmp_path: Path, ws: str
) -> None:
    """An emptied segment left by a clean stop is removed at the next start: left there, it would keep every newer
    segment from being deleted (they go oldest first)."""
    for i in range(2):
        pipeline = journaled(store, tmp_path / "j", release_every=0.0)
        await pipeline.recover()
        pipeline.start()
        assert pipeline.journal is not None
        pipeline.journal.segment_bytes = 1  # every batch ends its segment
        for n in range(3):
            fut = pipeline.commit([step(ws, 10 * i + n)])
            assert fut is not None
            await fut
            await pipeline.flush()
        await pipeline.aclose()
        assert len(segments(tmp_path / "j")) == 1, segments(tmp_path / "j")
    assert steps_written(store, ws) == 6


async def test_a_read_never_waits_out_the_gathering_interval(store: SQLStore, tmp_path: Path, ws: str) -> None:
    """Behind the journal the store worker gathers for `interval`; a flush (every query API read) cuts it short,
    also for batches still on their way through the journal when it was asked."""
    pipeline = journaled(store, tmp_path / "j", interval=5.0)
    await pipeline.recover()
    pipeline.start()
    for round_ in range(3):
        futs = [pipeline.commit([step(ws, 10 * round_ + i)]) for i in range(5)]
        started = asyncio.get_running_loop().time()
        await pipeline.flush()  # asked while the batches are still being journaled
        assert asyncio.get_running_loop().time() - started < 2.0
        assert all(f is not None and f.done() for f in futs)
        assert steps_written(store, ws) == 5 * (round_ + 1)
    await pipeline.aclose()


class TimedStore:
    """The real store, each write taking `seconds` more and its start time noted."""

    def __init__(self, real: SQLStore, seconds: float) -> None:
        self.real, self.seconds, self.starts = real, seconds, list[float]()

    async def write_batch(self, events: Any) -> WriteResult:
        self.starts.append(asyncio.get_running_loop().time())
        await asyncio.sleep(self.seconds)
        return await self.real.write_batch(events)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


async def test_behind_the_journal_writes_begin_an_interval_apart_however_long_each_takes(
    store: SQLStore, tmp_path: Path, ws: str
) -> None:
    """What arrives while a write runs waits out the rest of its interval: a dearer write makes the same batches,
    not more and smaller ones (each batch costs its commit and its pass of the books)."""
    timed = TimedStore(store, 0.06)
    pipeline = journaled(timed, tmp_path / "j", interval=0.15)
    await pipeline.recover()
    pipeline.start()
    futs = []
    for i in range(60):  # one every 10 ms: a write that starts as soon as the last ends would start every 60 ms
        futs.append(pipeline.commit([step(ws, i)]))
        await asyncio.sleep(0.01)
    await asyncio.wait_for(asyncio.gather(*[f for f in futs if f is not None]), 5)
    await pipeline.flush()
    assert steps_written(store, ws) == 60
    gaps = [b - a for a, b in zip(timed.starts, timed.starts[1:], strict=False)]
    assert len(timed.starts) >= 3
    assert min(gaps[:-1]) >= 0.14, gaps  # the last write is the flush's, which never waits
    await pipeline.aclose()


async def test_a_journal_is_taken_by_recover_before_the_pipeline_starts(store: SQLStore, tmp_path: Path) -> None:
    """Started without `recover`, a pipeline would append behind an earlier process's unwritten batches (and
    without the lock): it refuses."""
    pipeline = journaled(store, tmp_path / "j")
    with pytest.raises(RuntimeError, match="must `recover\\(\\)` before it starts"):
        pipeline.start()
    await pipeline.recover()
    pipeline.start()
    await pipeline.aclose()

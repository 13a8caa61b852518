"""RunControls: an uncontrolled run costs one lookup, a paused run's call wakes on the change (or reads the store
when no change reaches it), a cancel ends a stream waiting on a silent provider, and a store outage fails open."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest

from agentledger.core.budgets import Decision
from agentledger.core.errors import RunCancelled, RunPaused, StoreUnavailable
from agentledger.gateway import run_controls
from agentledger.gateway.budgets import Governed
from agentledger.gateway.run_controls import RunControls, change_value

AT = datetime(2026, 1, 1, tzinfo=UTC)


class Store:
    """run_controls rows by (workspace, run), counting lookups; `down` fails them as an unreachable store does."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], dict[str, Any]] = {}
        self.loads = 0
        self.down = False

    async def load(self, workspace_id: str, run_id: str) -> dict[str, Any] | None:
        self.loads += 1
        if self.down:
            raise StoreUnavailable("down")
        return self.rows.get((workspace_id, run_id))

    def set(self, run_id: str, state: str, reason: str | None = None) -> None:
        self.rows[("ws", run_id)] = {"state": state, "reason": reason, "by": "tok_1", "at": AT}


async def test_an_uncontrolled_run_costs_one_lookup_and_a_call_without_a_run_none() -> None:
    store = Store()
    controls = RunControls(store.load)
    for _ in range(50):
        await controls.admit("ws", "run-1", Governed())
        await controls.admit("ws", None, Governed())
    assert store.loads == 1


async def test_a_paused_call_proceeds_at_once_on_the_resume_and_says_it_waited() -> None:
    store = Store()
    store.set("r", "paused")
    controls = RunControls(store.load, pause_wait=5)
    governed = Governed()
    held = asyncio.create_task(controls.admit("ws", "r", governed))
    await asyncio.sleep(0.05)
    assert not held.done()
    store.set("r", "running")
    t = time.monotonic()
    controls.invalidate(change_value("ws", "r", "running"))
    await asyncio.wait_for(held, 1)
    assert time.monotonic() - t < 0.05
    assert governed.decided_by is None and governed.decision is Decision.ALLOWED
    assert governed.note is not None and governed.note.startswith("run r was paused: this call waited 0.0")
    assert controls._changed == {}, "no waiter left behind"


async def test_a_paused_call_reads_the_store_when_no_change_reaches_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(run_controls, "RECHECK", 0.05)
    store = Store()
    store.set("r", "paused")
    controls = RunControls(store.load, pause_wait=5)
    held = asyncio.create_task(controls.admit("ws", "r", Governed()))
    await asyncio.sleep(0.02)
    store.set("r", "cancelled", "stop")  # on another replica, its broadcast lost
    with pytest.raises(RunCancelled, match=r"^Run 'r' is cancelled by tok_1 \(stop\): no further calls"):
        await asyncio.wait_for(held, 1)


async def test_a_paused_call_gets_423_after_the_bound() -> None:
    store = Store()
    store.set("r", "paused", "review")
    controls = RunControls(store.load, pause_wait=0.1)
    governed = Governed()
    t = time.monotonic()
    with pytest.raises(RunPaused) as info:
        await controls.admit("ws", "r", governed)
    assert 0.1 <= time.monotonic() - t < 0.3
    assert info.value.message == "Run 'r' is paused by tok_1 (review); this call waited 0.1 s for it to be resumed."
    assert (info.value.status, info.value.retry_after) == (423, 1)
    assert governed.decision is Decision.THROTTLED
    assert governed.decided_by == {
        "kind": "run_control",
        "run_id": "r",
        "state": "paused",
        "reason": "review",
        "by": "tok_1",
    }
    assert controls._changed == {}


async def test_the_store_down_fails_open_and_is_not_asked_again_at_once() -> None:
    store = Store()
    store.down = True
    controls = RunControls(store.load)
    await controls.admit("ws", "r", Governed())
    await controls.admit("ws", "r", Governed())
    assert store.loads == 1


async def slow(*events: tuple[float, str]) -> AsyncIterator[str]:
    """Each event after its gap (seconds): a provider that goes silent."""
    for gap, e in events:
        await asyncio.sleep(gap)
        yield e


async def test_a_cancel_ends_a_stream_waiting_on_a_silent_provider() -> None:
    store = Store()
    controls = RunControls(store.load)
    got: list[str] = []

    async def read() -> None:
        async for e in controls.watch("ws", "r", slow((0, "a"), (0, "b"), (10, "c"))):
            got.append(e)
            if e == "b":
                store.set("r", "cancelled")
                asyncio.get_running_loop().call_later(0.01, controls.invalidate, change_value("ws", "r", "cancelled"))

    t = time.monotonic()
    with pytest.raises(RunCancelled, match="^Run 'r' was cancelled: the stream is ended.$"):
        await read()
    assert got == ["a", "b"] and time.monotonic() - t < 1  # "c" was 10 s away: not waited for
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_a_client_hanging_up_during_the_cancel_still_cancels_the_stream_task() -> None:
    store = Store()
    controls = RunControls(store.load)

    async def read() -> None:
        async for _ in controls.watch("ws", "r", slow((10, "a"))):
            pass

    task = asyncio.create_task(read())
    await asyncio.sleep(0.01)
    controls.invalidate(change_value("ws", "r", "cancelled"))
    task.cancel()  # the client's hang-up, at the same moment: it must not be swallowed
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_stream_of_a_run_cancelled_before_it_began_ends_before_reading() -> None:
    store = Store()
    store.set("r", "cancelled")
    controls = RunControls(store.load)
    with pytest.raises(RunCancelled):
        await anext(controls.watch("ws", "r", slow((10, "a"))))
    events = slow()
    assert controls.watch("ws", None, events) is events  # no run: nothing to watch


def test_a_malformed_change_is_ignored() -> None:
    controls = RunControls(Store().load)
    controls.invalidate("cancelled ws")  # no run id
    controls.invalidate("")

"""When a model call's ledger entries are written (gateway/budgets.py `BudgetGate`, docs/budgets.md "The ledger"):
its reserve entries once it has run for `write_within`, its close with its record; a call that ends sooner never
writes its reserve, its settle netting it out, and a release then writes nothing. Real in-process counters, the
gate's own timer; what the gate commits is collected, what the record carries is read off its report."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from agentledger.core.budgets import Action, Budget, Period, PolicyReport, RateLimit, Scope, Subject
from agentledger.core.model import LedgerEntries, TraceEvent
from agentledger.gateway.budgets import BudgetGate, Governed
from agentledger.limits.memory import MemoryCounters

WS = "ws-ledger"
ANCHOR = datetime(2026, 11, 1, tzinfo=UTC)
BUDGETS = [
    Budget(WS, "ws", Scope.WORKSPACE, None, 10**12, Period.TOTAL, ANCHOR, Action.BLOCK_REQUESTS),
    Budget(WS, "vk", Scope.VIRTUAL_KEY, "vk", 10**12, Period.TOTAL, ANCHOR, Action.ALERT_ONLY),
]
WHO = Subject(WS, department_id="dep", virtual_key_id="vk")


def gate(write_within: float) -> tuple[BudgetGate, list[TraceEvent]]:
    written: list[TraceEvent] = []

    async def rules(_ws: str) -> tuple[list[Budget], list[RateLimit]]:
        return BUDGETS, []

    async def no_workflow(_ws: str, _run: str) -> str | None:
        return None

    g = BudgetGate(rules, no_workflow, MemoryCounters(), written.extend, lambda: datetime.now(UTC))
    g.write_within = write_within
    return g, written


async def admit(g: BudgetGate, governed: Governed, model: str = "gpt-4o-mini") -> None:
    await g.admit(
        governed, WHO, request_id="req", model=model, provider="openai", body_bytes=100, max_output=10, overrides={}
    )


async def admitted(write_within: float) -> tuple[BudgetGate, list[TraceEvent], Governed]:
    """A gate writing reserves after `write_within` s, what it committed, and a call it has just admitted."""
    g, written = gate(write_within)
    governed = Governed()
    await admit(g, governed)
    return g, written, governed


def rows(events: list[Any]) -> list[tuple[str, str, int, int]]:
    return [
        (e.kind, e.reservation_id, e.reserved_delta, e.spent_delta)
        for m in events
        if isinstance(m, LedgerEntries)
        for e in m.entries()
    ]


def close(g: BudgetGate, governed: Governed, cost: int) -> tuple[list[TraceEvent], PolicyReport]:
    events = g.settle(governed, cost, 10, request_id="req", run_id=None, carry=True)
    return events, g.summary(governed)


def test_a_call_that_ends_within_the_interval_writes_its_settle_net_of_a_reserve_never_written() -> None:
    async def go() -> None:
        g, written, governed = await admitted(60.0)
        held, rid = governed.estimate, governed.reservation_id
        assert held > 0 and written == []  # nothing yet: the reserve waits for the call
        events, report = close(g, governed, 7)
        assert events == [] and written == [] and report.reserve_written is False
        assert rows(report.ledger("req", None)) == [("settle", rid, 0, 7)] * 2
        # A failure (nothing spent) that never wrote its reserve writes nothing at all.
        failed = Governed()
        await admit(g, failed)
        _, report = close(g, failed, 0)
        assert report.closed == "release" and report.ledger("req", None) == [] and written == []
        # The counters held each reservation meanwhile, and settle once the call's records are handed over (while
        # the answer waits for them to be durable): then they hold nothing, and spent is the settle's 7.
        keys = [f.key for f in governed.figures]
        held_now = await g.counters.standing(keys)
        assert [(s.spent, s.reserved) for s in held_now.values()] == [(0, held + failed.estimate)] * 2
        await asyncio.sleep(0)
        after = await g.counters.standing(keys)
        assert [(s.spent, s.reserved) for s in after.values()] == [(7, 0), (7, 0)]

    asyncio.run(go())


def test_a_call_that_outlives_the_interval_has_its_reserve_written_then_and_its_settle_after() -> None:
    async def go() -> None:
        g, written, governed = await admitted(0.01)
        held, rid = governed.estimate, governed.reservation_id
        assert written == []
        await asyncio.sleep(0.05)  # the gate's timer writes what has been open that long
        assert rows(written) == [("reserve", rid, held, 0)] * 2
        events, report = close(g, governed, 7)
        assert events == [] and report.reserve_written is True
        assert rows(report.ledger("req", None)) == [("settle", rid, -held, 7)] * 2
        await asyncio.sleep(0.05)
        assert len(rows(written)) == 2  # written once: the timer no longer holds it

    asyncio.run(go())


def test_a_fallback_releases_an_unwritten_reservation_without_a_trace_and_holds_the_next_the_same_way() -> None:
    async def go() -> None:
        g, written, governed = await admitted(60.0)
        first = governed.reservation_id
        await g.rehold(governed, model="gpt-4o", provider="openai", overrides={}, request_id="req", run_id=None)
        assert governed.reservation_id != first and written == []  # the first never written: nothing to release
        _, report = close(g, governed, 9)
        assert rows(report.ledger("req", None)) == [("settle", governed.reservation_id, 0, 9)] * 2
        # Written before the fallback, the first reservation's release is written with it.
        g, written, governed = await admitted(0.01)
        first, held = governed.reservation_id, governed.estimate
        await asyncio.sleep(0.05)
        await g.rehold(governed, model="gpt-4o", provider="openai", overrides={}, request_id="req", run_id=None)
        assert rows(written) == [("reserve", first, held, 0)] * 2 + [("release", first, -held, 0)] * 2
        _, report = close(g, governed, 9)
        assert report.reserve_written is False  # the second closed within the interval

    asyncio.run(go())

"""The budget gate on either counters backend: the same calls under the same rules end the same, in-process
(where the gate's plan admits in one step) and on Redis (one script a call, its settle a task after the answer).
What two replicas promise each other, at the level of the gate: admissions, refusals (message and Retry-After),
each budget's figures, the counters, and the alerts."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings, strategies as st

from agentledger.core.budgets import Action, Budget, Period, RateLimit, Scope, Subject
from agentledger.core.errors import BudgetExceeded, RateLimited
from agentledger.core.model import BudgetAlert, TraceEvent
from agentledger.gateway.budgets import BudgetGate, Governed
from agentledger.limits import Counters, MemoryCounters
from agentledger.limits.redis import RedisCounters
from tests.contract.limits.test_counters import REDIS_URL, drop_prefix, needs_redis

WS = "ws-backends"
ANCHOR = datetime(2026, 11, 1, tzinfo=UTC)
_SCOPED = [(Scope.WORKSPACE, None), (Scope.DEPARTMENT, "dep"), (Scope.AGENT, "ag"), (Scope.VIRTUAL_KEY, "vk")]


@st.composite
def rule_sets(draw: st.DrawFn) -> tuple[list[Budget], list[RateLimit]]:
    budgets = []
    for i in range(draw(st.integers(0, 3))):
        scope, value = draw(st.sampled_from(_SCOPED))
        action = draw(st.sampled_from([Action.BLOCK_REQUESTS, Action.ALERT_ONLY, Action.SOFT_THROTTLE]))
        limit = draw(st.sampled_from([0, 5_000, 40_000, 10**9]))
        period = draw(st.sampled_from([Period.DAY, Period.TOTAL, Period.MONTH]))
        extra = {"throttle_rpm": draw(st.integers(1, 3))} if action is Action.SOFT_THROTTLE else {}
        budgets.append(Budget(WS, f"b{i}", scope, value, limit, period, ANCHOR, action, **extra))
    limits = []
    for i in range(draw(st.integers(0, 2))):
        scope, value = draw(st.sampled_from(_SCOPED))
        per_minute = draw(st.sampled_from([{"requests_per_minute": 3}, {"tokens_per_minute": 5_000}]))
        limits.append(RateLimit(WS, f"r{i}", scope, value, **per_minute))
    return budgets, limits


class Gate:
    def __init__(self, counters: Counters, rules: tuple[list[Budget], list[RateLimit]], clock: list[datetime]):
        self.written: list[TraceEvent] = []

        async def rules_of(_ws: str) -> tuple[list[Budget], list[RateLimit]]:
            return list(rules[0]), list(rules[1])

        async def no_workflow(_ws: str, _run: str) -> str | None:
            return None

        self.gate = BudgetGate(rules_of, no_workflow, counters, self.written.extend, lambda: clock[0])

    async def call(self, who: Subject, max_output: int, cost: int) -> tuple[Any, ...]:
        governed, seen = Governed(), len(self.written)
        try:
            await self.gate.admit(
                governed,
                who,
                request_id="req",
                model="gpt-4o-mini",
                provider="openai",
                body_bytes=200,
                max_output=max_output,
                overrides={},
            )
        except (BudgetExceeded, RateLimited) as exc:
            refused = (type(exc).__name__, exc.message, exc.retry_after)
        else:
            refused = None
            self.gate.settle(governed, cost, 30, request_id="req", run_id=None)
        await asyncio.sleep(0)  # in-process: the counters' settle
        while self.gate._background:  # Redis: the settle's task
            await asyncio.gather(*list(self.gate._background))
        standing = await self.gate.counters.standing(list(governed.keys))
        figures = [(f.budget.id, f.key, f.spent, f.reserved) for f in governed.figures]
        new = [e for e in self.written[seen:] if isinstance(e, BudgetAlert)]
        alerts = [(a.budget_id, a.window_key, a.threshold, a.spent_nanos) for a in new]
        return refused, governed.decision, governed.decided_by, figures, standing, alerts


@needs_redis
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rules=rule_sets(),
    calls=st.lists(
        st.tuples(
            st.sampled_from([None, "ag"]),
            st.sampled_from([1, 50, 2000]),
            st.sampled_from([0, 700, 30_000]),
            st.sampled_from([0, 1, 30, 3600]),
        ),
        min_size=1,
        max_size=10,
    ),
)
def test_the_gate_on_redis_ends_every_call_as_in_process(
    rules: tuple[list[Budget], list[RateLimit]], calls: list[tuple[str | None, int, int, int]]
) -> None:
    async def run() -> None:
        clock = [ANCHOR + timedelta(hours=1)]
        prefix = f"t:{uuid.uuid4().hex}:"
        redis = RedisCounters(REDIS_URL, prefix, timeout=10.0, connect_timeout=10.0)
        memory, shared = (
            Gate(MemoryCounters(clock=lambda: clock[0].timestamp()), rules, clock),
            Gate(redis, rules, clock),
        )
        try:
            for agent, max_output, cost, seconds in calls:
                clock[0] += timedelta(seconds=seconds)
                who = Subject(WS, department_id="dep", agent_id=agent, virtual_key_id="vk")
                assert await memory.call(who, max_output, cost) == await shared.call(who, max_output, cost)
        finally:
            await redis.aclose()
            await drop_prefix(prefix)

    asyncio.run(run())

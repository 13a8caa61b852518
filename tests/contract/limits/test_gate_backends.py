"""The budget gate on either counters backend: the same calls under the same rules end the same, in-process
(where the gate's plan admits in one step) and on Redis (one script a call, its settle a task after the answer).
What two replicas promise each other, at the level of the gate: admissions, refusals (message and Retry-After),
each budget's figures, the counters, and the alerts."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

from hypothesis import HealthCheck, given, settings

from agentledger.core.budgets import Subject
from agentledger.limits import MemoryCounters
from agentledger.limits.redis import RedisCounters
from tests.contract.limits.test_counters import REDIS_URL, drop_prefix, needs_redis
from tests.gate_calls import CALLS, Clock, Rules, gate_with, outcome, rule_sets

WS = "ws-backends"
ANCHOR = datetime(2026, 11, 1, tzinfo=UTC)


@needs_redis
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rules=rule_sets(WS, ANCHOR, tokens=True), calls=CALLS)
def test_the_gate_on_redis_ends_every_call_as_in_process(
    rules: Rules, calls: list[tuple[str | None, int, int, int]]
) -> None:
    async def run() -> None:
        clock = Clock(ANCHOR + timedelta(hours=1))
        prefix = f"t:{uuid.uuid4().hex}:"
        redis = RedisCounters(REDIS_URL, prefix, timeout=10.0, connect_timeout=10.0)
        together = {"budgets": rules[0], "limits": rules[1]}
        memory, memory_written = gate_with(together, clock, MemoryCounters(clock=lambda: clock.at.timestamp()))
        shared, shared_written = gate_with(together, clock, redis)
        try:
            for agent, max_output, cost, seconds in calls:
                clock.at += timedelta(seconds=seconds)
                who = Subject(WS, department_id="dep", agent_id=agent, virtual_key_id="vk")
                once = await outcome(memory, memory_written, who, max_output, cost)
                assert once == await outcome(shared, shared_written, who, max_output, cost)
        finally:
            await redis.aclose()
            await drop_prefix(prefix)

    asyncio.run(run())

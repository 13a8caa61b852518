"""Random rules and calls for the budget gate's property tests, and one call's outcome as they compare it
(tests/unit/test_budget_plans.py: planned and unplanned; tests/contract/limits/test_gate_backends.py: in-process
and Redis)."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

from hypothesis import strategies as st

from agentledger.core.budgets import Action, Budget, Period, RateLimit, Scope, Subject
from agentledger.core.errors import BudgetExceeded, RateLimited
from agentledger.core.model import BudgetAlert, TraceEvent
from agentledger.gateway.budgets import BudgetGate, Governed
from agentledger.limits import Counters, MemoryCounters

KEY_SCOPES = [(Scope.WORKSPACE, None), (Scope.DEPARTMENT, "dep"), (Scope.AGENT, "ag"), (Scope.VIRTUAL_KEY, "vk")]
Rules = tuple[list[Budget], list[RateLimit]]

# (agent id or None, max_tokens, what the call cost in nano-USD, seconds the clock moves before it)
CALLS = st.lists(
    st.tuples(
        st.sampled_from([None, "ag"]),
        st.sampled_from([1, 50, 2000]),
        st.sampled_from([0, 700, 30_000]),
        st.sampled_from([0, 1, 30, 3600]),
    ),
    min_size=1,
    max_size=12,
)


@st.composite
def rule_sets(draw: st.DrawFn, workspace: str, anchor: datetime, tokens: bool = False) -> Rules:
    """Up to three key-scoped budgets (each action, three periods, tight and loose limits) and two rate limits
    (requests a minute; with `tokens`, tokens a minute too)."""
    budgets = []
    for i in range(draw(st.integers(0, 3))):
        scope, value = draw(st.sampled_from(KEY_SCOPES))
        action = draw(st.sampled_from([Action.BLOCK_REQUESTS, Action.ALERT_ONLY, Action.SOFT_THROTTLE]))
        limit = draw(st.sampled_from([0, 5_000, 40_000, 10**9]))
        period = draw(st.sampled_from([Period.DAY, Period.TOTAL, Period.MONTH]))
        extra = {"throttle_rpm": draw(st.integers(1, 3))} if action is Action.SOFT_THROTTLE else {}
        budgets.append(Budget(workspace, f"b{i}", scope, value, limit, period, anchor, action, **extra))
    limits = []
    rates = [{"requests_per_minute": n} for n in (1, 3, 6)] + ([{"tokens_per_minute": 5_000}] if tokens else [])
    for i in range(draw(st.integers(0, 2))):
        scope, value = draw(st.sampled_from(KEY_SCOPES))
        limits.append(RateLimit(workspace, f"r{i}", scope, value, **draw(st.sampled_from(rates))))
    return budgets, limits


class Clock:
    def __init__(self, at: datetime) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at


def gate_with(
    rules: dict[str, Any], clock: Clock, counters: Counters | None = None
) -> tuple[BudgetGate, list[TraceEvent]]:
    """A gate over `rules` ({"budgets", "limits"}) on in-process counters (or `counters`), and what it writes."""
    written: list[TraceEvent] = []

    async def rules_of(_ws: str) -> tuple[list[Budget], list[RateLimit]]:
        return list(rules["budgets"]), list(rules["limits"])

    async def no_workflow(_ws: str, _run: str) -> str | None:
        return None

    made = counters if counters is not None else MemoryCounters()
    return BudgetGate(rules_of, no_workflow, made, written.extend, clock), written


async def admit(gate: BudgetGate, governed: Governed, who: Subject, max_output: int = 10) -> None:
    """A 200-byte gpt-4o-mini chat call of `who`'s, bounded at `max_output` tokens, through the gate."""
    await gate.admit(
        governed,
        who,
        request_id="req",
        model="gpt-4o-mini",
        provider="openai",
        body_bytes=200,
        max_output=max_output,
        overrides={},
    )


async def outcome(gate: BudgetGate, written: list[TraceEvent], who: Subject, max_output: int, cost: int) -> Any:
    """Admit a call and settle it at `cost`: its refusal (kind, message, Retry-After) or None, its decision and who
    decided, each budget's figures, the counters after its settle, and the alerts it raised."""
    governed, seen = Governed(), len(written)
    try:
        await admit(gate, governed, who, max_output)
    except (BudgetExceeded, RateLimited) as exc:
        refused = (type(exc).__name__, exc.message, exc.retry_after)
    else:
        refused = None
        gate.settle(governed, cost, 30, request_id="req", run_id=None)
    await asyncio.sleep(0)  # in-process: the counters' settle (`_settle_soon`)
    while gate._background:  # Redis: the settle's task
        await asyncio.gather(*list(gate._background))
    standing = await gate.counters.standing(list(governed.keys))
    figures = [(f.budget.id, f.key, f.spent, f.reserved) for f in governed.figures]
    alerts = [
        (a.budget_id, a.window_key, a.threshold, a.spent_nanos) for a in written[seen:] if isinstance(a, BudgetAlert)
    ]
    return refused, governed.decision, governed.decided_by, figures, standing, alerts

"""The budget gate's admission plans (gateway/budgets.py `_Plan`): what applies to a key's calls is found once and
looked up after, so a plan must never outlive what it stands for: a budget's window (its counter key), the rules
it was made from, the subject it was made for. Real in-process counters, an injected clock."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from agentledger.core.budgets import Action, Budget, Decision, Period, RateLimit, Scope, Subject, crossed
from agentledger.core.errors import BudgetExceeded, RateLimited
from agentledger.core.model import BudgetAlert
from agentledger.gateway.budgets import BudgetGate, Governed
from tests.gate_calls import CALLS, Clock, Rules, admit as admitted, gate_with, outcome, rule_sets

WS = "ws-plans"
ANCHOR = datetime(2026, 11, 1, tzinfo=UTC)
BIG = 10**15


def budget(budget_id: str, scope: Scope, value: str | None, **kw: Any) -> Budget:
    fields: dict[str, Any] = {"period": Period.DAY, "action": Action.BLOCK_REQUESTS, **kw}
    return Budget(WS, budget_id, scope, value, BIG, fields.pop("period"), ANCHOR, fields.pop("action"), **fields)


def subject(**kw: Any) -> Subject:
    return Subject(WS, **{"department_id": "dep", "agent_id": None, "virtual_key_id": "vk", **kw})


def admit(gate: BudgetGate, who: Subject, governed: Governed | None = None) -> Governed:
    governed = governed if governed is not None else Governed()
    asyncio.run(admitted(gate, governed, who))
    return governed


def keys(governed: Governed) -> dict[str, str]:
    return {f.budget.id: f.key for f in governed.figures}


def test_a_call_past_its_budgets_window_charges_the_next_windows_counter() -> None:
    clock = Clock(ANCHOR + timedelta(hours=23, minutes=59))
    gate, _ = gate_with({"budgets": [budget("day", Scope.WORKSPACE, None)], "limits": []}, clock)
    first, again = admit(gate, subject()), admit(gate, subject())
    assert keys(first) == keys(again) == {"day": f"b|{WS}|day|{int(ANCHOR.timestamp())}"}
    clock.at = ANCHOR + timedelta(days=1)  # the window's end: the plan's keys no longer hold
    assert keys(admit(gate, subject())) == {"day": f"b|{WS}|day|{int((ANCHOR + timedelta(days=1)).timestamp())}"}
    clock.at = ANCHOR + timedelta(hours=1)  # a clock set back: the earlier window again, not the plan's
    assert keys(admit(gate, subject())) == {"day": f"b|{WS}|day|{int(ANCHOR.timestamp())}"}


def test_rules_read_again_are_planned_again_and_each_subject_has_its_own_plan() -> None:
    clock = Clock(ANCHOR + timedelta(hours=1))
    rules: dict[str, Any] = {"budgets": [budget("ws", Scope.WORKSPACE, None)], "limits": []}
    gate, _ = gate_with(rules, clock)
    assert set(keys(admit(gate, subject()))) == {"ws"}
    rules["budgets"] = [*rules["budgets"], budget("vk", Scope.VIRTUAL_KEY, "vk")]
    assert set(keys(admit(gate, subject()))) == {"ws"}  # the rules are cached (cache_ttl): not read yet
    gate.invalidate(WS)  # what an admin's change does
    assert set(keys(admit(gate, subject()))) == {"ws", "vk"}
    assert set(keys(admit(gate, subject(virtual_key_id="other")))) == {"ws"}  # another key: its own plan
    assert set(keys(admit(gate, subject()))) == {"ws", "vk"}


def test_rules_a_plan_cannot_stand_for_are_decided_call_by_call() -> None:
    clock = Clock(ANCHOR + timedelta(hours=1))
    customer = budget("acme", Scope.PROPERTY, "acme", property_name="customer")
    rules: dict[str, Any] = {"budgets": [budget("ws", Scope.WORKSPACE, None), customer], "limits": []}
    gate, _ = gate_with(rules, clock)
    assert set(keys(admit(gate, subject(properties={"customer": "acme"})))) == {"ws", "acme"}
    assert set(keys(admit(gate, subject(properties={"customer": "other"})))) == {"ws"}
    assert set(keys(admit(gate, subject(properties={"customer": "acme"})))) == {"ws", "acme"}


def test_a_planned_call_is_refused_as_an_unplanned_one_and_writes_no_reservation() -> None:
    clock = Clock(ANCHOR + timedelta(hours=1))
    rate = RateLimit(WS, "rpm", Scope.VIRTUAL_KEY, "vk", requests_per_minute=1)
    gate, _ = gate_with({"budgets": [], "limits": [rate]}, clock)
    assert admit(gate, subject()).decision is Decision.ALLOWED
    throttled = Governed()
    with pytest.raises(RateLimited):
        admit(gate, subject(), throttled)
    assert throttled.decision is Decision.THROTTLED
    assert throttled.decided_by == {"kind": "rate_limit", "id": "rpm", "scope": "virtual_key:vk"}
    small = Budget(WS, "small", Scope.WORKSPACE, None, 1, Period.DAY, ANCHOR, Action.BLOCK_REQUESTS)
    gate, written = gate_with({"budgets": [small], "limits": []}, clock)
    blocked = Governed()
    with pytest.raises(BudgetExceeded):
        admit(gate, subject(), blocked)
    assert blocked.decision is Decision.BLOCKED and blocked.reservation_id is None
    assert written == []  # a refused reservation writes no ledger entry


def test_a_planned_call_past_its_rate_beside_budgets_is_throttled_and_holds_nothing() -> None:
    """Budgets and a requests-per-minute limit: the plan's one step of the counters answers with the rate's wait,
    which the gate raises as the throttle, the budgets' counters untouched."""
    clock = Clock(ANCHOR + timedelta(hours=1))
    rate = RateLimit(WS, "rpm", Scope.VIRTUAL_KEY, "vk", requests_per_minute=1)
    gate, written = gate_with({"budgets": [budget("ws", Scope.WORKSPACE, None)], "limits": [rate]}, clock)
    first = admit(gate, subject())
    assert first.decision is Decision.ALLOWED and first.reservation_id is not None
    before, entries = asyncio.run(gate.counters.standing(list(first.keys))), len(written)
    throttled = Governed()
    with pytest.raises(RateLimited) as refused:
        admit(gate, subject(), throttled)
    assert refused.value.retry_after is not None and refused.value.retry_after > 0
    assert throttled.decision is Decision.THROTTLED and throttled.reservation_id is None
    assert throttled.decided_by == {"kind": "rate_limit", "id": "rpm", "scope": "virtual_key:vk"}
    assert asyncio.run(gate.counters.standing(list(first.keys))) == before
    assert len(written) == entries  # (the first call's reserve, written at once by this gate)


@pytest.mark.parametrize(("model", "embeddings"), [("gpt-4o-mini", False), ("text-embedding-3-small", True)])
def test_a_planned_call_reserves_what_the_gate_estimates(model: str, embeddings: bool) -> None:
    """A plan's one-pass admission holds the same bound as any other: an embedding produces no output tokens."""
    clock = Clock(ANCHOR + timedelta(hours=1))
    rate = RateLimit(WS, "rpm", Scope.VIRTUAL_KEY, "vk", requests_per_minute=100)
    gate, _ = gate_with({"budgets": [budget("ws", Scope.WORKSPACE, None)], "limits": [rate]}, clock)
    governed = Governed()

    async def go() -> None:
        await gate.admit(
            governed,
            subject(),
            request_id="req",
            model=model,
            provider="openai",
            body_bytes=200,
            max_output=None,
            overrides={},
            embeddings=embeddings,
        )

    asyncio.run(go())
    expected = gate.estimate(WS, model, "openai", clock(), {}, body_bytes=200, max_output=None, embeddings=embeddings)
    assert expected is not None and governed.estimate == expected > 0
    assert governed.tokens_estimate == 200 + (0 if embeddings else gate.default_output_tokens)
    assert governed.numbers == [0, expected] and governed.keys == (keys(governed)["ws"],)


# -- a plan is an optimization only: the same calls under the same rules end the same with it and without ------------


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rules=rule_sets(WS, ANCHOR), calls=CALLS)
def test_a_plan_admits_refuses_and_counts_every_call_as_the_general_path_does(
    rules: Rules, calls: list[tuple[str | None, int, int, int]]
) -> None:
    clock = Clock(ANCHOR + timedelta(hours=1))
    planned, planned_written = gate_with({"budgets": rules[0], "limits": rules[1]}, clock)
    general, general_written = gate_with({"budgets": rules[0], "limits": rules[1]}, clock)
    general._plan_for = lambda *_: None  # type: ignore[method-assign]
    for agent, max_output, cost, seconds in calls:
        clock.at += timedelta(seconds=seconds)
        who = subject(agent_id=agent)
        once = asyncio.run(outcome(planned, planned_written, who, max_output, cost))
        assert once == asyncio.run(outcome(general, general_written, who, max_output, cost))


@settings(max_examples=200, deadline=None)
@given(
    limit=st.sampled_from([0, 1, 100, 6_300, 10_000, 12_600]),
    thresholds=st.sampled_from([(50, 80, 100), (1, 99, 100), (), (100,), (25, 50, 75, 100)]),
    costs=st.lists(st.sampled_from([0, 1, 49, 50, 51, 3_150, 6_300, 10**6]), min_size=1, max_size=8),
)
def test_a_settle_alerts_exactly_the_thresholds_its_cost_crossed(
    limit: int, thresholds: tuple[int, ...], costs: list[int]
) -> None:
    clock = Clock(ANCHOR + timedelta(hours=1))
    b = Budget(WS, "b", Scope.WORKSPACE, None, limit, Period.TOTAL, ANCHOR, Action.ALERT_ONLY, thresholds)
    gate, written = gate_with({"budgets": [b], "limits": []}, clock)
    spent = 0
    for cost in costs:
        seen = len(written)
        governed = admit(gate, subject())
        asyncio.run(_settled(gate, governed, cost))
        alerts = [a.threshold for a in written[seen:] if isinstance(a, BudgetAlert)]
        assert alerts == crossed(limit, spent, spent + cost, thresholds)
        spent += cost


async def _settled(gate: BudgetGate, governed: Governed, cost: int) -> None:
    gate.settle(governed, cost, 30, request_id="req", run_id=None)
    await asyncio.sleep(0)


def test_a_workspace_is_idle_only_while_its_cached_rules_are_none() -> None:
    """`BudgetGate.idle` lets the gateway skip a call's bounds: only for rules read, fresh and empty. Unread rules,
    rules that exist, and rules dropped by an invalidation (a budget created) are not idle."""
    rules: dict[str, Any] = {"budgets": [], "limits": []}
    gate, _ = gate_with(rules, Clock(ANCHOR))
    assert not gate.idle(WS)  # never read: the admission reads them
    admit(gate, subject())
    assert gate.idle(WS)
    rules["budgets"] = [budget("b1", Scope.WORKSPACE, None)]
    assert gate.idle(WS)  # (as this node last read them, until the cache's ttl or an invalidation)
    gate.invalidate(WS)
    assert not gate.idle(WS)
    assert admit(gate, subject()).budgets and not gate.idle(WS)
    rules["budgets"], rules["limits"] = [], [RateLimit(WS, "r1", Scope.WORKSPACE, None, requests_per_minute=5)]
    gate.invalidate(WS)
    admit(gate, subject())
    assert not gate.idle(WS)

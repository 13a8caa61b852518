"""core/policy.py, pure: every condition true and false, every setting, precedence across scopes (settings
override, rules accumulate, block > escalate > throttle > allow), monitor mode, the clamp, time windows over
night and across DST changes, IPv6, the per-subject cache and what the gateway must fetch first."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from agentledger.core import policy as policy_module
from agentledger.core.budgets import Decision, Scope, Subject
from agentledger.core.policy import (
    ALLOWED,
    CallContext,
    Hit,
    Mode,
    Policy,
    PolicySet,
    RunStats,
    Verdict,
    compile_policies,
)
from agentledger.core.policy_config import parse_policy

SUBJECT = Subject("ws", department_id="research", agent_id="planner", virtual_key_id="vk1")
THURSDAY_NOON = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
_ids = iter(range(10**9))


def pol(
    scope: str = "workspace",
    value: str | None = None,
    *,
    mode: str = "enforce",
    settings: dict[str, Any] | None = None,
    rules: list[dict[str, Any]] | None = None,
    id: str | None = None,
    version: int = 1,
    name: str = "guard",
) -> Policy:
    body: dict[str, Any] = {"name": name, "scope": scope, "mode": mode}
    if value is not None:
        body["scope_value"] = value
    if settings is not None:
        body["settings"] = settings
    if rules is not None:
        body["rules"] = rules
    return parse_policy(body, id=id or f"p{next(_ids)}", version=version)


def ctx(**kw: Any) -> CallContext:
    base: dict[str, Any] = {"kind": "model_call", "now": THURSDAY_NOON, "model": "gpt-4o", "max_tokens": 100}
    base.update(kw)
    return CallContext(**base)


def judge(policies: list[Policy], subject: Subject = SUBJECT, **kw: Any) -> Verdict:
    return compile_policies(policies).evaluate(subject, ctx(**kw))


def blocked_when(when: dict[str, Any], **kw: Any) -> bool:
    verdict = judge([pol(rules=[{"when": when, "action": "block"}])], **kw)
    assert verdict.decision in (Decision.BLOCKED, Decision.ALLOWED)
    return verdict.decision is Decision.BLOCKED


def window(days: list[str], start: str, end: str, tz: str = "UTC") -> dict[str, Any]:
    return {"days": days, "start": start, "end": end, "tz": tz}


# ------------------------------------------------------------------------------------------------ no policies


def test_no_policies_is_the_shared_empty_set_and_allows_for_nothing() -> None:
    assert compile_policies([]) is PolicySet.empty
    empty = PolicySet.empty
    assert (empty.needs_pii, empty.needs_run, empty.needs_repeats) == (False, False, False)
    assert empty.evaluate(SUBJECT, ctx()) is ALLOWED
    assert ALLOWED.decision is Decision.ALLOWED and ALLOWED.would is None


def test_policies_of_other_subjects_do_not_apply() -> None:
    others = [
        pol("department", "sales", rules=[{"action": "block"}]),
        pol("agent", "writer", rules=[{"action": "block"}]),
        pol("virtual_key", "vk2", rules=[{"action": "block"}]),
    ]
    assert judge(others).decision is Decision.ALLOWED
    assert compile_policies(others).applicable(SUBJECT).policies == ()
    assert judge(others, Subject("ws", department_id="sales")).decision is Decision.BLOCKED


# ------------------------------------------------------------------------------------------------- conditions

RUN = RunStats(steps=10, model_calls=4, started_at=THURSDAY_NOON - timedelta(seconds=600), cost_nanos=2 * 10**9)

# (condition, a call that meets it, a call that does not)
CONDITIONS: list[tuple[dict[str, Any], dict[str, Any], dict[str, Any]]] = [
    ({"kinds": ["tool_call"]}, {"kind": "tool_call"}, {"kind": "model_call"}),
    ({"kinds": ["tool_call"]}, {"kind": "Tool_Call"}, {"kind": "api_call"}),
    ({"models": ["gpt-4o*"]}, {"model": "GPT-4o-mini"}, {"model": "claude-3"}),
    ({"models": ["gpt-4o*"]}, {"model": "gpt-4o"}, {"model": None}),
    ({"models_not": ["gpt-4o*"]}, {"model": "claude-3"}, {"model": "gpt-4o"}),
    ({"models_not": ["gpt-4o*"]}, {"model": "o1"}, {"model": None}),  # no model: not "another model"
    ({"providers": ["azure-*"]}, {"provider": "azure-eu"}, {"provider": "openai"}),
    ({"providers_not": ["azure-*"]}, {"provider": "openai"}, {"provider": "azure-us"}),
    ({"names": ["shell*", "rm"]}, {"kind": "tool_call", "name": "rm"}, {"kind": "tool_call", "name": "rmdir"}),
    ({"names_not": ["search"]}, {"name": "shell"}, {"name": "search"}),
    ({"max_tokens_over": 1000}, {"max_tokens": 1001}, {"max_tokens": 1000}),
    ({"max_tokens_over": 1000}, {"max_tokens": None}, {"kind": "tool_call", "max_tokens": None}),
    ({"cost_over_usd": "0.50"}, {"cost_nanos": 500_000_001}, {"cost_nanos": 500_000_000}),
    ({"cost_over_usd": 0.5}, {"cost_nanos": 10**9}, {"cost_nanos": None}),
    ({"hours": [window(["thu"], "09:00", "17:00")]}, {}, {"now": THURSDAY_NOON + timedelta(hours=6)}),
    ({"outside_hours": [window(["thu"], "09:00", "17:00")]}, {"now": THURSDAY_NOON + timedelta(hours=6)}, {}),
    ({"ip_in": ["10.0.0.0/8"]}, {"client_ip": "10.9.8.7"}, {"client_ip": "11.0.0.1"}),
    ({"ip_in": ["10.0.0.0/8"]}, {"client_ip": "10.9.8.7"}, {"client_ip": None}),
    ({"ip_not_in": ["10.0.0.0/8"]}, {"client_ip": "11.0.0.1"}, {"client_ip": "10.0.0.1"}),
    ({"ip_not_in": ["10.0.0.0/8"]}, {"client_ip": "11.0.0.1"}, {"client_ip": "not an ip"}),
    (
        {"missing_headers": ["alephant-run-id", "x-team"]},
        {"headers": frozenset({"x-team"})},
        {"headers": frozenset({"x-team", "alephant-run-id"})},
    ),
    ({"prompt_ids": ["plan"]}, {"prompt_id": "plan"}, {"prompt_id": "summarize"}),
    ({"prompt_ids_not": ["plan"]}, {"prompt_id": "summarize"}, {"prompt_id": None}),
    (
        {"properties": {"customer": "acme*", "env": "prod"}},
        {"properties": {"customer": "ACME-1", "env": "prod"}},
        {"properties": {"customer": "acme-1"}},
    ),
    ({"run_steps_over": 9}, {"run": RUN}, {"run": RunStats(steps=9)}),
    ({"run_steps_over": 9}, {"run": RUN}, {"run": None}),
    ({"run_model_calls_over": 3}, {"run": RUN}, {"run": RunStats(model_calls=3)}),
    ({"run_duration_over_s": 599}, {"run": RUN}, {"run": RunStats(started_at=THURSDAY_NOON)}),
    ({"run_duration_over_s": 599}, {"run": RUN}, {"run": RunStats(started_at=None)}),
    ({"run_cost_over_usd": "1.99"}, {"run": RUN}, {"run": RunStats(cost_nanos=1_990_000_000)}),
    ({"repeated_over": 2}, {"run": RunStats(repeats=3)}, {"run": RunStats(repeats=2)}),
    ({"pii": ["email", "iban"]}, {"pii": frozenset({"iban"})}, {"pii": frozenset({"phone"})}),
    ({}, {}, {"kind": "anything"}),  # an empty `when` always matches: the "does not" side is a second "does"
]


@pytest.mark.parametrize(("when", "meets", "misses"), CONDITIONS, ids=[str(c[0])[:60] for c in CONDITIONS])
def test_each_condition_holds_and_fails(when: dict[str, Any], meets: dict[str, Any], misses: dict[str, Any]) -> None:
    assert blocked_when(when, **meets)
    assert blocked_when(when, **misses) is (when == {})


def test_all_conditions_of_a_rule_must_hold() -> None:
    when = {"models": ["gpt-4o"], "kinds": ["model_call"], "max_tokens_over": 50}
    assert blocked_when(when)
    assert not blocked_when(when, max_tokens=50)
    assert not blocked_when(when, model="o1")


# --------------------------------------------------------------------------------------------------- settings


def setting_verdict(settings: dict[str, Any], **kw: Any) -> Verdict:
    return judge([pol(settings=settings, id="pol", version=3, name="base")], **kw)


@pytest.mark.parametrize(
    ("settings", "refused", "passed", "rule_id"),
    [
        ({"models_allow": ["gpt-4o*"]}, {"model": "o1"}, {"model": "GPT-4O-MINI"}, "setting:models_allow"),
        ({"models_allow": ["gpt-4o*"]}, {"model": "o1"}, {"kind": "tool_call", "model": None}, "setting:models_allow"),
        ({"models_deny": ["*-preview"]}, {"model": "o1-preview"}, {"model": "o1"}, "setting:models_deny"),
        ({"providers_allow": ["openai"]}, {"provider": "azure"}, {"provider": "openai"}, "setting:providers_allow"),
        ({"providers_deny": ["az*"]}, {"provider": "azure"}, {"provider": "openai"}, "setting:providers_deny"),
        ({"ip_allow": ["10.0.0.0/8"]}, {"client_ip": "8.8.8.8"}, {"client_ip": "10.0.0.1"}, "setting:ip_allow"),
        ({"ip_allow": ["10.0.0.0/8"]}, {"client_ip": None}, {"client_ip": "10.0.0.1"}, "setting:ip_allow"),
        (
            {"required_headers": ["Alephant-Run-Id"]},
            {"headers": frozenset()},
            {"headers": frozenset({"alephant-run-id"})},
            "setting:required_headers",
        ),
        ({"prompt_ids_allow": ["plan"]}, {"prompt_id": "x"}, {"prompt_id": "plan"}, "setting:prompt_ids_allow"),
        ({"prompt_ids_allow": ["plan"]}, {"prompt_id": None}, {"kind": "tool_call"}, "setting:prompt_ids_allow"),
        (
            {"time_windows": [window(["thu"], "09:00", "12:00")]},
            {},
            {"now": THURSDAY_NOON - timedelta(minutes=1)},
            "setting:time_windows",
        ),
        ({"max_run_steps": 10}, {"run": RUN}, {"run": RunStats(steps=9)}, "setting:max_run_steps"),
        ({"max_run_steps": 10}, {"run": RUN}, {"run": None}, "setting:max_run_steps"),
        ({"max_run_model_calls": 4}, {"run": RUN}, {"run": RunStats(model_calls=3)}, "setting:max_run_model_calls"),
        ({"max_run_model_calls": 4}, {"run": RUN}, {"run": RUN, "kind": "tool_call"}, "setting:max_run_model_calls"),
        ({"max_run_duration_s": 599.5}, {"run": RUN}, {"run": RunStats()}, "setting:max_run_duration_s"),
        (
            {"max_run_cost_usd": "2"},
            {"run": RUN},
            {"run": RunStats(cost_nanos=1_999_999_999)},
            "setting:max_run_cost_usd",
        ),
        ({"loop_repeats": 3}, {"run": RunStats(repeats=3)}, {"run": RunStats(repeats=2)}, "setting:loop_repeats"),
    ],
)
def test_each_setting_refuses_and_passes(
    settings: dict[str, Any], refused: dict[str, Any], passed: dict[str, Any], rule_id: str
) -> None:
    verdict = setting_verdict(settings, **refused)
    assert verdict.decision is Decision.BLOCKED
    assert (verdict.policy_id, verdict.policy_version, verdict.rule_id) == ("pol", 3, rule_id)
    assert verdict.reason.startswith(f"policy 'base' (pol v3) setting {rule_id.removeprefix('setting:')}: ")
    assert setting_verdict(settings, **passed).decision is Decision.ALLOWED


def test_setting_reasons_say_what_is_wrong() -> None:
    assert setting_verdict({"models_allow": ["gpt*"]}, model="o1").reason.endswith("model 'o1' is not in models_allow")
    assert setting_verdict({"ip_allow": ["::1"]}, client_ip="10.0.0.1").reason.endswith(
        "client IP 10.0.0.1 is not in ip_allow"
    )
    assert "names no prompt" in setting_verdict({"prompt_ids_allow": ["a"]}).reason
    assert "seen 4 times" in setting_verdict({"loop_repeats": 4}, run=RunStats(repeats=4)).reason


def test_rate_limits_and_approval_wait_are_exposed_not_enforced() -> None:
    policies = [
        pol(settings={"requests_per_minute": 5, "tokens_per_minute": 100, "concurrent": 1, "approval_wait_s": 30})
    ]
    applied = compile_policies(policies).applicable(SUBJECT)
    s = applied.settings.settings
    assert (s.requests_per_minute, s.tokens_per_minute, s.concurrent, s.approval_wait_s) == (5, 100, 1, 30)
    verdict = applied.evaluate(ctx())
    assert verdict.decision is Decision.ALLOWED and verdict.approval_wait_s == 30


# -------------------------------------------------------------------------------------------------- the clamp


def test_clamp_lowers_max_tokens_and_records_it() -> None:
    verdict = setting_verdict({"max_tokens": 1000}, max_tokens=4000)
    assert verdict.decision is Decision.ALLOWED
    assert (verdict.clamp_max_tokens, verdict.clamped_from) == (1000, 4000)
    record = verdict.as_record()
    assert record["changes"] == {"max_tokens": {"from": 4000, "to": 1000}}
    assert record["changed_by"][0]["rule_id"] == "setting:max_tokens"


def test_clamp_gives_the_cap_to_a_call_without_max_tokens_and_leaves_smaller_ones() -> None:
    verdict = setting_verdict({"max_tokens": 1000}, max_tokens=None)
    assert (verdict.clamp_max_tokens, verdict.clamped_from) == (1000, None)
    assert setting_verdict({"max_tokens": 1000}, max_tokens=1000).clamp_max_tokens is None
    assert setting_verdict({"max_tokens": 1000}, kind="tool_call", max_tokens=None).clamp_max_tokens is None


def test_max_tokens_block_refuses_above_the_cap() -> None:
    settings = {"max_tokens": 1000, "max_tokens_action": "block"}
    verdict = setting_verdict(settings, max_tokens=1001)
    assert (verdict.decision, verdict.rule_id, verdict.clamp_max_tokens) == (
        Decision.BLOCKED,
        "setting:max_tokens",
        None,
    )
    assert setting_verdict(settings, max_tokens=1000).decision is Decision.ALLOWED
    # Asking for nothing is not asking for more: such a call gets the cap, as with clamp.
    assert setting_verdict(settings, max_tokens=None).clamp_max_tokens == 1000


def test_a_blocked_call_carries_no_changes() -> None:
    rules: list[dict[str, Any]] = [{"action": "block"}, {"action": "redact", "redact": ["email"]}]
    verdict = judge([pol(settings={"max_tokens": 10}, rules=rules)], max_tokens=50, pii=frozenset({"email"}))
    assert verdict.decision is Decision.BLOCKED
    assert (verdict.clamp_max_tokens, verdict.redact, verdict.changes) == (None, frozenset(), ())


# ------------------------------------------------------------------------------------------- scope precedence


def test_the_most_specific_scope_that_sets_a_setting_wins() -> None:
    ws = pol(settings={"models_allow": ["gpt-4o"], "max_tokens": 500})
    dept = pol("department", "research", settings={"models_allow": ["gpt-4o", "o1"]})  # loosens
    key = pol("virtual_key", "vk1", settings={"max_tokens": 100})  # tightens
    policies = [key, dept, ws]  # the order given does not rank scopes
    assert judge(policies, model="o1").decision is Decision.ALLOWED
    assert judge(policies, model="claude").rule_id == "setting:models_allow"
    assert judge(policies, max_tokens=200).clamp_max_tokens == 100
    assert judge(policies, Subject("ws", virtual_key_id="vk1"), model="o1").decision is Decision.BLOCKED
    assert judge(policies, Subject("ws"), max_tokens=200).clamp_max_tokens is None  # 200 < 500

    effective = compile_policies(policies).applicable(SUBJECT).settings
    assert effective.settings.models_allow == ("gpt-4o", "o1") and effective.settings.max_tokens == 100
    assert effective.sources["models_allow"] is dept and effective.sources["max_tokens"] is key


def test_an_empty_list_lifts_a_broader_restriction() -> None:
    ws = pol(settings={"models_allow": ["gpt-4o"], "required_headers": ["x-team"], "ip_allow": ["10.0.0.0/8"]})
    agent = pol("agent", "planner", settings={"models_allow": [], "required_headers": [], "ip_allow": []})
    assert judge([ws, agent], model="anything", client_ip=None).decision is Decision.ALLOWED
    assert judge([ws], model="gpt-4o", client_ip="10.0.0.1").rule_id == "setting:required_headers"


def test_max_tokens_and_its_action_are_one_setting() -> None:
    ws = pol(settings={"max_tokens": 1000, "max_tokens_action": "block"})
    dept = pol("department", "research", settings={"max_tokens": 500})  # clamp, its own default
    verdict = judge([ws, dept], max_tokens=800)
    assert (verdict.decision, verdict.clamp_max_tokens) == (Decision.ALLOWED, 500)


def test_at_one_scope_the_policy_listed_later_sets_the_value() -> None:
    first = pol(settings={"max_tokens": 100})
    second = pol(settings={"max_tokens": 300})
    assert judge([first, second], max_tokens=1000).clamp_max_tokens == 300
    assert judge([second, first], max_tokens=1000).clamp_max_tokens == 100


def test_rules_accumulate_and_a_narrower_scope_cannot_override_a_block() -> None:
    ws = pol(rules=[{"id": "no-o1", "when": {"models": ["o1*"]}, "action": "block"}], id="ws", name="company")
    agent = pol("agent", "planner", rules=[{"when": {"models": ["o1*"]}, "action": "allow"}])
    verdict = judge([agent, ws], model="o1-mini")
    assert (verdict.decision, verdict.policy_id, verdict.rule_id) == (Decision.BLOCKED, "ws", "no-o1")
    assert verdict.reason == "policy 'company' (ws v1) rule no-o1: blocks the call"


def test_block_beats_escalate_beats_throttle_beats_allow() -> None:
    def with_actions(*actions: str) -> Verdict:
        rules = [{"id": a, "action": a, **({"throttle_rpm": 5} if a == "throttle" else {})} for a in actions]
        return judge([pol(rules=rules)])

    assert with_actions("allow", "throttle", "escalate", "block").rule_id == "block"
    assert with_actions("allow", "throttle", "escalate").decision is Decision.ESCALATED
    assert with_actions("allow", "throttle").decision is Decision.THROTTLED
    assert with_actions("throttle", "allow").throttle_rpm == 5
    allowed = with_actions("allow")
    assert (allowed.decision, allowed.rule_id) == (Decision.ALLOWED, "allow")


def test_the_lowest_throttle_wins_and_redact_and_alert_apply_besides() -> None:
    rules: list[dict[str, Any]] = [
        {"id": "t20", "action": "throttle", "throttle_rpm": 20},
        {"id": "t5", "action": "throttle", "throttle_rpm": 5, "message": "slow down"},
        {"id": "mails", "action": "redact", "redact": ["email"], "when": {"pii": ["email"]}},
        {"id": "cards", "action": "redact", "redact": ["payment_card", "iban"]},
        {"id": "watch", "action": "alert"},
    ]
    verdict = judge([pol(rules=rules, id="p", version=2, name="n")], pii=frozenset({"email"}))
    assert (verdict.decision, verdict.rule_id, verdict.throttle_rpm) == (Decision.THROTTLED, "t5", 5)
    assert verdict.reason == "policy 'n' (p v2) rule t5: slow down"
    assert verdict.redact == {"email", "payment_card", "iban"}
    assert [h.rule_id for h in verdict.changes] == ["mails", "cards"]
    assert verdict.alerts == (Hit("p", 2, "watch", "policy 'n' (p v2) rule watch: raises an alert"),)


_ACTIONS = st.sampled_from(["allow", "block", "throttle", "escalate", "redact", "alert"])
_RANK = {Decision.BLOCKED: 4, Decision.ESCALATED: 3, Decision.THROTTLED: 2, Decision.ALLOWED: 1}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rules=st.lists(
        st.tuples(_ACTIONS, st.integers(1, 50), st.booleans(), st.sampled_from(["workspace", "department", "agent"])),
        min_size=1,
        max_size=12,
    ),
    data=st.data(),
)
def test_the_outcome_does_not_depend_on_rule_order(rules: list[tuple[str, int, bool, str]], data: Any) -> None:
    def body(i: int, action: str, rpm: int, matches: bool) -> dict[str, Any]:
        rule: dict[str, Any] = {"id": f"x{i}", "action": action, "when": {"models": ["gpt*" if matches else "o1"]}}
        if action == "throttle":
            rule["throttle_rpm"] = rpm
        if action == "redact":
            rule["redact"] = ["email"] if rpm % 2 else ["phone"]
        return rule

    def outcome(order: list[int]) -> tuple[object, ...]:
        policies = []
        for i in order:
            action, rpm, matches, scope = rules[i]
            value = {"workspace": None, "department": "research", "agent": "planner"}[scope]
            policies.append(pol(scope, value, rules=[body(i, action, rpm, matches)], id=f"p{i}"))
        v = judge(policies)
        return (v.decision, v.throttle_rpm, v.redact, frozenset(h.rule_id for h in v.alerts))

    order = data.draw(st.permutations(list(range(len(rules)))))
    assert outcome(list(range(len(rules)))) == outcome(order)
    # and the decision is the strongest of the matching actions
    decisive = [_RANK[Decision(d)] for a, _, m, _ in rules if m for d in [_DECIDES.get(a)] if d]
    decision = outcome(order)[0]
    assert isinstance(decision, Decision) and _RANK[decision] == max(decisive, default=1)


_DECIDES = {"allow": "allowed", "block": "blocked", "throttle": "throttled", "escalate": "escalated"}


# ---------------------------------------------------------------------------------------------------- monitor


def test_monitor_policies_change_nothing_and_say_what_they_would_have_done() -> None:
    ws = pol(rules=[{"id": "slow", "action": "throttle", "throttle_rpm": 10}], id="ws")
    trial = pol(
        "agent",
        "planner",
        mode="monitor",
        settings={"max_tokens": 50},
        rules=[{"id": "no-gpt", "when": {"models": ["gpt*"]}, "action": "block"}],
        id="trial",
    )
    verdict = judge([ws, trial])
    assert (verdict.decision, verdict.rule_id, verdict.mode, verdict.clamp_max_tokens) == (
        Decision.THROTTLED,
        "slow",
        Mode.ENFORCE,
        None,
    )
    assert verdict.would is not None
    would = verdict.would
    assert (would.decision, would.policy_id, would.rule_id, would.mode) == (
        Decision.BLOCKED,
        "trial",
        "no-gpt",
        Mode.MONITOR,
    )
    assert verdict.as_record()["would"]["decision"] == "blocked"


def test_monitor_without_difference_leaves_no_would() -> None:
    trial = pol(mode="monitor", rules=[{"when": {"models": ["o1"]}, "action": "block"}])
    verdict = judge([trial])
    assert verdict.decision is Decision.ALLOWED and verdict.would is None


def test_monitor_clamp_and_alerts_show_only_in_would() -> None:
    trial = pol(mode="monitor", settings={"max_tokens": 10}, rules=[{"id": "a", "action": "alert"}])
    verdict = judge([trial], max_tokens=100)
    assert (verdict.clamp_max_tokens, verdict.alerts) == (None, ())
    assert verdict.would is not None
    assert verdict.would.clamp_max_tokens == 10 and [h.rule_id for h in verdict.would.alerts] == ["a"]


def test_monitor_settings_do_not_reach_the_enforced_settings() -> None:
    ws = pol(settings={"requests_per_minute": 100})
    trial = pol("agent", "planner", mode="monitor", settings={"requests_per_minute": 5})
    applied = compile_policies([ws, trial]).applicable(SUBJECT)
    assert applied.settings.settings.requests_per_minute == 100
    assert applied.would_settings.settings.requests_per_minute == 5


# ----------------------------------------------------------------------------------------------- time windows


def in_window(w: dict[str, Any], when: datetime) -> bool:
    return judge([pol(settings={"time_windows": [w]})], now=when).decision is Decision.ALLOWED


def test_an_overnight_window_ends_on_the_next_day() -> None:
    friday_night = window(["fri"], "22:00", "06:00")
    fri = datetime(2026, 11, 27, tzinfo=UTC)  # a Friday
    assert not in_window(friday_night, fri.replace(hour=21, minute=59))
    assert in_window(friday_night, fri.replace(hour=22))
    assert in_window(friday_night, fri + timedelta(days=1, hours=5, minutes=59))  # Saturday 05:59
    assert not in_window(friday_night, fri + timedelta(days=1, hours=6))
    assert not in_window(friday_night, fri.replace(hour=5))  # Friday morning belongs to Thursday night


def test_sunday_night_runs_into_monday_and_24_00_ends_the_day() -> None:
    sunday_night = window(["sun"], "23:00", "02:00")
    monday = datetime(2026, 11, 30, tzinfo=UTC)
    assert in_window(sunday_night, monday + timedelta(hours=1, minutes=59))
    assert not in_window(sunday_night, monday + timedelta(hours=2))
    whole_day = window(["mon"], "00:00", "24:00")
    assert in_window(whole_day, monday + timedelta(hours=23, minutes=59, seconds=59))
    assert not in_window(whole_day, monday + timedelta(days=1))


def test_windows_follow_the_wall_clock_across_daylight_saving_changes() -> None:
    office = window(["sun", "sat"], "09:00", "18:00", "Europe/Paris")
    # 2026-03-29: Paris moves from UTC+1 to UTC+2 at 01:00 UTC. 07:30 UTC is 08:30 the day before, 09:30 that day.
    assert not in_window(office, datetime(2026, 3, 28, 7, 30, tzinfo=UTC))
    assert in_window(office, datetime(2026, 3, 29, 7, 30, tzinfo=UTC))
    assert not in_window(office, datetime(2026, 3, 29, 16, 0, tzinfo=UTC))  # 18:00 CEST
    # 2026-10-25: at 01:00 UTC, 03:00 CEST becomes 02:00 CET; 02:30 local happens twice, both inside 02:00-03:00.
    twice = window(["sun"], "02:00", "03:00", "Europe/Paris")
    assert not in_window(twice, datetime(2026, 10, 24, 23, 30, tzinfo=UTC))  # 01:30 CEST
    assert in_window(twice, datetime(2026, 10, 25, 0, 30, tzinfo=UTC))  # 02:30 CEST
    assert in_window(twice, datetime(2026, 10, 25, 1, 30, tzinfo=UTC))  # 02:30 CET
    assert not in_window(twice, datetime(2026, 10, 25, 2, 0, tzinfo=UTC))  # 03:00 CET


def test_windows_in_several_zones_and_a_naive_now_taken_as_utc() -> None:
    either = {
        "time_windows": [
            window(["thu"], "08:00", "09:00", "America/New_York"),
            window(["thu"], "20:00", "21:00", "Asia/Tokyo"),
        ]
    }
    assert setting_verdict(either, now=datetime(2026, 11, 26, 13, 30, tzinfo=UTC)).decision is Decision.ALLOWED
    assert setting_verdict(either, now=datetime(2026, 11, 26, 11, 30, tzinfo=UTC)).decision is Decision.ALLOWED
    assert setting_verdict(either, now=datetime(2026, 11, 26, 12, 30, tzinfo=UTC)).decision is Decision.BLOCKED
    assert setting_verdict(either, now=datetime(2026, 11, 26, 13, 30)).decision is Decision.ALLOWED


# --------------------------------------------------------------------------------------------------------- IPs


@pytest.mark.parametrize(
    ("ip", "inside"),
    [
        ("2001:db8::1", True),
        ("2001:db8:ffff::1", True),
        ("2001:db9::1", False),
        ("10.1.2.3", True),
        ("::ffff:10.1.2.3", True),  # an IPv4 client seen by a dual-stack socket
        ("::ffff:11.1.2.3", False),
        ("::1", False),
    ],
)
def test_ipv6_and_ipv4_ranges(ip: str, inside: bool) -> None:
    assert blocked_when({"ip_in": ["2001:db8::/32", "10.0.0.0/8"]}, client_ip=ip) is inside


# -------------------------------------------------------------------------------------- cache and what to fetch


def test_applicable_is_cached_per_department_agent_and_key(monkeypatch: pytest.MonkeyPatch) -> None:
    policy_set = compile_policies([pol(rules=[{"action": "alert"}])])
    first = policy_set.applicable(SUBJECT)
    assert policy_set.applicable(Subject("ws", "research", "planner", "vk1", run_id="r9")) is first
    assert policy_set.applicable(Subject("ws", "research", "planner", "vk2")) is not first
    monkeypatch.setattr(policy_module, "MAX_CACHED_SUBJECTS", 3)
    for i in range(10):
        policy_set.applicable(Subject("ws", agent_id=f"a{i}"))
    assert len(policy_set._cache) <= 3


def test_needs_flags_say_what_the_gateway_must_fetch() -> None:
    def flags(*policies: Policy) -> tuple[bool, bool, bool]:
        s = compile_policies(policies)
        return s.needs_pii, s.needs_run, s.needs_repeats

    assert flags(pol(settings={"models_allow": ["x"]}, rules=[{"action": "block"}])) == (False, False, False)
    assert flags(pol(rules=[{"when": {"pii": ["email"]}, "action": "alert"}])) == (True, False, False)
    assert flags(pol(rules=[{"action": "redact", "redact": ["secret"]}])) == (True, False, False)
    assert flags(pol(settings={"max_run_steps": 5})) == (False, True, False)
    assert flags(pol(rules=[{"when": {"run_cost_over_usd": 1}, "action": "block"}])) == (False, True, False)
    assert flags(pol(settings={"loop_repeats": 3})) == (False, True, True)
    assert flags(pol(mode="monitor", rules=[{"when": {"repeated_over": 2}, "action": "block"}])) == (False, True, True)
    applied = compile_policies([pol("agent", "other", settings={"loop_repeats": 3}), pol()]).applicable(SUBJECT)
    assert (applied.needs_pii, applied.needs_run, applied.needs_repeats) == (False, False, False)


def test_as_record_has_one_shape() -> None:
    verdict = judge([pol(rules=[{"id": "b", "action": "block"}], id="p", version=4)])
    assert verdict.as_record() == {
        "decision": "blocked",
        "policy_id": "p",
        "policy_version": 4,
        "rule_id": "b",
        "reason": "policy 'guard' (p v4) rule b: blocks the call",
        "mode": "enforce",
        "changes": {},
        "changed_by": [],
        "throttle_rpm": None,
        "alerts": [],
        "would": None,
    }


def test_policy_scope_order_is_specificity() -> None:
    assert policy_module.POLICY_SCOPES == (Scope.WORKSPACE, Scope.DEPARTMENT, Scope.AGENT, Scope.VIRTUAL_KEY)

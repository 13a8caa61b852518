"""core/policy_hits.py, pure: the hits read off real verdicts (core/policy.py evaluated, as the gateway records them):
who decided, changed or alerted in enforce mode, what a monitor-mode policy would have decided when that differs,
a policy's rate setting that throttled, one hit per policy, and anything malformed read as no hit."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from agentledger.core.budgets import Subject
from agentledger.core.policy import CallContext, Policy, compile_policies
from agentledger.core.policy_config import parse_policy
from agentledger.core.policy_hits import PolicyHit, hit_id, policy_hits

SUBJECT = Subject("ws", department_id="research", agent_id="planner", virtual_key_id="vk1")
NOON = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def pol(pid: str, *, mode: str = "enforce", version: int = 1, **body: Any) -> Policy:
    return parse_policy({"name": pid, "scope": "workspace", "mode": mode, **body}, id=pid, version=version)


def report(policies: list[Policy], **call: Any) -> dict[str, Any]:
    """The policy check's report as the gateway keeps it: the verdict under `policy`."""
    ctx = CallContext(**{"kind": "model_call", "now": NOON, "model": "gpt-4o", "max_tokens": 100, **call})
    verdict = compile_policies(policies).evaluate(SUBJECT, ctx)
    return {"decision": verdict.decision.value, "decided_by": None, "policy": verdict.as_record()}


def brief(hits: list[PolicyHit]) -> list[tuple[Any, ...]]:
    return [(h.policy_id, h.policy_version, h.rule_id, h.mode, h.decision) for h in hits]


def test_an_enforced_block_is_one_enforce_hit_naming_the_setting_and_version() -> None:
    hits = policy_hits(report([pol("deny", version=3, settings={"models_deny": ["gpt-4o"]})]))
    assert brief(hits) == [("deny", 3, "setting:models_deny", "enforce", "blocked")]
    assert hits[0].reason.startswith("policy 'deny' (deny v3) setting models_deny:")


def test_a_monitor_policy_that_would_block_is_a_monitor_hit_with_the_decision_it_would_have_made() -> None:
    trial = pol("trial", mode="monitor", rules=[{"id": "no-4o", "action": "block", "when": {"models": ["gpt-4o"]}}])
    hits = policy_hits(report([trial]))
    assert brief(hits) == [("trial", 1, "no-4o", "monitor", "blocked")]
    assert hits[0].reason == "policy 'trial' (trial v1) rule no-4o: blocks the call"
    assert policy_hits(report([trial], model="gpt-4o-mini")) == []  # it would not have blocked this one


def test_a_monitor_policy_that_would_decide_as_the_enforced_ones_do_has_no_hit() -> None:
    block = {"rules": [{"id": "b", "action": "block", "when": {"models": ["gpt-4o"]}}]}
    hits = policy_hits(report([pol("on", **block), pol("trial", mode="monitor", **block)]))
    assert brief(hits) == [("on", 1, "b", "enforce", "blocked")]


def test_an_allow_rule_a_clamp_a_redaction_and_an_alert_each_hit_their_policy_once() -> None:
    allow = pol("allow", rules=[{"id": "ok", "action": "allow", "when": {}}])
    cap = pol("cap", settings={"max_tokens": 50})
    cards = pol(
        "cards",
        rules=[
            {"id": "red", "action": "redact", "redact": ["payment_card"], "when": {}},
            {"id": "loud", "action": "alert", "when": {}},
        ],
    )
    watch = pol("watch", mode="monitor", rules=[{"id": "w", "action": "alert", "when": {}}])
    hits = policy_hits(report([allow, cap, cards, watch]))
    assert brief(hits) == [
        ("allow", 1, "ok", "enforce", "allowed"),
        ("cap", 1, "setting:max_tokens", "enforce", "allowed"),
        ("cards", 1, "red", "enforce", "allowed"),
        ("watch", 1, "w", "monitor", "allowed"),  # an alert it would have raised: the call as it went
    ]


def test_a_monitor_rule_that_would_escalate_beside_an_enforced_throttle() -> None:
    slow = pol("slow", rules=[{"id": "t", "action": "throttle", "throttle_rpm": 5, "when": {}}])
    ask = pol("ask", mode="monitor", rules=[{"id": "e", "action": "escalate", "when": {}}])
    assert brief(policy_hits(report([slow, ask]))) == [
        ("slow", 1, "t", "enforce", "throttled"),
        ("ask", 1, "e", "monitor", "escalated"),
    ]


def test_a_policys_rate_setting_that_throttled_is_its_hit_with_its_version() -> None:
    got = {
        "decision": "throttled",
        "decided_by": {"kind": "rate_limit", "id": "policy:pol:a:requests_per_minute", "scope": "department:d"},
        "rate_limits": [
            {
                "rate_limit_id": "policy:pol:a:requests_per_minute",
                "scope": "department:d",
                "requests_per_minute": 2,
                "tokens_per_minute": None,
                "concurrent": None,
                "policy_version": 4,
            },
            {"rate_limit_id": "rl_other", "scope": "workspace", "requests_per_minute": 9},
        ],
        "policy": {"decision": "allowed", "policy_id": None, "changed_by": [], "alerts": [], "would": None},
    }
    hits = policy_hits(got)
    assert brief(hits) == [("pol:a", 4, "setting:requests_per_minute", "enforce", "throttled")]
    assert hits[0].reason == "policy pol:a v4 setting requests_per_minute: more than 2 requests a minute (department:d)"
    # Several limits refused in one round trip are all named; only the policies' are its hits.
    got["decided_by"] = {"kind": "rate_limit", "ids": ["rl_other", "policy:pol:a:requests_per_minute"]}
    assert brief(policy_hits(got)) == brief(hits)
    # A budget's or a plain rate limit's throttle is no policy's.
    got["decided_by"] = {"kind": "rate_limit", "id": "rl_other"}
    assert policy_hits(got) == []


def test_no_policy_and_malformed_reports_have_no_hits() -> None:
    assert policy_hits(report([])) == []
    assert policy_hits({"decision": "blocked", "decided_by": {"kind": "budget", "id": "b"}}) == []
    for bad in (None, [], "x", {"policy": "x"}, {"policy": {"policy_id": 7}}, {"decided_by": {"kind": "rate_limit"}}):
        assert policy_hits(bad) == []
    odd = {"policy": {"decision": "weird", "policy_id": "p", "policy_version": True, "rule_id": 3, "reason": None}}
    assert policy_hits(odd) == [PolicyHit("p", None, None, "enforce", "allowed", "")]


def test_a_hit_is_named_by_its_workspace_call_and_policy() -> None:
    assert hit_id("ws", "req-1", "p") == hit_id("ws", "req-1", "p")
    named = {
        hit_id("ws", "req-1", "p"),
        hit_id("ws", "req-2", "p"),
        hit_id("ws", "req-1", "q"),
        hit_id("w2", "req-1", "p"),
    }
    assert len(named) == 4 and all(h.startswith("ph_") and len(h) == 27 for h in named)

"""CPU per policy evaluation on the hot path (issue 9: 50 rules across scopes add at most 0.1 ms p50 per call).

    python benchmarks/policy_eval.py [--iterations 20000] [--repeats 5]

Scenarios, each timed call by call with time.perf_counter_ns (p50, p99) and as a tight loop (mean):
  * no policies: `PolicySet.empty`, what every workspace without policies pays;
  * 50 rules over 4 scopes (workspace 20, department 15, agent 10, virtual key 5) with settings at each scope
    (model allow/deny lists, a max_tokens cap, time windows in two zones, an IP allow-list, required headers,
    run guards), and rules mixing kinds, model globs, max_tokens, cost, hours, IP ranges, headers,
    properties, PII and run conditions, with every action; the call matches a few of them (one throttle, one
    alert, one redact, the clamp), as a real call would;
  * the same with the agent's policy in monitor mode (two verdicts per call: enforced and `would`).
`applicable()` is looked up per call as the gateway would (a cache hit); compiling is reported once.
Pure CPU, no I/O. A busy machine inflates the figures: compare runs made back to back.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from agentledger.core.budgets import Subject
from agentledger.core.policy import CallContext, Policy, PolicySet, RunStats, compile_policies
from agentledger.core.policy_config import parse_policy

SCOPES = (("workspace", None, 20), ("department", "research", 15), ("agent", "planner", 10), ("virtual_key", "vk1", 5))
WINDOW = {"days": ["mon", "tue", "wed", "thu", "fri"], "start": "07:00", "end": "22:00", "tz": "Europe/Paris"}
NIGHT = {"days": ["fri", "sat"], "start": "23:00", "end": "05:00", "tz": "America/New_York"}


def _rule(i: int) -> dict[str, Any]:
    """Rule i of a plausible set: mostly about models, kinds and spend; one in ten matches the benchmark call."""
    shapes: list[dict[str, Any]] = [
        {"when": {"models": [f"claude-{i}-*", "o1*"], "max_tokens_over": 16000}, "action": "block"},
        {"when": {"kinds": ["tool_call"], "names": [f"shell_{i}*", "rm*"]}, "action": "escalate"},
        {"when": {"cost_over_usd": "5.00"}, "action": "escalate", "message": "big spend needs a human"},
        {"when": {"models": ["gpt-4o-mini"], "outside_hours": [WINDOW]}, "action": "block"},
        {"when": {"ip_not_in": ["10.0.0.0/8", "2001:db8::/32"], "kinds": ["payment"]}, "action": "block"},
        {"when": {"properties": {"customer": f"acme-{i}*"}}, "action": "throttle", "throttle_rpm": 10 + i},
        {"when": {"missing_headers": ["alephant-run-id"], "kinds": ["model_call"]}, "action": "alert"},
        {"when": {"run_steps_over": 500}, "action": "block"},
        {"when": {"pii": ["payment_card", "us_ssn"]}, "action": "block"},
        {"when": {"prompt_ids_not": ["summarize", "plan"], "models_not": ["gpt-4o*"]}, "action": "alert"},
    ]
    rule = shapes[i % len(shapes)]
    if i == 13:  # the few the call matches
        rule = {"when": {"models": ["gpt-4o*"]}, "action": "throttle", "throttle_rpm": 600}
    elif i == 27:
        rule = {"when": {"kinds": ["model_call"], "hours": [WINDOW, NIGHT]}, "action": "alert"}
    elif i == 41:
        rule = {"when": {"pii": ["email"]}, "action": "redact", "redact": ["email"]}
    return {"id": f"rule-{i}", **rule}


def policies(monitor_agent: bool = False) -> list[Policy]:
    out: list[Policy] = []
    n = 0
    for scope, value, count in SCOPES:
        settings: dict[str, Any] = {
            "workspace": {
                "models_allow": ["gpt-4o*", "claude-*", "o1*", "gpt-5*"],
                "models_deny": ["*-preview"],
                "max_tokens": 8000,
                "ip_allow": ["10.0.0.0/8", "192.168.0.0/16", "2001:db8::/32"],
                "max_run_steps": 1000,
                "requests_per_minute": 600,
            },
            "department": {"time_windows": [WINDOW, NIGHT], "providers_deny": ["legacy-*"], "max_tokens": 4000},
            "agent": {"required_headers": ["alephant-run-id"], "loop_repeats": 5, "approval_wait_s": 60},
            "virtual_key": {"max_run_cost_usd": "20.00"},
        }[scope]
        body: dict[str, Any] = {
            "name": f"{scope} policy",
            "scope": scope,
            "mode": "monitor" if monitor_agent and scope == "agent" else "enforce",
            "settings": settings,
            "rules": [_rule(n + i) for i in range(count)],
        }
        if value is not None:
            body["scope_value"] = value
        out.append(parse_policy(body, id=f"pol-{scope}", version=1))
        n += count
    return out


SUBJECT = Subject("ws", department_id="research", agent_id="planner", virtual_key_id="vk1")
CALL = CallContext(
    kind="model_call",
    now=datetime(2026, 11, 26, 14, 30, tzinfo=UTC),  # a Thursday, inside the working-hours window
    model="gpt-4o-mini",
    provider="openai",
    max_tokens=6000,
    cost_nanos=1_500_000,
    client_ip="10.1.2.3",
    headers=frozenset({"alephant-run-id", "content-type", "authorization"}),
    prompt_id="summarize",
    properties={"customer": "globex", "env": "prod"},
    run=RunStats(steps=12, model_calls=5, started_at=datetime(2026, 11, 26, 14, 0, tzinfo=UTC), cost_nanos=10**8),
    pii=frozenset({"email"}),
)


def measure(call: Callable[[], object], iterations: int, repeats: int) -> tuple[float, float, float]:
    """(p50 µs, p99 µs, loop mean µs): the best of `repeats` rounds each, to keep other load out."""
    p50s, p99s, means = [], [], []
    clock = time.perf_counter_ns
    for _ in range(repeats):
        samples = []
        for _ in range(iterations):
            t0 = clock()
            call()
            samples.append(clock() - t0)
        samples.sort()
        p50s.append(samples[len(samples) // 2] / 1000)
        p99s.append(samples[len(samples) * 99 // 100] / 1000)
        t0 = time.perf_counter()
        for _ in range(iterations):
            call()
        means.append((time.perf_counter() - t0) / iterations * 1e6)
    return min(p50s), min(p99s), min(means)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    scenarios: list[tuple[str, PolicySet]] = [("no policies", PolicySet.empty)]
    for label, monitor in (("50 rules, 4 scopes", False), ("50 rules, agent's in monitor", True)):
        listed = policies(monitor)
        t0 = time.perf_counter()
        compiled = compile_policies(listed)
        compiled.applicable(SUBJECT)
        took = (time.perf_counter() - t0) * 1000
        print(f"compile + first applicable ({label}): {took:.2f} ms")
        scenarios.append((label, compiled))
    verdict = scenarios[1][1].evaluate(SUBJECT, CALL)
    print(
        f"the call's verdict: {verdict.decision.value}, clamp {verdict.clamp_max_tokens}, redact "
        f"{sorted(verdict.redact)}, {len(verdict.alerts)} alert(s)"
    )
    print(f"{'scenario':<32} {'p50 µs':>8} {'p99 µs':>8} {'mean µs':>8}")
    for label, policy_set in scenarios:
        p50, p99, mean = measure(lambda ps=policy_set: ps.evaluate(SUBJECT, CALL), args.iterations, args.repeats)
        print(f"{label:<32} {p50:>8.2f} {p99:>8.2f} {mean:>8.2f}")


if __name__ == "__main__":
    main()

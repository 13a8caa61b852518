"""Policy hits: the calls a policy decided, changed or alerted on, and those a monitor-mode policy would have
decided otherwise, read off a call's policy check as the trace keeps it (gateway/budgets.py `report`, with the
verdict of core/policy.py `Verdict.as_record` under `policy`; docs/policies.md, "Hits").

A call has at most one hit per policy, the first of, in this order:

* `enforce`: a policy's rate setting that throttled the call (`requests_per_minute`, `tokens_per_minute`,
  `concurrent`, counted as the rate limit `policy:<id>:<setting>`), the policy that decided it (blocked, throttled,
  escalated, or allowed by an `allow` rule), the policies behind its clamp and redaction, and its `alert` rules;
* `monitor`: a policy the `would` verdict names and the verdict does not (only monitor-mode policies can be
  those): the one that would have decided, or whose clamp, redaction or alert it would have added. `would` is only
  recorded when it differs from what was decided, so a monitor policy that would have done the same has no hit.
  Its `decision` is the one the call would have got.

A monitor policy whose setting only lifts a broader one (`models_allow: []` over the workspace's list) is named by
no verdict, and has no hit. Pure: the store hands in the reports of the rows a batch inserted.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

ENFORCE = "enforce"
MONITOR = "monitor"
MODES = (ENFORCE, MONITOR)
DECISIONS = ("allowed", "blocked", "throttled", "escalated")
RATE_LIMIT_PREFIX = "policy:"  # gateway/policies.py names a policy's rate setting policy:<id>:<setting>
_RATES = {
    "requests_per_minute": "requests a minute",
    "tokens_per_minute": "tokens a minute",
    "concurrent": "concurrent calls",
}


@dataclass(frozen=True, slots=True)
class PolicyHit:
    policy_id: str
    policy_version: int | None
    rule_id: str | None  # a rule's id, or `setting:<name>`
    mode: str
    decision: str  # what the policy decided; for `monitor`, what the call would have got
    reason: str


def policy_hits(report: Any) -> list[PolicyHit]:
    """The hits of one policy check's report (a policy_check step's attributes, a request row's `governance`)."""
    if not isinstance(report, Mapping):
        return []
    found: dict[str, PolicyHit] = {}
    _rate_settings(found, report)
    verdict = report.get("policy")
    if isinstance(verdict, Mapping):
        decision = _decision(verdict)
        _take(found, verdict, ENFORCE, decision)
        for named in _named(verdict):
            _take(found, named, ENFORCE, decision)
        would = verdict.get("would")
        if isinstance(would, Mapping):
            decision = _decision(would)
            if would.get("mode") == MONITOR:
                _take(found, would, MONITOR, decision)
            for named in _named(would):
                _take(found, named, MONITOR, decision)
    return list(found.values())


def hit_id(workspace_id: str, call: str, policy_id: str) -> str:
    """One hit per call and policy: a replayed batch, or the client's retry of an x-request-id, names the same."""
    digest = hashlib.blake2b(f"{workspace_id}\x1f{call}\x1f{policy_id}".encode(), digest_size=12).hexdigest()
    return f"ph_{digest}"


def _decision(verdict: Mapping[str, Any]) -> str:
    word = verdict.get("decision")
    return word if word in DECISIONS else "allowed"


def _named(verdict: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The settings and rules behind a verdict's clamp and redaction, then its alerts (core/policy.py `Hit`)."""
    out: list[Mapping[str, Any]] = []
    for key in ("changed_by", "alerts"):
        listed = verdict.get(key)
        if isinstance(listed, list):
            out += [h for h in listed if isinstance(h, Mapping)]
    return out


def _take(found: dict[str, PolicyHit], named: Mapping[str, Any], mode: str, decision: str) -> None:
    policy_id = named.get("policy_id")
    if not isinstance(policy_id, str) or not policy_id or policy_id in found:
        return
    version = named.get("policy_version")
    rule = named.get("rule_id")
    reason = named.get("reason")
    found[policy_id] = PolicyHit(
        policy_id,
        version if isinstance(version, int) and not isinstance(version, bool) else None,
        rule if isinstance(rule, str) else None,
        mode,
        decision,
        reason if isinstance(reason, str) else "",
    )


def _rate_settings(found: dict[str, PolicyHit], report: Mapping[str, Any]) -> None:
    """A throttle by rate limits: the policies' rate settings among those it names (gateway/budgets.py names every
    limit of the refusing round trip; it cannot tell which one was past its rate)."""
    by = report.get("decided_by")
    if not isinstance(by, Mapping) or by.get("kind") != "rate_limit":
        return
    named = [by["id"]] if "id" in by else by.get("ids")
    if not isinstance(named, list):
        return
    limits = report.get("rate_limits")
    views = {r.get("rate_limit_id"): r for r in limits if isinstance(r, Mapping)} if isinstance(limits, list) else {}
    for limit_id in named:
        if not isinstance(limit_id, str) or not limit_id.startswith(RATE_LIMIT_PREFIX):
            continue
        policy_id, _, setting = limit_id.removeprefix(RATE_LIMIT_PREFIX).rpartition(":")
        view = views.get(limit_id, {})
        version = view.get("policy_version")
        what = f"{view.get(setting)} {_RATES.get(setting, setting)}"
        label = f"policy {policy_id}" + (f" v{version}" if isinstance(version, int) else "")
        reason = f"{label} setting {setting}: more than {what} ({view.get('scope')})"
        hit = {"policy_id": policy_id, "policy_version": version, "rule_id": f"setting:{setting}", "reason": reason}
        _take(found, hit, ENFORCE, "throttled")

"""Which data-plane decisions are audit events: a policy check that was not `allowed` (blocked, throttled,
escalated), or one that redacted the call. The trace keeps each as a policy_check step or on the request row
(`governance`); the store's batch writer turns them into events of the chain (store/audit.py)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

# What of the policy check's report an event keeps: who decided, why, and how the call was changed or held.
_KEPT = ("decision", "decided_by", "policy", "note", "authorization", "action", "throttle")


def decision_change(report: Mapping[str, Any] | None) -> tuple[str, dict[str, Any]] | None:
    """(action, after) for a policy check's report (gateway/budgets.py `report`), or None when it is not audited."""
    if not isinstance(report, Mapping):
        return None
    decision = report.get("decision")
    policy = report.get("policy")
    changes = policy.get("changes") if isinstance(policy, Mapping) else None
    redacted = changes.get("redacted") if isinstance(changes, Mapping) else None
    if decision in (None, "allowed") and not redacted:
        return None
    action = f"decision.{decision}" if decision not in (None, "allowed") else "decision.redacted"
    after: dict[str, Any] = {k: report[k] for k in _KEPT if k in report}
    budgets = report.get("budgets")
    if isinstance(budgets, list):
        after["budgets"] = [
            {"budget_id": b.get("budget_id"), "scope": b.get("scope_label")} for b in budgets if isinstance(b, Mapping)
        ]
    limits = report.get("rate_limits")
    if isinstance(limits, list):
        after["rate_limits"] = [
            {"rate_limit_id": r.get("rate_limit_id"), "scope": r.get("scope")} for r in limits if isinstance(r, Mapping)
        ]
    return action, after


def decision_event_id(workspace_id: str, source: str) -> str:
    """The event id of a decision, from the step (or request attempt) it was read from: a batch written twice
    (a replay) names the same event, which the store then appends once."""
    return "dec_" + hashlib.sha256(f"{workspace_id}\0{source}".encode()).hexdigest()[:24]

"""Alerts: their kinds and severities, one constructor per kind, the windows that make each recorded once, and
the detectors' maths (spend anomaly, error spike). Pure: the clock is passed in (docs/alerts.md).

Each constructor returns a `core.model.Alert` whose `dedupe_key` names its subject and window; the store keeps one
alert per (workspace, kind, dedupe_key), so raising the same alert twice in a window records it once.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from agentledger.core.model import Alert, BudgetAlert

NANOS_PER_USD = 1_000_000_000


class AlertKind(enum.StrEnum):
    BUDGET_THRESHOLD = "budget_threshold"
    BUDGET_EXHAUSTED = "budget_exhausted"
    RUN_STOPPED = "run_stopped"
    APPROVAL_PENDING = "approval_pending"
    SPEND_ANOMALY = "spend_anomaly"
    ERROR_SPIKE = "error_spike"
    POLICY_ALERT = "policy_alert"  # a policy rule with action `alert` matched
    MARGIN_LOSS = "margin_loss"  # a paid endpoint's or a selling agent's margin over an hour below the floor


KINDS = tuple(k.value for k in AlertKind)
TEST_EVENT = "test"  # what POST /api/webhooks/{id}/test delivers: not an alert, never recorded as one


class Severity(enum.StrEnum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


SEVERITIES = tuple(s.value for s in Severity)


def alert_id(workspace_id: str, kind: str, dedupe_key: str) -> str:
    """The alert's id, derived from its key: a replayed event names the same alert (and the same deliveries)."""
    digest = hashlib.blake2b(f"{workspace_id}\x1f{kind}\x1f{dedupe_key}".encode(), digest_size=12).hexdigest()
    return f"alt_{digest}"


def delivery_id(alert: str, webhook_id: str) -> str:
    """One delivery per (alert, webhook), derived likewise: an alert enqueued twice would collide, not repeat."""
    text = f"{alert}\x1f{webhook_id}"
    return f"dlv_{hashlib.blake2b(text.encode(), digest_size=12).hexdigest()}"


# -- windows ------------------------------------------------------------------------------------------------------


def window_start(at: datetime, minutes: int) -> datetime:
    """The start of the UTC window of `minutes` (dividing a day) holding `at`: 12:14 → 12:00 for 15."""
    at = at.astimezone(UTC)
    midnight = at.replace(hour=0, minute=0, second=0, microsecond=0)
    elapsed = int((at - midnight).total_seconds()) // (minutes * 60)
    return midnight + timedelta(minutes=elapsed * minutes)


def window_key(start: datetime) -> str:
    return str(int(start.timestamp()))


def last_full_hour(now: datetime) -> datetime:
    """The start of the last hour that has ended: at 12:05 that is 11:00."""
    return window_start(now, 60) - timedelta(hours=1)


def _usd(nanos: int) -> str:
    return f"${nanos / NANOS_PER_USD:,.2f}"


# -- constructors, one per kind -------------------------------------------------------------------------------------


def from_budget_alert(a: BudgetAlert) -> Alert:
    """A budget's threshold crossed: `budget_threshold` below 100 %, `budget_exhausted` at 100 % or more. The key
    is the budget alert's own primary key (budget, window, threshold), so both are recorded, or neither, together."""
    exhausted = a.threshold >= 100
    kind = AlertKind.BUDGET_EXHAUSTED if exhausted else AlertKind.BUDGET_THRESHOLD
    verb = "is exhausted" if exhausted else f"passed {a.threshold}%"
    return Alert(
        workspace_id=a.workspace_id,
        kind=kind.value,
        severity=(Severity.CRITICAL if exhausted else Severity.WARNING).value,
        dedupe_key=f"budget:{a.budget_id}:{a.window_key}:{a.threshold}",
        message=f"Budget {a.budget_id} {verb}: {_usd(a.spent_nanos)} spent of {_usd(a.limit_nanos)}.",
        at=a.at,
        data={
            "window_key": a.window_key,
            "threshold": a.threshold,
            "spent_nanos": a.spent_nanos,
            "limit_nanos": a.limit_nanos,
        },
        budget_id=a.budget_id,
        run_id=a.run_id,
        request_id=a.request_id,
    )


def run_stopped(
    workspace_id: str,
    run_id: str,
    reason: str,
    *,
    at: datetime,
    policy_id: str | None = None,
    agent_id: str | None = None,
    department_id: str | None = None,
    request_id: str | None = None,
) -> Alert:
    """A run stopped by a policy or a run control; once per run (a run stops once)."""
    by = f"policy {policy_id}" if policy_id else "a run control"
    return Alert(
        workspace_id=workspace_id,
        kind=AlertKind.RUN_STOPPED.value,
        severity=Severity.WARNING.value,
        dedupe_key=f"run:{run_id}",
        message=f"Run {run_id} was stopped by {by}: {reason}",
        at=at,
        data={"reason": reason},
        run_id=run_id,
        policy_id=policy_id,
        agent_id=agent_id,
        department_id=department_id,
        request_id=request_id,
    )


def policy_alert_key(policy_id: str, rule_id: str, at: datetime) -> str:
    """A `policy_alert`'s dedupe key: the rule and its UTC hour (known before the alert is built, so a caller
    can skip building one it already raised)."""
    return f"policy:{policy_id}:{rule_id}:{window_key(window_start(at, 60))}"


def policy_alert(
    workspace_id: str,
    policy_id: str,
    policy_version: int,
    rule_id: str,
    reason: str,
    *,
    at: datetime,
    run_id: str | None = None,
    request_id: str | None = None,
    agent_id: str | None = None,
    department_id: str | None = None,
) -> Alert:
    """A policy's `alert` rule matched a call; once per rule and hour (a rule matching every call of a busy agent
    pages people once an hour, not a thousand times)."""
    return Alert(
        workspace_id=workspace_id,
        kind=AlertKind.POLICY_ALERT.value,
        severity=Severity.INFO.value,
        dedupe_key=policy_alert_key(policy_id, rule_id, at),
        message=f"Policy {policy_id} v{policy_version} rule {rule_id} matched: {reason}",
        at=at,
        data={"reason": reason, "rule_id": rule_id, "policy_version": policy_version},
        policy_id=policy_id,
        run_id=run_id,
        request_id=request_id,
        agent_id=agent_id,
        department_id=department_id,
    )


def approval_pending(
    workspace_id: str,
    approval_id: str,
    reason: str,
    *,
    at: datetime,
    policy_id: str | None = None,
    run_id: str | None = None,
    request_id: str | None = None,
    agent_id: str | None = None,
    department_id: str | None = None,
) -> Alert:
    """An escalated call waits for a human; once per approval."""
    return Alert(
        workspace_id=workspace_id,
        kind=AlertKind.APPROVAL_PENDING.value,
        severity=Severity.WARNING.value,
        dedupe_key=f"approval:{approval_id}",
        message=f"Approval {approval_id} is waiting for a human: {reason}",
        at=at,
        data={"reason": reason},
        approval_id=approval_id,
        policy_id=policy_id,
        run_id=run_id,
        request_id=request_id,
        agent_id=agent_id,
        department_id=department_id,
    )


def spend_anomaly(
    workspace_id: str,
    agent_id: str,
    hour: datetime,
    spent_nanos: int,
    baseline_nanos: int,
    rule: AnomalyRule,
    *,
    at: datetime,
    department_id: str | None = None,
) -> Alert:
    """An agent's spend in `hour` over `rule.factor` × its trailing hourly average; once per agent and hour."""
    return Alert(
        workspace_id=workspace_id,
        kind=AlertKind.SPEND_ANOMALY.value,
        severity=Severity.WARNING.value,
        dedupe_key=f"agent:{agent_id}:{window_key(hour)}",
        message=(
            f"Agent {agent_id} spent {_usd(spent_nanos)} in the hour from {hour.isoformat()}, over "
            f"{rule.factor:g}x its {rule.days}-day hourly average of {_usd(baseline_nanos)}."
        ),
        at=at,
        data={
            "hour": hour.isoformat(),
            "spent_nanos": spent_nanos,
            "baseline_nanos": baseline_nanos,
            "factor": rule.factor,
            "floor_nanos": rule.floor_nanos,
        },
        agent_id=agent_id,
        department_id=department_id,
    )


def error_spike(workspace_id: str, calls: int, errors: int, rule: SpikeRule, *, now: datetime) -> Alert:
    """A workspace's error rate over the last `rule.minutes` above `rule.rate`; once per aligned window of that
    length (the one holding `now`)."""
    start = window_start(now, rule.minutes)
    rate = errors / calls
    return Alert(
        workspace_id=workspace_id,
        kind=AlertKind.ERROR_SPIKE.value,
        severity=(Severity.CRITICAL if rate >= 2 * rule.rate else Severity.WARNING).value,
        dedupe_key=f"errors:{window_key(start)}",
        message=(
            f"{errors} of {calls} calls ({rate:.0%}) failed in the last {rule.minutes} minutes "
            f"(threshold {rule.rate:.0%})."
        ),
        at=now,
        data={"calls": calls, "errors": errors, "rate": rate, "threshold": rule.rate, "minutes": rule.minutes},
    )


def margin_loss(
    workspace_id: str,
    subject: str,
    subject_id: str,
    hour: datetime,
    revenue_nanos: int,
    margin_nanos: int,
    rule: MarginRule,
    *,
    at: datetime,
    agent_id: str | None = None,
    department_id: str | None = None,
) -> Alert:
    """A paid endpoint (`subject` "endpoint") or an agent that sells ("agent") whose known margin in `hour` is
    below `rule.floor_nanos`; once per subject and hour. Critical when the margin is negative: every sale then
    costs more than it brings in."""
    return Alert(
        workspace_id=workspace_id,
        kind=AlertKind.MARGIN_LOSS.value,
        severity=(Severity.CRITICAL if margin_nanos < 0 else Severity.WARNING).value,
        dedupe_key=f"margin:{subject}:{subject_id}:{window_key(hour)}",
        message=(
            f"{subject.capitalize()} {subject_id} made a known margin of {_signed_usd(margin_nanos)} on "
            f"{_usd(revenue_nanos)} of revenue in the hour from {hour.isoformat()} (floor "
            f"{_signed_usd(rule.floor_nanos)})."
        ),
        at=at,
        data={
            "subject": subject,
            f"{subject}_id": subject_id,
            "hour": hour.isoformat(),
            "revenue_nanos": revenue_nanos,
            "margin_nanos": margin_nanos,
            "floor_nanos": rule.floor_nanos,
        },
        agent_id=agent_id,
        department_id=department_id,
    )


def _signed_usd(nanos: int) -> str:
    return ("-" if nanos < 0 else "") + _usd(abs(nanos))


# -- detectors --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AnomalyRule:
    factor: float = 3.0
    floor_nanos: int = NANOS_PER_USD
    days: int = 7


@dataclass(frozen=True, slots=True)
class SpikeRule:
    rate: float = 0.2
    min_calls: int = 20
    minutes: int = 15


@dataclass(frozen=True, slots=True)
class MarginRule:
    """Margin below `floor_nanos` in an hour with revenue: an alert. Subjects without revenue in the hour are
    not judged (an agent that only spends has a negative margin by definition; its spend is the budgets' and the
    spend anomaly's business)."""

    floor_nanos: int = 0


def is_margin_loss(revenue_nanos: int, margin_nanos: int, rule: MarginRule) -> bool:
    """revenue > 0 and margin < floor (docs/alerts.md, "margin_loss")."""
    return revenue_nanos > 0 and margin_nanos < rule.floor_nanos


def hourly_baseline(trailing_nanos: int, rule: AnomalyRule) -> int:
    """The trailing average per hour: the spend of the `rule.days` days before the hour, over 24·days hours
    (hours without spend count as zero, so a new agent's baseline is small, not unknown)."""
    return trailing_nanos // (24 * rule.days)


def is_spend_anomaly(spent_nanos: int, trailing_nanos: int, rule: AnomalyRule) -> bool:
    """spent ≥ floor and spent > factor × baseline (docs/alerts.md, "spend_anomaly")."""
    return spent_nanos >= rule.floor_nanos and spent_nanos > rule.factor * hourly_baseline(trailing_nanos, rule)


def is_error_spike(calls: int, errors: int, rule: SpikeRule) -> bool:
    """calls ≥ min_calls and errors / calls > rate (docs/alerts.md, "error_spike")."""
    return calls >= rule.min_calls and errors > rule.rate * calls


def public_fields(row: dict[str, Any]) -> dict[str, Any]:
    """An alert as the API and webhooks show it: its links and message, the kind's own figures flattened in (a
    budget alert keeps the fields GET /api/alerts answered before alerts had kinds)."""
    out = {k: row.get(k) for k in ALERT_FIELDS}
    data = row.get("data") or {}
    for k, v in data.items():
        out.setdefault(k, v)
    out["data"] = data
    return out


LINKS = ("budget_id", "run_id", "request_id", "agent_id", "department_id", "policy_id", "approval_id")
ALERT_FIELDS = ("id", "kind", "severity", "message", *LINKS, "at")

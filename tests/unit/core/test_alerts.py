"""core/alerts.py: kinds by threshold, dedupe keys and windows, the detectors' maths at their edges."""

from __future__ import annotations

from datetime import UTC, datetime

from agentledger.core import alerts as a
from agentledger.core.model import BudgetAlert

AT = datetime(2026, 11, 26, 12, 14, 59, tzinfo=UTC)


def budget_alert(threshold: int) -> BudgetAlert:
    return BudgetAlert("ws", "b1", "1764115200", threshold, 80_000, 100_000, AT, request_id="r1", run_id="run1")


def test_budget_alerts_below_100_are_thresholds_and_at_100_exhausted() -> None:
    warn, done = a.from_budget_alert(budget_alert(80)), a.from_budget_alert(budget_alert(100))
    assert (warn.kind, warn.severity) == ("budget_threshold", "warning")
    assert (done.kind, done.severity) == ("budget_exhausted", "critical")
    assert warn.dedupe_key == "budget:b1:1764115200:80" and done.dedupe_key == "budget:b1:1764115200:100"
    assert (warn.budget_id, warn.request_id, warn.run_id) == ("b1", "r1", "run1")
    assert warn.data == {"window_key": "1764115200", "threshold": 80, "spent_nanos": 80_000, "limit_nanos": 100_000}
    assert warn.message == "Budget b1 passed 80%: $0.00 spent of $0.00."


def test_alert_ids_derive_from_the_key() -> None:
    assert a.alert_id("ws", "run_stopped", "run:r1") == a.alert_id("ws", "run_stopped", "run:r1")
    assert a.alert_id("ws", "run_stopped", "run:r1") != a.alert_id("ws2", "run_stopped", "run:r1")
    assert a.alert_id("ws", "run_stopped", "run:r1").startswith("alt_")
    assert a.delivery_id("alt_1", "wh_1") != a.delivery_id("alt_1", "wh_2")


def test_run_stopped_and_approval_pending_are_once_per_subject() -> None:
    stop = a.run_stopped("ws", "run1", "loop detected", at=AT, policy_id="pol1")
    assert (stop.kind, stop.dedupe_key, stop.policy_id, stop.run_id) == ("run_stopped", "run:run1", "pol1", "run1")
    assert stop.message == "Run run1 was stopped by policy pol1: loop detected"
    assert "a run control" in a.run_stopped("ws", "run1", "stopped by hand", at=AT).message
    wait = a.approval_pending("ws", "apr1", "spend over $50", at=AT, run_id="run1")
    assert (wait.kind, wait.dedupe_key, wait.approval_id) == ("approval_pending", "approval:apr1", "apr1")


def test_windows_align_to_utc() -> None:
    assert a.window_start(AT, 15) == datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
    assert a.window_start(datetime(2026, 11, 26, 12, 15, tzinfo=UTC), 15) == datetime(2026, 11, 26, 12, 15, tzinfo=UTC)
    assert a.last_full_hour(AT) == datetime(2026, 11, 26, 11, 0, tzinfo=UTC)
    assert a.last_full_hour(datetime(2026, 11, 27, 0, 0, tzinfo=UTC)) == datetime(2026, 11, 26, 23, 0, tzinfo=UTC)


def test_spend_anomaly_needs_the_floor_and_the_factor() -> None:
    rule = a.AnomalyRule(factor=3.0, floor_nanos=1_000_000_000, days=7)
    trailing = 168 * 500_000_000  # $0.50 an hour on average
    assert a.hourly_baseline(trailing, rule) == 500_000_000
    assert not a.is_spend_anomaly(1_500_000_000, trailing, rule)  # exactly 3x: not over
    assert a.is_spend_anomaly(1_500_000_001, trailing, rule)
    assert not a.is_spend_anomaly(999_999_999, 0, rule)  # below the floor, whatever the baseline
    assert a.is_spend_anomaly(1_000_000_000, 0, rule)  # a new agent: its baseline is 0


def test_error_spike_needs_the_calls_and_the_rate() -> None:
    rule = a.SpikeRule(rate=0.2, min_calls=20)
    assert not a.is_error_spike(20, 4, rule)  # exactly 20 %: not over
    assert a.is_error_spike(20, 5, rule)
    assert not a.is_error_spike(19, 19, rule)  # too few calls
    spike = a.error_spike("ws", 20, 10, rule, now=AT)
    noon = int(datetime(2026, 11, 26, 12, 0, tzinfo=UTC).timestamp())
    assert (spike.kind, spike.severity, spike.dedupe_key) == ("error_spike", "critical", f"errors:{noon}")
    assert a.error_spike("ws", 20, 5, rule, now=AT).severity == "warning"


def test_spend_anomaly_alert_is_once_per_agent_and_hour() -> None:
    rule = a.AnomalyRule()
    hour = a.last_full_hour(AT)
    alert = a.spend_anomaly("ws", "planner", hour, 5_000_000_000, 100_000_000, rule, at=AT, department_id="d")
    assert alert.dedupe_key == f"agent:planner:{int(hour.timestamp())}"
    assert (alert.agent_id, alert.department_id, alert.severity) == ("planner", "d", "warning")
    assert alert.data["spent_nanos"] == 5_000_000_000 and alert.data["baseline_nanos"] == 100_000_000


def test_public_fields_flatten_a_budget_alerts_figures() -> None:
    row = {"id": "alt_1", "kind": "budget_threshold", "severity": "warning", "message": "m", "at": AT}
    row["data"] = {"threshold": 80, "spent_nanos": 1}
    out = a.public_fields(row)
    assert out["threshold"] == 80 and out["spent_nanos"] == 1 and out["budget_id"] is None
    assert out["data"] == {"threshold": 80, "spent_nanos": 1}

"""core/retention.py: the settings' rules, where cutoffs fall, what a sweep does, what verify can still compare."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from agentledger.core.errors import InvalidRequest
from agentledger.core.headers import parse_tracking
from agentledger.core.retention import MAX_DAYS, Plan, Retention, comparable, cutoff, parse_retention, plan

NOW = datetime(2025, 3, 10, 15, 42, 7, 123, tzinfo=UTC)
MIDNIGHT = datetime(2025, 3, 10, tzinfo=UTC)


def test_nothing_set_keeps_everything_forever() -> None:
    assert parse_retention({}) == Retention() and Retention().keeps_everything
    assert plan(Retention(), None, NOW) == Plan(None, None, None, None)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"traces_days": 30, "audit_days": 29}, "audit_days"),
        ({"audit_days": 30}, "audit_days"),  # traces kept forever: the audit must be too
        ({"bodies_days": 0}, "bodies_days"),
        ({"bodies_days": -1}, "bodies_days"),
        ({"traces_days": MAX_DAYS + 1}, "traces_days"),
        ({"traces_days": 7.0}, "traces_days"),
        ({"traces_days": "7"}, "traces_days"),
        ({"traces_days": False}, "traces_days"),
        ({"audit_days": [1]}, "audit_days"),
        ({"bodies_days": 1, "retain": 3}, "retain"),
    ],
)
def test_bad_settings_are_400s_naming_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_retention(body)
    assert info.value.param == param


def test_good_settings() -> None:
    assert parse_retention({"bodies_days": 7, "traces_days": 30, "audit_days": 30}) == Retention(7, 30, 30)
    assert parse_retention({"traces_days": 30}) == Retention(None, 30, None)  # the audit kept forever
    assert parse_retention({"bodies_days": 90, "traces_days": 30}) == Retention(90, 30, None)  # bodies go with rows
    assert parse_retention({"traces_days": MAX_DAYS, "audit_days": None}).view()["traces_days"] == MAX_DAYS


def test_cutoffs_fall_on_utc_midnight_so_a_row_is_kept_between_n_and_n_plus_one_days() -> None:
    assert cutoff(NOW, None) is None
    assert cutoff(NOW, 1) == MIDNIGHT - timedelta(days=1)
    assert cutoff(NOW, 30) == MIDNIGHT - timedelta(days=30)
    # Another offset, the same instant: the same UTC midnight.
    assert cutoff(NOW.astimezone(timezone(timedelta(hours=-8))), 30) == MIDNIGHT - timedelta(days=30)
    for days in (1, 7, 30):
        kept_at_least = NOW - cutoff(NOW, days)  # type: ignore[operator]
        assert timedelta(days=days) <= kept_at_least < timedelta(days=days + 1)


def test_a_sweep_nulls_bodies_from_where_the_last_one_ended_and_never_goes_back() -> None:
    settings = Retention(bodies_days=7, traces_days=30, audit_days=90)
    first = plan(settings, None, NOW)
    assert first == Plan(
        MIDNIGHT - timedelta(days=30), None, MIDNIGHT - timedelta(days=7), MIDNIGHT - timedelta(days=90)
    )
    later = plan(settings, first.bodies_before, NOW + timedelta(days=1))
    assert (later.bodies_from, later.bodies_before) == (MIDNIGHT - timedelta(days=7), MIDNIGHT - timedelta(days=6))
    # The same day again, or bodies_days raised: nothing new to null.
    assert plan(settings, first.bodies_before, NOW).bodies_before is None
    assert plan(Retention(bodies_days=30), first.bodies_before, NOW).bodies_before is None


def test_verify_compares_buckets_from_the_horizon_and_subjects_that_began_after_it() -> None:
    horizon = MIDNIGHT - timedelta(days=30)
    before, after = horizon - timedelta(hours=1), horizon
    naive = after.replace(tzinfo=None)  # as SQLite may read a bucket back
    for table, key in [
        ("hourly", ("ws", after, "dept")),
        ("daily", ("ws", after)),
        ("sessions", ("ws", after, "s")),
        ("properties", ("ws", "customer", after, "acme")),
        ("hourly", ("ws", naive, "dept")),
    ]:
        assert comparable(table, key, horizon, set())
        assert comparable(table, key, None, set())
    for table, key in [
        ("hourly", ("ws", before, "dept")),
        ("daily", ("ws", horizon - timedelta(days=1))),
        ("properties", ("ws", "customer", before, None)),
    ]:
        assert not comparable(table, key, horizon, set())
        assert comparable(table, key, None, set())  # no horizon: every row is compared
    assert comparable("runs", ("ws", "run-1"), horizon, {"run-1"})
    assert not comparable("runs", ("ws", "run-2"), horizon, {"run-1"})
    assert comparable("paths", ("ws", "sess-1", "/plan"), horizon, {"sess-1"})
    assert not comparable("paths", ("ws", "sess-2", None), horizon, {"sess-1"})


def test_omit_flags_are_true_or_false_in_any_case() -> None:
    def flags(*headers: tuple[str, str]) -> tuple[bool, bool]:
        ctx = parse_tracking([(k.encode(), v.encode()) for k, v in headers])
        return ctx.omit_request, ctx.omit_response

    assert flags() == (False, False)
    assert flags(("Alephant-Omit-Request", "TRUE")) == (True, False)
    assert flags(("alephant-omit-response", "True"), ("alephant-omit-request", "false")) == (False, True)
    for value in ("yes", "1", "", " t", "true true"):
        with pytest.raises(InvalidRequest) as info:
            flags(("alephant-omit-response", value))
        assert info.value.param == "alephant-omit-response"

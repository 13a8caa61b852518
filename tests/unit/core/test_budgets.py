"""core/budgets.py and core/budget_config.py, pure: windows of every period with an injected `now`,
applicability per scope, counter keys, thresholds crossed, the reservation's ceiling, and the API's validation
of a budget or a rate limit (each bad field an InvalidRequest naming it)."""

from __future__ import annotations

import pickle
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from agentledger.core.budget_config import MAX_LIMIT_USD, MAX_RATE, MAX_THRESHOLDS, budget_row, rate_limit_row
from agentledger.core.budgets import (
    DEFAULT_THRESHOLDS,
    Action,
    Budget,
    Figures,
    Period,
    RateLimit,
    Scope,
    Subject,
    applicable_budgets,
    applicable_limits,
    applies,
    counter_key,
    crossed,
    default_anchor,
    input_bound,
    least_left,
    parse_counter_key,
    reservation_nanos,
    window,
    window_of_key,
)
from agentledger.core.errors import InvalidRequest
from agentledger.core.money import MAX_EVENT_COST_NANOS


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def budget(period: Period | str = Period.DAY, anchor: datetime | None = None, **kw: Any) -> Budget:
    fields: dict[str, Any] = dict(
        workspace_id="ws1",
        id="b1",
        scope=Scope.WORKSPACE,
        value=None,
        limit_nanos=1_000,
        period=Period(period),
        anchor=anchor or utc(2025, 1, 10, 6),
    )
    return Budget(**{**fields, **kw})


# -- windows: 24h / 7d / 30d from the anchor ---------------------------------------------------------------------

ANCHOR = utc(2025, 1, 10, 6, 30)  # a time of day, so windows are not midnight-aligned


@pytest.mark.parametrize(
    ("period", "length"),
    [(Period.DAY, timedelta(hours=24)), (Period.WEEK, timedelta(days=7)), (Period.MONTH, timedelta(days=30))],
)
def test_fixed_windows_are_consecutive_from_the_anchor(period: Period, length: timedelta) -> None:
    b = budget(period, ANCHOR)
    # At the anchor itself: window 0 starts there.
    assert window(b, ANCHOR) == (ANCHOR, ANCHOR + length)
    # The last microsecond of window 0, then the first of window 1 (end is exclusive).
    assert window(b, ANCHOR + length - timedelta(microseconds=1)) == (ANCHOR, ANCHOR + length)
    assert window(b, ANCHOR + length) == (ANCHOR + length, ANCHOR + 2 * length)
    # Far after: window 10.
    assert window(b, ANCHOR + 10 * length + timedelta(seconds=5)) == (ANCHOR + 10 * length, ANCHOR + 11 * length)
    # Before the anchor, windows count back from it (floor, not truncation toward zero).
    assert window(b, ANCHOR - timedelta(microseconds=1)) == (ANCHOR - length, ANCHOR)
    assert window(b, ANCHOR - length) == (ANCHOR - length, ANCHOR)
    assert window(b, ANCHOR - length - timedelta(seconds=1)) == (ANCHOR - 2 * length, ANCHOR - length)


def test_day_windows_exact_instants() -> None:
    b = budget(Period.DAY, ANCHOR)
    assert window(b, utc(2025, 1, 12, 6, 29, 59)) == (utc(2025, 1, 11, 6, 30), utc(2025, 1, 12, 6, 30))
    assert window(b, utc(2025, 1, 12, 6, 30)) == (utc(2025, 1, 12, 6, 30), utc(2025, 1, 13, 6, 30))
    assert window(b, utc(2025, 1, 9, 12)) == (utc(2025, 1, 9, 6, 30), utc(2025, 1, 10, 6, 30))


def test_week_and_30_day_windows_exact_instants() -> None:
    week, month = budget(Period.WEEK, ANCHOR), budget(Period.MONTH, ANCHOR)
    assert window(week, utc(2025, 1, 20)) == (utc(2025, 1, 17, 6, 30), utc(2025, 1, 24, 6, 30))
    assert window(week, utc(2025, 1, 1)) == (utc(2025, 1, 3, 6, 30) - timedelta(days=7), utc(2025, 1, 3, 6, 30))
    # 30 days, not calendar months: window 1 of an anchor on Jan 10 starts on Feb 9, window 2 on Mar 11.
    assert window(month, utc(2025, 2, 9, 6, 30)) == (utc(2025, 2, 9, 6, 30), utc(2025, 3, 11, 6, 30))
    assert window(month, utc(2025, 3, 11, 6, 29)) == (utc(2025, 2, 9, 6, 30), utc(2025, 3, 11, 6, 30))
    assert window(month, utc(2024, 12, 15)) == (utc(2024, 12, 11, 6, 30), utc(2025, 1, 10, 6, 30))


def test_windows_read_any_timezone_and_naive_times_as_utc() -> None:
    b = budget(Period.DAY, ANCHOR)
    plus2 = timezone(timedelta(hours=2))
    # 08:30+02:00 is the anchor instant: window 0.
    assert window(b, datetime(2025, 1, 10, 8, 30, tzinfo=plus2)) == (ANCHOR, ANCHOR + timedelta(hours=24))
    assert window(b, datetime(2025, 1, 10, 6, 30)) == (ANCHOR, ANCHOR + timedelta(hours=24))
    naive_anchor = budget(Period.DAY, datetime(2025, 1, 10, 6, 30))
    assert window(naive_anchor, utc(2025, 1, 11, 7)) == (utc(2025, 1, 11, 6, 30), utc(2025, 1, 12, 6, 30))
    start, end = window(b, datetime(2025, 1, 10, 8, 30, tzinfo=plus2))
    assert start is not None and end is not None
    assert start.utcoffset() == timedelta(0) and end.utcoffset() == timedelta(0)


# -- windows: billing_cycle ----------------------------------------------------------------------------------------


def cycle(anchor: datetime, now: datetime) -> tuple[datetime | None, datetime | None]:
    return window(budget(Period.BILLING_CYCLE, anchor), now)


def test_billing_cycle_runs_from_the_anchor_day_at_midnight() -> None:
    anchor = utc(2025, 1, 15, 13, 45)  # the time of day is not used: cycles start at 00:00 UTC
    assert cycle(anchor, utc(2025, 1, 15)) == (utc(2025, 1, 15), utc(2025, 2, 15))
    assert cycle(anchor, utc(2025, 1, 14, 23, 59, 59)) == (utc(2024, 12, 15), utc(2025, 1, 15))
    assert cycle(anchor, utc(2025, 2, 14, 23, 59, 59)) == (utc(2025, 1, 15), utc(2025, 2, 15))
    assert cycle(anchor, utc(2025, 2, 15)) == (utc(2025, 2, 15), utc(2025, 3, 15))
    # Before the anchor, the same monthly grid.
    assert cycle(anchor, utc(2024, 6, 20)) == (utc(2024, 6, 15), utc(2024, 7, 15))


def test_billing_cycle_from_day_31_falls_on_the_last_day_of_short_months() -> None:
    anchor = utc(2025, 1, 31)
    assert cycle(anchor, utc(2025, 1, 31, 12)) == (utc(2025, 1, 31), utc(2025, 2, 28))
    assert cycle(anchor, utc(2025, 2, 27, 23)) == (utc(2025, 1, 31), utc(2025, 2, 28))
    assert cycle(anchor, utc(2025, 2, 28)) == (utc(2025, 2, 28), utc(2025, 3, 31))
    assert cycle(anchor, utc(2025, 3, 1)) == (utc(2025, 2, 28), utc(2025, 3, 31))
    assert cycle(anchor, utc(2025, 3, 30, 23, 59)) == (utc(2025, 2, 28), utc(2025, 3, 31))
    assert cycle(anchor, utc(2025, 3, 31)) == (utc(2025, 3, 31), utc(2025, 4, 30))
    assert cycle(anchor, utc(2025, 4, 30)) == (utc(2025, 4, 30), utc(2025, 5, 31))
    assert cycle(anchor, utc(2025, 6, 29)) == (utc(2025, 5, 31), utc(2025, 6, 30))


def test_billing_cycle_in_a_leap_year_ends_february_on_the_29th() -> None:
    anchor = utc(2023, 12, 31)
    assert cycle(anchor, utc(2024, 2, 10)) == (utc(2024, 1, 31), utc(2024, 2, 29))
    assert cycle(anchor, utc(2024, 2, 28, 23)) == (utc(2024, 1, 31), utc(2024, 2, 29))
    assert cycle(anchor, utc(2024, 2, 29)) == (utc(2024, 2, 29), utc(2024, 3, 31))
    # Anchored on Feb 29 itself: the 29th where it exists, the 28th otherwise.
    leap = utc(2024, 2, 29)
    assert cycle(leap, utc(2024, 3, 29)) == (utc(2024, 3, 29), utc(2024, 4, 29))
    assert cycle(leap, utc(2025, 2, 28)) == (utc(2025, 2, 28), utc(2025, 3, 29))
    assert cycle(leap, utc(2025, 2, 27)) == (utc(2025, 1, 29), utc(2025, 2, 28))
    # Day 30: also clipped in February only.
    assert cycle(utc(2025, 1, 30), utc(2025, 2, 28, 1)) == (utc(2025, 2, 28), utc(2025, 3, 30))


def test_billing_cycle_across_the_year_end() -> None:
    anchor = utc(2024, 3, 20)
    assert cycle(anchor, utc(2024, 12, 31, 23, 59)) == (utc(2024, 12, 20), utc(2025, 1, 20))
    assert cycle(anchor, utc(2025, 1, 5)) == (utc(2024, 12, 20), utc(2025, 1, 20))
    assert cycle(anchor, utc(2025, 1, 20)) == (utc(2025, 1, 20), utc(2025, 2, 20))
    assert cycle(anchor, utc(2024, 12, 19)) == (utc(2024, 11, 20), utc(2024, 12, 20))
    dec31 = utc(2024, 12, 31)
    assert cycle(dec31, utc(2025, 1, 1)) == (utc(2024, 12, 31), utc(2025, 1, 31))
    assert cycle(dec31, utc(2024, 12, 30)) == (utc(2024, 11, 30), utc(2024, 12, 31))
    # Day 1: the window of Jan 1 00:00 starts there; a moment earlier it is December's.
    jan1 = utc(2024, 1, 1)
    assert cycle(jan1, utc(2025, 1, 1)) == (utc(2025, 1, 1), utc(2025, 2, 1))
    assert cycle(jan1, utc(2024, 12, 31, 23, 59, 59)) == (utc(2024, 12, 1), utc(2025, 1, 1))


def test_total_and_run_periods() -> None:
    total = budget(Period.TOTAL, ANCHOR)
    assert window(total, ANCHOR + timedelta(days=4000)) == (ANCHOR, None)
    assert window(total, ANCHOR - timedelta(days=1)) == (ANCHOR, None)
    assert window(budget(Period.RUN, ANCHOR), ANCHOR + timedelta(days=3)) == (None, None)


def test_default_anchor_is_creation_day_at_midnight_utc() -> None:
    assert default_anchor(utc(2025, 5, 6, 23, 59, 59, 999_999)) == utc(2025, 5, 6)
    # 01:00+03:00 on the 7th is 22:00 UTC on the 6th.
    assert default_anchor(datetime(2025, 5, 7, 1, 0, tzinfo=timezone(timedelta(hours=3)))) == utc(2025, 5, 6)
    assert default_anchor(datetime(2025, 5, 7, 1, 0)) == utc(2025, 5, 7)


# -- applicability ---------------------------------------------------------------------------------------------

SUBJECT = Subject(
    workspace_id="ws1",
    department_id="research",
    agent_id="planner",
    virtual_key_id="vk1",
    workflow="trip",
    run_id="run-1",
    properties={"customer": "acme", "tier": "gold"},
)
BARE = Subject(workspace_id="ws1")


@pytest.mark.parametrize(
    ("scope", "value", "prop", "on_subject", "on_bare"),
    [
        (Scope.WORKSPACE, None, None, True, True),
        (Scope.DEPARTMENT, "research", None, True, False),
        (Scope.DEPARTMENT, "sales", None, False, False),
        (Scope.AGENT, "planner", None, True, False),
        (Scope.AGENT, "closer", None, False, False),
        (Scope.VIRTUAL_KEY, "vk1", None, True, False),
        (Scope.VIRTUAL_KEY, "vk2", None, False, False),
        (Scope.WORKFLOW, "trip", None, True, False),
        (Scope.WORKFLOW, "other", None, False, False),
        (Scope.PROPERTY, "acme", "customer", True, False),
        (Scope.PROPERTY, "globex", "customer", False, False),
        (Scope.PROPERTY, "acme", "tier", False, False),  # the value of another property does not count
        (Scope.PROPERTY, "gold", "tier", True, False),
        (Scope.PROPERTY, "acme", "region", False, False),  # a property the call does not carry
        (Scope.PROPERTY, "acme", None, False, False),
    ],
)
def test_applies_per_scope(scope: Scope, value: str | None, prop: str | None, on_subject: bool, on_bare: bool) -> None:
    assert applies(scope, value, prop, SUBJECT) is on_subject
    assert applies(scope, value, prop, BARE) is on_bare


def test_applicable_budgets_filters_by_scope_and_keeps_run_budgets_to_runs() -> None:
    ws = budget(id="ws")
    dep = budget(id="dep", scope=Scope.DEPARTMENT, value="research")
    other = budget(id="other", scope=Scope.DEPARTMENT, value="sales")
    prop = budget(id="prop", scope=Scope.PROPERTY, value="acme", property_name="customer")
    per_run = budget(Period.RUN, id="per-run")
    wf_run = budget(Period.RUN, id="wf-run", scope=Scope.WORKFLOW, value="trip")
    all_budgets = [ws, dep, other, prop, per_run, wf_run]
    assert [b.id for b in applicable_budgets(all_budgets, SUBJECT)] == ["ws", "dep", "prop", "per-run", "wf-run"]
    assert [b.id for b in applicable_budgets(all_budgets, BARE)] == ["ws"]
    outside_run = Subject("ws1", "research", properties={"customer": "acme"})
    assert [b.id for b in applicable_budgets(all_budgets, outside_run)] == ["ws", "dep", "prop"]


def test_applicable_limits_filter_by_scope() -> None:
    limits = [
        RateLimit("ws1", "a", Scope.WORKSPACE, None, requests_per_minute=1),
        RateLimit("ws1", "b", Scope.AGENT, "planner", tokens_per_minute=5),
        RateLimit("ws1", "c", Scope.AGENT, "closer", concurrent=1),
        RateLimit("ws1", "d", Scope.PROPERTY, "gold", property_name="tier", requests_per_minute=2),
    ]
    assert [r.id for r in applicable_limits(limits, SUBJECT)] == ["a", "b", "d"]
    assert [r.id for r in applicable_limits(limits, BARE)] == ["a"]


def test_scope_labels() -> None:
    assert budget().scope_label == "workspace"
    assert budget(scope=Scope.DEPARTMENT, value="research").scope_label == "department:research"
    assert budget(scope=Scope.VIRTUAL_KEY, value="vk1").scope_label == "virtual_key:vk1"
    assert budget(scope=Scope.PROPERTY, value="acme", property_name="customer").scope_label == "property.customer:acme"
    assert RateLimit("ws1", "r", Scope.WORKFLOW, "trip", concurrent=1).scope_label == "workflow:trip"
    assert RateLimit("ws1", "r", Scope.WORKSPACE, None, concurrent=1).scope_label == "workspace"


def test_blocking_actions() -> None:
    assert {a for a in Action if budget(action=a).blocks} == {
        Action.BLOCK_REQUESTS,
        Action.PAUSE_ALL,
        Action.DISABLE_KEY,
    }


# -- counter keys ------------------------------------------------------------------------------------------------


def test_counter_keys_one_per_budget_and_window() -> None:
    day = budget(Period.DAY, ANCHOR)
    now = utc(2025, 1, 12, 7)
    key = counter_key(day, now, "run-1")
    assert key == f"b|ws1|b1|{int(utc(2025, 1, 12, 6, 30).timestamp())}"
    # Same window, same key; the next window, another.
    assert counter_key(day, utc(2025, 1, 13, 6, 29), None) == key
    assert counter_key(day, utc(2025, 1, 13, 6, 30), None) != key
    assert counter_key(budget(Period.TOTAL, ANCHOR), now, "run-1") == "b|ws1|b1|total"
    assert counter_key(budget(Period.RUN, ANCHOR), now, "run-1") == "b|ws1|b1|run:run-1"
    assert counter_key(budget(Period.RUN, ANCHOR), now, "run-2") == "b|ws1|b1|run:run-2"
    cyc = counter_key(budget(Period.BILLING_CYCLE, utc(2025, 1, 31)), utc(2025, 3, 1), None)
    assert cyc == f"b|ws1|b1|{int(utc(2025, 2, 28).timestamp())}"
    # Budgets and workspaces never share a counter.
    assert counter_key(budget(Period.DAY, ANCHOR, id="b2"), now, None) != key
    assert counter_key(budget(Period.DAY, ANCHOR, workspace_id="ws2"), now, None) != key


def test_a_budget_keeps_its_hash_label_and_pickles() -> None:
    b = budget(Period.DAY, ANCHOR, scope=Scope.PROPERTY, value="acme", property_name="customer")
    again = budget(Period.DAY, ANCHOR, scope=Scope.PROPERTY, value="acme", property_name="customer")
    assert b == again and hash(b) == hash(again) and b is not again
    assert b.scope_label == "property.customer:acme" and not b.blocks
    assert b != budget(Period.DAY, ANCHOR, scope=Scope.PROPERTY, value="acme", property_name="team")
    assert pickle.loads(pickle.dumps(b)) == b and pickle.loads(pickle.dumps(b)).scope_label == b.scope_label
    r = RateLimit("ws1", "r1", Scope.AGENT, "a", requests_per_minute=5)
    assert pickle.loads(pickle.dumps(r)) == r and hash(r) == hash(RateLimit("ws1", "r1", Scope.AGENT, "a", None, 5))
    assert r.scope_label == "agent:a"


def test_an_equal_budget_read_again_gets_the_same_key_and_view() -> None:
    """The rules are reloaded every cache_ttl as new, equal budgets: they keep the window's key and view."""
    first, now = budget(Period.DAY, ANCHOR, id="b-reloaded"), utc(2025, 1, 12, 7)
    key = counter_key(first, now, None)
    view = Figures(first, key, 1, 2).view(now)
    second = budget(Period.DAY, ANCHOR, id="b-reloaded")
    assert counter_key(second, now, None) == key
    assert Figures(second, key, 1, 2).view(now) == view
    assert counter_key(first, now, None) == key  # and the first still does


def test_counter_key_before_the_anchor_is_a_negative_offset_window() -> None:
    day = budget(Period.DAY, ANCHOR)
    assert counter_key(day, ANCHOR - timedelta(seconds=1), None) == f"b|ws1|b1|{int(ANCHOR.timestamp()) - 86400}"


def test_parse_counter_key_round_trips() -> None:
    assert parse_counter_key("b|ws1|b1|1736490600") == ("ws1", "b1", "1736490600")
    assert parse_counter_key("b|ws1|b1|run:run:with:colons") == ("ws1", "b1", "run:run:with:colons")
    assert window_of_key("b|ws-x|bud_1|total") == "total"
    for period in (Period.DAY, Period.TOTAL, Period.RUN, Period.BILLING_CYCLE):
        key = counter_key(budget(period, ANCHOR, workspace_id="ws.a-b_c", id="bud:1"), utc(2025, 3, 3), "r.1")
        assert parse_counter_key(key)[:2] == ("ws.a-b_c", "bud:1")


# -- thresholds, figures -----------------------------------------------------------------------------------------


def test_crossed_thresholds() -> None:
    t = (50, 80, 100)
    assert crossed(1000, 0, 499, t) == []
    assert crossed(1000, 0, 500, t) == [50]  # reaching a threshold exactly crosses it
    assert crossed(1000, 500, 600, t) == []  # already past 50: not again
    assert crossed(1000, 499, 1000, t) == [50, 80, 100]
    assert crossed(1000, 799, 800, t) == [80]
    assert crossed(1000, 800, 2000, t) == [100]
    assert crossed(1000, 1000, 5000, t) == []
    assert crossed(1000, 600, 600, t) == []
    assert crossed(1000, 0, 10_000, (150, 300)) == [150, 300]
    assert crossed(3, 1, 2, (50,)) == [50]  # 1.5 of 3 lies between: exact rational comparison, no rounding
    assert crossed(3, 0, 1, (50,)) == []


def test_crossed_with_a_zero_limit() -> None:
    assert crossed(0, 0, 1, (50, 100)) == [50, 100]
    assert crossed(0, 0, 0, (50, 100)) == []
    assert crossed(0, 5, 9, (50, 100)) == []


def test_figures_remaining_percent_and_tightest() -> None:
    b = budget(limit_nanos=1000)
    f = Figures(b, "k", 300, 200)
    assert (f.remaining, f.percent_used) == (500, 50.0)
    over = Figures(b, "k", 1200, 100)
    assert (over.remaining, over.percent_used) == (-300, 130.0)
    view = over.view(utc(2025, 1, 11))
    assert (view["remaining_usd"], view["remaining_nanos"]) == ("0.000000000", -300)
    assert (view["spent_usd"], view["reserved_usd"], view["limit_usd"]) == ("0.000001200", "0.000000100", "0.000001000")
    assert (view["window_start"], view["window_end"]) == ("2025-01-10T06:00:00+00:00", "2025-01-11T06:00:00+00:00")
    assert Figures(budget(limit_nanos=0), "k", 0, 0).percent_used == 100.0
    # The tightest of figures kept flat (a call's): the least left, the first of equals, -1 for none.
    assert least_left([], []) == (-1, 0)
    assert least_left([b, b, b], [300, 200, 1200, 100, 0, 0]) == (1, -300)
    assert least_left([b, b], [0, 500, 500, 0]) == (0, 500)


# -- the reservation ---------------------------------------------------------------------------------------------


def test_reservation_is_the_ceiling_of_the_most_possible_cost() -> None:
    # gpt-4o-mini-like rates: $0.15 / $0.60 per MTok = 150_000_000 / 600_000_000 nano-dollars per MTok.
    assert reservation_nanos(98, 20, 150_000_000, 600_000_000) == 98 * 150 + 20 * 600
    assert reservation_nanos(0, 0, 150_000_000, 600_000_000) == 0
    assert reservation_nanos(1, 0, 1, 0) == 1  # a millionth of a nano-dollar rounds up, never down
    assert reservation_nanos(999_999, 0, 1, 0) == 1
    assert reservation_nanos(1_000_000, 0, 1, 0) == 1
    assert reservation_nanos(1_000_001, 0, 1, 0) == 2
    assert reservation_nanos(10**12, 10**12, 10**12, 10**12) == MAX_EVENT_COST_NANOS  # held to one event's bound
    # The ceiling is of the sum of both parts, not of each part.
    assert reservation_nanos(3, 1, 333_333, 1) == 1  # 999_999 + 1 = exactly 1_000_000
    assert reservation_nanos(3, 2, 333_333, 1) == 2  # 1_000_001
    assert reservation_nanos(10**9, 10**6, 75_000_000_000, 150_000_000_000) == 75_000_000_000_000 + 150_000_000_000


def test_input_bound_is_the_body_size_and_never_zero() -> None:
    assert input_bound(0) == 1
    assert input_bound(1) == 1
    assert input_bound(12_345) == 12_345


# -- budget_config: validation ------------------------------------------------------------------------------------

NOW = utc(2025, 6, 7, 15, 4, 5)
GOOD = {"scope": "workspace", "limit_usd": "25.00", "period": "24h"}


def bad(data: dict[str, Any], param: str, fragment: str = "") -> None:
    with pytest.raises(InvalidRequest) as info:
        budget_row(data, NOW, None)
    assert info.value.param == param, (data, info.value.param, info.value.message)
    assert info.value.status == 400 and info.value.message, info.value.message
    assert fragment in info.value.message, info.value.message


def test_a_good_budget_row_with_defaults() -> None:
    row = budget_row(dict(GOOD), NOW, None)
    assert row == {
        "name": None,
        "scope": "workspace",
        "scope_value": None,
        "property": None,
        "limit_nanos": 25_000_000_000,
        "period": "24h",
        "anchor": utc(2025, 6, 7),
        "action": "block_requests",
        "thresholds": list(DEFAULT_THRESHOLDS),
        "throttle_rpm": None,
        "created_at": NOW,
    }
    anchor = utc(2025, 1, 31, 8)
    assert budget_row(dict(GOOD), NOW, anchor)["anchor"] == anchor


def test_good_rows_for_each_scope() -> None:
    dep = budget_row({**GOOD, "scope": "department", "scope_value": " research "}, NOW, None)
    assert (dep["scope"], dep["scope_value"], dep["property"]) == ("department", "research", None)
    prop = budget_row({**GOOD, "scope": "property", "scope_value": "acme", "property": "customer"}, NOW, None)
    assert (prop["scope"], prop["scope_value"], prop["property"]) == ("property", "acme", "customer")
    for scope in ("agent", "virtual_key", "workflow"):
        row = budget_row({**GOOD, "scope": scope, "scope_value": "x"}, NOW, None)
        assert (row["scope"], row["scope_value"]) == (scope, "x")


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"scope": None}, "scope"),
        ({"scope": "team"}, "scope"),
        ({"scope": 3}, "scope"),
        ({"scope": ["workspace"]}, "scope"),
        ({"scope_value": "x"}, "scope_value"),  # a workspace scope takes none
        ({"property": "customer"}, "scope_value"),
        ({"scope": "department"}, "scope_value"),
        ({"scope": "department", "scope_value": ""}, "scope_value"),
        ({"scope": "department", "scope_value": "   "}, "scope_value"),
        ({"scope": "department", "scope_value": 5}, "scope_value"),
        ({"scope": "department", "scope_value": "a\nb"}, "scope_value"),
        ({"scope": "department", "scope_value": "x" * 1025}, "scope_value"),
        ({"scope": "department", "scope_value": "r", "property": "customer"}, "property"),
        ({"scope": "property", "scope_value": "acme"}, "property"),
        ({"scope": "property", "scope_value": "acme", "property": "Customer"}, "property"),
        ({"scope": "property", "scope_value": "acme", "property": "x" * 65}, "property"),
        ({"scope": "property", "scope_value": "acme", "property": 1}, "property"),
        ({"period": None}, "period"),
        ({"period": "1h"}, "period"),
        ({"period": "monthly"}, "period"),
        ({"action": "block"}, "action"),
        ({"action": "pause_all"}, "action"),  # pause_all is department-only
        ({"action": "disable_key"}, "action"),  # disable_key is virtual_key-only
        ({"action": "soft_throttle"}, "throttle_rpm"),  # needs throttle_rpm
        ({"action": "soft_throttle", "throttle_rpm": 0}, "throttle_rpm"),
        ({"action": "soft_throttle", "throttle_rpm": MAX_RATE + 1}, "throttle_rpm"),
        ({"action": "soft_throttle", "throttle_rpm": True}, "throttle_rpm"),
        ({"action": "soft_throttle", "throttle_rpm": 2.0}, "throttle_rpm"),
        ({"action": "soft_throttle", "throttle_rpm": "5"}, "throttle_rpm"),
        ({"throttle_rpm": 5}, "throttle_rpm"),  # only for soft_throttle
        ({"action": "alert_only", "throttle_rpm": 5}, "throttle_rpm"),
        ({"limit_usd": None}, "limit_usd"),
        ({"limit_usd": "-1"}, "limit_usd"),
        ({"limit_usd": -1}, "limit_usd"),
        ({"limit_usd": 1.5}, "limit_usd"),  # a float is refused: decimal string or integer
        ({"limit_usd": True}, "limit_usd"),
        ({"limit_usd": "abc"}, "limit_usd"),
        ({"limit_usd": "NaN"}, "limit_usd"),
        ({"limit_usd": "Infinity"}, "limit_usd"),
        ({"limit_usd": "0.0000000001"}, "limit_usd"),  # 10 decimals
        ({"limit_usd": str(MAX_LIMIT_USD + Decimal("0.000000001"))}, "limit_usd"),
        ({"limit_usd": int(MAX_LIMIT_USD) + 1}, "limit_usd"),
        ({"limit_usd": "1e1000"}, "limit_usd"),
        ({"limit_usd": ["1"]}, "limit_usd"),
        ({"thresholds": "50"}, "thresholds"),
        ({"thresholds": [0]}, "thresholds"),
        ({"thresholds": [1001]}, "thresholds"),
        ({"thresholds": [50.0]}, "thresholds"),
        ({"thresholds": [True]}, "thresholds"),
        ({"thresholds": list(range(1, MAX_THRESHOLDS + 2))}, "thresholds"),
        ({"name": 5}, "name"),
        ({"name": "x" * 257}, "name"),
        ({"name": "a\x00b"}, "name"),
    ],
)
def test_each_bad_budget_field_is_an_invalid_request_naming_it(change: dict[str, Any], param: str) -> None:
    bad({**GOOD, **change}, param)


def test_pause_all_and_disable_key_only_at_their_scopes() -> None:
    bad({**GOOD, "action": "pause_all"}, "action", "department")
    bad({**GOOD, "scope": "agent", "scope_value": "a", "action": "pause_all"}, "action")
    bad({**GOOD, "scope": "department", "scope_value": "r", "action": "disable_key"}, "action", "virtual_key")
    row = budget_row({**GOOD, "scope": "department", "scope_value": "r", "action": "pause_all"}, NOW, None)
    assert row["action"] == "pause_all"
    row = budget_row({**GOOD, "scope": "virtual_key", "scope_value": "vk1", "action": "disable_key"}, NOW, None)
    assert row["action"] == "disable_key"


def test_limits_and_rates_at_their_bounds_are_accepted() -> None:
    assert budget_row({**GOOD, "limit_usd": "0"}, NOW, None)["limit_nanos"] == 0
    assert budget_row({**GOOD, "limit_usd": 0}, NOW, None)["limit_nanos"] == 0
    assert budget_row({**GOOD, "limit_usd": "0.000000001"}, NOW, None)["limit_nanos"] == 1
    top = budget_row({**GOOD, "limit_usd": str(MAX_LIMIT_USD)}, NOW, None)["limit_nanos"]
    assert top == int(MAX_LIMIT_USD) * 10**9 == 10**18
    assert budget_row({**GOOD, "limit_usd": int(MAX_LIMIT_USD)}, NOW, None)["limit_nanos"] == 10**18
    assert budget_row({**GOOD, "limit_usd": "12.345678901"}, NOW, None)["limit_nanos"] == 12_345_678_901
    for rpm in (1, MAX_RATE):
        row = budget_row({**GOOD, "action": "soft_throttle", "throttle_rpm": rpm}, NOW, None)
        assert (row["action"], row["throttle_rpm"]) == ("soft_throttle", rpm)
    thresholds = budget_row({**GOOD, "thresholds": [100, 1, 1000, 50, 50]}, NOW, None)["thresholds"]
    assert thresholds == [1, 50, 100, 1000]  # sorted, duplicates dropped
    assert budget_row({**GOOD, "thresholds": []}, NOW, None)["thresholds"] == []
    assert len(budget_row({**GOOD, "thresholds": list(range(1, MAX_THRESHOLDS + 1))}, NOW, None)["thresholds"]) == 10
    assert budget_row({**GOOD, "name": "x" * 256}, NOW, None)["name"] == "x" * 256
    for period in Period:
        assert budget_row({**GOOD, "period": period.value}, NOW, None)["period"] == period.value
    for action in ("alert_only", "block_requests"):
        assert budget_row({**GOOD, "action": action}, NOW, None)["action"] == action
    assert budget_row({**GOOD, "scope_value": None, "property": None}, NOW, None)["scope_value"] is None
    assert (
        budget_row({**GOOD, "scope": "department", "scope_value": "x" * 1024}, NOW, None)["scope_value"] == "x" * 1024
    )


GOOD_RL = {"scope": "workspace", "requests_per_minute": 10}


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"requests_per_minute": None}, "requests_per_minute"),  # none of the three
        ({"requests_per_minute": 0}, "requests_per_minute"),
        ({"requests_per_minute": -1}, "requests_per_minute"),
        ({"requests_per_minute": 1.0}, "requests_per_minute"),
        ({"requests_per_minute": True}, "requests_per_minute"),
        ({"requests_per_minute": MAX_RATE * 1000 + 1}, "requests_per_minute"),
        ({"tokens_per_minute": 0}, "tokens_per_minute"),
        ({"tokens_per_minute": "100"}, "tokens_per_minute"),
        ({"concurrent": 0}, "concurrent"),
        ({"concurrent": False}, "concurrent"),
        ({"scope": "galaxy"}, "scope"),
        ({"scope": "agent"}, "scope_value"),
        ({"scope": "property", "scope_value": "acme"}, "property"),
        ({"name": ["x"]}, "name"),
    ],
)
def test_each_bad_rate_limit_field_is_an_invalid_request_naming_it(change: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        rate_limit_row({**GOOD_RL, **change}, NOW)
    assert info.value.param == param, info.value.message


def test_good_rate_limit_rows() -> None:
    row = rate_limit_row({"scope": "agent", "scope_value": "planner", "tokens_per_minute": 5, "concurrent": 2}, NOW)
    assert row == {
        "name": None,
        "scope": "agent",
        "scope_value": "planner",
        "property": None,
        "requests_per_minute": None,
        "tokens_per_minute": 5,
        "concurrent": 2,
        "created_at": NOW,
    }
    # requests_per_minute and concurrent are 32-bit columns on PostgreSQL: their bound keeps them there.
    top = rate_limit_row(
        {
            "scope": "workspace",
            "requests_per_minute": MAX_RATE,
            "concurrent": MAX_RATE,
            "tokens_per_minute": MAX_RATE * 1000,
        },
        NOW,
    )
    assert (top["requests_per_minute"], top["concurrent"], top["tokens_per_minute"]) == (
        MAX_RATE,
        MAX_RATE,
        MAX_RATE * 1000,
    )
    for field in ("requests_per_minute", "concurrent"):
        with pytest.raises(InvalidRequest) as caught:
            rate_limit_row({"scope": "workspace", field: MAX_RATE + 1}, NOW)
        assert caught.value.param == field


def test_a_view_shows_its_counters_window_even_read_in_the_next() -> None:
    # A call admitted at the end of a window is reported after it: its figures are the old window's.
    b = budget(limit_nanos=1000)
    key = counter_key(b, utc(2025, 1, 11), None)
    later = Figures(b, key, 1, 0).view(utc(2025, 1, 12, 12))
    assert (later["window_start"], later["window_end"]) == ("2025-01-10T06:00:00+00:00", "2025-01-11T06:00:00+00:00")
    again = Figures(b, key, 2, 0).view(utc(2025, 1, 11))  # the second view of that window: the same, and its own sums
    assert (again["window_start"], again["spent_usd"]) == ("2025-01-10T06:00:00+00:00", "0.000000002")

"""The request row's `governance` as the store's writer encodes it (store.budgets.stored_governance) is, byte for
byte, the JSON of the report's dict (PolicyReport.as_dict): the views made as text from each window's static part
say exactly what the views' dicts say, whatever the figures."""

from __future__ import annotations

import pickle
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import orjson
from hypothesis import given, settings, strategies as st

from agentledger.core.budgets import (
    Action,
    Budget,
    Decision,
    Period,
    PolicyReport,
    RateLimit,
    Scope,
    counter_key,
)
from agentledger.core.model import Attribution, StepKind, StepRecord, StepStatus
from agentledger.store.budgets import stored_governance
from agentledger.store.sql import _step_values

T0 = datetime(2026, 1, 31, 12, 0, tzinfo=UTC)
BIG = 2**62

amounts = st.one_of(st.integers(0, 10**6), st.integers(0, BIG), st.sampled_from([0, 1, 999_999_999, BIG]))


def budgets() -> st.SearchStrategy[Budget]:
    return st.builds(
        Budget,
        st.just("ws"),
        st.sampled_from(["b1", "b2", 'b"3', "b\u00e9"]),
        st.sampled_from([Scope.WORKSPACE, Scope.DEPARTMENT, Scope.PROPERTY]),
        st.sampled_from([None, "dept", 'a "quoted" \\ value', "caf\u00e9"]),
        st.one_of(st.just(0), st.integers(1, BIG)),
        st.sampled_from(list(Period)),
        st.just(T0 - timedelta(days=40)),
        st.sampled_from(list(Action)),
        st.sampled_from([(50, 80, 100), (), (1,)]),
        st.sampled_from([None, "customer"]),
    )


@settings(max_examples=300, deadline=None)
@given(
    chosen=st.lists(st.tuples(budgets(), amounts, amounts), min_size=1, max_size=4),
    limited=st.booleans(),
    offset=st.integers(0, 90 * 86400),
    run=st.sampled_from([None, "run-1"]),
)
def test_an_allowed_calls_views_are_the_same_json_as_its_dicts(
    chosen: list[tuple[Budget, int, int]], limited: bool, offset: int, run: str | None
) -> None:
    at = T0 + timedelta(seconds=offset)
    budgets_ = tuple(b for b, _, _ in chosen)
    keys = tuple(counter_key(b, at, run) for b in budgets_)
    numbers = tuple(n for _, spent, reserved in chosen for n in (spent, reserved))
    limits = (RateLimit("ws", "rpm", Scope.WORKSPACE, None, requests_per_minute=60),) if limited else ()
    report = PolicyReport(Decision.ALLOWED, None, budgets_, keys, numbers, limits, "rsv_1", 5, None, None, at)
    stored = stored_governance(report)
    assert stored is not None and all(isinstance(v, orjson.Fragment) for v in stored["budgets"])
    assert orjson.dumps(stored) == orjson.dumps(report.as_dict())
    # Made again from the kept static parts: the same.
    assert orjson.dumps(stored_governance(report)) == orjson.dumps(report.as_dict())


def test_a_refusal_and_a_policy_verdict_keep_their_dicts_for_the_audit() -> None:
    b = Budget("ws", "b1", Scope.WORKSPACE, None, 10**9, Period.MONTH, T0)
    key = counter_key(b, T0, None)
    report = PolicyReport(Decision.ALLOWED, None, (b,), (key,), (1, 2), (), "rsv_1", 5, None, None, T0)
    for other in (replace(report, decision=Decision.BLOCKED), replace(report, policy={"decision": "allowed"})):
        stored = stored_governance(other)
        assert stored == other.as_dict() and isinstance(stored["budgets"][0], dict)
    assert stored_governance(None) is None
    assert stored_governance({"decision": "allowed"}) == {"decision": "allowed"}


def test_a_policy_check_step_keeps_its_report_through_the_journal_and_is_stored_as_its_dict() -> None:
    """The gateway's policy_check step of a model call carries its PolicyReport (no views built on the answer's
    path): pickled for the trace journal and back, the writer stores it as the report's dict."""
    b = Budget("ws", "b1", Scope.DEPARTMENT, "dept", 10**9, Period.MONTH, T0)
    key = counter_key(b, T0, "run-1")
    report = PolicyReport(Decision.ALLOWED, None, (b,), (key,), (7, 0), (), "rsv_1", 5, None, None, T0)
    base = Attribution(workspace_id="ws", department_id="dept", run_id="run-1")
    step = StepRecord("pc_1", "run-1", base, StepKind.POLICY_CHECK, "budgets and rate limits", StepStatus.OK, T0)
    step = replace(step, attributes=report, request_id="req-1")
    back = pickle.loads(pickle.dumps([step], protocol=pickle.HIGHEST_PROTOCOL))[0]
    assert back == step and isinstance(back.attributes, PolicyReport)
    row = _step_values(back)
    assert orjson.dumps(row["attributes"]) == orjson.dumps(report.as_dict())
    assert row["attributes"]["budgets"][0] is not None and row["attributes"]["decision"] == "allowed"
    # An agent's own step keeps the attributes it was given.
    assert _step_values(replace(step, attributes={"k": 1}))["attributes"] == {"k": 1}

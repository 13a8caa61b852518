"""GET /api/runs filtered by decision and by property, against a real gateway over each store: each decision
reached the way the gateway reaches it (a policy that blocks, a rate limit that throttles, an escalation waiting
for a human, a call let through), properties from a call's headers and from posted steps, a page followed by its
cursor under a filter, a replayed call that adds nothing, and the 400s of bad filters."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agentledger.testing import ServerThread
from tests.harness import Harness, running_gateway
from tests.integration.retention_support import count
from tests.integration.test_budgets import fresh_minute

HELLO = [{"role": "user", "content": "hello"}]


@pytest.fixture
def gated(db_url: str, tmp_path: Path, upstream: ServerThread) -> Iterator[Harness]:
    """A gateway whose escalations wait 0.2 s for a human, then answer approval_required."""
    fake = upstream.config.app.state.fake
    fake.received.clear()
    fake.script.clear()
    with running_gateway(db_url, tmp_path, upstream, approval_wait_s=0.2) as harness:
        yield harness


def chat(gw: Harness, run: str, model: str = "gpt-4o-mini", **headers: str) -> int:
    sent = {"alephant-run-id": run, **headers}
    return gw.v1("POST", "/v1/chat/completions", json={"model": model, "messages": HELLO}, headers=sent).status_code


def ids(gw: Harness, **params: Any) -> list[str]:
    return [r["id"] for r in gw.get("/api/runs", **params)["data"]]


def created(resp: Any) -> None:
    assert resp.status_code == 201, resp.text


def test_runs_are_filtered_by_the_decisions_their_calls_had(gated: Harness) -> None:
    gw = gated
    rules = [
        {"when": {"models": ["gpt-4o"]}, "action": "block"},
        {"when": {"models": ["gpt-4.1"]}, "action": "escalate"},
    ]
    created(gw.api("POST", "/api/policies", json={"name": "p", "scope": "workspace", "rules": rules}))
    limit = {"scope": "property", "property": "lane", "scope_value": "slow", "requests_per_minute": 1}
    created(gw.api("POST", "/api/rate-limits", json=limit))
    fresh_minute()
    assert chat(gw, "run-allowed") == 200
    assert chat(gw, "run-blocked", "gpt-4o") == 403
    assert chat(gw, "run-throttled", **{"alephant-property-lane": "slow"}) == 200
    assert chat(gw, "run-throttled", **{"alephant-property-lane": "slow"}) == 429
    assert chat(gw, "run-escalated", "gpt-4.1") == 403  # approval_required: nobody decided within 0.2 s
    # A run whose steps were posted: nothing governed them, so no decision.
    created(gw.v1("POST", "/v1/runs/run-steps/steps", json={"name": "lookup"}))

    newest_first = ["run-steps", "run-escalated", "run-throttled", "run-blocked", "run-allowed"]
    assert ids(gw) == newest_first
    assert ids(gw, decision="allowed") == ["run-throttled", "run-allowed"]
    assert ids(gw, decision="blocked") == ["run-blocked"]
    assert ids(gw, decision="throttled") == ["run-throttled"]
    assert ids(gw, decision="escalated") == ["run-escalated"]
    # The rows are the runs as the unfiltered list has them.
    everything = {r["id"]: r for r in gw.get("/api/runs")["data"]}
    (blocked,) = gw.get("/api/runs", decision="blocked")["data"]
    assert blocked == everything["run-blocked"]
    assert blocked["totals"]["errors"] == 1
    assert ids(gw, decision="throttled", **{"property.lane": "slow"}) == ["run-throttled"]
    assert ids(gw, decision="blocked", **{"property.lane": "slow"}) == []


def test_runs_are_filtered_by_the_properties_of_their_calls_and_steps(gw: Harness) -> None:
    acme = {"alephant-property-customer": "acme"}
    assert chat(gw, "run-call", **acme, **{"alephant-property-tier": "gold", "x-request-id": "call-1"}) == 200
    created(gw.v1("POST", "/v1/runs/run-step/steps", json={"name": "lookup"}, headers=acme))
    created(gw.v1("POST", "/v1/runs/run-other/steps", json={"name": "lookup"}))
    created(gw.v1("POST", "/v1/runs/run-other/steps", json={"name": "x"}, headers={"alephant-property-customer": "b"}))
    assert chat(gw, "run-plain") == 200

    assert ids(gw, **{"property.customer": "acme"}) == ["run-step", "run-call"]
    assert ids(gw, **{"property.customer": "b"}) == ["run-other"]
    assert ids(gw, **{"property.customer": "acme", "property.tier": "gold"}) == ["run-call"]
    assert ids(gw, **{"property.customer": " acme "}) == ["run-step", "run-call"]  # trimmed, as headers are
    assert ids(gw, **{"property.customer": "nobody"}) == []
    # The same x-request-id again is a replay: answered from the store, nothing new on the books.
    marks = count(gw, "run_marks", "run_id = 'run-call'")
    assert marks == 2
    assert chat(gw, "run-call", **acme, **{"alephant-property-tier": "gold", "x-request-id": "call-1"}) == 200
    created(gw.v1("POST", "/v1/runs/run-step/steps", json={"name": "again"}, headers=acme))
    assert ids(gw, **{"property.customer": "acme"}) == ["run-step", "run-call"]
    assert count(gw, "run_marks", "run_id = 'run-call'") == marks
    assert count(gw, "run_marks", "run_id = 'run-step'") == 1


def test_a_filtered_list_is_paged_by_its_cursor(gw: Harness) -> None:
    t0 = datetime(2025, 5, 1, 9, 0, tzinfo=UTC)
    for i in range(9):
        body = {"run_id": f"run-{i}", "started_at": (t0 + timedelta(minutes=i // 2)).isoformat()}
        created(gw.v1("POST", "/v1/runs", json=body))
        team = {"alephant-property-team": "red" if i % 3 else "blue"}
        created(gw.v1("POST", f"/v1/runs/run-{i}/steps", json={"name": "s"}, headers=team))
    red = [r for r in ids(gw, limit=100) if int(r[-1]) % 3]
    assert (
        ids(gw, **{"property.team": "red", "limit": 100})
        == red
        == ["run-8", "run-7", "run-5", "run-4", "run-2", "run-1"]
    )
    pages: list[list[str]] = []
    cursor = None
    while True:
        page = gw.get("/api/runs", **{"property.team": "red", "limit": 4, **({"cursor": cursor} if cursor else {})})
        pages.append([r["id"] for r in page["data"]])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == [red[:4], red[4:]]
    assert ids(
        gw,
        **{
            "property.team": "red",
            "from": (t0 + timedelta(minutes=1)).isoformat(),
            "to": (t0 + timedelta(minutes=3)).isoformat(),
        },
    ) == ["run-5", "run-4", "run-2"]


def test_bad_decision_and_property_filters_are_400s_naming_them(gw: Harness) -> None:
    bad = [
        ({"decision": "maybe"}, "decision", "'decision' must be one of allowed, blocked, throttled, escalated."),
        ({"decision": ""}, "decision", "'decision' must be one of"),
        ({"property.Customer": "acme"}, "property.Customer", "'property.Customer': property names are 1-64"),
        ({"property.": "acme"}, "property.", "'property.': property names"),
        ({"property.customer": ""}, "property.customer", "'property.customer' must be a non-empty string"),
        ({"property.customer": "   "}, "property.customer", "'property.customer' must be a non-empty string"),
        (
            {"property.customer": "x" * 1025},
            "property.customer",
            "'property.customer' must be a non-empty string of at most 1024",
        ),
        ({"property.customer": "a\x00b"}, "property.customer", "'property.customer' contains control characters."),
        ({f"property.p{i}": "v" for i in range(9)}, "property", "At most 8 property.<name> filters are allowed."),
    ]
    for params, param, message in bad:
        resp = gw.api("GET", "/api/runs", params=params)
        assert resp.status_code == 400, (params, resp.text)
        error = resp.json()["error"]
        assert (error["param"], error["code"]) == (param, "invalid_request"), params
        assert error["message"].startswith(message), error["message"]
    # Eight is allowed, and a value at the limit.
    assert gw.get("/api/runs", **{f"property.p{i}": "v" for i in range(8)})["data"] == []
    assert gw.get("/api/runs", **{"property.customer": "x" * 1024})["data"] == []

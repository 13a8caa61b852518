"""The run/step API against a real server: start, steps (one, array, batch; nested), end, read back.

Exact step trees and totals, with gateway model calls joining the same run; validation that stores
nothing of a bad batch; run listing filters.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import openai
import pytest

from tests.harness import Harness

# 'hello there world' → 6 prompt and 9 completion tokens; gpt-4o-mini at $0.15 / $0.60 per MTok.
HELLO = [{"role": "user", "content": "hello there world"}]
HELLO_NANOS = 6 * 150 + 9 * 600
# 1000 input of which 200 cached, 500 output of which 100 reasoning:
# 800 × 0.15 + 200 × 0.075 + 500 × 0.60 = 435 micro-dollars.
EXTERNAL_USAGE = {"input_tokens": 1000, "cached_input_tokens": 200, "output_tokens": 500, "reasoning_tokens": 100}
EXTERNAL_NANOS = 435_000
API_NANOS = 12_500_000  # "cost_usd": "0.0125"


def iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def parse(ts: str) -> datetime:
    return datetime.fromisoformat(ts)


def start_run(gw: Harness, **body: Any) -> Any:
    return gw.v1("POST", "/v1/runs", json=body)


def post_steps(gw: Harness, run_id: str, body: Any, **kw: Any) -> Any:
    return gw.v1("POST", f"/v1/runs/{run_id}/steps", json=body, **kw)


def error_of(resp: Any, status: int = 400) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    err: dict[str, Any] = resp.json()["error"]
    assert set(err) == {"message", "type", "code", "param"}
    return err


def shape(nodes: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """(id, kind, branch, parent, children...) for the tree, to compare order and nesting exactly."""
    return [(n["id"], n["kind"], n["branch"], n["parent_id"], shape(n["children"])) for n in nodes]


def test_start_run_is_idempotent_and_keeps_what_it_was_given(gw: Harness) -> None:
    body = {
        "run_id": "run-trip",
        "agent_id": "planner",
        "session_id": "sess-trip",
        "session_path": "/plan",
        "workflow": "trip-planner",
        "name": "Plan a trip to Lisbon",
        "metadata": {"customer": "acme", "tier": 2},
    }
    first = start_run(gw, **body)
    assert first.status_code == 201, first.text
    assert first.json() == {"run_id": "run-trip", "created": True}
    again = start_run(gw, **{**body, "workflow": "something-else"})
    assert again.status_code == 200, again.text
    assert again.json() == {"run_id": "run-trip", "created": False}

    run = gw.get("/api/runs/run-trip")
    assert run["id"] == "run-trip"
    assert run["agent_id"] == "planner" and run["session_id"] == "sess-trip"
    assert run["workflow"] == "trip-planner", "a second start must not overwrite the first"
    assert run["name"] == "Plan a trip to Lisbon"
    assert run["metadata"] == {"customer": "acme", "tier": 2}
    assert run["department_id"] == gw.department
    assert run["status"] == "running" and run["ended_at"] is None and run["duration_ms"] is None
    assert run["steps"] == []
    assert run["totals"]["steps"] == 0 and run["totals"]["cost_nanos"] == 0

    # The session exists as soon as the run does.
    session = gw.get("/api/sessions/sess-trip")
    assert [r["id"] for r in session["runs"]] == ["run-trip"]


def test_start_run_without_an_id_generates_one(gw: Harness) -> None:
    resp = start_run(gw)
    assert resp.status_code == 201, resp.text
    run_id = resp.json()["run_id"]
    assert run_id.startswith("run")
    assert gw.get(f"/api/runs/{run_id}")["status"] == "running"


def test_full_run_step_tree_and_totals(gw: Harness) -> None:
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)
    resp = start_run(
        gw,
        run_id="run-full",
        agent_id="planner",
        session_id="sess-full",
        session_path="/plan",
        workflow="trip-planner",
        metadata={"customer": "acme"},
        started_at=iso(t0),
    )
    assert resp.status_code == 201, resp.text

    # 1. one step object
    resp = post_steps(
        gw,
        "run-full",
        {
            "id": "wf-plan",
            "kind": "workflow_step",
            "name": "plan",
            "started_at": iso(t0 + timedelta(seconds=1)),
            "ended_at": iso(t0 + timedelta(seconds=9)),
            "input": {"city": "Lisbon"},
        },
    )
    assert resp.status_code == 201, resp.text
    assert resp.json() == {"run_id": "run-full", "step_ids": ["wf-plan"]}

    # 2. an array: children of the workflow step
    resp = post_steps(
        gw,
        "run-full",
        [
            {
                "id": "tool-search",
                "parent_id": "wf-plan",
                "kind": "tool_call",
                "name": "web_search",
                "started_at": iso(t0 + timedelta(seconds=2)),
                "latency_ms": 120.5,
                "output": {"hits": 3},
            },
            {
                "id": "api-hotel",
                "parent_id": "wf-plan",
                "kind": "api_call",
                "name": "hotels.book",
                "started_at": iso(t0 + timedelta(seconds=3)),
                "ended_at": iso(t0 + timedelta(seconds=4)),
                "cost_usd": "0.0125",
            },
        ],
    )
    assert resp.status_code == 201, resp.text
    assert resp.json()["step_ids"] == ["tool-search", "api-hotel"]

    # 3. {"steps": [...]}: a branch outcome with a child declared after it in the same batch,
    #    an external model call priced from the catalog, and a failed tool call retried.
    resp = post_steps(
        gw,
        "run-full",
        {
            "steps": [
                {
                    "id": "wf-approve",
                    "kind": "workflow_step",
                    "name": "approval",
                    "branch": "approved",
                    "started_at": iso(t0 + timedelta(seconds=10)),
                },
                {
                    "id": "mc-external",
                    "parent_id": "wf-approve",
                    "kind": "model_call",
                    "name": "summarize",
                    "model": "gpt-4o-mini",
                    "provider": "openai",
                    "usage": EXTERNAL_USAGE,
                    "started_at": iso(t0 + timedelta(seconds=11)),
                },
                {
                    "id": "tool-notify",
                    "parent_id": "wf-approve",
                    "kind": "tool_call",
                    "name": "notify",
                    "status": "error",
                    "error": "smtp timeout",
                    "started_at": iso(t0 + timedelta(seconds=12)),
                },
                {
                    "id": "tool-notify-2",
                    "parent_id": "wf-approve",
                    "kind": "tool_call",
                    "name": "notify",
                    "attempt": 2,
                    "started_at": iso(t0 + timedelta(seconds=13)),
                },
            ]
        },
    )
    assert resp.status_code == 201, resp.text

    # 4. model calls through the gateway, in the same run: one fails then is retried, one streams.
    client = gw.openai()
    run_header = {"Alephant-Run-Id": "run-full"}
    with pytest.raises(openai.APIStatusError):
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "FAIL:500"}],
            extra_headers={**run_header, "x-request-id": "req-retried"},
        )
    client.chat.completions.create(
        model="gpt-4o-mini", messages=HELLO, extra_headers={**run_header, "x-request-id": "req-retried"}
    )
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=HELLO,
            stream=True,
            extra_headers={**run_header, "x-request-id": "req-streamed"},
        )
    )
    assert chunks

    end = gw.v1("POST", "/v1/runs/run-full/end", json={"status": "succeeded", "output": {"booked": True}})
    assert end.status_code == 200, end.text
    assert end.json()["run_id"] == "run-full" and end.json()["status"] == "succeeded"

    run = gw.get("/api/runs/run-full")
    assert run["status"] == "succeeded"
    assert run["output"] == {"booked": True}
    assert parse(run["started_at"]) == t0
    ended = parse(run["ended_at"])
    assert ended == parse(end.json()["ended_at"])
    assert run["duration_ms"] == pytest.approx((ended - t0).total_seconds() * 1000, abs=0.01)
    assert run["workflow"] == "trip-planner" and run["metadata"] == {"customer": "acme"}

    gateway_steps = [s for s in run["steps"] if s["request_id"] is not None]
    assert [(s["request_id"], s["status"], s["attempt"]) for s in gateway_steps] == [
        ("req-retried", "error", 1),
        ("req-retried", "ok", 2),
        ("req-streamed", "ok", 1),
    ]
    g1, g2, g3 = (s["id"] for s in gateway_steps)
    assert shape(run["steps"]) == [
        (
            "wf-plan",
            "workflow_step",
            None,
            None,
            [("tool-search", "tool_call", None, "wf-plan", []), ("api-hotel", "api_call", None, "wf-plan", [])],
        ),
        (
            "wf-approve",
            "workflow_step",
            "approved",
            None,
            [
                ("mc-external", "model_call", None, "wf-approve", []),
                ("tool-notify", "tool_call", None, "wf-approve", []),
                ("tool-notify-2", "tool_call", None, "wf-approve", []),
            ],
        ),
        (g1, "model_call", None, None, []),
        (g2, "model_call", None, None, []),
        (g3, "model_call", None, None, []),
    ]

    wf_plan, wf_approve = run["steps"][0], run["steps"][1]
    assert wf_plan["latency_ms"] == 8000.0 and wf_plan["input"] == {"city": "Lisbon"}
    search, hotel = wf_plan["children"]
    assert search["latency_ms"] == 120.5 and search["output"] == {"hits": 3} and search["cost_nanos"] == 0
    assert (hotel["cost_nanos"], hotel["cost_usd"], hotel["cost_source"]) == (API_NANOS, "0.012500000", "reported")
    assert hotel["latency_ms"] == 1000.0
    external, notify, notify2 = wf_approve["children"]
    assert (external["cost_nanos"], external["cost_source"]) == (EXTERNAL_NANOS, "computed")
    assert (external["input_tokens"], external["cached_input_tokens"]) == (1000, 200)
    assert (external["output_tokens"], external["reasoning_tokens"]) == (500, 100)
    assert external["model"] == "gpt-4o-mini" and external["provider"] == "openai"
    assert (notify["status"], notify["error"], notify["attempt"]) == ("error", "smtp timeout", 1)
    assert (notify2["status"], notify2["attempt"]) == ("ok", 2)
    failed, retried, streamed = run["steps"][2:]
    assert failed["cost_nanos"] == 0 and failed["input_tokens"] == 0
    assert retried["cost_nanos"] == streamed["cost_nanos"] == HELLO_NANOS
    assert streamed["attributes"]["stream"] is True

    assert {k: v for k, v in run["totals"].items() if k != "model_latency_ms"} == {
        "cost_nanos": API_NANOS + EXTERNAL_NANOS + 2 * HELLO_NANOS,
        "cost_usd": "0.012947600",
        "input_tokens": 1000 + 6 + 6,
        "cached_input_tokens": 200,
        "cache_write_tokens": 0,
        "output_tokens": 500 + 9 + 9,
        "reasoning_tokens": 100,
        "total_tokens": 1012 + 518,
        "steps": 10,
        "model_calls": 4,
        "errors": 2,  # tool-notify and the failed gateway attempt
        "retries": 2,  # tool-notify-2 and the gateway's second attempt
        # The P&L: no revenue, so the margin is the cost, negated; the api call's reported cost is tool spend.
        "revenue_usd": "0.000000000",
        "refunds_usd": "0.000000000",
        "model_cost_usd": "0.000447600",
        "tool_spend_usd": "0.012500000",
        "outbound_payments_usd": "0.000000000",
        "fees_usd": "0.000000000",
        "margin_usd": "-0.012947600",
        "margin_pct": None,
        "estimated_cost_usd": "0.000000000",
        "estimated_share": 0.0,
    }
    assert run["totals"]["model_latency_ms"] > 0

    # The run shows up in the list with the same totals.
    listed = gw.get("/api/runs")["data"]
    assert [r["id"] for r in listed] == ["run-full"]
    assert listed[0]["totals"] == run["totals"] and "steps" not in listed[0]


def test_steps_for_a_run_never_started_create_it(gw: Harness) -> None:
    at = datetime(2025, 5, 1, 12, 0, tzinfo=UTC)
    resp = post_steps(gw, "run-implicit", [{"name": "fetch", "started_at": iso(at)}, {"name": "parse"}])
    assert resp.status_code == 201, resp.text
    ids = resp.json()["step_ids"]
    assert len(ids) == 2 and len(set(ids)) == 2

    run = gw.get("/api/runs/run-implicit")
    assert run["status"] == "running" and parse(run["started_at"]) == at
    assert run["department_id"] == gw.department and run["virtual_key_id"]
    assert [(s["id"], s["kind"], s["status"], s["attempt"]) for s in run["steps"]] == [
        (ids[0], "tool_call", "ok", 1),
        (ids[1], "tool_call", "ok", 1),
    ]
    assert run["totals"]["steps"] == 2

    # A start after first sight reports the run as existing.
    again = start_run(gw, run_id="run-implicit", workflow="late")
    assert again.status_code == 200 and again.json()["created"] is False


def test_steps_join_a_run_created_by_a_gateway_call(gw: Harness) -> None:
    gw.openai().chat.completions.create(
        model="gpt-4o-mini", messages=HELLO, extra_headers={"Alephant-Run-Id": "run-gw-first"}
    )
    resp = post_steps(gw, "run-gw-first", {"id": "after", "kind": "tool_call", "name": "lookup"})
    assert resp.status_code == 201, resp.text
    run = gw.get("/api/runs/run-gw-first")
    assert [s["kind"] for s in run["steps"]] == ["model_call", "tool_call"]
    assert run["totals"]["cost_nanos"] == HELLO_NANOS and run["totals"]["steps"] == 2


def test_resending_a_batch_is_idempotent(gw: Harness) -> None:
    batch = [{"id": "s-1", "name": "a", "cost_usd": "0.01"}, {"id": "s-2", "parent_id": "s-1", "name": "b"}]
    assert post_steps(gw, "run-idem", batch).status_code == 201
    assert post_steps(gw, "run-idem", batch).status_code == 201
    run = gw.get("/api/runs/run-idem")
    assert run["totals"]["steps"] == 2 and run["totals"]["cost_nanos"] == 10_000_000


def test_unknown_parent_rejects_the_whole_batch(gw: Harness) -> None:
    assert start_run(gw, run_id="run-v").status_code == 201
    resp = post_steps(
        gw,
        "run-v",
        [
            {"id": "good-1", "name": "fine"},
            {"id": "orphan", "parent_id": "no-such-step", "name": "orphan"},
        ],
    )
    err = error_of(resp)
    assert err["param"] == "parent_id" and "no-such-step" in err["message"]
    run = gw.get("/api/runs/run-v")
    assert run["steps"] == [] and run["totals"]["steps"] == 0
    # good-1 was not stored either, so it cannot be a parent now.
    assert error_of(post_steps(gw, "run-v", {"name": "child", "parent_id": "good-1"}))["param"] == "parent_id"

    # A run never started is not created by a rejected batch.
    error_of(post_steps(gw, "run-ghost", {"name": "x", "parent_id": "nope"}))
    error_of(gw.api("GET", "/api/runs/run-ghost"), 404)


def test_parent_from_an_earlier_batch_is_accepted(gw: Harness) -> None:
    assert post_steps(gw, "run-p", {"id": "root", "kind": "workflow_step", "name": "root"}).status_code == 201
    assert post_steps(gw, "run-p", {"id": "leaf", "parent_id": "root", "name": "leaf"}).status_code == 201
    run = gw.get("/api/runs/run-p")
    assert shape(run["steps"]) == [("root", "workflow_step", None, None, [("leaf", "tool_call", None, "root", [])])]


def test_duplicate_ids_in_a_batch_are_rejected(gw: Harness) -> None:
    resp = post_steps(gw, "run-dup", [{"id": "same", "name": "a"}, {"id": "same", "name": "b"}])
    assert error_of(resp)["param"] == "steps"
    error_of(gw.api("GET", "/api/runs/run-dup"), 404)


BAD_STEPS: list[tuple[Any, str]] = [
    ({"name": "x", "kind": "telepathy"}, "steps[1].kind"),
    ({"name": "x", "status": "maybe"}, "steps[1].status"),
    ({"name": "x", "started_at": "yesterday"}, "steps[1].started_at"),
    ({"name": "x", "started_at": 12345}, "steps[1].started_at"),
    ({"name": "x", "ended_at": "not a time"}, "steps[1].ended_at"),
    (
        {"name": "x", "started_at": "2025-01-02T00:00:00Z", "ended_at": "2025-01-01T00:00:00Z"},
        "steps[1].ended_at",
    ),
    ({"name": "x", "latency_ms": -1}, "steps[1].latency_ms"),
    ({"name": "x", "attempt": 0}, "steps[1].attempt"),
    ({"name": "x", "usage": [1, 2]}, "steps[1].usage"),
    ({"name": "x", "usage": {"input_tokens": -5}}, "steps[1].usage.input_tokens"),
    ({"name": "x", "usage": {"output_tokens": 1.5}}, "steps[1].usage.output_tokens"),
    ({"name": "x", "usage": {"cached_input_tokens": "3"}}, "steps[1].usage.cached_input_tokens"),
    ({"name": "x", "cost_usd": "a lot"}, "steps[1].cost_usd"),
    ({"name": "x", "cost_usd": "-0.5"}, "steps[1].cost_usd"),
    ({"kind": "tool_call"}, "steps[1].name"),
    ({"name": ""}, "steps[1].name"),
    ({"name": "x", "id": "bad id!"}, "steps[1].id"),
    ({"name": "x", "session_path": "//"}, "steps[1].session_path"),
    ({"name": "x", "attributes": "nope"}, "steps[1].attributes"),
    ("not an object", "steps[1]"),
]


def test_bad_step_fields_are_400_with_param(gw: Harness) -> None:
    # One server for all cases (a server per case would make this file slow); each case is checked alone.
    got = {}
    for step, _param in BAD_STEPS:
        err = error_of(post_steps(gw, "run-bad", [{"id": "fine", "name": "fine"}, step]))
        assert err["type"] == "invalid_request_error"
        got[repr(step)] = err["param"]
    assert got == {repr(step): param for step, param in BAD_STEPS}
    error_of(gw.api("GET", "/api/runs/run-bad"), 404)


def test_batch_size_limits(gw: Harness) -> None:
    for body in ([], {"steps": []}, [{"name": "x"}] * 1001):
        assert error_of(post_steps(gw, "run-size", body))["param"] == "steps"
    assert post_steps(gw, "run-size", [{"name": "x"}] * 1000).status_code == 201
    assert gw.get("/api/runs/run-size")["totals"]["steps"] == 1000


def test_bad_bodies_and_auth(gw: Harness) -> None:
    resp = gw.v1("POST", "/v1/runs/run-x/steps", content=b"{not json", headers={"content-type": "application/json"})
    assert error_of(resp)["code"] == "invalid_json"
    resp = gw.v1("POST", "/v1/runs", content=b"[]", headers={"content-type": "application/json"})
    error_of(resp)
    assert error_of(start_run(gw, run_id="has space"))["param"] == "run_id"
    assert error_of(start_run(gw, run_id="r", started_at="soon"))["param"] == "started_at"
    assert error_of(start_run(gw, run_id="r", metadata=[1]))["param"] == "metadata"
    resp = gw.v1("POST", "/v1/runs", json={"run_id": "r"}, headers={"authorization": "Bearer vk-wrong"})
    error_of(resp, 401)
    resp = gw.v1("POST", "/v1/runs/r/steps", json={"name": "x"}, headers={"authorization": "Bearer vk-wrong"})
    error_of(resp, 401)
    # An agent that does not exist in the workspace cannot be claimed.
    assert error_of(start_run(gw, run_id="r", agent_id="ghost"))["code"] == "agent_not_found"


def test_end_run_validation(gw: Harness) -> None:
    err = error_of(gw.v1("POST", "/v1/runs/run-unknown/end", json={"status": "succeeded"}), 404)
    assert err["type"] == "not_found_error"
    assert start_run(gw, run_id="run-end").status_code == 201
    for status in ("done", "running", 3):
        err = error_of(gw.v1("POST", "/v1/runs/run-end/end", json={"status": status}))
        assert err["param"] == "status"
    assert error_of(gw.v1("POST", "/v1/runs/run-end/end", json={"ended_at": "later"}))["param"] == "ended_at"
    assert gw.get("/api/runs/run-end")["status"] == "running"

    ended = datetime(2030, 1, 1, tzinfo=UTC)
    resp = gw.v1("POST", "/v1/runs/run-end/end", json={"status": "failed", "error": "boom", "ended_at": iso(ended)})
    assert resp.status_code == 200, resp.text
    run = gw.get("/api/runs/run-end")
    assert run["status"] == "failed" and run["error"] == "boom" and parse(run["ended_at"]) == ended
    assert run["duration_ms"] == round((ended - parse(run["started_at"])).total_seconds() * 1000, 3)


def _make_run(gw: Harness, run_id: str, started: datetime, status: str | None, **body: Any) -> None:
    resp = start_run(gw, run_id=run_id, started_at=iso(started), **body)
    assert resp.status_code == 201, resp.text
    if status is not None:
        resp = gw.v1("POST", f"/v1/runs/{run_id}/end", json={"status": status})
        assert resp.status_code == 200, resp.text


def test_list_runs_filters(gw: Harness) -> None:
    assert gw.api("POST", "/api/agents", json={"id": "writer", "department_id": gw.department}).status_code == 201
    t0 = datetime(2025, 4, 1, 9, 0, tzinfo=UTC)
    _make_run(gw, "run-a", t0, "succeeded", agent_id="planner", session_id="s1", workflow="trip-planner")
    _make_run(gw, "run-b", t0 + timedelta(hours=1), "failed", agent_id="writer", session_id="s2", workflow="report")
    _make_run(gw, "run-c", t0 + timedelta(hours=2), None, session_id="s1", workflow="trip-planner")
    _make_run(gw, "run-d", t0 + timedelta(days=1), "cancelled", agent_id="planner")

    def ids(**params: Any) -> list[str]:
        return [r["id"] for r in gw.get("/api/runs", **params)["data"]]

    assert ids() == ["run-d", "run-c", "run-b", "run-a"]  # newest first
    assert ids(agent="planner") == ["run-d", "run-a"]
    assert ids(agent="writer") == ["run-b"]
    assert ids(session="s1") == ["run-c", "run-a"]
    assert ids(workflow="trip-planner") == ["run-c", "run-a"]
    assert ids(status="running") == ["run-c"]
    assert ids(status="failed") == ["run-b"]
    assert ids(agent="planner", status="succeeded") == ["run-a"]
    assert ids(**{"from": iso(t0 + timedelta(hours=1))}) == ["run-d", "run-c", "run-b"]  # from is inclusive
    assert ids(to=iso(t0 + timedelta(hours=2))) == ["run-b", "run-a"]  # to is exclusive
    assert ids(**{"from": "2025-04-01T10:00:00+00:00", "to": "2025-04-02T00:00:00"}) == ["run-c", "run-b"]
    assert ids(limit=2) == ["run-d", "run-c"]
    assert ids(limit=2, offset=2) == ["run-b", "run-a"]
    assert ids(offset=10) == []
    assert ids(agent="nobody") == []

    for params, param in (({"from": "nope"}, "from"), ({"to": "x"}, "to"), ({"limit": 0}, "limit")):
        assert error_of(gw.api("GET", "/api/runs", params=params))["param"] == param
    assert error_of(gw.api("GET", "/api/runs", params={"limit": "many"}))["param"] == "limit"
    assert error_of(gw.api("GET", "/api/runs", params={"offset": -1}))["param"] == "offset"
    error_of(gw.api("GET", "/api/runs", headers={"authorization": "Bearer adm-wrong"}), 401)
    error_of(gw.api("GET", "/api/runs/run-nope"), 404)


def test_step_strings_with_del_or_c1_controls_are_refused(gw: Harness) -> None:
    for bad in ("tool\x7fname", "tool\x85name", "tool\x9bname"):
        resp = gw.v1("POST", "/v1/runs/run-controls/steps", json={"name": bad})
        assert resp.status_code == 400, bad
        assert resp.json()["error"]["param"] == "steps[0].name"
    assert gw.api("GET", "/api/runs/run-controls").status_code == 404

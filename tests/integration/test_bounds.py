"""Extreme input never gets a 500 (issue 5, rows 4-9), against a real server on SQLite and PostgreSQL.

Every refusal is a 400 in the OpenAI shape naming the field; every value at a bound is accepted and read
back exactly; sums at the bounds answer exactly; absurd provider numbers are clamped, flagged and recorded.
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from tests.harness import Harness

MAX_TOKENS = 1_000_000_000
MAX_COST_NANOS = 10**15  # $1,000,000
USAGE_FIELDS = ("input_tokens", "cached_input_tokens", "cache_write_tokens", "output_tokens", "reasoning_tokens")
HELLO = [{"role": "user", "content": "hello there world"}]
OUT_OF_RANGE = ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "1969-12-31T23:59:59Z"]


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def assert_400(resp: httpx.Response, param: str, fragment: str, code: str = "invalid_request") -> None:
    assert resp.status_code == 400, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "code", "param"}
    assert (err["type"], err["code"], err["param"]) == ("invalid_request_error", code, param), err
    assert fragment in err["message"], err["message"]


def steps(gw: Harness, run_id: str, body: Any) -> httpx.Response:
    return gw.v1("POST", f"/v1/runs/{run_id}/steps", json=body)


# -- row 4: timestamps out of range are a 400 naming the field, wherever they appear ---------------------------


@pytest.mark.parametrize("ts", OUT_OF_RANGE)
def test_out_of_range_timestamps_are_400_naming_the_field(gw: Harness, ts: str) -> None:
    run = uid("run")
    assert gw.v1("POST", "/v1/runs", json={"run_id": run}).status_code == 201
    fragment = "from 1970-01-01T00:00:00Z to 9999-12-31T23:59:59Z"
    assert_400(gw.v1("POST", "/v1/runs", json={"run_id": uid("run"), "started_at": ts}), "started_at", fragment)
    assert_400(steps(gw, run, {"name": "s", "started_at": ts}), "steps[0].started_at", fragment)
    assert_400(steps(gw, run, [{"name": "a"}, {"name": "b", "ended_at": ts}]), "steps[1].ended_at", fragment)
    assert_400(gw.v1("POST", f"/v1/runs/{run}/end", json={"ended_at": ts}), "ended_at", fragment)
    for path in ("/api/runs", "/api/analytics/costs"):
        for name in ("from", "to"):
            assert_400(gw.api("GET", path, params={name: ts}), name, fragment)
    price = {"model": "priced-x", "input_mtok": "1", "output_mtok": "2", "effective_from": ts}
    assert_400(gw.api("POST", "/api/prices", json=price), "effective_from", fragment)
    # Nothing of it was stored: the run has no steps and is still running; no price was added.
    got = gw.get(f"/api/runs/{run}")
    assert (got["status"], got["steps"], got["ended_at"]) == ("running", [], None)
    assert gw.get("/api/prices")["data"] == []


def test_timestamps_at_the_edges_of_the_range_are_kept_exactly(gw: Harness) -> None:
    run = uid("run")
    body = {"name": "edge", "started_at": "1970-01-01T01:00:00+01:00", "ended_at": "9999-12-31T23:59:59.999999Z"}
    assert steps(gw, run, body).status_code == 201
    step = gw.get(f"/api/runs/{run}")["steps"][0]
    assert (step["started_at"], step["ended_at"]) == ("1970-01-01T00:00:00+00:00", "9999-12-31T23:59:59.999999+00:00")
    assert gw.get("/api/runs", **{"from": "1970-01-01T00:00:00Z", "to": "9999-12-31T23:59:59Z"})["data"]


# -- row 5: every number the API accepts has a documented bound ------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "param", "fragment"),
    [
        ("usage", {"input_tokens": 2**63}, "steps[0].usage.input_tokens", "integer from 0 to 1000000000"),
        ("usage", {"reasoning_tokens": MAX_TOKENS + 1}, "steps[0].usage.reasoning_tokens", "from 0 to 1000000000"),
        ("usage", {"output_tokens": -1}, "steps[0].usage.output_tokens", "from 0 to 1000000000"),
        ("attempt", 2**63, "steps[0].attempt", "integer from 1 to 1000"),
        ("attempt", 2**31, "steps[0].attempt", "integer from 1 to 1000"),
        ("attempt", 1001, "steps[0].attempt", "integer from 1 to 1000"),
        ("latency_ms", 1e300, "steps[0].latency_ms", "from 0 to 31536000000"),
        ("cost_usd", "1e10", "steps[0].cost_usd", "decimal from 0 to 1000000 dollars"),
        ("cost_usd", "5000000000", "steps[0].cost_usd", "decimal from 0 to 1000000 dollars"),
        ("cost_usd", "9e999999999", "steps[0].cost_usd", "decimal from 0 to 1000000 dollars"),
        ("cost_usd", "1000000.01", "steps[0].cost_usd", "decimal from 0 to 1000000 dollars"),
        ("cost_usd", 1e30, "steps[0].cost_usd", "decimal from 0 to 1000000 dollars"),
        ("cost_usd", "-0.01", "steps[0].cost_usd", "decimal from 0 to 1000000 dollars"),
        ("cost_usd", "NaN", "steps[0].cost_usd", "decimal from 0 to 1000000 dollars"),
        ("cost_usd", "lots", "steps[0].cost_usd", "decimal from 0 to 1000000 dollars"),
    ],
)
def test_step_numbers_past_their_bound_are_400(gw: Harness, field: str, value: Any, param: str, fragment: str) -> None:
    run = uid("run")
    assert_400(steps(gw, run, {"name": "s", field: value}), param, fragment)
    assert gw.api("GET", f"/api/runs/{run}").status_code == 404  # nothing stored, not even the run


def test_step_numbers_at_their_bounds_are_kept_exactly(gw: Harness) -> None:
    run = uid("run")
    usage = dict.fromkeys(USAGE_FIELDS, MAX_TOKENS)
    body = {"name": "max", "usage": usage, "attempt": 1000, "latency_ms": 31_536_000_000, "cost_usd": "1000000"}
    assert steps(gw, run, body).status_code == 201
    step = gw.get(f"/api/runs/{run}")["steps"][0]
    assert [step[f] for f in USAGE_FIELDS] == [MAX_TOKENS] * 5
    assert (step["attempt"], step["latency_ms"]) == (1000, 31_536_000_000)
    assert (step["cost_nanos"], step["cost_usd"]) == (MAX_COST_NANOS, "1000000.000000000")
    assert step["cost_source"] == "reported"


def test_cost_usd_rounds_to_the_nano_dollar(gw: Harness) -> None:
    run = uid("run")
    body = [{"name": "a", "cost_usd": "0.0000000015"}, {"name": "b", "cost_usd": 0.1}]
    assert steps(gw, run, body).status_code == 201
    assert [s["cost_nanos"] for s in gw.get(f"/api/runs/{run}")["steps"]] == [2, 100_000_000]


def test_a_computed_cost_past_the_bound_is_clamped_and_flagged(gw: Harness) -> None:
    price = {"model": "priced-dear", "input_mtok": "10000", "output_mtok": "10000"}
    assert gw.api("POST", "/api/prices", json=price).status_code == 201
    run = uid("run")
    usage = {"input_tokens": MAX_TOKENS, "output_tokens": MAX_TOKENS}  # $20M at $10,000/MTok
    assert steps(gw, run, {"name": "m", "model": "priced-dear", "usage": usage}).status_code == 201
    step = gw.get(f"/api/runs/{run}")["steps"][0]
    assert (step["cost_nanos"], step["cost_source"]) == (MAX_COST_NANOS, "clamped")


@pytest.mark.parametrize("priority", [2**63, 2**31, -(2**31) - 1, 1_000_001, 1.5, "1"])
def test_provider_key_priority_out_of_range_is_400(gw: Harness, priority: Any) -> None:
    body = {"name": "p", "kind": "mock", "models": ["x-*"], "priority": priority}
    assert_400(gw.api("POST", "/api/provider-keys", json=body), "priority", "integer from -1000000 to 1000000")


def test_provider_key_priority_at_the_bounds_is_kept(gw: Harness) -> None:
    for priority in (-1_000_000, 1_000_000):
        body = {"name": f"p{priority}", "kind": "mock", "models": ["x-*"], "priority": priority}
        resp = gw.api("POST", "/api/provider-keys", json=body)
        assert resp.status_code == 201, resp.text
    listed = {k["name"]: k["priority"] for k in gw.get("/api/provider-keys")["data"]}
    assert (listed["p-1000000"], listed["p1000000"]) == (-1_000_000, 1_000_000)


# -- row 6: sums at the bounds cannot overflow on either store -------------------------------------------------


def test_totals_at_the_bounds_are_exact_on_every_rollup(gw: Harness) -> None:
    """20,000 events at the per-event maximum: $2e10 is 2e19 nano-dollars, past 2^63 (where SQLite's SUM
    raised) and past 2^64 (where orjson stops). Every rollup answers 200 with the exact totals."""
    run, session, n = uid("run"), uid("sess"), 20_000
    assert gw.v1("POST", "/v1/runs", json={"run_id": run, "session_id": session}).status_code == 201
    usage = dict.fromkeys(USAGE_FIELDS, MAX_TOKENS)
    for batch in range(n // 1000):
        body = [
            {"id": f"s{batch}-{i}", "name": "max", "usage": usage, "cost_usd": "1000000", "session_path": "/p"}
            for i in range(1000)
        ]
        resp = steps(gw, run, body)
        assert resp.status_code == 201, resp.text
    cost, tokens = n * MAX_COST_NANOS, n * MAX_TOKENS
    expected = {
        "cost_nanos": cost,
        "cost_usd": "20000000000.000000000",
        **dict.fromkeys(USAGE_FIELDS, tokens),
        "total_tokens": 2 * tokens,
    }

    def check(totals: dict[str, Any]) -> None:
        assert {k: totals[k] for k in expected} == expected

    listed = gw.get("/api/runs", session=session)["data"]
    assert [r["id"] for r in listed] == [run]
    check(listed[0]["totals"])
    assert listed[0]["totals"]["steps"] == n
    got = gw.get(f"/api/runs/{run}")
    check(got["totals"])
    assert len(got["steps"]) == n
    sess = gw.get(f"/api/sessions/{session}")
    check(sess["totals"])
    assert [(p["path"], p["cost_nanos"], p["count"]) for p in sess["paths"]] == [("/p", cost, n)]
    for group_by in ("workspace", "run", "session"):
        rows = gw.get("/api/analytics/costs", group_by=group_by)["data"]
        assert len(rows) == 1
        check(rows[0])
    day = gw.get("/api/analytics/costs", group_by="workspace", interval="day")["data"]
    assert sum(r["cost_nanos"] for r in day) == cost


# -- row 7: JSON that could not be read back is refused at ingest ----------------------------------------------


def nested(depth: int) -> Any:
    value: Any = "leaf"
    for i in range(depth):
        value = {"k": value} if i % 2 else [value]
    return value


def test_json_nested_too_deep_is_400_and_never_stored(gw: Harness) -> None:
    run = uid("run")
    for field in ("input", "output", "attributes"):
        for depth in (33, 300):
            value = nested(depth) if field != "attributes" else {"a": nested(depth - 1)}
            assert_400(steps(gw, run, {"name": "s", field: value}), f"steps[0].{field}", "more than 32 levels deep")
    assert_400(gw.v1("POST", "/v1/runs", json={"run_id": run, "metadata": {"a": nested(32)}}), "metadata", "32 levels")
    assert gw.api("GET", f"/api/runs/{run}").status_code == 404
    assert gw.v1("POST", "/v1/runs", json={"run_id": run}).status_code == 201
    assert_400(gw.v1("POST", f"/v1/runs/{run}/end", json={"output": nested(33)}), "output", "32 levels deep")
    assert gw.get(f"/api/runs/{run}")["status"] == "running"


def test_json_at_the_depth_limit_is_stored_and_read_back(gw: Harness) -> None:
    run = uid("run")
    deep = nested(32)
    body = {"name": "s", "input": deep, "output": deep, "attributes": {"a": nested(31)}}
    assert gw.v1("POST", "/v1/runs", json={"run_id": run, "metadata": {"a": nested(31)}}).status_code == 201
    assert steps(gw, run, body).status_code == 201
    assert gw.v1("POST", f"/v1/runs/{run}/end", json={"output": deep}).status_code == 200
    got = gw.get(f"/api/runs/{run}")
    assert (got["metadata"], got["output"]) == ({"a": nested(31)}, deep)
    step = got["steps"][0]
    assert (step["input"], step["output"], step["attributes"]) == (deep, deep, {"a": nested(31)})


def test_json_larger_than_one_mib_is_400(gw: Harness) -> None:
    run = uid("run")
    big = "x" * (1 << 20)  # 1 MiB of text is 1 MiB + 2 bytes as JSON
    assert_400(steps(gw, run, {"name": "s", "input": big}), "steps[0].input", "larger than 1048576 bytes")
    assert_400(steps(gw, run, {"name": "s", "output": {"a": big}}), "steps[0].output", "larger than 1048576 bytes")
    assert steps(gw, run, {"name": "s", "input": "x" * ((1 << 20) - 2)}).status_code == 201


# -- row 8: absurd prices are refused --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("input_mtok", "1e400"),
        ("input_mtok", "-1"),
        ("output_mtok", "NaN"),
        ("output_mtok", "Infinity"),
        ("input_mtok", "cheap"),
        ("input_mtok", "0.1234567891"),  # 10 decimal places
        ("input_mtok", "0." + "1" * 40),  # would not fit the VARCHAR(32) column
        ("cached_input_mtok", "10000.000000001"),
        ("cache_write_mtok", True),
        ("input_mtok", None),
    ],
)
def test_absurd_price_rates_are_400(gw: Harness, field: str, value: Any) -> None:
    body = {"model": "priced-x", "input_mtok": "1", "output_mtok": "2", field: value}
    resp = gw.api("POST", "/api/prices", json=body)
    assert_400(resp, field, "must be a decimal from 0 to 10000 (dollars per million tokens) with at most 9 decimal")
    assert gw.get("/api/prices")["data"] == []


def test_price_rates_at_the_bounds_are_kept_as_fixed_point(gw: Harness) -> None:
    body = {"model": "priced-x", "input_mtok": "1E+4", "output_mtok": "0.000000001", "cached_input_mtok": 0}
    resp = gw.api("POST", "/api/prices", json=body)
    assert resp.status_code == 201, resp.text
    row = gw.get("/api/prices")["data"][0]
    assert (row["input_mtok"], row["output_mtok"], row["cached_input_mtok"]) == ("10000", "0.000000001", "0")


# -- row 9: a provider's absurd numbers are clamped, flagged and always recorded -------------------------------


def chat(gw: Harness, mock_usage: dict[str, Any], *, stream: bool = False) -> tuple[httpx.Response, str, str]:
    request_id, run = uid("req"), uid("run")
    body: dict[str, Any] = {"model": "gpt-4o-mini", "messages": HELLO, "metadata": {"mock_usage": mock_usage}}
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    headers = {"x-request-id": request_id, "alephant-run-id": run}
    return gw.v1("POST", "/v1/chat/completions", json=body, headers=headers), request_id, run


@pytest.mark.parametrize(
    ("mock_usage", "tokens", "nanos"),
    [
        # 2^63 prompt tokens: kept as 1e9, priced at $0.15/MTok (150 nano-dollars a token) → $150.
        ({"prompt_tokens": 2**63, "completion_tokens": 9}, (MAX_TOKENS, 9), MAX_TOKENS * 150 + 9 * 600),
        ({"prompt_tokens": 6, "completion_tokens": 2**64 - 1}, (6, MAX_TOKENS), 6 * 150 + MAX_TOKENS * 600),
        ({"prompt_tokens": 6, "completion_tokens": 9, "cost": "10000000000"}, (6, 9), MAX_COST_NANOS),
        ({"prompt_tokens": 6, "completion_tokens": 9, "cost": 1e30}, (6, 9), MAX_COST_NANOS),
    ],
)
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_absurd_provider_usage_is_clamped_flagged_and_recorded(
    gw: Harness, mock_usage: dict[str, Any], tokens: tuple[int, int], nanos: int, stream: bool
) -> None:
    resp, request_id, run = chat(gw, mock_usage, stream=stream)
    assert resp.status_code == 200, resp.text
    # The client gets the provider's answer untouched, absurd numbers and all (a stream's headers go out
    # before its usage arrives, so only a plain answer carries the cost headers).
    if stream:
        assert "alephant-cost-source" not in resp.headers
        assert f'"prompt_tokens":{mock_usage["prompt_tokens"]}'.encode() in resp.content
        assert resp.content.endswith(b"data: [DONE]\n\n")
    else:
        assert resp.json()["usage"] == mock_usage
        assert resp.headers["alephant-cost-source"] == "clamped"
        assert resp.headers["alephant-cost-usd"] == f"{nanos // 10**9}.{nanos % 10**9:09d}"
    row = gw.get(f"/api/requests/{request_id}")
    assert (row["status"], row["input_tokens"], row["output_tokens"]) == ("ok", *tokens)
    assert (row["cost_nanos"], row["cost_source"]) == (nanos, "clamped")
    step = gw.get(f"/api/runs/{run}")["steps"][0]
    assert (step["kind"], step["input_tokens"], step["output_tokens"]) == ("model_call", *tokens)
    assert (step["cost_nanos"], step["cost_source"]) == (nanos, "clamped")


def test_sane_provider_usage_is_not_flagged(gw: Harness) -> None:
    resp, request_id, _ = chat(gw, {"prompt_tokens": 6, "completion_tokens": 9, "cost": "0.25"})
    assert resp.status_code == 200
    assert (resp.headers["alephant-cost-source"], resp.headers["alephant-cost-usd"]) == ("reported", "0.250000000")
    assert gw.get(f"/api/requests/{request_id}")["cost_source"] == "reported"

"""Cost rollups over a known dataset: every group_by, exact sums, no double counting, time filters,
day buckets, session paths and totals, and workspace isolation.

The dataset (all model calls say 'hello there world': 6 prompt + 9 completion tokens):

   id  key      agent    dept      run    session  path          customer  prompt     model          nano$
   R1  planner  planner  research  run-1  sess-A   /plan         acme      planner    gpt-4o-mini     6 300
   R2  planner  planner  research  run-1  sess-A   /plan/search  acme      search     gpt-4o-mini     6 300
   R3  planner  planner  research  run-1  sess-A   /plan/search  acme      -          priced-alpha   24 000
   R4  closer   closer   sales     run-2  sess-B   /summarize    globex    summarize  gpt-4o-mini     6 300
   R5  closer   closer   sales     -      -        -             globex    -          gpt-4o-mini     6 300 (streamed)
   R6  unbound  -        research  -      -        -             -         -          priced-alpha   24 000
   R7  unbound  -        research  -      sess-B   /summarize    -         -          gpt-4o-mini     6 300
   S1  planner  planner  research  run-1  sess-A   /plan/search  -         -          (api_call) 12 500 000 (2025-01-10)
   S2  planner  planner  research  run-1  sess-A   /plan         -         -          gpt-4o-mini   435 000 (2025-01-11)

run-1 has workflow 'trip-planner'; run-2 none. R1-R3 are also model-call steps of run-1 and R4 of run-2: a rollup
must count them once. S2 is an external model call (1000 in / 200 cached / 500 out / 100 reasoning).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pytest

from agentledger.testing import ServerThread
from tests.harness import Harness, provision

HELLO = [{"role": "user", "content": "hello there world"}]
MINI = 6 * 150 + 9 * 600  # gpt-4o-mini: $0.15 / $0.60 per MTok
ALPHA = 6 * 1000 + 9 * 2000  # priced-alpha override: $1 / $2 per MTok
S1_NANOS = 12_500_000
S2_NANOS = 435_000
S2_USAGE = {"input_tokens": 1000, "cached_input_tokens": 200, "output_tokens": 500, "reasoning_tokens": 100}
DAY1, DAY2 = "2025-01-10", "2025-01-11"

GROUPS = (
    "workspace",
    "department",
    "agent",
    "virtual_key",
    "workflow",
    "session",
    "run",
    "model",
    "provider",
    "prompt",
    "property.customer",
)


def _entry(name: str, cost: int, **attrs: Any) -> dict[str, Any]:
    req = name.startswith("R")
    base = {
        "name": name,
        "requests": 1 if req else 0,
        "cost_nanos": cost,
        "input_tokens": 6 if req else 0,
        "cached_input_tokens": 0,
        "output_tokens": 9 if req else 0,
        "reasoning_tokens": 0,
        "agent": None,
        "run": None,
        "workflow": None,
        "session": None,
        "model": None,
        "provider": None,
        "prompt": None,
        "property.customer": None,
    }
    return {**base, **attrs}


def ledger(ws: str, keys: dict[str, str]) -> list[dict[str, Any]]:
    planner = dict(agent="planner", department="research", virtual_key=keys["planner"])
    closer = dict(agent="closer", department="sales", virtual_key=keys["closer"])
    unbound = dict(department="research", virtual_key=keys["unbound"])
    run1 = dict(run="run-1", workflow="trip-planner", session="sess-A")
    mini = dict(model="gpt-4o-mini", provider="openai")
    alpha = dict(model="priced-alpha", provider="openai")
    rows = [
        _entry("R1", MINI, **planner, **run1, **mini, prompt="planner", **{"property.customer": "acme"}),
        _entry("R2", MINI, **planner, **run1, **mini, prompt="search", **{"property.customer": "acme"}),
        _entry("R3", ALPHA, **planner, **run1, **alpha, **{"property.customer": "acme"}),
        _entry("R4", MINI, **closer, run="run-2", session="sess-B", **mini, prompt="summarize",
               **{"property.customer": "globex"}),
        _entry("R5", MINI, **closer, **mini, **{"property.customer": "globex"}),
        _entry("R6", ALPHA, **unbound, **alpha),
        _entry("R7", MINI, **unbound, session="sess-B", **mini),
        _entry("S1", S1_NANOS, **planner, **run1),
        _entry("S2", S2_NANOS, **planner, **run1, **mini, input_tokens=1000, cached_input_tokens=200,
               output_tokens=500, reasoning_tokens=100),
    ]  # fmt: skip
    return [{**r, "workspace": ws} for r in rows]


def expected(rows: list[dict[str, Any]], group_by: str) -> dict[Any, dict[str, int]]:
    out: dict[Any, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for r in rows:
        agg = out[r[group_by]]
        agg["events"] += 1
        for k in ("requests", "cost_nanos", "input_tokens", "cached_input_tokens", "output_tokens", "reasoning_tokens"):
            agg[k] += r[k]
    return {k: dict(v) for k, v in out.items()}


def observed(data: list[dict[str, Any]]) -> dict[Any, dict[str, int]]:
    fields = ("events", "requests", "cost_nanos", "input_tokens", "cached_input_tokens", "output_tokens")
    return {d["key"]: {f: d[f] for f in (*fields, "reasoning_tokens")} for d in data}


def costs(gw: Harness, **params: Any) -> list[dict[str, Any]]:
    body = gw.get("/api/analytics/costs", **params)
    assert body["group_by"] == params.get("group_by", "workspace")
    data: list[dict[str, Any]] = body["data"]
    return data


def build(gw: Harness) -> dict[str, str]:
    """Create the dataset in the docstring through the public API; returns the virtual keys by name."""
    assert gw.api("POST", "/api/departments", json={"id": "sales", "name": "Sales"}).status_code == 201
    resp = gw.api("POST", "/api/agents", json={"id": "closer", "department_id": "sales", "name": "Closer"})
    assert resp.status_code == 201, resp.text
    keys = {"unbound": gw.vk}
    ids = {}
    for agent in ("planner", "closer"):
        resp = gw.api("POST", "/api/virtual-keys", json={"name": f"{agent}-key", "agent_id": agent})
        assert resp.status_code == 201, resp.text
        keys[agent] = resp.json()["key"]
        ids[agent] = resp.json()["id"]
        assert resp.json()["agent_id"] == agent
    assert ids and resp.json()["department_id"] == "sales"
    resp = gw.api("POST", "/api/prices", json={"model": "priced-alpha", "input_mtok": "1", "output_mtok": "2"})
    assert resp.status_code == 201, resp.text

    resp = gw.v1(
        "POST",
        "/v1/runs",
        json={"run_id": "run-1", "session_id": "sess-A", "workflow": "trip-planner", "started_at": DAY1 + "T11:00Z"},
        headers={"authorization": f"Bearer {keys['planner']}"},
    )
    assert resp.status_code == 201, resp.text

    def call(key: str, request_id: str, model: str = "gpt-4o-mini", stream: bool = False, **headers: str) -> None:
        client = gw.openai(api_key=keys[key])
        h = {"x-request-id": request_id, **headers}
        if stream:
            assert list(client.chat.completions.create(model=model, messages=HELLO, stream=True, extra_headers=h))
        else:
            client.chat.completions.create(model=model, messages=HELLO, extra_headers=h)

    run1 = {"Alephant-Run-Id": "run-1", "alephant-session-id": "sess-A", "alephant-session-name": "Trip"}
    acme, globex = {"alephant-property-customer": "acme"}, {"alephant-property-customer": "globex"}
    call("planner", "r1", **run1, **acme, **{"alephant-session-path": "/plan", "alephant-prompt-id": "planner@1"})
    call("planner", "r2", **run1, **acme, **{"alephant-session-path": "/plan/search", "alephant-prompt-id": "search"})
    call("planner", "r3", "priced-alpha", **run1, **acme, **{"alephant-session-path": "/plan/search"})
    sess_b = {"alephant-session-id": "sess-B", "alephant-session-path": "/summarize"}
    call("closer", "r4", **sess_b, **globex, **{"Alephant-Run-Id": "run-2", "alephant-prompt-id": "summarize"})
    call("closer", "r5", stream=True, **globex)
    call("unbound", "r6", "priced-alpha")
    call("unbound", "r7", **sess_b)

    resp = gw.v1(
        "POST",
        "/v1/runs/run-1/steps",
        json=[
            {
                "id": "s1",
                "kind": "api_call",
                "name": "flights.search",
                "cost_usd": "0.0125",
                "session_path": "/plan/search",
                "started_at": DAY1 + "T12:00:00Z",
            },
            {
                "id": "s2",
                "kind": "model_call",
                "name": "summarize",
                "model": "gpt-4o-mini",
                "provider": "openai",
                "usage": S2_USAGE,
                "session_path": "/plan",
                "started_at": DAY2 + "T08:00:00Z",
            },
        ],
        headers={"authorization": f"Bearer {keys['planner']}"},
    )
    assert resp.status_code == 201, resp.text
    return {**keys, **{f"{k}_id": v for k, v in ids.items()}}


@pytest.fixture
def dataset(gw: Harness) -> list[dict[str, Any]]:
    keys = build(gw)
    unbound_id = gw.get("/api/requests/r6")["virtual_key_id"]
    return ledger(gw.workspace, {"planner": keys["planner_id"], "closer": keys["closer_id"], "unbound": unbound_id})


def test_group_by_exact_sums(gw: Harness, dataset: list[dict[str, Any]]) -> None:
    for group_by in GROUPS:
        data = costs(gw, group_by=group_by)
        assert observed(data) == expected(dataset, group_by), group_by
        assert len(data) == len({d["key"] for d in data}), f"{group_by}: one row per key"
        for d in data:
            assert d["total_tokens"] == d["input_tokens"] + d["output_tokens"]
            assert d["cost_usd"] == f"0.{d['cost_nanos']:09d}"
        # Every grouping partitions the same ledger.
        assert sum(d["cost_nanos"] for d in data) == 13_014_500, group_by
        assert sum(d["requests"] for d in data) == 7, group_by


def test_hand_checked_totals(gw: Harness, dataset: list[dict[str, Any]]) -> None:
    """The same numbers as the generic check, written out, so a bug in `expected()` cannot hide one."""
    (ws,) = costs(gw, group_by="workspace")
    assert ws["key"] == gw.workspace
    assert ws["cost_nanos"] == 5 * MINI + 2 * ALPHA + S1_NANOS + S2_NANOS == 13_014_500
    assert ws["cost_usd"] == "0.013014500"
    assert (ws["requests"], ws["events"]) == (7, 9)
    assert (ws["input_tokens"], ws["cached_input_tokens"], ws["output_tokens"]) == (1042, 200, 563)
    assert ws["reasoning_tokens"] == 100 and ws["cache_write_tokens"] == 0

    by_dep = {d["key"]: (d["cost_nanos"], d["requests"]) for d in costs(gw, group_by="department")}
    assert by_dep == {"research": (13_001_900, 5), "sales": (12_600, 2)}
    by_model = {d["key"]: (d["cost_nanos"], d["requests"]) for d in costs(gw, group_by="model")}
    assert by_model == {"gpt-4o-mini": (466_500, 5), "priced-alpha": (48_000, 2), None: (12_500_000, 0)}
    by_customer = {d["key"]: d["cost_nanos"] for d in costs(gw, group_by="property.customer")}
    assert by_customer == {"acme": 36_600, "globex": 12_600, None: 12_965_300}
    by_workflow = {d["key"]: d["cost_nanos"] for d in costs(gw, group_by="workflow")}
    assert by_workflow == {"trip-planner": 12_971_600, None: 42_900}
    # Rows come most expensive first.
    assert [d["key"] for d in costs(gw, group_by="run")] == ["run-1", None, "run-2"]


def test_an_indexed_property_groups_exactly_as_an_unindexed_one(gw: Harness, dataset: list[dict[str, Any]]) -> None:
    """Declaring a property changes where its rollup is read from (kept rows instead of the events), never the
    answer: the events without it stay under None, over whole hours and partial ones alike."""
    windows: list[dict[str, Any]] = [
        {},
        {"interval": "day"},
        {"from": "2020-01-01T00:00:00Z", "to": "2100-01-01T00:30:00Z"},
    ]
    now = gw.get("/api/analytics/costs", group_by="workspace", interval="hour")["data"][0]["bucket"]
    windows.append({"from": now[:14] + "17:31Z", "to": "2100-01-01T00:00:00Z"})  # starts inside an hour of events
    before = [costs(gw, group_by="property.customer", **w) for w in windows]
    assert gw.get("/api/analytics/properties") == {"data": []}
    resp = gw.api("POST", "/api/analytics/properties", json={"name": "customer"})
    assert (resp.status_code, resp.json()) == (201, {"name": "customer", "created": True})
    again = gw.api("POST", "/api/analytics/properties", json={"name": "customer"})
    assert (again.status_code, again.json()) == (200, {"name": "customer", "created": False})
    assert gw.get("/api/analytics/properties") == {"data": [{"name": "customer"}]}
    assert [costs(gw, group_by="property.customer", **w) for w in windows] == before
    assert {d["key"]: d["cost_nanos"] for d in before[0]} == {"acme": 36_600, "globex": 12_600, None: 12_965_300}


def test_gateway_calls_are_counted_once(gw: Harness, dataset: list[dict[str, Any]]) -> None:
    run1 = gw.get("/api/runs/run-1")
    # R1-R3 appear both as requests and as run-1's model-call steps; S1 and S2 are ingested steps.
    assert run1["totals"]["steps"] == 5 and run1["totals"]["model_calls"] == 4
    assert run1["totals"]["cost_nanos"] == 2 * MINI + ALPHA + S1_NANOS + S2_NANOS == 12_971_600
    by_run = {d["key"]: d for d in costs(gw, group_by="run")}
    assert by_run["run-1"]["cost_nanos"] == run1["totals"]["cost_nanos"]
    assert (by_run["run-1"]["requests"], by_run["run-1"]["events"]) == (3, 5)
    assert by_run["run-2"]["cost_nanos"] == gw.get("/api/runs/run-2")["totals"]["cost_nanos"] == MINI
    assert gw.get("/api/requests/r1")["cost_nanos"] == MINI


def test_time_filters_and_day_buckets(gw: Harness, dataset: list[dict[str, Any]]) -> None:
    def by_key(**params: Any) -> dict[Any, int]:
        return {d["key"]: d["cost_nanos"] for d in costs(gw, **params)}

    assert by_key(group_by="run", **{"from": DAY2 + "T00:00:00Z", "to": "2025-01-12T00:00:00Z"}) == {"run-1": S2_NANOS}
    assert by_key(group_by="run", to=DAY2 + "T00:00:00Z") == {"run-1": S1_NANOS}
    assert by_key(group_by="run", **{"from": DAY1 + "T12:00:00Z", "to": DAY1 + "T12:00:01Z"}) == {"run-1": S1_NANOS}
    assert by_key(group_by="run", to=DAY1 + "T12:00:00Z") == {}  # `to` is exclusive
    # Windows are whole hours: `from` rounds down, `to` up, and the answer says which window it counted.
    for group_by in ("run", "workspace"):
        body = gw.get(
            "/api/analytics/costs", group_by=group_by, **{"from": DAY1 + "T12:59:59Z", "to": DAY1 + "T12:00:01Z"}
        )
        assert (body["from"], body["to"]) == (DAY1 + "T12:00:00+00:00", DAY1 + "T13:00:00+00:00")
        assert [d["cost_nanos"] for d in body["data"]] == [S1_NANOS]
    edge = gw.get("/api/analytics/costs", group_by="workspace", to="9999-12-31T23:30:00Z")
    assert (edge["from"], edge["to"]) == (None, None)  # the last hour of the calendar: open-ended
    assert gw.get("/api/analytics/costs")["to"] is None
    recent = costs(gw, group_by="workspace", **{"from": "2025-02-01T00:00:00+00:00"})
    assert [(d["cost_nanos"], d["requests"], d["events"]) for d in recent] == [(5 * MINI + 2 * ALPHA, 7, 7)]

    body = gw.get("/api/analytics/costs", group_by="workspace", interval="day")
    assert body["interval"] == "day"
    today = {gw.get(f"/api/requests/r{i}")["started_at"][:10] for i in range(1, 8)}
    assert [(d["bucket"], d["cost_nanos"]) for d in body["data"][:2]] == [(DAY1, S1_NANOS), (DAY2, S2_NANOS)]
    assert {d["bucket"] for d in body["data"][2:]} == today
    assert sum(d["cost_nanos"] for d in body["data"][2:]) == 5 * MINI + 2 * ALPHA
    assert all(d["key"] == gw.workspace for d in body["data"])

    by_model_day = costs(gw, group_by="model", interval="day", to="2025-02-01T00:00:00Z")
    assert [(d["bucket"], d["key"], d["cost_nanos"]) for d in by_model_day] == [
        (DAY1, None, S1_NANOS),
        (DAY2, "gpt-4o-mini", S2_NANOS),
    ]
    hourly = costs(gw, group_by="workspace", interval="hour", to="2025-02-01T00:00:00Z")
    assert [d["bucket"] for d in hourly] == [DAY1 + "T12:00:00Z", DAY2 + "T08:00:00Z"]


def test_bad_parameters(gw: Harness) -> None:
    for params, param in (
        ({"group_by": "color"}, "group_by"),
        ({"group_by": "property."}, "group_by"),
        ({"group_by": "workspace", "interval": "week"}, "interval"),
        ({"group_by": "workspace", "from": "tuesday"}, "from"),
        ({"group_by": "workspace", "to": "2025-13-01"}, "to"),
    ):
        resp = gw.api("GET", "/api/analytics/costs", params=params)
        assert resp.status_code == 400, resp.text
        assert resp.json()["error"]["param"] == param
    assert gw.api("GET", "/api/analytics/costs", headers={"authorization": "Bearer nope"}).status_code == 401


def test_sessions_paths_and_totals(gw: Harness, dataset: list[dict[str, Any]]) -> None:
    a = gw.get("/api/sessions/sess-A")
    assert a["id"] == "sess-A" and a["name"] == "Trip"
    assert [r["id"] for r in a["runs"]] == ["run-1"]
    assert a["runs"][0]["totals"]["cost_nanos"] == 12_971_600
    assert [(p["path"], p["count"], p["cost_nanos"]) for p in a["paths"]] == [
        ("/plan", 2, MINI + S2_NANOS),  # R1, S2
        ("/plan/search", 3, MINI + ALPHA + S1_NANOS),  # R2, R3, S1
    ]
    assert a["totals"]["cost_nanos"] == 12_971_600
    assert (a["totals"]["input_tokens"], a["totals"]["output_tokens"]) == (3 * 6 + 1000, 3 * 9 + 500)
    assert a["totals"]["cached_input_tokens"] == 200 and a["totals"]["reasoning_tokens"] == 100
    assert (a["totals"]["requests"], a["totals"]["events"]) == (3, 5)
    assert [(p["requests"], p["input_tokens"]) for p in a["paths"]] == [(1, 6 + 1000), (2, 12)]

    # sess-B: R4 inside run-2, and R7 outside any run. Both are the session's.
    b = gw.get("/api/sessions/sess-B")
    assert [r["id"] for r in b["runs"]] == ["run-2"]
    assert [(p["path"], p["count"], p["cost_nanos"]) for p in b["paths"]] == [("/summarize", 2, 2 * MINI)]
    assert b["totals"]["cost_nanos"] == 2 * MINI
    assert (b["totals"]["input_tokens"], b["totals"]["output_tokens"]) == (12, 18)
    assert b["totals"]["cost_nanos"] == {d["key"]: d for d in costs(gw, group_by="session")}["sess-B"]["cost_nanos"]

    resp = gw.api("GET", "/api/sessions/sess-none")
    assert resp.status_code == 404 and resp.json()["error"]["param"] == "session_id"


def test_session_without_runs_and_unrouted_calls(gw: Harness) -> None:
    client = gw.openai()
    client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, extra_headers={"alephant-session-id": "loose"})
    client.chat.completions.create(
        model="gpt-4o-mini",
        messages=HELLO,
        extra_headers={"alephant-session-id": "loose", "alephant-session-path": "/a/b"},
    )
    s = gw.get("/api/sessions/loose")
    assert s["runs"] == []
    # The unrouted call (no path) is listed last, on both backends.
    assert [(p["path"], p["count"], p["requests"], p["cost_nanos"]) for p in s["paths"]] == [
        ("/a/b", 1, 1, MINI),
        (None, 1, 1, MINI),
    ]
    assert s["totals"]["cost_nanos"] == 2 * MINI and s["totals"]["input_tokens"] == 12
    assert (s["totals"]["requests"], s["totals"]["events"]) == (2, 2)


def test_workspace_isolation(gw: Harness, upstream: ServerThread, dataset: list[dict[str, Any]]) -> None:
    other = provision(gw.settings, upstream.url)

    def as_other(method: str, path: str, **kw: Any) -> Any:
        return gw.api(method, path, headers={"authorization": f"Bearer {other['admin']}"}, **kw)

    assert as_other("GET", "/api/runs").json() == {"data": [], "next_cursor": None}
    for path in ("/api/runs/run-1", "/api/runs/run-2", "/api/sessions/sess-A", "/api/requests/r1"):
        assert as_other("GET", path).status_code == 404, path
    for group_by in ("workspace", "run", "property.customer"):
        assert as_other("GET", "/api/analytics/costs", params={"group_by": group_by}).json()["data"] == []
    assert [w["id"] for w in as_other("GET", "/api/workspaces").json()["data"]] == [other["workspace"]]
    assert {a["id"] for a in as_other("GET", "/api/agents").json()["data"]} == {"planner"}  # its own planner

    # Ids are per workspace: the other workspace's run-1 is its own, and the first's steps are not parents.
    v1 = {"authorization": f"Bearer {other['vk']}"}
    resp = gw.v1("POST", "/v1/runs/run-1/steps", json={"name": "x", "parent_id": "s1"}, headers=v1)
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "parent_id"
    resp = gw.v1("POST", "/v1/runs", json={"run_id": "run-1"}, headers=v1)
    assert resp.status_code == 201 and resp.json()["created"] is True
    gw.openai(api_key=other["vk"]).chat.completions.create(
        model="gpt-4o-mini", messages=HELLO, extra_headers={"x-request-id": "r1", "Alephant-Run-Id": "run-1"}
    )
    theirs = as_other("GET", "/api/runs/run-1").json()
    assert theirs["totals"]["cost_nanos"] == MINI and theirs["totals"]["steps"] == 1

    # The first workspace sees exactly what it had.
    assert gw.get("/api/runs/run-1")["totals"]["cost_nanos"] == 12_971_600
    assert gw.get("/api/requests/r1")["virtual_key_id"] == dataset[0]["virtual_key"]
    (ws,) = costs(gw, group_by="workspace")
    assert ws["cost_nanos"] == 13_014_500 and ws["requests"] == 7

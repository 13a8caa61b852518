"""Step batches that carry their run: tracking headers and a `run` member create the run on first sight (no
POST /v1/runs first), a batch that disagrees with its run is refused, and run creation is single on one node.

Against a real server on SQLite and PostgreSQL, with exact bodies and costs read back through the query API.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from tests.harness import Harness

T0 = datetime(2025, 6, 2, 9, 0, tzinfo=UTC)
# gpt-4o-mini at $0.15 / $0.60 per MTok: 1000 in, 500 out = 150 + 300 micro-dollars.
MINI_USAGE = {"input_tokens": 1000, "output_tokens": 500}
MINI_NANOS = 450_000
TOOL_NANOS = 12_500_000  # "cost_usd": "0.0125"


def iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def post_steps(gw: Harness, run_id: str, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    return gw.v1("POST", f"/v1/runs/{run_id}/steps", json=body, headers=headers or {})


def created(resp: httpx.Response) -> dict[str, Any]:
    assert resp.status_code == 201, resp.text
    body: dict[str, Any] = resp.json()
    return body


def error(resp: httpx.Response, status: int) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body: dict[str, Any] = resp.json()
    return body


def err(message: str, param: str | None, code: str = "invalid_request", kind: str = "invalid_request_error") -> Any:
    return {"error": {"message": message, "type": kind, "code": code, "param": param}}


def add_agent(gw: Harness, agent_id: str) -> None:
    resp = gw.api("POST", "/api/agents", json={"id": agent_id, "department_id": gw.department})
    assert resp.status_code == 201, resp.text


def costs(gw: Harness, group_by: str) -> dict[Any, tuple[int, int]]:
    """group key → (cost_nanos, events)"""
    rows = gw.get("/api/analytics/costs", group_by=group_by)["data"]
    return {r["key"]: (r["cost_nanos"], r["events"]) for r in rows}


def step_count(gw: Harness, run_id: str) -> int:
    count: int = gw.get(f"/api/runs/{run_id}")["totals"]["steps"]
    return count


HEADERS = {
    "Alephant-Agent-Id": "planner",
    "alephant-session-id": "sess-trip",
    "alephant-session-name": "Trip to Lisbon",
    "alephant-session-path": "/plan",
    "alephant-property-team": "search",
    "alephant-property-customer": "acme",
}


def test_headers_create_the_run_and_go_on_every_step(gw: Harness) -> None:
    batch = [
        {"id": "search", "name": "web_search", "cost_usd": "0.0125", "started_at": iso(T0 + timedelta(seconds=5))},
        {
            "id": "summarize",
            "kind": "model_call",
            "name": "summarize",
            "model": "gpt-4o-mini",
            "provider": "openai",
            "usage": MINI_USAGE,
            "session_path": "plan//summarize/",  # a step's own path wins over the header's, normalized
            "started_at": iso(T0 + timedelta(seconds=2)),  # the earliest step: the run starts here
        },
    ]
    assert created(post_steps(gw, "run-h", batch, HEADERS)) == {"run_id": "run-h", "step_ids": ["search", "summarize"]}

    run = gw.get("/api/runs/run-h")
    assert (run["agent_id"], run["session_id"], run["department_id"]) == ("planner", "sess-trip", gw.department)
    assert (run["workflow"], run["name"], run["metadata"]) == (None, None, {})
    assert datetime.fromisoformat(run["started_at"]) == T0 + timedelta(seconds=2)
    props = {"team": "search", "customer": "acme"}
    assert [
        (s["id"], s["agent_id"], s["session_id"], s["session_path"], s["properties"], s["cost_nanos"])
        for s in run["steps"]
    ] == [
        ("summarize", "planner", "sess-trip", "/plan/summarize", props, MINI_NANOS),
        ("search", "planner", "sess-trip", "/plan", props, TOOL_NANOS),
    ]
    assert (run["totals"]["cost_nanos"], run["totals"]["steps"]) == (TOOL_NANOS + MINI_NANOS, 2)

    session = gw.get("/api/sessions/sess-trip")
    assert session["name"] == "Trip to Lisbon"
    assert [r["id"] for r in session["runs"]] == ["run-h"]
    assert [(p["path"], p["count"], p["cost_nanos"]) for p in session["paths"]] == [
        ("/plan", 1, TOOL_NANOS),
        ("/plan/summarize", 1, MINI_NANOS),
    ]
    assert session["totals"]["cost_nanos"] == TOOL_NANOS + MINI_NANOS

    # A second batch to the now existing run: its steps take the run's agent and session, and this batch's
    # properties (per-step data, never a conflict).
    headers = {"alephant-property-team": "billing"}
    created(post_steps(gw, "run-h", {"id": "charge", "name": "charge", "cost_usd": "0.0125"}, headers))
    charge = gw.get("/api/runs/run-h")["steps"][-1]
    assert (charge["agent_id"], charge["session_id"], charge["session_path"]) == ("planner", "sess-trip", None)
    assert charge["properties"] == {"team": "billing"}

    total = 2 * TOOL_NANOS + MINI_NANOS
    assert costs(gw, "property.team") == {"search": (TOOL_NANOS + MINI_NANOS, 2), "billing": (TOOL_NANOS, 1)}
    assert costs(gw, "property.customer") == {"acme": (TOOL_NANOS + MINI_NANOS, 2), None: (TOOL_NANOS, 1)}
    assert costs(gw, "agent") == {"planner": (total, 3)}
    assert costs(gw, "session") == {"sess-trip": (total, 3)}


def test_the_run_member_creates_the_run_with_its_workflow_and_name(gw: Harness) -> None:
    run_member = {
        "workflow": "trip-planner",
        "name": "Plan Lisbon",
        "metadata": {"ticket": "T-1"},
        "started_at": iso(T0),
        "agent_id": "planner",
        "session_id": "sess-w",
        "session_name": "Weekend",
    }
    steps = [{"id": "w1", "name": "plan", "kind": "workflow_step", "started_at": iso(T0 + timedelta(minutes=1))}]
    body = {"run": run_member, "steps": [*steps, {"id": "w2", "name": "book", "cost_usd": "0.0125"}]}
    assert created(post_steps(gw, "run-w", body))["step_ids"] == ["w1", "w2"]

    run = gw.get("/api/runs/run-w")
    assert (run["workflow"], run["name"], run["metadata"]) == ("trip-planner", "Plan Lisbon", {"ticket": "T-1"})
    assert (run["agent_id"], run["session_id"]) == ("planner", "sess-w")
    assert datetime.fromisoformat(run["started_at"]) == T0  # run.started_at wins over the steps'
    assert gw.get("/api/sessions/sess-w")["name"] == "Weekend"
    assert costs(gw, "workflow") == {"trip-planner": (TOOL_NANOS, 2)}

    # The same run member again is fine; name, metadata and started_at of a later batch change nothing.
    again = {"run": {**run_member, "name": "Renamed", "metadata": {}}, "steps": [{"id": "w3", "name": "pay"}]}
    created(post_steps(gw, "run-w", again))
    run = gw.get("/api/runs/run-w")
    assert (run["name"], run["metadata"], run["totals"]["steps"]) == ("Plan Lisbon", {"ticket": "T-1"}, 3)
    # POST /v1/runs finds the run the batch created.
    resp = gw.v1("POST", "/v1/runs", json={"run_id": "run-w"})
    assert (resp.status_code, resp.json()) == (200, {"run_id": "run-w", "created": False})


def test_a_batch_naming_another_agent_session_or_workflow_than_its_run_is_409(gw: Harness) -> None:
    add_agent(gw, "writer")
    first = {"run": {"workflow": "trip-planner"}, "steps": [{"id": "c1", "name": "plan"}]}
    created(post_steps(gw, "run-c", first, {"Alephant-Agent-Id": "planner"}))

    conflicts = [
        (
            {"Alephant-Agent-Id": "writer"},
            {},
            "Run 'run-c' has agent 'planner'; this batch names agent 'writer'.",
            "alephant-agent-id",
        ),
        (
            {},
            {"agent_id": "writer"},
            "Run 'run-c' has agent 'planner'; this batch names agent 'writer'.",
            "run.agent_id",
        ),
        (
            {"alephant-session-id": "sess-2"},
            {},
            "Run 'run-c' has no session; this batch names session 'sess-2'.",
            "alephant-session-id",
        ),
        (
            {},
            {"workflow": "report"},
            "Run 'run-c' has workflow 'trip-planner'; this batch names workflow 'report'.",
            "run.workflow",
        ),
    ]
    for headers, run_member, message, param in conflicts:
        resp = post_steps(gw, "run-c", {"run": run_member, "steps": [{"id": "c-no", "name": "x"}]}, headers)
        assert error(resp, 409) == err(message, param, code="run_conflict", kind="conflict_error")
    assert step_count(gw, "run-c") == 1, "a refused batch stores nothing"

    # The same values, or none, are fine.
    same = {"run": {"agent_id": "planner", "workflow": "trip-planner"}, "steps": [{"id": "c2", "name": "x"}]}
    created(post_steps(gw, "run-c", same, {"Alephant-Agent-Id": "planner"}))
    created(post_steps(gw, "run-c", [{"id": "c3", "name": "y"}]))
    assert step_count(gw, "run-c") == 3
    run = gw.get("/api/runs/run-c")
    assert (run["agent_id"], run["session_id"], run["workflow"]) == ("planner", None, "trip-planner")


def test_a_batch_disagreeing_with_a_run_made_by_a_gateway_call_is_409(gw: Harness) -> None:
    headers = {"Alephant-Run-Id": "run-gw", "Alephant-Agent-Id": "planner", "alephant-session-id": "sess-gw"}
    chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello there world"}]}
    assert gw.v1("POST", "/v1/chat/completions", json=chat, headers=headers).status_code == 200
    created(post_steps(gw, "run-gw", {"id": "g1", "name": "after"}, headers))
    resp = post_steps(gw, "run-gw", {"id": "g2", "name": "x"}, {"alephant-session-id": "sess-other"})
    expected = err(
        "Run 'run-gw' has session 'sess-gw'; this batch names session 'sess-other'.",
        "alephant-session-id",
        code="run_conflict",
        kind="conflict_error",
    )
    assert error(resp, 409) == expected
    assert [s["session_id"] for s in gw.get("/api/runs/run-gw")["steps"]] == ["sess-gw", "sess-gw"]


def test_headers_and_body_naming_different_values_are_400(gw: Harness) -> None:
    cases = [
        (
            {"Alephant-Agent-Id": "planner"},
            {"agent_id": "writer"},
            "agent_id",
            "alephant-agent-id",
            "writer",
            "planner",
        ),
        ({"alephant-session-id": "s-1"}, {"session_id": "s-2"}, "session_id", "alephant-session-id", "s-2", "s-1"),
        ({"alephant-session-name": "A"}, {"session_name": "B"}, "session_name", "alephant-session-name", "B", "A"),
    ]
    for headers, run_member, field, header, body_value, header_value in cases:
        resp = post_steps(gw, "run-dis", {"run": run_member, "steps": [{"name": "x"}]}, headers)
        message = (
            f"'run.{field}' is {body_value!r} but header {header!r} is {header_value!r}; send one, or the same in both."
        )
        assert error(resp, 400) == err(message, f"run.{field}")
    # The same value both ways is fine.
    resp = post_steps(gw, "run-dis", {"run": {"agent_id": "planner"}, "steps": [{"name": "x"}]}, HEADERS)
    created(resp)
    assert gw.get("/api/runs/run-dis")["agent_id"] == "planner"


def test_the_run_member_is_validated_like_post_v1_runs(gw: Harness) -> None:
    stamp = "an ISO 8601 timestamp from 1970-01-01T00:00:00Z to 9999-12-31T23:59:59Z"
    label = "must be a non-empty string of at most 256 characters."
    cases: list[tuple[Any, Any]] = [
        (
            {"foo": 1, "workflow": "w"},
            err(
                "'run.foo' is not a run field; a run takes agent_id, session_id, session_name, workflow, name, "
                "metadata, started_at.",
                "run.foo",
            ),
        ),
        (
            {"session_path": "/a"},
            err(
                "'run.session_path' is not a run field; a run takes agent_id, session_id, session_name, workflow, "
                "name, metadata, started_at.",
                "run.session_path",
            ),
        ),
        ("planner", err("'run' must be an object.", "run")),
        ({"started_at": "soon"}, err(f"'run.started_at' must be {stamp}.", "run.started_at")),
        ({"metadata": [1]}, err("'run.metadata' must be an object.", "run.metadata")),
        ({"workflow": ""}, err(f"'run.workflow' {label}", "run.workflow")),
        ({"name": "a\x85b"}, err("'run.name' contains control characters.", "run.name")),
        (
            {"agent_id": "no such"},
            err(
                "'run.agent_id' must start with a letter or digit and hold only letters, digits, '.', '_', ':', '-'.",
                "run.agent_id",
            ),
        ),
    ]
    for run_member, expected in cases:
        assert error(post_steps(gw, "run-val", {"run": run_member, "steps": [{"name": "x"}]}), 400) == expected
    # The same checks as POST /v1/runs, named without the prefix there.
    assert error(gw.v1("POST", "/v1/runs", json={"started_at": "soon"}), 400) == err(
        f"'started_at' must be {stamp}.", "started_at"
    )
    # A `run` member belongs beside `steps`: a lone one is not taken for a step (and dropped).
    lone = {"run": {"workflow": "w"}, "name": "x"}
    message = "'run' is read only beside 'steps': send {\"steps\": [...], \"run\": {...}}."
    assert error(post_steps(gw, "run-val", lone), 400) == err(message, "run")
    assert gw.api("GET", "/api/runs/run-val").status_code == 404


def test_alephant_run_id_must_name_the_path_run(gw: Harness) -> None:
    resp = post_steps(gw, "run-p", {"name": "x"}, {"Alephant-Run-Id": "run-other"})
    message = "Header 'alephant-run-id' is 'run-other' but the path names run 'run-p'; they must be the same."
    assert error(resp, 400) == err(message, "alephant-run-id", code="invalid_header")
    created(post_steps(gw, "run-p", {"name": "x"}, {"Alephant-Run-Id": "run-p"}))


def test_tracking_headers_are_checked_as_the_chat_route_checks_them(gw: Harness) -> None:
    chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    for headers in (
        {"Alephant-Agent-Id": "ghost"},
        {"alephant-property-_team": "x"},
        {"alephant-session-path": "//"},
        {"alephant-session-id": "has space"},
    ):
        on_chat = gw.v1("POST", "/v1/chat/completions", json=chat, headers=headers)
        on_steps = post_steps(gw, "run-t", {"name": "x"}, headers)
        assert on_chat.status_code == on_steps.status_code == 400
        assert on_steps.json() == on_chat.json()
    unknown = post_steps(gw, "run-t", {"name": "x"}, {"Alephant-Agent-Id": "ghost"})
    assert unknown.json() == err(
        "Agent 'ghost' does not exist in this workspace.", "alephant-agent-id", code="agent_not_found"
    )
    # From the body, the same error names the body's field (as POST /v1/runs always did).
    resp = post_steps(gw, "run-t", {"run": {"agent_id": "ghost"}, "steps": [{"name": "x"}]})
    assert error(resp, 400) == err("Agent 'ghost' does not exist in this workspace.", "run.agent_id", "agent_not_found")
    assert gw.api("GET", "/api/runs/run-t").status_code == 404


def test_a_key_bound_to_an_agent_may_not_name_another(gw: Harness) -> None:
    add_agent(gw, "writer")
    resp = gw.api("POST", "/api/virtual-keys", json={"name": "bound", "agent_id": "planner"})
    assert resp.status_code == 201, resp.text
    bound = {"authorization": f"Bearer {resp.json()['key']}"}
    message = "This virtual key belongs to agent 'planner' and may not act as 'writer'."
    resp = post_steps(gw, "run-b", {"name": "x"}, {**bound, "Alephant-Agent-Id": "writer"})
    assert error(resp, 403) == err(message, "alephant-agent-id", "agent_mismatch", "permission_error")
    resp = post_steps(gw, "run-b", {"run": {"agent_id": "writer"}, "steps": [{"name": "x"}]}, bound)
    assert error(resp, 403) == err(message, "run.agent_id", "agent_mismatch", "permission_error")
    # Without a header the key's own agent is the run's.
    created(post_steps(gw, "run-b", {"name": "x"}, bound))
    assert gw.get("/api/runs/run-b")["agent_id"] == "planner"


def test_post_v1_runs_keeps_its_contract_and_takes_the_headers(gw: Harness) -> None:
    resp = gw.v1("POST", "/v1/runs", json={"run_id": "run-s", "workflow": "w"})
    assert (resp.status_code, resp.json()) == (201, {"run_id": "run-s", "created": True})
    for _ in range(2):
        resp = gw.v1("POST", "/v1/runs", json={"run_id": "run-s", "workflow": "other"})
        assert (resp.status_code, resp.json()) == (200, {"run_id": "run-s", "created": False})
    assert gw.get("/api/runs/run-s")["workflow"] == "w"

    # The run id, agent and session may come as headers, as on chat calls.
    headers = {"Alephant-Run-Id": "run-hdr", "Alephant-Agent-Id": "planner", "alephant-session-id": "sess-hdr"}
    resp = gw.v1("POST", "/v1/runs", json={"workflow": "w"}, headers=headers)
    assert (resp.status_code, resp.json()) == (201, {"run_id": "run-hdr", "created": True})
    run = gw.get("/api/runs/run-hdr")
    assert (run["agent_id"], run["session_id"], run["workflow"]) == ("planner", "sess-hdr", "w")

    resp = gw.v1("POST", "/v1/runs", json={"run_id": "run-x"}, headers={"Alephant-Run-Id": "run-y"})
    message = "'run_id' is 'run-x' but header 'alephant-run-id' is 'run-y'; send one, or the same in both."
    assert error(resp, 400) == err(message, "run_id")
    resp = gw.v1("POST", "/v1/runs", json={"agent_id": "writer"}, headers={"Alephant-Agent-Id": "planner"})
    message = "'agent_id' is 'writer' but header 'alephant-agent-id' is 'planner'; send one, or the same in both."
    assert error(resp, 400) == err(message, "agent_id")
    resp = gw.v1("POST", "/v1/runs", json={}, headers={"Alephant-Agent-Id": "ghost"})
    assert error(resp, 400) == err(
        "Agent 'ghost' does not exist in this workspace.", "alephant-agent-id", "agent_not_found"
    )


async def test_concurrent_starts_of_one_run_create_it_once(gw: Harness) -> None:
    headers = {"authorization": f"Bearer {gw.vk}"}
    async with httpx.AsyncClient(base_url=gw.url, headers=headers, timeout=30, trust_env=False) as client:
        answers = await asyncio.gather(*(client.post("/v1/runs", json={"run_id": "run-race"}) for _ in range(20)))
    assert sorted((r.status_code, r.json()["created"]) for r in answers) == [(200, False)] * 19 + [(201, True)]


async def test_concurrent_first_batches_create_the_run_once(gw: Harness) -> None:
    """Ten first batches at once, each naming its own agent: one creates the run, the nine others find it
    made by another agent. Without the claim, several would find no run and each believe it made it."""
    agents = [f"agent-{i}" for i in range(10)]
    for agent in agents:
        add_agent(gw, agent)
    async with httpx.AsyncClient(base_url=gw.url, timeout=30, trust_env=False) as client:
        answers = await asyncio.gather(
            *(
                client.post(
                    "/v1/runs/run-many/steps",
                    json={"id": f"step-{agent}", "name": "x"},
                    headers={"authorization": f"Bearer {gw.vk}", "Alephant-Agent-Id": agent},
                )
                for agent in agents
            )
        )
    assert sorted(r.status_code for r in answers) == [201] + [409] * 9
    winner = agents[[r.status_code for r in answers].index(201)]
    run = gw.get("/api/runs/run-many")
    assert run["agent_id"] == winner and [s["id"] for s in run["steps"]] == [f"step-{winner}"]
    for agent, resp in zip(agents, answers, strict=True):
        if resp.status_code == 409:
            message = f"Run 'run-many' has agent {winner!r}; this batch names agent {agent!r}."
            assert resp.json() == err(message, "alephant-agent-id", "run_conflict", "conflict_error")

"""Ids, labels and parent links the stores cannot hold or render are refused up front (issue 5, fuzzing), against
a real server on SQLite and PostgreSQL: a 4xx naming the field, never a 500, never a row that cannot be read.

PostgreSQL refuses NUL in text and strings longer than their VARCHAR where SQLite takes both, and orjson
refuses a run document nested past 254 levels; each of those was a 500 on one store or both.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from agentledger.core.rollup import MAX_TREE_DEPTH
from tests.harness import Harness

NOT_IDS = ["a%00b", "a%0A", "a%1Bb", "-lead", "x" * 129, "a%C2%85b"]  # NUL, trailing LF, ESC, ..., NEL
CONTROLS = ["a\x00b", "a\x1b[0m", "a\x7f", "a\x85", "a\x9bb", "\x85a"]  # C0, DEL, C1; NEL where strip() drops it


def assert_error(resp: httpx.Response, status: int, code: str, param: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    err: dict[str, Any] = resp.json()["error"]
    assert set(err) == {"message", "type", "code", "param"}
    assert (err["code"], err["param"]) == (code, param), err
    return err


def test_a_path_id_that_is_not_an_id_is_404_on_api_reads(gw: Harness) -> None:
    for raw in NOT_IDS:
        for path, param in (("runs", "run_id"), ("sessions", "session_id"), ("requests", "request_id")):
            err = assert_error(gw.api("GET", f"/api/{path}/{raw}"), 404, "not_found", param)
            assert "does not exist" in err["message"]


def test_a_run_id_that_is_not_an_id_is_400_on_the_step_api(gw: Harness) -> None:
    for raw in NOT_IDS:
        assert_error(gw.v1("POST", f"/v1/runs/{raw}/end", json={}), 400, "invalid_request", "run_id")
        assert_error(gw.v1("POST", f"/v1/runs/{raw}/steps", json={"name": "s"}), 400, "invalid_request", "run_id")
    assert gw.get("/api/runs")["data"] == []
    # A well-formed id of no run is still a 404, as before.
    assert_error(gw.v1("POST", "/v1/runs/run-none/end", json={}), 404, "not_found", "run_id")


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"agent": "a\x00b"}, "agent"),
        ({"agent": "x" * 129}, "agent"),
        ({"session": "a\x00b"}, "session"),
        ({"session": "has space"}, "session"),
        ({"workflow": "a\x00b"}, "workflow"),
        ({"workflow": "w" * 257}, "workflow"),
        ({"status": "a\x00b"}, "status"),
        ({"status": "done"}, "status"),
    ],
)
def test_a_malformed_run_filter_is_400_naming_it(gw: Harness, params: dict[str, str], param: str) -> None:
    assert_error(gw.api("GET", "/api/runs", params=params), 400, "invalid_request", param)


def test_well_formed_run_filters_still_filter(gw: Harness) -> None:
    assert gw.v1("POST", "/v1/runs", json={"run_id": "r1", "agent_id": "planner", "workflow": "w 1"}).status_code == 201
    for params in ({"agent": "planner"}, {"workflow": "w 1"}, {"status": "running"}):
        assert [r["id"] for r in gw.get("/api/runs", **params)["data"]] == ["r1"], params
    assert gw.get("/api/runs", status="failed", agent="x" * 128)["data"] == []


@pytest.mark.parametrize("group_by", ["property.a\x00", "property.A", "property.a b", "property." + "p" * 65])
def test_group_by_a_property_needs_a_property_name(gw: Harness, group_by: str) -> None:
    assert_error(
        gw.api("GET", "/api/analytics/costs", params={"group_by": group_by}), 400, "invalid_request", "group_by"
    )


# -- virtual keys: department and agent ids -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "param", "fragment"),
    [
        ({"agent_id": "planner", "department_id": "d" * 200}, "department_id", "at most 128"),
        ({"agent_id": "planner", "department_id": ""}, "department_id", "non-empty"),
        ({"agent_id": "planner", "department_id": "a\x00b"}, "department_id", "control"),
        ({"agent_id": "planner", "department_id": "ops"}, "department_id", "belongs to department 'research'"),
        ({"agent_id": "planner", "department_id": "nowhere"}, "department_id", "belongs to department 'research'"),
        ({"agent_id": ""}, "agent_id", "non-empty"),
        ({"agent_id": "a" * 129}, "agent_id", "at most 128"),
        ({"agent_id": "ghost"}, "agent_id", "does not exist"),
        ({"department_id": ""}, "department_id", "non-empty"),
        ({"department_id": "d" * 200}, "department_id", "at most 128"),
        ({"department_id": "nowhere"}, "department_id", "does not exist"),
        ({}, "department_id", "non-empty"),
    ],
)
def test_virtual_key_ids_are_checked(gw: Harness, body: dict[str, Any], param: str, fragment: str) -> None:
    assert gw.api("POST", "/api/departments", json={"id": "ops", "name": "Ops"}).status_code == 201
    before = gw.get("/api/virtual-keys")["data"]
    err = assert_error(gw.api("POST", "/api/virtual-keys", json={"name": "k", **body}), 400, "invalid_request", param)
    assert fragment in err["message"], err["message"]
    assert gw.get("/api/virtual-keys")["data"] == before


def test_virtual_key_with_its_agents_department_or_none_is_created(gw: Harness) -> None:
    for body in ({"agent_id": "planner", "department_id": "research"}, {"agent_id": "planner", "department_id": None}):
        resp = gw.api("POST", "/api/virtual-keys", json={"name": "k", **body})
        assert resp.status_code == 201, resp.text
        assert (resp.json()["agent_id"], resp.json()["department_id"]) == ("planner", "research")


# -- labels: printable text only ------------------------------------------------------------------------------

LABELS = [
    ("/api/departments", {}, "name"),
    ("/api/agents", {"department_id": "research"}, "name"),
    ("/api/provider-keys", {"kind": "mock"}, "provider"),
    ("/api/provider-keys", {"kind": "mock"}, "name"),
    ("/api/prices", {"input_mtok": "1", "output_mtok": "2"}, "model"),
    ("/api/virtual-keys", {"department_id": "research"}, "name"),
]


@pytest.mark.parametrize(("path", "rest", "field"), LABELS, ids=[f"{p}:{f}" for p, _, f in LABELS])
def test_labels_with_control_characters_are_400_and_stored_nowhere(
    gw: Harness, path: str, rest: dict[str, Any], field: str
) -> None:
    before = gw.get(path)["data"]
    for bad in CONTROLS:
        err = assert_error(gw.api("POST", path, json={**rest, field: bad}), 400, "invalid_request", field)
        assert "control characters" in err["message"]
    assert gw.get(path)["data"] == before
    # Printable text, non-ASCII included, is still a label.
    assert gw.api("POST", path, json={**rest, field: "Ünïcode label ✓"}).status_code == 201


def test_label_and_id_fields_keep_their_other_rules(gw: Harness) -> None:
    assert_error(gw.api("POST", "/api/departments", json={"name": "   "}), 400, "invalid_request", "name")
    assert_error(gw.api("POST", "/api/departments", json={"name": "n" * 257}), 400, "invalid_request", "name")
    assert_error(gw.api("POST", "/api/departments", json={"id": "", "name": "x"}), 400, "invalid_request", "id")
    provider = {"kind": "mock", "provider": "p" * 65}
    assert_error(gw.api("POST", "/api/provider-keys", json=provider), 400, "invalid_request", "provider")
    resp = gw.api("POST", "/api/departments", json={"id": "sales", "name": "  Sales  "})
    assert resp.status_code == 201 and resp.json() == {"id": "sales", "name": "Sales"}
    too_long = {"department_id": "d" * 129, "name": "x"}
    assert_error(gw.api("POST", "/api/agents", json=too_long), 400, "invalid_request", "department_id")


def test_a_provider_base_url_with_control_characters_is_400(gw: Harness) -> None:
    before = gw.get("/api/provider-keys")["data"]
    for bad in ("http://a\x00b", "http://a/\x85", "https://a\x7f"):
        body = {"kind": "mock", "base_url": bad}
        assert_error(gw.api("POST", "/api/provider-keys", json=body), 400, "invalid_request", "base_url")
    assert gw.get("/api/provider-keys")["data"] == before


# -- the step API: parents, the batch wrapper, the run's agent ------------------------------------------------


def steps(gw: Harness, run_id: str, body: Any) -> httpx.Response:
    return gw.v1("POST", f"/v1/runs/{run_id}/steps", json=body)


@pytest.mark.parametrize(
    ("batch", "param", "fragment"),
    [
        ([{"id": "a", "name": "a", "parent_id": "a"}], "steps[0].parent_id", "a → a"),
        ([{"id": "ok", "name": "ok"}, {"id": "a", "name": "a", "parent_id": "a"}], "steps[1].parent_id", "a → a"),
        (
            [{"id": "a", "name": "a", "parent_id": "b"}, {"id": "b", "name": "b", "parent_id": "a"}],
            "steps[0].parent_id",
            "",
        ),
        (
            [
                {"id": "x", "name": "x", "parent_id": "c"},  # leads into the cycle but is not on it
                {"id": "c", "name": "c", "parent_id": "b"},
                {"id": "b", "name": "b", "parent_id": "c"},
            ],
            "steps[1].parent_id",
            "c → b → c",
        ),
    ],
    ids=["self", "self-second", "pair", "tail-into-cycle"],
)
def test_a_step_may_not_be_its_own_ancestor(gw: Harness, batch: list[Any], param: str, fragment: str) -> None:
    err = assert_error(steps(gw, "run-cycle", batch), 400, "invalid_request", param)
    assert "own ancestor" in err["message"] and fragment in err["message"], err["message"]
    assert_error(gw.api("GET", "/api/runs/run-cycle"), 404, "not_found", "run_id")


def test_steps_must_be_an_array(gw: Harness) -> None:
    err = assert_error(steps(gw, "run-wrap", {"steps": {"name": "s"}}), 400, "invalid_request", "steps")
    assert "array" in err["message"]
    assert_error(steps(gw, "run-wrap", {"steps": "s"}), 400, "invalid_request", "steps")
    assert_error(gw.api("GET", "/api/runs/run-wrap"), 404, "not_found", "run_id")


def test_an_unknown_agent_of_a_run_is_named_by_its_body_field(gw: Harness) -> None:
    err = assert_error(gw.v1("POST", "/v1/runs", json={"agent_id": "nope"}), 400, "agent_not_found", "agent_id")
    assert "'nope'" in err["message"]
    assert_error(gw.v1("POST", "/v1/runs", json={"agent_id": "a\x00"}), 400, "invalid_request", "agent_id")


# -- a parent chain of any length can be read back -------------------------------------------------------------


def tree_depth(nodes: list[dict[str, Any]]) -> int:
    deepest, stack = 0, [(n, 1) for n in nodes]
    while stack:
        node, level = stack.pop()
        deepest = max(deepest, level)
        stack += [(c, level + 1) for c in node["children"]]
    return deepest


def flatten(nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out, stack = [], list(reversed(nodes))
    while stack:
        node = stack.pop()
        out.append(node)
        stack += reversed(node["children"])
    return out


def test_a_600_deep_parent_chain_reads_back_within_the_depth_limit(gw: Harness) -> None:
    chain = [{"id": f"s{i}", "name": f"s{i}", "parent_id": f"s{i - 1}" if i else None} for i in range(600)]
    # One batch holds a chain deeper than orjson could render, and a second batch extends it.
    assert steps(gw, "run-deep", chain[:400]).status_code == 201
    assert steps(gw, "run-deep", chain[400:]).status_code == 201
    resp = gw.api("GET", "/api/runs/run-deep")
    assert resp.status_code == 200, resp.text[:500]
    run = resp.json()
    assert run["totals"]["steps"] == 600
    assert tree_depth(run["steps"]) == MAX_TREE_DEPTH
    nodes = flatten(run["steps"])
    assert sorted(n["id"] for n in nodes) == sorted(s["id"] for s in chain)  # each step exactly once
    assert {n["id"]: n["parent_id"] for n in nodes} == {s["id"]: s["parent_id"] for s in chain}  # parents kept
    # Levels 1 to 63 nest as they are; every deeper step is a child of the step at level 63, in order.
    host = run["steps"][0]
    for _ in range(MAX_TREE_DEPTH - 2):
        (host,) = host["children"]
    assert host["id"] == f"s{MAX_TREE_DEPTH - 2}"
    assert [c["id"] for c in host["children"]] == [f"s{i}" for i in range(MAX_TREE_DEPTH - 1, 600)]

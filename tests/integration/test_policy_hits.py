"""Policy hits through a real gateway, on SQLite and PostgreSQL: a monitor-mode policy that would block records a
monitor hit while the call goes through unchanged, an enforced block records an enforce hit, a policy's rate setting
its throttle, a replayed or retried x-request-id no second hit; `GET /api/policies/{id}/hits` pages newest first
with a cursor, filters by mode and time, answers 404 for an unknown policy and 400 naming a bad parameter; the hit
counts on `GET /api/policies`; a department admin sees their department's calls only."""

from __future__ import annotations

import time
from typing import Any

import httpx
import orjson

from tests.harness import Harness
from tests.integration.permissions_support import call, member, pat

CHAT = "/v1/chat/completions"


def policy(gw: Harness, **fields: Any) -> str:
    resp = gw.api("POST", "/api/policies", json={"scope": "workspace", **fields})
    assert resp.status_code == 201, resp.text
    return str(resp.json()["id"])


def chat(gw: Harness, model: str = "gpt-4o-mini", key: str | None = None, **headers: str) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hello"}]}
    if key is not None:
        headers["authorization"] = f"Bearer {key}"
    return gw.v1("POST", CHAT, content=orjson.dumps(body), headers={"content-type": "application/json", **headers})


def hits(gw: Harness, policy_id: str, **params: Any) -> dict[str, Any]:
    return dict(gw.get(f"/api/policies/{policy_id}/hits", **params))


def counts(gw: Harness, policy_id: str) -> tuple[dict[str, int], dict[str, int]]:
    row = next(p for p in gw.get("/api/policies")["data"] if p["id"] == policy_id)
    return row["hits_24h"], row["hits_7d"]


def test_a_monitor_policy_that_would_block_records_a_monitor_hit_and_changes_nothing(gw: Harness) -> None:
    trial = policy(
        gw, name="trial", mode="monitor", rules=[{"id": "no-mini", "action": "block", "when": {"models": ["gpt-4o*"]}}]
    )
    run = chat(gw, **{"x-request-id": "mon-run-1", "alephant-run-id": "run-mon"})
    assert run.status_code == 200 and run.headers["alephant-policy-decision"] == "allowed", run.text
    assert gw.fake.received[-1]["body"]["messages"] == [{"role": "user", "content": "hello"}]  # forwarded unchanged
    lone = chat(gw, **{"x-request-id": "mon-lone-1"})  # outside a run: read off its request row
    assert lone.status_code == 200, lone.text
    step = next(s for s in gw.get("/api/runs/run-mon")["steps"] if s["kind"] == "policy_check")
    got = hits(gw, trial)
    assert got["next_cursor"] is None
    assert [(h["request_id"], h["run_id"], h["step_id"]) for h in got["data"]] == [
        ("mon-lone-1", None, None),
        ("mon-run-1", "run-mon", step["id"]),
    ]
    first = got["data"][1]
    assert {k: first[k] for k in ("policy_id", "policy_version", "rule_id", "mode", "decision")} == {
        "policy_id": trial,
        "policy_version": 1,
        "rule_id": "no-mini",
        "mode": "monitor",
        "decision": "blocked",
    }
    assert first["reason"] == f"policy 'trial' ({trial} v1) rule no-mini: blocks the call"
    assert (first["department_id"], first["agent_id"]) == (gw.department, None)
    assert first["virtual_key_id"] is not None and first["at"] == step["started_at"]
    # Nothing else changed: the calls are allowed on their rows, and no decision of theirs is in the audit log.
    assert gw.get("/api/requests/mon-run-1")["policy_decision"] == "allowed"
    assert gw.get("/api/audit-logs", action="decision.*")["data"] == []
    assert counts(gw, trial) == ({"enforce": 0, "monitor": 2}, {"enforce": 0, "monitor": 2})


def test_an_enforced_block_records_an_enforce_hit_and_the_monitor_twin_none(gw: Harness) -> None:
    deny = policy(gw, name="deny", settings={"models_deny": ["gpt-4o"]})
    twin = policy(gw, name="twin", mode="monitor", settings={"models_deny": ["gpt-4o"]})
    resp = chat(gw, "gpt-4o", **{"x-request-id": "blocked-1", "alephant-run-id": "run-block"})
    assert resp.status_code == 403 and resp.json()["error"]["code"] == "policy_blocked", resp.text
    assert chat(gw).status_code == 200  # not gpt-4o: no hit
    (hit,) = hits(gw, deny)["data"]
    assert (hit["mode"], hit["decision"], hit["rule_id"], hit["request_id"], hit["run_id"]) == (
        "enforce",
        "blocked",
        "setting:models_deny",
        "blocked-1",
        "run-block",
    )
    # It would have blocked what was blocked anyway: enforcing it would change nothing, so it has no hit.
    assert hits(gw, twin)["data"] == []
    assert counts(gw, deny) == ({"enforce": 1, "monitor": 0}, {"enforce": 1, "monitor": 0})


def test_a_replayed_or_retried_request_id_adds_no_second_hit(gw: Harness) -> None:
    trial = policy(gw, name="trial", mode="monitor", rules=[{"action": "block", "when": {}}])
    deny = policy(gw, name="deny", settings={"models_deny": ["gpt-4o"]})
    for _ in range(3):  # a replay of a completed id is answered from the store: nothing is evaluated again
        assert chat(gw, **{"x-request-id": "again-1", "alephant-run-id": "run-again"}).status_code == 200
    for _ in range(2):  # a refused id is tried again, and refused again: one call
        assert chat(gw, "gpt-4o", **{"x-request-id": "again-2"}).status_code == 403
    assert [h["request_id"] for h in hits(gw, trial)["data"]] == ["again-1"]  # again-2 was blocked anyway
    assert [h["request_id"] for h in hits(gw, deny)["data"]] == ["again-2"]
    assert counts(gw, trial)[0] == {"enforce": 0, "monitor": 1}


def test_a_policys_rate_setting_that_throttles_is_its_hit(gw: Harness) -> None:
    rate = policy(gw, name="rate", scope="department", scope_value=gw.department, settings={"requests_per_minute": 1})
    left = 60 - time.time() % 60
    if left < 5:
        time.sleep(left + 0.05)
    assert chat(gw).status_code == 200
    assert chat(gw, **{"x-request-id": "too-fast"}).status_code == 429
    (hit,) = hits(gw, rate)["data"]
    assert (hit["request_id"], hit["mode"], hit["decision"], hit["rule_id"], hit["policy_version"]) == (
        "too-fast",
        "enforce",
        "throttled",
        "setting:requests_per_minute",
        1,
    )
    assert hit["reason"] == (
        f"policy {rate} v1 setting requests_per_minute: more than 1 requests a minute (department:{gw.department})"
    )


def test_hits_page_newest_first_by_cursor_and_filter_by_mode_and_time(gw: Harness) -> None:
    both = policy(
        gw,
        name="both",
        rules=[{"id": "no-4o", "action": "block", "when": {"models": ["gpt-4o"]}}],
    )
    for i in range(3):
        assert chat(gw, "gpt-4o", **{"x-request-id": f"page-e{i}"}).status_code == 403
    # The same policy switched to monitor mode: version 2, whose hits would have blocked.
    body = {"name": "both", "scope": "workspace", "mode": "monitor"}
    changed = gw.api(
        "PUT", f"/api/policies/{both}", json={**body, "rules": [{"id": "no-4o", "action": "block", "when": {}}]}
    )
    assert changed.status_code == 200, changed.text
    for i in range(2):
        assert chat(gw, **{"x-request-id": f"page-m{i}"}).status_code == 200
    everything = hits(gw, both)["data"]
    assert [h["request_id"] for h in everything] == ["page-m1", "page-m0", "page-e2", "page-e1", "page-e0"]
    assert [(h["mode"], h["policy_version"]) for h in everything] == [("monitor", 2)] * 2 + [("enforce", 1)] * 3
    assert [h["at"] for h in everything] == sorted((h["at"] for h in everything), reverse=True)

    seen, cursor, pages = [], None, 0
    while True:
        page = hits(gw, both, limit=2, **({"cursor": cursor} if cursor else {}))
        seen += [h["id"] for h in page["data"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [h["id"] for h in everything] and pages == 3
    monitor = hits(gw, both, mode="monitor", limit=1)
    assert [h["request_id"] for h in monitor["data"]] == ["page-m1"]
    rest = hits(gw, both, mode="monitor", limit=1, cursor=monitor["next_cursor"])
    assert [h["request_id"] for h in rest["data"]] == ["page-m0"]
    assert [h["request_id"] for h in hits(gw, both, mode="enforce")["data"]] == ["page-e2", "page-e1", "page-e0"]
    middle = everything[2]["at"]
    assert [h["request_id"] for h in hits(gw, both, to=middle)["data"]] == ["page-e1", "page-e0"]
    assert [h["request_id"] for h in hits(gw, both, **{"from": middle})["data"]] == ["page-m1", "page-m0", "page-e2"]
    assert hits(gw, both, **{"from": "2000-01-01T00:00:00Z", "to": "2000-01-02T00:00:00Z"})["data"] == []
    assert counts(gw, both) == ({"enforce": 3, "monitor": 2}, {"enforce": 3, "monitor": 2})
    # Deleted, its hits stay readable (they happened); it is no longer listed with counts.
    assert gw.api("DELETE", f"/api/policies/{both}").status_code == 200
    assert len(hits(gw, both)["data"]) == 5


def test_an_unknown_policy_is_a_404_and_a_bad_parameter_a_400_naming_it(gw: Harness) -> None:
    known = policy(gw, name="known")
    missing = gw.api("GET", "/api/policies/pol_nope/hits")
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "policy_id", missing.text
    for params, param in (
        ({"limit": "0"}, "limit"),
        ({"limit": "1001"}, "limit"),
        ({"limit": "x"}, "limit"),
        ({"mode": "shadow"}, "mode"),
        ({"from": "yesterday"}, "from"),
        ({"to": "2026-13-01T00:00:00Z"}, "to"),
        ({"cursor": "not-a-cursor"}, "cursor"),
    ):
        resp = gw.api("GET", f"/api/policies/{known}/hits", params=params)
        assert resp.status_code == 400, (params, resp.text)
        assert resp.json()["error"]["param"] == param, resp.text
    assert hits(gw, known) == {"data": [], "next_cursor": None}


def test_a_department_admin_sees_their_departments_hits_only(gw: Harness) -> None:
    wide = policy(gw, name="wide", mode="monitor", rules=[{"id": "all", "action": "block", "when": {}}])
    assert chat(gw, **{"x-request-id": "ours-1"}).status_code == 200
    gw.api("POST", "/api/departments", json={"id": "far", "name": "Far"})
    key = gw.api("POST", "/api/virtual-keys", json={"name": "far", "department_id": "far"}).json()["key"]
    assert chat(gw, key=key, **{"x-request-id": "theirs-1"}).status_code == 200
    assert [h["request_id"] for h in hits(gw, wide)["data"]] == ["theirs-1", "ours-1"]
    token = pat(gw, member(gw, "department_admin", department_id=gw.department)["id"], ["read"])
    mine = call(gw, token, "GET", f"/api/policies/{wide}/hits")
    assert mine.status_code == 200 and [h["request_id"] for h in mine.json()["data"]] == ["ours-1"], mine.text
    listed = next(p for p in call(gw, token, "GET", "/api/policies").json()["data"] if p["id"] == wide)
    assert listed["hits_24h"] == {"enforce": 0, "monitor": 1}
    theirs = policy(gw, name="theirs", scope="department", scope_value="far")
    assert call(gw, token, "GET", f"/api/policies/{theirs}/hits").status_code == 404

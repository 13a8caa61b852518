"""Policies through a real gateway: settings (the most specific scope wins) and rules (they accumulate; block >
escalate > throttle > allow), each condition family, monitor mode, clamp and PII redaction (the fake upstream
shows what was forwarded), escalation approved / denied / timed out / resent, run guards and loop detection,
the pre-check endpoint, and every decision on the request row and the run's policy_check step.

The CRUD and versions run on SQLite and PostgreSQL; the decisions (pure logic over cached, compiled policies)
on SQLite.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import orjson
import pytest

from agentledger.testing import ServerThread
from tests.harness import Harness, running_gateway

CHAT = "/v1/chat/completions"
CARD = "4111 1111 1111 1111"  # Luhn-valid test card


@pytest.fixture
def lone(sqlite_url: str, tmp_path: Path, upstream: ServerThread) -> Iterator[Harness]:
    """A gateway on SQLite, escalations held briefly."""
    fake = upstream.config.app.state.fake
    fake.received.clear()
    fake.script.clear()
    with running_gateway(sqlite_url, tmp_path, upstream, approval_wait_s=0.3) as harness:
        yield harness


def policy(gw: Harness, **fields: Any) -> dict[str, Any]:
    fields.setdefault("name", "p")
    fields.setdefault("scope", "workspace")
    resp = gw.api("POST", "/api/policies", json=fields)
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


def chat(
    gw: Harness,
    text: str = "hello",
    *,
    model: str = "gpt-4o-mini",
    headers: dict[str, str] | None = None,
    key: str | None = None,
    **extra: Any,
) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": text}], **extra}
    hdrs = dict(headers or {})
    if key is not None:
        hdrs["authorization"] = f"Bearer {key}"
    return gw.v1("POST", CHAT, content=orjson.dumps(body), headers={"content-type": "application/json", **hdrs})


def refused(resp: httpx.Response, status: int, code: str) -> str:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"}, body
    assert body["error"]["code"] == code, body
    return str(body["error"]["message"])


def policy_step(gw: Harness, run_id: str) -> dict[str, Any]:
    steps = [s for s in gw.get(f"/api/runs/{run_id}")["steps"] if s["kind"] == "policy_check"]
    assert steps, "no policy_check step"
    return dict(steps[-1])


def forwarded(gw: Harness) -> dict[str, Any]:
    return dict(gw.fake.received[-1]["body"])


def test_crud_keeps_every_version(gw: Harness) -> None:
    created = policy(gw, name="models", settings={"models_deny": ["gpt-4o"]})
    assert (created["version"], created["mode"], created["settings"]) == (1, "enforce", {"models_deny": ["gpt-4o"]})
    pid = created["id"]
    update = {"name": "models", "scope": "workspace", "settings": {"models_deny": ["gpt-4o", "o3*"]}}
    replaced = gw.api("PUT", f"/api/policies/{pid}", json=update)
    assert replaced.status_code == 200 and replaced.json()["version"] == 2, replaced.text
    assert gw.get(f"/api/policies/{pid}")["settings"]["models_deny"] == ["gpt-4o", "o3*"]
    assert gw.api("DELETE", f"/api/policies/{pid}").status_code == 200
    assert gw.api("GET", f"/api/policies/{pid}").status_code == 404
    versions = gw.get(f"/api/policies/{pid}/versions")["data"]
    assert [(v["version"], v["change"]) for v in versions] == [(3, "delete"), (2, "update"), (1, "create")]
    assert versions[2]["settings"] == {"models_deny": ["gpt-4o"]}  # version 1 reads back as it was


def test_bad_policies_are_400s_naming_the_field(lone: Harness) -> None:
    typo = lone.api(
        "POST",
        "/api/policies",
        json={"name": "p", "scope": "workspace", "rules": [{"action": "block", "when": {"modles": ["x"]}}]},
    )
    assert typo.status_code == 400 and typo.json()["error"]["param"] == "rules[0].when.modles", typo.text
    assert "modles" in typo.json()["error"]["message"]
    missing = lone.api("POST", "/api/policies", json={"name": "p", "scope": "department", "scope_value": "nope"})
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "scope_value"
    first = lone.api("POST", "/api/policies", json={"id": "twice", "name": "p", "scope": "workspace"})
    assert first.status_code == 201, first.text
    again = lone.api("POST", "/api/policies", json={"id": "twice", "name": "p", "scope": "workspace"})
    assert again.status_code == 409 and again.json()["error"]["param"] == "id", again.text  # was a 500


def test_a_blocking_setting_is_a_403_naming_it_on_every_route_and_in_the_run(lone: Harness) -> None:
    p = policy(lone, name="no big models", settings={"models_deny": ["gpt-4o"]})
    run = "run-pol-1"
    msg = refused(chat(lone, model="gpt-4o", headers={"alephant-run-id": run}), 403, "policy_blocked")
    assert p["id"] in msg and "models_deny" in msg, msg
    assert chat(lone, model="gpt-4o-mini").status_code == 200
    lone.add_provider_key(name="claude", kind="anthropic", provider="anthropic", models=["claude-*"])
    policy(lone, name="no claude", settings={"models_deny": ["claude-*"]})
    resp = lone.v1(
        "POST",
        "/v1/messages",
        json={"model": "claude-haiku-4-5", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]},
    )
    assert resp.status_code == 403 and resp.json()["type"] == "error", resp.text
    assert resp.json()["error"]["type"] == "permission_error"
    assert resp.headers["alephant-policy-decision"] == "blocked"
    step = policy_step(lone, run)
    assert step["status"] == "error" and step["name"] == "policy check"
    got = step["attributes"]["policy"]
    assert (got["decision"], got["policy_id"], got["policy_version"], got["rule_id"], got["mode"]) == (
        "blocked",
        p["id"],
        1,
        "setting:models_deny",
        "enforce",
    )


def test_the_most_specific_setting_wins_and_rules_accumulate(lone: Harness) -> None:
    key, key_id = _new_key(lone, "eng")
    policy(lone, name="small models", settings={"models_allow": ["gpt-4o-mini"]})
    policy(lone, name="eng gets large", scope="department", scope_value="eng", settings={"models_allow": ["gpt-4o*"]})
    refused(chat(lone, model="gpt-4o"), 403, "policy_blocked")  # research: the workspace's allow-list
    assert chat(lone, model="gpt-4o", key=key).status_code == 200  # eng: its department's
    # A workspace rule cannot be overridden below: it blocks eng too.
    policy(lone, name="no gpt-4o at all", rules=[{"when": {"models": ["gpt-4o"]}, "action": "block"}])
    msg = refused(chat(lone, model="gpt-4o", key=key), 403, "policy_blocked")
    assert "r1" in msg


def test_monitor_mode_records_what_it_would_have_done(lone: Harness) -> None:
    p = policy(lone, name="trial", mode="monitor", rules=[{"when": {"models": ["gpt-4o-mini"]}, "action": "block"}])
    resp = chat(lone, headers={"alephant-run-id": "run-mon"})
    assert resp.status_code == 200 and resp.headers["alephant-policy-decision"] == "allowed"
    got = policy_step(lone, "run-mon")["attributes"]["policy"]
    assert got["decision"] == "allowed"
    assert (got["would"]["decision"], got["would"]["policy_id"], got["would"]["mode"]) == (
        "blocked",
        p["id"],
        "monitor",
    )


def test_clamp_lowers_max_tokens_before_forwarding_and_records_it(lone: Harness) -> None:
    policy(lone, name="cap", settings={"max_tokens": 50})
    resp = chat(lone, max_tokens=500, headers={"alephant-run-id": "run-clamp"})
    assert resp.status_code == 200, resp.text
    assert forwarded(lone)["max_tokens"] == 50
    got = policy_step(lone, "run-clamp")["attributes"]["policy"]
    assert got["changes"]["max_tokens"] == {"field": "max_tokens", "from": 500, "to": 50}
    policy(lone, name="hard cap", settings={"max_tokens": 40, "max_tokens_action": "block"})
    refused(chat(lone, max_tokens=500), 403, "policy_blocked")


def test_pii_is_redacted_before_forwarding_and_never_recorded(lone: Harness) -> None:
    policy(lone, name="cards", rules=[{"when": {}, "action": "redact", "redact": ["payment_card", "email"]}])
    text = f"charge {CARD} and mail bob@example.com"
    resp = chat(lone, text, headers={"alephant-run-id": "run-pii"})
    assert resp.status_code == 200, resp.text
    sent = forwarded(lone)["messages"][0]["content"]
    assert sent == "charge [REDACTED:payment_card] and mail [REDACTED:email]"
    got = policy_step(lone, "run-pii")["attributes"]["policy"]
    assert sorted((r["kind"], r["path"], r["count"]) for r in got["changes"]["redacted"]) == [
        ("email", "messages[0].content", 1),
        ("payment_card", "messages[0].content", 1),
    ]
    run = orjson.dumps(lone.get("/api/runs/run-pii")).decode()
    assert CARD not in run and "bob@example.com" not in run
    policy(lone, name="no secrets", rules=[{"when": {"pii": ["secret"]}, "action": "block"}])
    refused(chat(lone, "my key is sk-ant-api03-" + "a" * 40), 403, "policy_blocked")


def test_throttle_counts_on_the_shared_counters(lone: Harness) -> None:
    policy(lone, name="slow", rules=[{"when": {"models": ["gpt-4o-mini"]}, "action": "throttle", "throttle_rpm": 2}])
    left = 60 - time.time() % 60
    if left < 5:
        time.sleep(left + 0.05)
    assert [chat(lone).status_code for _ in range(2)] == [200, 200]
    resp = chat(lone)
    refused(resp, 429, "rate_limited")
    assert int(resp.headers["retry-after"]) >= 1
    assert resp.headers["alephant-policy-decision"] == "throttled"


def test_time_windows_ip_and_required_headers(lone: Harness) -> None:
    now = datetime.now(UTC)
    later = now + timedelta(hours=12)
    window = {
        "days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
        "tz": "UTC",
        "start": later.strftime("%H:00"),
        "end": (later + timedelta(hours=1)).strftime("%H:00"),
    }
    p = policy(lone, name="hours", settings={"time_windows": [window]})
    refused(chat(lone), 403, "policy_blocked")
    lone.api("DELETE", f"/api/policies/{p['id']}")
    p = policy(lone, name="office", settings={"ip_allow": ["10.0.0.0/8"]})
    refused(chat(lone), 403, "policy_blocked")  # the test client is 127.0.0.1
    lone.api(
        "PUT",
        f"/api/policies/{p['id']}",
        json={"name": "office", "scope": "workspace", "settings": {"ip_allow": ["127.0.0.0/8", "::1/128"]}},
    )
    assert chat(lone).status_code == 200
    policy(lone, name="runs", settings={"required_headers": ["alephant-run-id"]})
    msg = refused(chat(lone), 403, "policy_blocked")
    assert "alephant-run-id" in msg
    assert chat(lone, headers={"alephant-run-id": "run-h"}).status_code == 200


def test_run_guards_and_loop_detection_stop_a_runaway_run(lone: Harness) -> None:
    policy(lone, name="guards", settings={"max_run_model_calls": 2, "loop_repeats": 3})
    h = {"alephant-run-id": "run-guard"}
    assert chat(lone, "a", headers=h).status_code == 200
    assert chat(lone, "b", headers=h).status_code == 200
    refused(chat(lone, "c", headers=h), 403, "policy_blocked")
    loop = {"alephant-run-id": "run-loop"}
    policy(lone, name="more calls", scope="department", scope_value="research", settings={"max_run_model_calls": 100})
    assert [chat(lone, "same", headers=loop).status_code for _ in range(2)] == [200, 200]
    # A resend of one request (the same x-request-id: an SDK's retry, here a replay) is not a repeat.
    again = chat(lone, "other", headers={**loop, "x-request-id": "loop-1"})
    replay = chat(lone, "other", headers={**loop, "x-request-id": "loop-1"})
    assert (again.status_code, replay.status_code, replay.headers.get("alephant-replayed")) == (200, 200, "true")
    assert chat(lone, "other", headers=loop).status_code == 200  # its second sighting
    msg = refused(chat(lone, "same", headers=loop), 403, "policy_blocked")
    assert "loop_repeats" in msg, msg


def test_escalation_waits_then_an_approval_lets_the_resend_through_once(lone: Harness) -> None:
    policy(lone, name="big", rules=[{"when": {"models": ["gpt-4o"]}, "action": "escalate"}])
    h = {"x-request-id": "esc-1", "alephant-run-id": "run-esc"}
    first = chat(lone, model="gpt-4o", headers=h)
    refused(first, 403, "approval_required")
    approval_id = first.json()["error"]["approval_id"]
    assert first.headers["retry-after"]
    pending = lone.get("/api/approvals")["data"]
    assert pending[0]["id"] == approval_id and pending[0]["status"] == "pending"
    ok = lone.api("POST", f"/api/approvals/{approval_id}/approve", json={"comment": "fine"})
    assert ok.status_code == 200, ok.text
    again = chat(lone, model="gpt-4o", headers=h)
    assert again.status_code == 200, again.text
    got = policy_step(lone, "run-esc")["attributes"]["policy"]
    assert got["decision"] == "escalated" and got["approval"]["status"] == "approved"
    assert got["approval"]["comment"] == "fine"
    refused(chat(lone, model="gpt-4o", headers={**h, "x-request-id": "esc-2"}), 403, "approval_required")
    alerts = lone.get("/api/alerts", kind="approval_pending")["data"]
    assert approval_id in {a.get("approval_id") for a in alerts}


def test_a_denied_escalation_is_refused_with_the_reason(lone: Harness) -> None:
    policy(lone, name="big", rules=[{"when": {"models": ["gpt-4o"]}, "action": "escalate"}])
    first = chat(lone, model="gpt-4o")
    approval_id = first.json()["error"]["approval_id"]
    assert lone.api("POST", f"/api/approvals/{approval_id}/deny", json={"comment": "too dear"}).status_code == 200
    msg = refused(chat(lone, model="gpt-4o"), 403, "approval_denied")
    assert "too dear" in msg


def test_policy_check_for_tool_spend(lone: Harness) -> None:
    policy(
        lone,
        name="spend",
        rules=[
            {"when": {"kinds": ["payment"], "cost_over_usd": "5"}, "action": "escalate"},
            {"when": {"names": ["delete_*"]}, "action": "block", "message": "no deletions"},
        ],
    )
    small = lone.v1(
        "POST", "/v1/policy/check", json={"run_id": "run-tool", "kind": "payment", "name": "pay", "amount_usd": "3"}
    )
    assert small.status_code == 200 and small.json()["decision"] == "allowed", small.text
    big = lone.v1(
        "POST", "/v1/policy/check", json={"run_id": "run-tool", "kind": "payment", "name": "pay", "amount_usd": "7"}
    )
    refused(big, 403, "approval_required")
    gone = lone.v1("POST", "/v1/policy/check", json={"run_id": "run-tool", "kind": "tool_call", "name": "delete_all"})
    assert "no deletions" in refused(gone, 403, "policy_blocked")
    names = [s["name"] for s in lone.get("/api/runs/run-tool")["steps"] if s["kind"] == "policy_check"]
    assert names == ["check payment pay", "check payment pay", "check tool_call delete_all"]


def test_evaluate_answers_without_forwarding(lone: Harness) -> None:
    p = policy(lone, name="models", settings={"models_deny": ["gpt-4o"]})
    before = len(lone.fake.received)
    resp = lone.api(
        "POST", "/api/policies/evaluate", json={"virtual_key_id": _key_id(lone), "call": {"model": "gpt-4o"}}
    )
    assert resp.status_code == 200, resp.text
    got = resp.json()
    assert (got["decision"], got["policy_id"], got["rule_id"]) == ("blocked", p["id"], "setting:models_deny")
    assert [x["id"] for x in got["policies"]] == [p["id"]]
    assert len(lone.fake.received) == before


def _key_id(gw: Harness) -> str:
    return str(gw.get("/api/virtual-keys")["data"][0]["id"])


def _new_key(gw: Harness, department: str) -> tuple[str, str]:
    gw.api("POST", "/api/departments", json={"id": department, "name": department})
    resp = gw.api("POST", "/api/virtual-keys", json={"name": f"k-{department}", "department_id": department})
    assert resp.status_code == 201, resp.text
    return resp.json()["key"], resp.json()["id"]


def test_alert_rules_and_stopped_runs_raise_alerts_once(lone: Harness) -> None:
    p = policy(
        lone,
        name="watch",
        settings={"max_run_model_calls": 1},
        rules=[{"id": "big-out", "when": {"max_tokens_over": 100}, "action": "alert"}],
    )
    h = {"alephant-run-id": "run-alert", "alephant-session-id": "sess-alert"}
    assert chat(lone, "a", headers=h, max_tokens=500).status_code == 200
    assert chat(lone, "b", max_tokens=500).status_code == 200  # the same rule, the same hour: one alert
    assert lone.get("/api/sessions/sess-alert")["status"] == "ok"
    refused(chat(lone, "c", headers=h), 403, "policy_blocked")
    # The guard stopped the run: cancelled by the policy (on every replica), its session intercepted.
    deadline = time.monotonic() + 5
    while (run := lone.get("/api/runs/run-alert"))["control"] is None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert (run["status"], run["control"]["state"], run["control"]["by"]) == (
        "cancelled",
        "cancelled",
        f"policy:{p['id']}",
    )
    refused(chat(lone, "d", headers=h), 403, "run_cancelled")
    session = lone.get("/api/sessions/sess-alert")
    assert session["status"] == "intercepted"
    assert [(r["id"], r["status"], r["control"]["by"]) for r in session["runs"]] == [
        ("run-alert", "cancelled", f"policy:{p['id']}")
    ]
    listed = {r["id"]: r for r in lone.get("/api/runs")["data"]}
    assert listed["run-alert"]["status"] == "cancelled" and listed["run-alert"]["control"]["state"] == "cancelled"
    got = lone.get("/api/alerts", kind="policy_alert")["data"]
    assert [(a["policy_id"], a["run_id"]) for a in got] == [(p["id"], "run-alert")]
    assert "big-out" in got[0]["message"]
    stopped = lone.get("/api/alerts", kind="run_stopped")["data"]
    assert [(a["run_id"], a["policy_id"], a["severity"]) for a in stopped] == [("run-alert", p["id"], "warning")]


def test_a_fallback_never_goes_where_the_policies_would_not_let_the_call_go(lone: Harness) -> None:
    lone.add_provider_key(name="A", models=["gpt-4o*"], priority=10, fallbacks=[{"model": "gpt-4o"}])
    policy(lone, name="small only", settings={"models_deny": ["gpt-4o"]})
    lone.fake.script[:] = [500]
    resp = chat(lone)
    assert resp.status_code == 502, resp.text  # the gpt-4o fallback was not tried
    assert [r["body"]["model"] for r in lone.fake.received] == ["gpt-4o-mini"]


def test_spend_authorizations_pass_the_policies_first(lone: Harness) -> None:
    policy(lone, name="no gambling", rules=[{"when": {"names": ["casino*"]}, "action": "block"}])
    resp = lone.v1(
        "POST", "/v1/spend/authorize", json={"run_id": "run-spend", "amount_usd": "1", "name": "casino-chips"}
    )
    refused(resp, 403, "policy_blocked")
    assert resp.headers["alephant-policy-decision"] == "blocked"
    ok = lone.v1("POST", "/v1/spend/authorize", json={"run_id": "run-spend", "amount_usd": "1", "name": "search-api"})
    assert ok.status_code in (200, 201), ok.text
    step = policy_step(lone, "run-spend")
    assert step["attributes"]["policy"]["decision"] == "blocked"


def test_an_approval_while_the_call_is_held_lets_the_agent_continue(lone: Harness) -> None:
    policy(
        lone,
        name="big",
        settings={"approval_wait_s": 10},
        rules=[{"when": {"models": ["gpt-4o"]}, "action": "escalate"}],
    )
    got: list[httpx.Response] = []
    t0 = time.monotonic()
    held = threading.Thread(
        target=lambda: got.append(chat(lone, model="gpt-4o", headers={"alephant-run-id": "run-held"}))
    )
    held.start()
    deadline = time.monotonic() + 5
    while not (pending := lone.get("/api/approvals", status="pending")["data"]):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    # The people who decide hear of it while the call is held, not after.
    assert [a["approval_id"] for a in lone.get("/api/alerts", kind="approval_pending")["data"]] == [pending[0]["id"]]
    assert lone.api("POST", f"/api/approvals/{pending[0]['id']}/approve", json={}).status_code == 200
    held.join(10)
    assert got[0].status_code == 200, got[0].text
    assert time.monotonic() - t0 < 5
    approval = policy_step(lone, "run-held")["attributes"]["policy"]["approval"]
    assert approval["status"] == "approved" and approval["waited_ms"] > 0


def test_rate_settings_are_rate_limits_at_the_policys_scope(lone: Harness) -> None:
    p = policy(lone, name="dept rate", scope="department", scope_value="research", settings={"requests_per_minute": 2})
    left = 60 - time.time() % 60
    if left < 5:
        time.sleep(left + 0.05)
    assert [chat(lone).status_code for _ in range(2)] == [200, 200]
    resp = chat(lone)
    msg = refused(resp, 429, "rate_limited")
    assert f"policy:{p['id']}:requests_per_minute" in msg and "(department:research)" in msg, msg
    assert resp.headers["alephant-policy-decision"] == "throttled"
    key, _ = _new_key(lone, "eng")
    assert chat(lone, key=key).status_code == 200  # another department: not counted there


def test_the_sdks_see_each_refusal_once_in_their_own_shape(lone: Harness) -> None:
    policy(
        lone,
        name="sdk",
        rules=[
            {"id": "no-4o", "when": {"models": ["gpt-4o"]}, "action": "block"},
            {"id": "ask", "when": {"models": ["claude-*"]}, "action": "escalate"},
        ],
    )
    with pytest.raises(openai.PermissionDeniedError) as oe:
        openai.OpenAI(base_url=lone.url + "/v1", api_key=lone.vk, max_retries=2).chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
        )
    assert oe.value.body["code"] == "policy_blocked" and "no-4o" in oe.value.body["message"]  # type: ignore[index]
    lone.add_provider_key(name="claude", kind="anthropic", provider="anthropic", models=["claude-*"])
    client = anthropic.Anthropic(base_url=lone.url, api_key=lone.vk, max_retries=2)
    before = len(lone.fake.received)
    with pytest.raises(anthropic.PermissionDeniedError) as ae:
        client.messages.create(model="claude-haiku-4-5", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    err = ae.value.body["error"]  # type: ignore[index]
    assert err["type"] == "permission_error" and err["approval_id"].startswith("apr_"), err
    assert len(lone.get("/api/approvals")["data"]) == 1  # a 403: the SDK did not retry it
    assert len(lone.fake.received) == before


def test_evaluate_is_a_route_not_a_policy_id(lone: Harness) -> None:
    resp = lone.api("GET", "/api/policies/evaluate")
    assert resp.status_code == 405 and resp.headers["allow"] == "POST", resp.text
    taken = lone.api("POST", "/api/policies", json={"id": "evaluate", "name": "x", "scope": "workspace"})
    assert taken.status_code == 400 and taken.json()["error"]["param"] == "id", taken.text


def test_behind_a_trusted_proxy_the_last_forwarded_address_is_the_callers(
    sqlite_url: str, tmp_path: Path, upstream: ServerThread
) -> None:
    with running_gateway(sqlite_url, tmp_path, upstream, client_ip_header="x-forwarded-for") as gw:
        policy(gw, name="office", settings={"ip_allow": ["10.0.0.0/8"]})
        # What the proxy appended is the caller; what came before it is whatever the client claimed.
        assert chat(gw, headers={"x-forwarded-for": "203.0.113.9, 10.1.2.3"}).status_code == 200
        refused(chat(gw, headers={"x-forwarded-for": "10.1.2.3, 203.0.113.9"}), 403, "policy_blocked")
        refused(chat(gw), 403, "policy_blocked")  # no header: the peer, 127.0.0.1

"""Budgets and rate limits through a real gateway (SQLite and PostgreSQL): reservation before forwarding, 402 /
429 refusals recorded, settlement in the ledger with exact numbers, every action and scope, idempotent replays,
streams, rate/token/concurrency limits, tool spend authorizations and their expiry.

Numbers (gpt-4o-mini, $0.15 / $0.60 per MTok = 150 / 600 nano-dollars a token; the fake upstream counts words):
a call saying `w` words costs (w + 3)·150 + (6 + min(w, 8))·600, so 'hello there world' costs 6 300. Its
reservation is the body's bytes (the input bound) at 150 plus max_tokens at 600: 98 bytes and max_tokens 20
reserve 26 700.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from agentledger.core.money import format_usd
from agentledger.testing import ServerThread
from tests.harness import HTTP, Harness, running_gateway

HELLO = "hello there world"
MINI = 6 * 150 + 9 * 600  # 6 300: one 'hello there world' call
IN_RATE, OUT_RATE = 150, 600  # gpt-4o-mini, nano-dollars a token (the worst rates: no dearer cache write)


def cost_of(text: str) -> int:
    words = len(text.split())
    return (words + 3) * IN_RATE + (6 + min(words, 8)) * OUT_RATE


def chat_body(text: str = HELLO, max_tokens: int = 20, **extra: Any) -> bytes:
    payload = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}], "max_tokens": max_tokens}
    return orjson.dumps({**payload, **extra})


def reservation(body: bytes, max_tokens: int = 20) -> int:
    return len(body) * IN_RATE + max_tokens * OUT_RATE


HELLO_RESERVE = reservation(chat_body())


def chat(
    gw: Harness,
    body: bytes | None = None,
    *,
    key: str | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    hdrs = {"content-type": "application/json", **(headers or {})}
    if key is not None:
        hdrs["authorization"] = f"Bearer {key}"
    return gw.v1("POST", "/v1/chat/completions", content=body or chat_body(), headers=hdrs)


def nanos(usd: str) -> int:
    return int(Decimal(usd) * 10**9)


def make_budget(gw: Harness, **fields: Any) -> dict[str, Any]:
    fields.setdefault("period", "24h")
    resp = gw.api("POST", "/api/budgets", json=fields)
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


def make_rate_limit(gw: Harness, **fields: Any) -> dict[str, Any]:
    resp = gw.api("POST", "/api/rate-limits", json=fields)
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


def status(gw: Harness, budget_id: str) -> dict[str, Any]:
    return dict(gw.get(f"/api/budgets/{budget_id}")["status"])


def ledger(gw: Harness, budget_id: str | None = None) -> list[dict[str, Any]]:
    params: dict[str, Any] = {"limit": 1000}
    if budget_id is not None:
        params["budget"] = budget_id
    return list(gw.get("/api/ledger", **params)["data"])


def kinds(entries: list[dict[str, Any]]) -> list[tuple[str, int, int]]:
    """(kind, reserved_delta, spent_delta), oldest first."""
    return [(e["kind"], e["reserved_delta"], e["spent_delta"]) for e in reversed(entries)]


def closes(entries: list[dict[str, Any]], held: int, cost: int) -> bool:
    """One call's entries on one budget: its settle alone when it ended within the pipeline's interval (its
    reservation never written: docs/budgets.md, "The ledger"), else its reserve, then its settle. Which of the two
    depends on how long the call took, which a loaded machine decides."""
    return kinds(entries) in ([("settle", 0, cost)], [("reserve", held, 0), ("settle", -held, cost)])


def error_of(resp: httpx.Response, status_code: int, code: str) -> dict[str, Any]:
    assert resp.status_code == status_code, resp.text
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "code", "param"}, body
    assert body["error"]["code"] == code, body
    return dict(body["error"])


def request_row(gw: Harness, resp: httpx.Response) -> dict[str, Any]:
    return dict(gw.get(f"/api/requests/{resp.headers['x-request-id']}"))


def vk_id(gw: Harness) -> str:
    (row,) = gw.get("/api/virtual-keys")["data"]
    return str(row["id"])


def new_key(gw: Harness, department: str = "research") -> tuple[str, str]:
    resp = gw.api("POST", "/api/virtual-keys", json={"name": f"k-{department}", "department_id": department})
    assert resp.status_code == 201, resp.text
    return resp.json()["key"], resp.json()["id"]


def fresh_minute(margin: float = 4.0) -> None:
    """Rate windows are aligned minutes: start a burst well inside one, so its hits share a window."""
    left = 60 - time.time() % 60
    if left < margin:
        time.sleep(left + 0.05)


def assert_capped(
    gw: Harness, budget_id: str, label: str, *, key: str | None = None, period: str = "24h", **headers: str
) -> None:
    """Under a 30 000 nano-dollar block_requests budget: one call fits (26 700 reserved), the next does not."""
    first = chat(gw, key=key, headers=headers)
    assert first.status_code == 200, first.text
    assert first.headers["alephant-budget-scope"] == label
    assert first.headers["alephant-budget-remaining-usd"] == format_usd(30_000 - MINI)
    err = error_of(chat(gw, key=key, headers=headers), 402, "budget_exceeded")
    assert_names(err["message"], budget_id, label, period, "block_requests")
    assert "limit $0.000030000" in err["message"] and f"spent ${format_usd(MINI)}" in err["message"], err


def assert_names(message: str, budget_id: str, label: str, period: str = "24h", action: str = "block_requests") -> None:
    assert message.startswith(f"Budget '{budget_id}' ({label}, {period}, {action}) has too little left for "), message


def assert_free(gw: Harness, *, key: str | None = None, times: int = 2, **headers: str) -> None:
    for _ in range(times):
        resp = chat(gw, key=key, headers=headers)
        assert resp.status_code == 200, resp.text


@pytest.fixture
def slow_upstream(gw: Harness) -> Iterator[None]:
    gw.fake.delay = 0.6
    try:
        yield
    finally:
        gw.fake.delay = 0.0


# -- block_requests: the first call that does not fit ---------------------------------------------------------------


def test_block_requests_refuses_the_first_call_whose_reservation_does_not_fit(gw: Harness) -> None:
    make_budget(gw, id="b1", scope="workspace", limit_usd="0.00005", action="block_requests")
    run = {"alephant-run-id": "run-b"}
    assert HELLO_RESERVE == 26_700
    # 0 + 26 700, 6 300 + 26 700, 12 600 + 26 700, 18 900 + 26 700 ≤ 50 000; then 25 200 + 26 700 > 50 000.
    for i in range(1, 5):
        resp = chat(gw, headers=run)
        assert resp.status_code == 200, resp.text
        assert resp.headers["alephant-policy-decision"] == "allowed"
        assert resp.headers["alephant-cost-usd"] == format_usd(MINI)
        assert resp.headers["alephant-budget-scope"] == "workspace"
        assert resp.headers["alephant-budget-remaining-usd"] == format_usd(50_000 - i * MINI)

    refused = chat(gw, headers=run)
    err = error_of(refused, 402, "budget_exceeded")
    assert (err["type"], err["param"]) == ("budget_exceeded", None)
    assert_names(err["message"], "b1", "workspace")
    for figure in ("limit $0.000050000", "spent $0.000025200", "reserved $0.000000000", "$0.000026700"):
        assert figure in err["message"], (figure, err["message"])
    assert refused.headers["alephant-policy-decision"] == "blocked"
    assert refused.headers["alephant-budget-scope"] == "workspace"
    assert "alephant-cost-usd" not in refused.headers
    assert len(gw.fake.received) == 4, "the refused call never reached the provider"

    # Anthropic's shape on /v1/messages, same refusal.
    msg = gw.v1(
        "POST",
        "/v1/messages",
        json={"model": "gpt-4o-mini", "max_tokens": 20, "messages": [{"role": "user", "content": HELLO}]},
    )
    assert msg.status_code == 402, msg.text
    body = msg.json()
    assert set(body) == {"type", "error"} and body["type"] == "error", body
    assert body["error"]["type"] == "billing_error"
    assert_names(body["error"]["message"], "b1", "workspace")
    assert "spent $0.000025200" in body["error"]["message"]
    assert len(gw.fake.received) == 4

    # The refusal is on the books: request row with its decision, a policy_check step, no model_call step.
    row = request_row(gw, refused)
    assert (row["status"], row["http_status"], row["error_code"]) == ("error", 402, "budget_exceeded")
    assert row["policy_decision"] == "blocked"
    assert row["cost_nanos"] == 0
    assert row["governance"]["decided_by"] == {"kind": "budget", "id": "b1", "scope": "workspace"}
    (seen,) = row["governance"]["budgets"]
    assert (seen["budget_id"], seen["spent_usd"], seen["reserved_usd"]) == ("b1", "0.000025200", "0.000000000")

    steps = gw.get("/api/runs/run-b")["steps"]
    mine = [s for s in steps if s["request_id"] == refused.headers["x-request-id"]]
    assert [(s["kind"], s["status"]) for s in mine] == [("policy_check", "error")]
    assert mine[0]["attributes"]["decision"] == "blocked"
    assert sorted(s["kind"] for s in steps) == ["model_call"] * 4 + ["policy_check"] * 5
    assert all(s["status"] == "ok" for s in steps if s["kind"] == "model_call")

    st = status(gw, "b1")
    assert (st["spent_usd"], st["reserved_usd"], st["remaining_usd"]) == ("0.000025200", "0.000000000", "0.000024800")
    assert nanos(st["spent_usd"]) <= 50_000


def test_concurrent_calls_never_reserve_past_the_limit(gw: Harness, slow_upstream: None) -> None:
    """Six calls at once against room for three reservations: three are admitted (all still in flight when the
    others ask), three are 402, and what is settled stays under the limit."""
    make_budget(gw, id="race", scope="workspace", limit_usd=format_usd(3 * HELLO_RESERVE))
    results: list[httpx.Response] = []
    threads = [threading.Thread(target=lambda: results.append(chat(gw))) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(r.status_code for r in results) == [200, 200, 200, 402, 402, 402]
    assert len(gw.fake.received) == 3
    st = status(gw, "race")
    assert (nanos(st["spent_usd"]), st["reserved_usd"]) == (3 * MINI, "0.000000000")
    assert nanos(st["spent_usd"]) <= 3 * HELLO_RESERVE


def test_a_deleted_budget_no_longer_governs(gw: Harness) -> None:
    make_budget(gw, id="gone", scope="workspace", limit_usd="0")
    error_of(chat(gw), 402, "budget_exceeded")
    assert gw.api("DELETE", "/api/budgets/gone").json() == {"id": "gone", "deleted": True}
    resp = chat(gw)
    assert resp.status_code == 200, resp.text
    assert resp.headers["alephant-policy-decision"] == "allowed" and "alephant-budget-scope" not in resp.headers
    assert gw.api("GET", "/api/budgets/gone").status_code == 404
    assert gw.api("DELETE", "/api/budgets/gone").status_code == 404


# -- exact numbers -------------------------------------------------------------------------------------------------


def test_spent_is_the_sum_of_the_calls_costs_everywhere(gw: Harness) -> None:
    make_budget(gw, id="big", scope="workspace", limit_usd="10")
    texts = ["hello", "hello there", HELLO, "one two three four five", "a b c d e f g h i j k l", "x " * 40]
    headers_cost = 0
    reserve_of: dict[str, int] = {}
    cost_by_id: dict[str, int] = {}
    for text in texts:
        body = chat_body(text, max_tokens=50)
        resp = chat(gw, body)
        assert resp.status_code == 200, resp.text
        assert nanos(resp.headers["alephant-cost-usd"]) == cost_of(text), text
        headers_cost += nanos(resp.headers["alephant-cost-usd"])
        reserve_of[resp.headers["x-request-id"]] = reservation(body, 50)
        cost_by_id[resp.headers["x-request-id"]] = cost_of(text)
    expected = sum(cost_of(t) for t in texts)
    assert headers_cost == expected == 4_800 + 5_550 + 6_300 + 7_800 + 10_650 + 14_850 == 49_950

    st = status(gw, "big")
    assert nanos(st["spent_usd"]) == expected
    assert st["reserved_usd"] == "0.000000000"
    assert st["remaining_nanos"] == 10 * 10**9 - expected

    entries = ledger(gw, "big")
    assert sum(e["spent_delta"] for e in entries) == expected and sum(e["reserved_delta"] for e in entries) == 0
    for request_id, held in reserve_of.items():  # each reservation: the body's bytes and max_tokens at the worst rates
        assert closes([e for e in entries if e["request_id"] == request_id], held, cost_by_id[request_id])
        governance = gw.get(f"/api/requests/{request_id}")["governance"]
        assert governance["reserved_usd"] == format_usd(held)
        assert {e["reservation_id"] for e in entries if e["request_id"] == request_id} == {governance["reservation_id"]}
    (ws,) = gw.get("/api/analytics/costs", group_by="workspace")["data"]
    assert ws["cost_nanos"] == expected


# -- actions ---------------------------------------------------------------------------------------------------------


def test_alert_only_never_refuses_and_alerts_once_per_threshold(gw: Harness) -> None:
    limit = 4 * MINI  # 25 200
    make_budget(gw, id="watch", scope="workspace", limit_usd=format_usd(limit), action="alert_only")
    ids = []
    for _ in range(6):
        resp = chat(gw)
        assert resp.status_code == 200, resp.text
        assert resp.headers["alephant-policy-decision"] == "allowed"
        ids.append(resp.headers["x-request-id"])
    assert len(gw.fake.received) == 6
    assert resp.headers["alephant-budget-remaining-usd"] == "0.000000000"

    st = status(gw, "watch")
    assert nanos(st["spent_usd"]) == 6 * MINI > limit
    assert (st["remaining_nanos"], st["percent_used"]) == (limit - 6 * MINI, 150.0)

    window_key = ledger(gw, "watch")[0]["counter_key"].split("|")[3]
    alerts = sorted(gw.get("/api/alerts")["data"], key=lambda a: a["threshold"])
    got = [(a["budget_id"], a["threshold"], a["spent_nanos"], a["limit_nanos"], a["request_id"]) for a in alerts]
    # 50 % at the second call (12 600), 80 % and 100 % together at the fourth (25 200); none again after.
    assert got == [
        ("watch", 50, 2 * MINI, limit, ids[1]),
        ("watch", 80, 4 * MINI, limit, ids[3]),
        ("watch", 100, 4 * MINI, limit, ids[3]),
    ]
    assert {a["window_key"] for a in alerts} == {window_key}


def throttled_answer(gw: Harness, resp: Any, forwarded: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """A throttle's answer: 429 `rate_limited` with Retry-After (whole seconds) and the decision header, only the
    calls before it forwarded, its request row recorded as throttled. Its error and its row."""
    err = error_of(resp, 429, "rate_limited")
    assert err["type"] == "rate_limit_error"
    retry = resp.headers["retry-after"]
    assert retry.isdigit() and int(retry) > 0, retry
    assert resp.headers["alephant-policy-decision"] == "throttled"
    assert len(gw.fake.received) == forwarded
    row = request_row(gw, resp)
    assert (row["http_status"], row["policy_decision"]) == (429, "throttled")
    return err, row


def test_soft_throttle_past_its_limit_allows_throttle_rpm_calls_a_minute(gw: Harness) -> None:
    fresh_minute()
    make_budget(gw, id="soft", scope="workspace", limit_usd="0.00003", action="soft_throttle", throttle_rpm=2)
    # Call 1: 0 + 26 700 ≤ 30 000, under the limit. Calls 2 and 3: past it (6 300 + 26 700 > 30 000), the two
    # a minute the throttle allows. Call 4: 429.
    for _ in range(3):
        resp = chat(gw)
        assert resp.status_code == 200, resp.text
        assert resp.headers["alephant-policy-decision"] == "allowed"
    throttled = chat(gw)
    err, row = throttled_answer(gw, throttled, forwarded=3)
    assert "soft_throttle allows 2 requests a minute" in err["message"] and "'soft'" in err["message"]
    assert int(throttled.headers["retry-after"]) <= 120
    assert row["governance"]["decided_by"] == {"kind": "budget", "id": "soft", "scope": "workspace"}
    st = status(gw, "soft")
    assert (nanos(st["spent_usd"]), st["reserved_usd"]) == (3 * MINI, "0.000000000")


def test_a_soft_throttle_refusal_leaves_no_reservation_open_in_the_ledger(
    gw: Harness, db_url: str, tmp_path: Path, upstream: ServerThread
) -> None:
    """The refused call's reservation was taken (and its `reserve` entry written) before the throttle said no;
    the counters give it back, so the ledger must too. Else the ledger holds it reserved forever, and the next
    gateway start's recovery charges it as spent (`expire` at its estimate) for a call that never happened."""
    fresh_minute()
    make_budget(gw, id="soft", scope="workspace", limit_usd="0.00001", action="soft_throttle", throttle_rpm=1)
    assert chat(gw).status_code == 200
    assert chat(gw).status_code == 429
    st = status(gw, "soft")
    assert (nanos(st["spent_usd"]), st["reserved_usd"]) == (MINI, "0.000000000")
    # A gateway starting on this database rebuilds its counters from the ledger (closing what it finds open).
    with running_gateway(db_url, tmp_path / "restarted", upstream):
        pass
    entries = ledger(gw, "soft")
    assert (sum(e["reserved_delta"] for e in entries), sum(e["spent_delta"] for e in entries)) == (0, MINI), kinds(
        entries
    )


def test_disable_key_refuses_that_key_only(gw: Harness) -> None:
    mine = vk_id(gw)
    other_key, _ = new_key(gw)
    make_budget(gw, id="off", scope="virtual_key", scope_value=mine, limit_usd="0", action="disable_key")
    err = error_of(chat(gw), 402, "budget_exceeded")
    assert_names(err["message"], "off", f"virtual_key:{mine}", action="disable_key")
    assert_free(gw, key=other_key)
    assert len(gw.fake.received) == 2


def test_pause_all_on_a_department_refuses_its_keys_only(gw: Harness) -> None:
    assert gw.api("POST", "/api/departments", json={"id": "sales", "name": "Sales"}).status_code == 201
    sales_key, _ = new_key(gw, "sales")
    make_budget(gw, id="pause", scope="department", scope_value="research", limit_usd="0", action="pause_all")
    err = error_of(chat(gw), 402, "budget_exceeded")
    assert_names(err["message"], "pause", "department:research", action="pause_all")
    research_key, _ = new_key(gw, "research")
    error_of(chat(gw, key=research_key), 402, "budget_exceeded")
    assert_free(gw, key=sales_key)


def test_budgets_do_not_cascade_the_tighter_one_refuses(gw: Harness) -> None:
    mine = vk_id(gw)
    make_budget(gw, id="ws", scope="workspace", limit_usd="10")
    make_budget(gw, id="kb", scope="virtual_key", scope_value=mine, limit_usd="0.00003")
    first = chat(gw)
    assert first.status_code == 200
    # Headers name the tightest budget: the key's.
    assert first.headers["alephant-budget-scope"] == f"virtual_key:{mine}"
    assert first.headers["alephant-budget-remaining-usd"] == format_usd(30_000 - MINI)
    refused = chat(gw)
    err = error_of(refused, 402, "budget_exceeded")
    assert_names(err["message"], "kb", f"virtual_key:{mine}")
    assert request_row(gw, refused)["governance"]["decided_by"] == {
        "kind": "budget",
        "id": "kb",
        "scope": f"virtual_key:{mine}",
    }
    ws = status(gw, "ws")
    assert (nanos(ws["spent_usd"]), ws["reserved_usd"]) == (MINI, "0.000000000")


# -- scopes ----------------------------------------------------------------------------------------------------------


def test_department_budget(gw: Harness) -> None:
    assert gw.api("POST", "/api/departments", json={"id": "sales", "name": "Sales"}).status_code == 201
    sales_key, _ = new_key(gw, "sales")
    make_budget(gw, id="dep", scope="department", scope_value="research", limit_usd="0.00003")
    assert_capped(gw, "dep", "department:research")
    assert_free(gw, key=sales_key)


def test_agent_budget_follows_the_agent_header(gw: Harness) -> None:
    make_budget(gw, id="ag", scope="agent", scope_value="planner", limit_usd="0.00003")
    assert_capped(gw, "ag", "agent:planner", **{"alephant-agent-id": "planner"})
    assert_free(gw)  # the same key, not acting as the agent


def test_virtual_key_budget(gw: Harness) -> None:
    other_key, other_id = new_key(gw)
    make_budget(gw, id="vk", scope="virtual_key", scope_value=other_id, limit_usd="0.00003")
    assert_capped(gw, "vk", f"virtual_key:{other_id}", key=other_key)
    assert_free(gw)


def test_workflow_budget_applies_to_calls_in_its_runs(gw: Harness) -> None:
    for run_id, workflow in (("wf-1", "trip"), ("wf-2", "other")):
        resp = gw.v1("POST", "/v1/runs", json={"run_id": run_id, "workflow": workflow})
        assert resp.status_code == 201, resp.text
    make_budget(gw, id="wf", scope="workflow", scope_value="trip", limit_usd="0.00003")
    assert_capped(gw, "wf", "workflow:trip", **{"alephant-run-id": "wf-1"})
    assert_free(gw, **{"alephant-run-id": "wf-2"})
    assert_free(gw)


def test_property_budget_caps_one_value(gw: Harness) -> None:
    make_budget(gw, id="acme", scope="property", property="customer", scope_value="acme", limit_usd="0.00003")
    assert_capped(gw, "acme", "property.customer:acme", **{"alephant-property-customer": "acme"})
    assert_free(gw, **{"alephant-property-customer": "globex"})
    assert_free(gw)
    assert status(gw, "acme")["spent_usd"] == format_usd(MINI)


def test_run_period_gives_each_run_its_own_allowance(gw: Harness) -> None:
    created = make_budget(gw, id="per-run", scope="workspace", period="run", limit_usd="0.00003")
    assert created["status"] is None  # no window of its own: each run's is on its policy checks
    assert_capped(gw, "per-run", "workspace", period="run", **{"alephant-run-id": "r-1"})
    first = chat(gw, headers={"alephant-run-id": "r-2"})
    assert first.status_code == 200, first.text
    assert first.headers["alephant-budget-remaining-usd"] == format_usd(30_000 - MINI)
    # Outside any run the budget does not apply.
    outside = chat(gw)
    assert outside.status_code == 200 and "alephant-budget-scope" not in outside.headers
    assert_free(gw)
    assert {e["counter_key"].split("|")[3] for e in ledger(gw, "per-run")} == {"run:r-1", "run:r-2"}


# -- configuration errors ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scope", ["department", "agent", "virtual_key"])
def test_a_budget_or_limit_naming_a_missing_scope_is_404(gw: Harness, scope: str) -> None:
    for path, extra in (("/api/budgets", {"limit_usd": "1", "period": "24h"}), ("/api/rate-limits", {"concurrent": 1})):
        resp = gw.api("POST", path, json={"scope": scope, "scope_value": "nope", **extra})
        err = error_of(resp, 404, "not_found")
        assert err["param"] == "scope_value" and "'nope'" in err["message"], err
    assert gw.get("/api/budgets")["data"] == [] and gw.get("/api/rate-limits")["data"] == []


GOOD = {"scope": "workspace", "limit_usd": "1", "period": "24h"}


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"scope": "galaxy"}, "scope"),
        ({"scope": "department"}, "scope_value"),
        ({"scope": "property", "scope_value": "acme"}, "property"),
        ({"period": "1h"}, "period"),
        ({"action": "explode"}, "action"),
        ({"action": "pause_all"}, "action"),
        ({"action": "soft_throttle"}, "throttle_rpm"),
        ({"limit_usd": "-5"}, "limit_usd"),
        ({"limit_usd": 2.5}, "limit_usd"),
        ({"thresholds": [0, 50]}, "thresholds"),
        ({"name": "x" * 300}, "name"),
        ({"anchor": "yesterday"}, "anchor"),
        ({"id": "has space"}, "id"),
    ],
)
def test_a_bad_budget_body_is_400_naming_the_field(gw: Harness, change: dict[str, Any], param: str) -> None:
    err = error_of(gw.api("POST", "/api/budgets", json={**GOOD, **change}), 400, "invalid_request")
    assert err["param"] == param, err
    assert gw.get("/api/budgets")["data"] == []


def test_bad_rate_limit_bodies_are_400_naming_the_field(gw: Harness) -> None:
    for body, param in (
        ({"scope": "workspace"}, "requests_per_minute"),
        ({"scope": "workspace", "tokens_per_minute": 0}, "tokens_per_minute"),
        ({"scope": "workspace", "concurrent": "2"}, "concurrent"),
        ({"scope": "nowhere", "concurrent": 2}, "scope"),
    ):
        err = error_of(gw.api("POST", "/api/rate-limits", json=body), 400, "invalid_request")
        assert err["param"] == param, (body, err)
    assert gw.get("/api/rate-limits")["data"] == []


def test_a_budget_body_that_is_not_an_object_is_400(gw: Harness) -> None:
    for raw in (b"[]", b'"x"', b"{", b""):
        resp = gw.api("POST", "/api/budgets", content=raw, headers={"content-type": "application/json"})
        assert resp.status_code == 400, (raw, resp.text)
    assert gw.get("/api/budgets")["data"] == []


# -- idempotency, streams ---------------------------------------------------------------------------------------------


def test_a_replayed_request_id_reserves_and_charges_nothing(gw: Harness) -> None:
    make_budget(gw, id="idem", scope="workspace", limit_usd="1")
    first = chat(gw, headers={"x-request-id": "idem-1"})
    assert first.status_code == 200 and first.headers["alephant-cost-usd"] == format_usd(MINI)
    before = ledger(gw, "idem")
    assert closes(before, HELLO_RESERVE, MINI)
    for _ in range(2):
        again = chat(gw, headers={"x-request-id": "idem-1"})
        assert again.status_code == 200
        assert again.headers["alephant-replayed"] == "true"
        assert again.headers["alephant-cost-usd"] == "0.000000000"
        assert again.content == first.content
    assert ledger(gw, "idem") == before
    st = status(gw, "idem")
    assert (nanos(st["spent_usd"]), st["reserved_usd"]) == (MINI, "0.000000000")
    # A replay is answered before admission: even a budget with nothing left does not refuse it.
    make_budget(gw, id="shut", scope="workspace", limit_usd="0")
    again = chat(gw, headers={"x-request-id": "idem-1"})
    assert (again.status_code, again.headers["alephant-replayed"]) == (200, "true")
    assert ledger(gw) == before
    error_of(chat(gw, headers={"x-request-id": "idem-2"}), 402, "budget_exceeded")
    assert len(gw.fake.received) == 1


def test_a_call_still_running_has_its_reserve_in_the_ledger_and_is_settled_once(gw: Harness) -> None:
    """A call's reserve entries are written once it has run for the pipeline's interval (20 ms): one still running
    then has them in the ledger, where a crash it outlives finds them; when it ends, its settle (the reservation
    back, the cost spent) joins them. (One that ends sooner writes its settle only: test_spent_is_the_sum_….)"""
    make_budget(gw, id="long", scope="workspace", limit_usd="1")
    gw.fake.delay = 0.9  # within the harness's 1 s upstream timeout
    done: list[httpx.Response] = []
    caller = threading.Thread(target=lambda: done.append(chat(gw)))
    try:
        caller.start()
        deadline = time.monotonic() + 0.7
        while not ledger(gw, "long") and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not done, "the upstream takes 0.9 s: the call is still running"
        assert kinds(ledger(gw, "long")) == [("reserve", HELLO_RESERVE, 0)]
    finally:
        caller.join(10)
        gw.fake.delay = 0.0
    assert done[0].status_code == 200, done[0].text
    assert kinds(ledger(gw, "long")) == [("reserve", HELLO_RESERVE, 0), ("settle", -HELLO_RESERVE, MINI)]
    st = status(gw, "long")
    assert (nanos(st["spent_usd"]), st["reserved_usd"]) == (MINI, "0.000000000")


def test_a_streamed_call_is_reserved_and_settled_at_its_actual_cost(gw: Harness) -> None:
    make_budget(gw, id="st", scope="workspace", limit_usd="1")
    body = chat_body(stream=True, stream_options={"include_usage": True})
    resp = chat(gw, body)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/event-stream")
    assert resp.text.rstrip().endswith("data: [DONE]")
    assert resp.headers["alephant-policy-decision"] == "allowed"
    row = request_row(gw, resp)
    assert (row["stream"], row["cost_nanos"], row["policy_decision"]) == (True, MINI, "allowed")
    entries = ledger(gw, "st")
    assert closes(entries, reservation(body), MINI)
    assert {e["request_id"] for e in entries} == {resp.headers["x-request-id"]}
    assert (row["governance"]["reservation_id"], row["governance"]["reserved_usd"]) == (
        entries[0]["reservation_id"],
        format_usd(reservation(body)),
    )
    st = status(gw, "st")
    assert (nanos(st["spent_usd"]), st["reserved_usd"]) == (MINI, "0.000000000")


# -- rate limits -------------------------------------------------------------------------------------------------------


def test_requests_per_minute(gw: Harness) -> None:
    fresh_minute()
    make_rate_limit(gw, id="rpm", scope="workspace", requests_per_minute=3)
    run = {"alephant-run-id": "run-rpm"}
    for _ in range(3):
        resp = chat(gw, headers=run)
        assert resp.status_code == 200, resp.text
        assert resp.headers["alephant-policy-decision"] == "allowed"
    refused = chat(gw, headers=run)
    err = error_of(refused, 429, "rate_limited")
    assert err["message"].startswith("Rate limit 'rpm' (workspace) reached; retry in ")
    retry = refused.headers["retry-after"]
    # The two-bucket window: 3 hits now, so the next is admitted a third into the next minute.
    assert retry.isdigit() and 20 <= int(retry) <= 81, retry
    assert refused.headers["alephant-policy-decision"] == "throttled"
    assert len(gw.fake.received) == 3
    row = request_row(gw, refused)
    assert (row["http_status"], row["error_code"], row["policy_decision"]) == (429, "rate_limited", "throttled")
    assert row["governance"]["decided_by"] == {"kind": "rate_limit", "id": "rpm", "scope": "workspace"}
    steps = gw.get("/api/runs/run-rpm")["steps"]
    mine = [(s["kind"], s["status"]) for s in steps if s["request_id"] == refused.headers["x-request-id"]]
    assert mine == [("policy_check", "error")]
    assert sorted(s["kind"] for s in steps) == ["model_call"] * 3 + ["policy_check"] * 4


def test_a_rate_limit_beside_budgets_throttles_with_429_and_reserves_nothing(gw: Harness) -> None:
    """The most common set-up (a key's budgets and a requests-per-minute limit) is admitted by the gate's plan in
    one step of the counters: past the rate, a 429 with Retry-After and no reservation (a regression: it was a
    500)."""
    fresh_minute()
    make_budget(gw, id="ws-budget", scope="workspace", limit_usd="10")
    make_rate_limit(gw, id="rpm", scope="workspace", requests_per_minute=2)
    for _ in range(2):
        resp = chat(gw)
        assert resp.status_code == 200, resp.text
        assert resp.headers["alephant-budget-scope"] == "workspace"
    refused = chat(gw)
    err, row = throttled_answer(gw, refused, forwarded=2)
    assert err["message"].startswith("Rate limit 'rpm' (workspace) reached; retry in ")
    assert row["governance"]["decided_by"] == {"kind": "rate_limit", "id": "rpm", "scope": "workspace"}
    # A governed answer, refused or not, names its tightest budget; its trace shows each budget as it stands.
    left = format(Decimal(10) - Decimal(2 * MINI) / 10**9, ".9f")
    assert refused.headers["alephant-budget-remaining-usd"] == left == "9.999987400"
    assert refused.headers["alephant-budget-scope"] == "workspace"
    [view] = row["governance"]["budgets"]
    assert (view["budget_id"], view["spent_usd"], view["reserved_usd"]) == ("ws-budget", "0.000012600", "0.000000000")
    assert "reservation_id" not in row["governance"]
    st = status(gw, "ws-budget")
    assert (nanos(st["spent_usd"]), st["reserved_usd"]) == (2 * MINI, "0.000000000")


def test_tokens_per_minute_counts_the_bound_then_the_actual_tokens(gw: Harness) -> None:
    fresh_minute()
    make_rate_limit(gw, id="tpm", scope="workspace", tokens_per_minute=1000)
    # Call 1 is admitted at its bound (98 bytes + 20 = 118 tokens) and settles to its actual 15 (6 in, 9 out).
    assert chat(gw).status_code == 200
    # Now 15 are counted: a call bounded at 986 tokens does not fit, one at 985 does.
    max_tokens = 900
    body = chat_body(max_tokens=max_tokens)
    over = 1000 - 15 - len(body) + 1
    refused = chat(gw, chat_body(max_tokens=over))
    assert len(chat_body(max_tokens=over)) == len(body)
    err = error_of(refused, 429, "rate_limited")
    assert "'tpm'" in err["message"]
    assert refused.headers["retry-after"].isdigit() and int(refused.headers["retry-after"]) > 0
    assert request_row(gw, refused)["policy_decision"] == "throttled"
    fits = chat(gw, chat_body(max_tokens=over - 1))
    assert fits.status_code == 200, fits.text
    assert len(gw.fake.received) == 2


def test_a_call_bounded_above_the_whole_tokens_per_minute_is_a_400_naming_max_tokens(gw: Harness) -> None:
    """No wait can admit a call whose token bound alone passes the limit: a 400 (no Retry-After), not a 500."""
    make_rate_limit(gw, id="tiny", scope="workspace", tokens_per_minute=117)
    refused = chat(gw)  # bounded at 98 bytes + 20 = 118 tokens
    err = error_of(refused, 400, "invalid_request")
    assert err["param"] == "max_tokens" and "118 tokens" in err["message"], err
    assert "retry-after" not in refused.headers, "no retry can succeed"
    assert len(gw.fake.received) == 0
    assert request_row(gw, refused)["http_status"] == 400
    fits = chat(gw, chat_body(max_tokens=19))  # 117: exactly the limit
    assert fits.status_code == 200, fits.text


def test_back_to_back_calls_find_the_tokens_per_minute_of_the_calls_before_at_what_they_used(gw: Harness) -> None:
    """Each call is counted at its bound (~600 tokens) while it runs and at what it used (15) once answered,
    before its answer goes out: ten calls back to back fit a 1000-token minute (at their bounds two would not)."""
    fresh_minute()
    make_rate_limit(gw, id="tpm", scope="workspace", tokens_per_minute=1000)
    for stream in [False, True] * 5:
        body = chat_body(max_tokens=500, **({"stream": True} if stream else {}))
        resp = chat(gw, body)
        assert resp.status_code == 200, resp.text


def test_concurrent_limit_refuses_a_second_call_in_flight(gw: Harness, slow_upstream: None) -> None:
    make_rate_limit(gw, id="one", scope="workspace", concurrent=1)
    results: dict[str, httpx.Response] = {}
    slow = threading.Thread(target=lambda: results.setdefault("slow", chat(gw)))
    slow.start()
    deadline = time.monotonic() + 5
    while not gw.fake.received and time.monotonic() < deadline:
        time.sleep(0.01)
    assert gw.fake.received, "the first call reached the provider"
    second = chat(gw)
    err = error_of(second, 429, "rate_limited")
    assert "allows 1 concurrent requests" in err["message"]
    assert second.headers["retry-after"] == "1"
    assert request_row(gw, second)["policy_decision"] == "throttled"
    slow.join(10)
    assert results["slow"].status_code == 200
    gw.fake.delay = 0.0
    # A sequential client is never throttled by a limit of one in flight: a call's slot is given back before its
    # answer goes out, plain or streamed (not with the counters' settle, which follows the answer).
    for stream in [False, True] * 15:
        resp = chat(gw, chat_body(stream=True)) if stream else chat(gw)
        assert resp.status_code == 200, "the slot was released when the call before ended"
    assert len(gw.fake.received) == 31


# -- spend outside model calls --------------------------------------------------------------------------------------


def authorize(gw: Harness, amount: str, **extra: Any) -> httpx.Response:
    return gw.v1(
        "POST", "/v1/spend/authorize", json={"amount_usd": amount, "kind": "tool_call", "name": "search", **extra}
    )


def test_tool_spend_is_authorized_then_settled_by_its_step(gw: Harness) -> None:
    make_budget(gw, id="tools", scope="workspace", limit_usd="1")
    resp = authorize(gw, "0.25")
    assert resp.status_code == 201, resp.text
    auth = resp.json()
    rsv = auth["reservation_id"]
    assert rsv and (auth["decision"], auth["amount_usd"]) == ("allowed", "0.250000000")
    assert [(b["budget_id"], b["reserved_usd"]) for b in auth["budgets"]] == [("tools", "0.250000000")]
    st = status(gw, "tools")
    assert (st["spent_usd"], st["reserved_usd"], st["remaining_usd"]) == ("0.000000000", "0.250000000", "0.750000000")
    assert kinds(ledger(gw, "tools")) == [("reserve", 250_000_000, 0)]

    step = {"kind": "tool_call", "name": "search", "cost_usd": "0.1", "reservation_id": rsv}
    posted = gw.v1("POST", "/v1/runs/run-t/steps", json=step)
    assert posted.status_code == 201, posted.text
    (step_id,) = posted.json()["step_ids"]
    entries = ledger(gw, "tools")
    assert kinds(entries) == [("reserve", 250_000_000, 0), ("settle", -250_000_000, 100_000_000)]
    assert (entries[0]["reservation_id"], entries[0]["step_id"], entries[0]["run_id"]) == (rsv, step_id, "run-t")
    st = status(gw, "tools")
    assert (st["spent_usd"], st["reserved_usd"]) == ("0.100000000", "0.000000000")

    # A second step naming the same reservation is recorded, not charged again.
    again = gw.v1("POST", "/v1/runs/run-t/steps", json={**step, "name": "search-again"})
    assert again.status_code == 201, again.text
    assert len(ledger(gw, "tools")) == 2
    assert status(gw, "tools")["spent_usd"] == "0.100000000"

    # A step reporting a cost without a reservation is spent against the budget.
    plain = gw.v1("POST", "/v1/runs/run-t/steps", json={"kind": "api_call", "name": "geocode", "cost_usd": "0.05"})
    assert plain.status_code == 201, plain.text
    spend = ledger(gw, "tools")[0]
    assert (spend["kind"], spend["reserved_delta"], spend["spent_delta"]) == ("spend", 0, 50_000_000)
    assert (spend["step_id"], spend["run_id"], spend["reservation_id"]) == (plain.json()["step_ids"][0], "run-t", None)
    st = status(gw, "tools")
    assert (st["spent_usd"], st["reserved_usd"], st["remaining_usd"]) == ("0.150000000", "0.000000000", "0.850000000")
    run = gw.get("/api/runs/run-t")
    assert run["totals"]["cost_nanos"] == 100_000_000 + 100_000_000 + 50_000_000  # every step's reported cost

    # Beyond what is left: 402; exactly what is left: granted.
    refused = authorize(gw, "0.850000001")
    err = error_of(refused, 402, "budget_exceeded")
    assert err["message"].startswith("Budget 'tools' (workspace") and "tool_call 'search'" in err["message"], err
    for figure in ("limit $1.000000000", "spent $0.150000000", "reserved $0.000000000", "$0.850000001"):
        assert figure in err["message"], (figure, err["message"])
    assert refused.headers["alephant-policy-decision"] == "blocked"
    assert authorize(gw, "0.85").status_code == 201
    assert status(gw, "tools")["remaining_usd"] == "0.000000000"


def test_two_steps_of_one_batch_naming_one_reservation_settle_it_once(gw: Harness) -> None:
    make_budget(gw, id="tools", scope="workspace", limit_usd="1")
    rsv = authorize(gw, "0.5").json()["reservation_id"]
    batch = [
        {"kind": "tool_call", "name": "search", "cost_usd": "0.3", "reservation_id": rsv},
        {"kind": "tool_call", "name": "search", "cost_usd": "0.3", "reservation_id": rsv},
    ]
    assert gw.v1("POST", "/v1/runs/run-2x/steps", json=batch).status_code == 201
    st = status(gw, "tools")
    assert (st["spent_usd"], st["reserved_usd"]) == ("0.300000000", "0.000000000")
    entries = ledger(gw, "tools")
    # The ledger must agree with the counters: settled once (0.3 spent), nothing left reserved or released twice.
    sums = (sum(e["reserved_delta"] for e in entries), sum(e["spent_delta"] for e in entries))
    assert sums == (0, 300_000_000), kinds(entries)
    assert kinds(entries) == [("reserve", 500_000_000, 0), ("settle", -500_000_000, 300_000_000)]


def test_authorize_without_a_budget_and_bad_amounts(gw: Harness) -> None:
    free = authorize(gw, "0.25")
    assert free.status_code == 200, free.text
    assert (free.json()["reservation_id"], free.json()["budgets"]) == (None, [])
    for amount in ("0", "-1", "abc", 0.5, "0.0000000001", "1000000.000000001"):
        err = error_of(authorize(gw, amount), 400, "invalid_request")  # type: ignore[arg-type]
        assert err["param"] == "amount_usd", (amount, err)
    assert ledger(gw) == []


def test_v1_budget_shows_the_keys_budgets(gw: Harness) -> None:
    mine = vk_id(gw)
    assert gw.api("POST", "/api/departments", json={"id": "sales", "name": "Sales"}).status_code == 201
    make_budget(gw, id="ws", scope="workspace", limit_usd="5")
    make_budget(gw, id="key", scope="virtual_key", scope_value=mine, limit_usd="1")
    make_budget(gw, id="dep", scope="department", scope_value="research", limit_usd="2", period="7d")
    make_budget(gw, id="sales", scope="department", scope_value="sales", limit_usd="3")
    make_budget(gw, id="acme", scope="property", property="customer", scope_value="acme", limit_usd="4")
    assert chat(gw).status_code == 200
    resp = gw.v1("GET", "/v1/budget")
    assert resp.status_code == 200, resp.text
    got = {b["budget_id"]: (b["scope_label"], b["limit_usd"], b["spent_usd"]) for b in resp.json()["data"]}
    assert got == {
        "ws": ("workspace", "5.000000000", format_usd(MINI)),
        "key": (f"virtual_key:{mine}", "1.000000000", format_usd(MINI)),
        "dep": ("department:research", "2.000000000", format_usd(MINI)),
    }
    with_prop = gw.v1("GET", "/v1/budget", headers={"alephant-property-customer": "acme"}).json()["data"]
    assert {b["budget_id"] for b in with_prop} == {"ws", "key", "dep", "acme"}
    assert HTTP.get(gw.url + "/v1/budget").status_code == 401


# -- expiry ---------------------------------------------------------------------------------------------------------


def test_an_authorization_never_settled_expires_at_its_estimate(
    db_url: str, tmp_path: Path, upstream: ServerThread
) -> None:
    with running_gateway(db_url, tmp_path, upstream, reservation_ttl=1.0) as gw:
        make_budget(gw, id="exp", scope="workspace", limit_usd="1")
        rsv = authorize(gw, "0.2").json()["reservation_id"]
        assert status(gw, "exp")["reserved_usd"] == "0.200000000"
        deadline = time.monotonic() + 8.0
        while time.monotonic() < deadline:
            entries = ledger(gw, "exp")
            if any(e["kind"] == "expire" for e in entries):
                break
            time.sleep(0.2)
        expire = entries[0]
        assert kinds(entries) == [("reserve", 200_000_000, 0), ("expire", -200_000_000, 200_000_000)]
        assert (expire["reservation_id"], expire["request_id"]) == (rsv, None)
        st = status(gw, "exp")
        assert (st["spent_usd"], st["reserved_usd"]) == ("0.200000000", "0.000000000")
        # A late step naming it is recorded, not charged again.
        step = {"kind": "tool_call", "name": "late", "cost_usd": "0.1", "reservation_id": rsv}
        assert gw.v1("POST", "/v1/runs/run-late/steps", json=step).status_code == 201
        assert len(ledger(gw, "exp")) == 2
        assert status(gw, "exp")["spent_usd"] == "0.200000000"

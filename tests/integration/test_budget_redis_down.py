"""Redis down (docs/budgets.md): budgets that block fail closed (503 + Retry-After, in the route's shape), a
workspace with only alert_only budgets is served and says so on the request, and nothing answers 500."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentledger.testing import ServerThread
from tests.harness import Harness, running_gateway

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}


@pytest.fixture
def down(tmp_path: Path, upstream: ServerThread, sqlite_url: str) -> Harness:
    upstream.config.app.state.fake.received.clear()
    # Port 1 on loopback: nothing listens, every connection is refused at once.
    with running_gateway(sqlite_url, tmp_path, upstream, redis_url="redis://127.0.0.1:1/0") as harness:
        yield harness


def _budget(gw: Harness, action: str) -> None:
    body = {"id": f"b-{action}", "scope": "workspace", "limit_usd": "5", "period": "24h", "action": action}
    assert gw.api("POST", "/api/budgets", json=body).status_code == 201


def test_a_budget_that_blocks_fails_closed(down: Harness) -> None:
    _budget(down, "block_requests")
    resp = down.v1("POST", "/v1/chat/completions", json=BODY, headers={"x-request-id": "closed-1"})
    assert resp.status_code == 503 and resp.headers["retry-after"] == "2"
    assert resp.json()["error"]["code"] == "store_unavailable"
    assert "b-block_requests" in resp.json()["error"]["message"]
    claude = down.v1(
        "POST",
        "/v1/messages",
        json={"model": "gpt-4o-mini", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]},
    )
    assert claude.status_code == 503 and claude.json()["type"] == "error"
    assert not down.fake.received  # nothing reached the provider
    row = down.get("/api/requests/closed-1")
    assert (row["policy_decision"], row["http_status"]) == ("blocked", 503)


def test_alert_only_budgets_are_served_unchecked_and_say_so(down: Harness) -> None:
    _budget(down, "alert_only")
    resp = down.v1("POST", "/v1/chat/completions", json=BODY, headers={"x-request-id": "open-1"})
    assert resp.status_code == 200, resp.text
    assert resp.headers["alephant-policy-decision"] == "allowed"
    row = down.get("/api/requests/open-1")
    assert row["policy_decision"] == "allowed"
    assert "counters unavailable" in row["governance"]["note"]

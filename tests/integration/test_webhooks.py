"""Webhooks end to end: a real gateway delivers alerts, signed, to a real receiver on 127.0.0.1, retries a 500,
gives up on a 4xx at once, survives a restart, and enqueues an alert written twice once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from agentledger.app import create_app
from agentledger.config import Settings
from agentledger.core.alerts import run_stopped
from agentledger.store.sql import SQLStore
from agentledger.testing import ServerThread
from agentledger.webhooks.signing import verify
from tests.harness import Harness, provision, running_gateway

FAST = dict(webhook_allow_hosts="127.0.0.1", webhook_backoff=0.05, webhook_poll_interval=0.05, webhook_timeout=2.0)


class Receiver:
    """Answers each path with its scripted statuses in turn (then 200), keeping what it received."""

    def __init__(self) -> None:
        self.got: list[tuple[str, dict[str, str], bytes]] = []
        self.script: dict[str, list[int]] = {}

    def app(self) -> Starlette:
        async def hook(request: Request) -> Response:
            path = request.path_params["name"]
            self.got.append((path, dict(request.headers), await request.body()))
            statuses = self.script.get(path) or [200]
            return Response(status_code=statuses.pop(0) if len(statuses) > 1 else statuses[0])

        return Starlette(routes=[Route("/{name}", hook, methods=["POST"])])


@pytest.fixture(scope="module")
def receiver() -> Iterator[tuple[Receiver, str]]:
    r = Receiver()
    with ServerThread(r.app()) as server:
        yield r, server.url


@pytest.fixture
def hooked(db_url: str, tmp_path: Path, upstream: ServerThread) -> Iterator[Harness]:
    with running_gateway(db_url, tmp_path, upstream, **FAST) as gw:
        yield gw


def wait_for(check: Callable[[], Any], timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.02)
    raise AssertionError("timed out waiting")


def subscribe(gw: Harness, url: str, **fields: Any) -> dict[str, Any]:
    resp = gw.api("POST", "/api/webhooks", json={"url": url, **fields})
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


def write_alert(db_url: str, workspace: str, run_id: str, times: int = 1) -> None:
    """An Alert written through the store's trace path, as the pipeline writes it (`times` writes: a replay)."""

    async def run() -> None:
        store = SQLStore(db_url)
        alert = run_stopped(workspace, run_id, "loop detected", at=datetime.now(UTC), policy_id="pol1")
        for _ in range(times):
            await store.write_batch([alert])
        await store.aclose()

    asyncio.run(run())


def deliveries(gw: Harness, hook_id: str, done: bool = True) -> list[dict[str, Any]]:
    def settled() -> list[dict[str, Any]] | None:
        rows = list(gw.get(f"/api/webhooks/{hook_id}/deliveries")["data"])
        return rows if rows and (not done or all(r["status"] != "pending" for r in rows)) else None

    return list(wait_for(settled))


def test_a_failed_attempt_is_retried_and_the_signature_verifies(
    hooked: Harness, db_url: str, receiver: tuple[Receiver, str]
) -> None:
    r, url = receiver
    r.script["flaky"] = [500, 200]
    hook = subscribe(hooked, url + "/flaky", kinds=["run_stopped"], description="on call")
    assert hook["secret"].startswith("whsec_") and hook["kinds"] == ["run_stopped"]
    assert "secret" not in hooked.get(f"/api/webhooks/{hook['id']}")
    write_alert(db_url, hooked.workspace, "run-1")
    (row,) = deliveries(hooked, hook["id"])
    assert (row["status"], row["attempts"], row["last_status_code"], row["event"]) == (
        "delivered",
        2,
        200,
        "run_stopped",
    )
    first, second = [g for g in r.got if g[0] == "flaky"][-2:]
    assert first[2] == second[2]  # the same body, the same delivery id
    headers, body = second[1], second[2]
    assert headers["alephant-webhook-id"] == hook["id"] and headers["alephant-delivery-id"] == row["id"]
    assert headers["alephant-event"] == "run_stopped"
    assert verify(hook["secret"], headers["alephant-signature"], body, time.time())
    assert not verify(hook["secret"], headers["alephant-signature"], body + b" ", time.time())
    sent = orjson.loads(body)
    assert sent["id"] == row["id"] and sent["event"] == "run_stopped"
    alert = sent["alert"]
    assert (alert["kind"], alert["severity"], alert["run_id"], alert["policy_id"]) == (
        "run_stopped",
        "warning",
        "run-1",
        "pol1",
    )
    (listed,) = hooked.get("/api/alerts", kind="run_stopped")["data"]
    assert listed["id"] == alert["id"] and listed["message"] == alert["message"]


def test_a_4xx_is_not_retried_and_kinds_filter(hooked: Harness, db_url: str, receiver: tuple[Receiver, str]) -> None:
    r, url = receiver
    r.script["gone"] = [410]
    hook = subscribe(hooked, url + "/gone")
    other = subscribe(hooked, url + "/other", kinds=["budget_exhausted"])
    write_alert(db_url, hooked.workspace, "run-2")
    (row,) = deliveries(hooked, hook["id"])
    assert (row["status"], row["attempts"], row["last_status_code"], row["last_error"]) == (
        "failed",
        1,
        410,
        "HTTP 410",
    )
    assert hooked.get(f"/api/webhooks/{other['id']}/deliveries")["data"] == []


def test_the_same_alert_written_twice_is_enqueued_once(
    hooked: Harness, db_url: str, receiver: tuple[Receiver, str]
) -> None:
    _, url = receiver
    hook = subscribe(hooked, url + "/once")
    write_alert(db_url, hooked.workspace, "run-3", times=2)
    write_alert(db_url, hooked.workspace, "run-3")
    rows = deliveries(hooked, hook["id"])
    assert [(r["status"], r["attempts"]) for r in rows] == [("delivered", 1)]
    assert len(hooked.get("/api/alerts", kind="run_stopped")["data"]) == 1


def test_a_test_event_is_delivered_and_deleted_hooks_get_nothing(
    hooked: Harness, receiver: tuple[Receiver, str]
) -> None:
    r, url = receiver
    hook = subscribe(hooked, url + "/ping")
    resp = hooked.api("POST", f"/api/webhooks/{hook['id']}/test")
    assert resp.status_code == 202, resp.text
    (row,) = deliveries(hooked, hook["id"])
    assert (row["id"], row["event"], row["status"]) == (resp.json()["delivery_id"], "test", "delivered")
    assert orjson.loads([g for g in r.got if g[0] == "ping"][-1][2])["event"] == "test"
    assert hooked.api("DELETE", f"/api/webhooks/{hook['id']}").json() == {"id": hook["id"], "deleted": True}
    assert hooked.api("GET", f"/api/webhooks/{hook['id']}").status_code == 404
    assert hooked.api("POST", f"/api/webhooks/{hook['id']}/test").status_code == 404
    assert hooked.get("/api/webhooks")["data"] == []


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.1/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]:9/hook",
        "ftp://127.0.0.1/hook",
        "file:///etc/passwd",
    ],
)
def test_the_address_guard_refuses_at_creation(hooked: Harness, url: str) -> None:
    # 127.0.0.1 is allowed (the receiver); a name resolving to a refused address: tests/unit/test_webhook_guard.py
    resp = hooked.api("POST", "/api/webhooks", json={"url": url})
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["param"] == "url"


def test_writes_need_an_admin_and_fields_are_checked(hooked: Harness) -> None:
    for body, param in (({}, "url"), ({"url": "http://127.0.0.1/", "kinds": ["nope"]}, "kinds"), ({"url": 3}, "url")):
        resp = hooked.api("POST", "/api/webhooks", json=body)
        assert (resp.status_code, resp.json()["error"]["param"]) == (400, param), resp.text
    assert hooked.api("GET", "/api/alerts", params={"severity": "loud"}).status_code == 400
    assert hooked.api("GET", "/api/alerts", params={"cursor": "junk"}).status_code == 400


def test_a_restart_delivers_what_was_pending(
    db_url: str, tmp_path: Path, upstream: ServerThread, receiver: tuple[Receiver, str]
) -> None:
    r, url = receiver
    # The first gateway polls too rarely to deliver: the row is still pending when it stops.
    cfg = Settings(data_dir=str(tmp_path), db_url=db_url, **{**FAST, "webhook_poll_interval": 3600.0})
    ids = provision(cfg, upstream.url)
    with ServerThread(create_app(cfg, store=SQLStore(cfg.database_url))) as first:
        gw = Harness(first.url, ids["workspace"], "", "", "", ids["admin"], upstream.config.app.state.fake, first, cfg)
        hook = subscribe(gw, url + "/restart")
        time.sleep(0.1)  # the worker's first, empty poll is behind it
        write_alert(db_url, ids["workspace"], "run-4")
        (row,) = deliveries(gw, hook["id"], done=False)
        assert (row["status"], row["attempts"]) == ("pending", 0)
    cfg = Settings(data_dir=str(tmp_path), db_url=db_url, **FAST)
    with ServerThread(create_app(cfg, store=SQLStore(cfg.database_url))) as second:
        gw.url, gw.server = second.url, second
        (row,) = deliveries(gw, hook["id"])
        assert (row["status"], row["attempts"]) == ("delivered", 1)
    assert any(g[0] == "restart" for g in r.got)

"""Approvals of escalated calls (gateway/approvals.py, api/approvals.py) against a real server and a real store
(SQLite and PostgreSQL): a held call woken by a decision from the API (on its own node, through Redis from
another, or by polling), denial with the approver's reason, timeout with the approval's id, one use per
approval however many race for it, one winner among concurrent decisions, expiry, and the list's order.

Calls are escalated two ways: on the server's own event loop (`on_server`, the node whose API decides: woken
by `decided`), or in the test's loop through an `Approvals` of its own over the same database (another
replica: woken by the broadcast, or by polling).
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import AsyncIterator, Coroutine
from concurrent.futures import Future
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
import jsonschema
import pytest
import redis

from agentledger.api.openapi.approvals import APPROVAL
from agentledger.config import MAX_APPROVAL_WAIT_S, load_settings
from agentledger.core.errors import ApprovalDenied, ApprovalRequired
from agentledger.formats.errors import anthropic_body, openai_body
from agentledger.gateway.approvals import RETRY_AFTER_S, Approvals, Ask, Granted, trace_of
from agentledger.gateway.broadcast import Broadcast
from agentledger.gateway.responses import error_response
from agentledger.store.sql import SQLStore
from agentledger.testing import ServerThread
from tests.harness import Harness, running_gateway

T = TypeVar("T")
REDIS_URL = "redis://127.0.0.1:6379/12"


def ask(gw: Harness, body: str = "body-1", *, run: str = "run-1", wait_s: float | None = None) -> Ask:
    return Ask(
        workspace_id=gw.workspace,
        virtual_key_id="vk-1",
        agent_id="planner",
        run_id=run,
        request_id=f"req-{body}",
        body_hash=body,
        reason="gpt-4o over $1 needs a human",
        kind="model_call",
        summary={"model": "gpt-4o", "max_tokens": 100},
        policy_id="pol-1",
        policy_version=3,
        rule_id="big-calls",
        wait_s=wait_s,
    )


def server_approvals(gw: Harness) -> Approvals:
    approvals: Approvals = gw.server.config.app.state.components.approvals
    return approvals


def on_server(gw: Harness, coro: Coroutine[Any, Any, T]) -> Future[T]:
    """Run `coro` on the server's own event loop (where its API decides), as the gateway's flow would."""
    loop = gw.server.server.servers[0].get_loop()
    return asyncio.run_coroutine_threadsafe(coro, loop)


def token_id(gw: Harness) -> str:
    async def find() -> str:
        from agentledger.core.keys import hash_secret

        store = SQLStore(gw.settings.database_url)
        try:
            admin = await store.admin_for_token(hash_secret(gw.admin))
        finally:
            await store.aclose()
        assert admin is not None
        return admin.token_id

    return asyncio.run(find())


def pending_id(gw: Harness, timeout: float = 5.0) -> str:
    """The one pending approval of the workspace, once the escalation has opened it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = gw.get("/api/approvals", status="pending")["data"]
        if rows:
            assert len(rows) == 1, rows
            return str(rows[0]["id"])
        time.sleep(0.02)
    raise AssertionError("no pending approval appeared")


def decide(gw: Harness, approval_id: str, verb: str, comment: str | None = None) -> httpx.Response:
    return gw.api("POST", f"/api/approvals/{approval_id}/{verb}", json={"comment": comment} if comment else None)


@asynccontextmanager
async def replica(gw: Harness, *, poll_s: float = 30.0, ttl_s: float = 86400.0) -> AsyncIterator[Approvals]:
    """Another node's Approvals over the same database (no broadcast unless the test adds one)."""
    store = SQLStore(gw.settings.database_url)
    try:
        yield Approvals(store, lambda: datetime.now(UTC), wait_s=1.0, ttl_s=ttl_s, poll_s=poll_s)
    finally:
        await store.aclose()


# -- held, then decided from the API ---------------------------------------------------------------------------


def test_a_held_call_is_woken_at_once_by_an_approval_from_the_api(gw: Harness) -> None:
    approvals = server_approvals(gw)
    approvals.poll_s = 60.0  # only the wake-up can end the wait in time
    held = on_server(gw, approvals.escalate(ask(gw, wait_s=10.0)))
    approval_id = pending_id(gw)
    row = gw.get(f"/api/approvals/{approval_id}")
    assert (row["status"], row["kind"], row["run_id"], row["request_id"]) == (
        "pending",
        "model_call",
        "run-1",
        "req-body-1",
    )
    assert row["summary"] == {"model": "gpt-4o", "max_tokens": 100, "kind": "model_call"}
    assert (row["policy_id"], row["policy_version"], row["rule_id"]) == ("pol-1", 3, "big-calls")
    assert row["used"] is False and "binding" not in row

    t0 = time.monotonic()
    resp = decide(gw, approval_id, "approve", "fine, once")
    assert resp.status_code == 200, resp.text
    granted = held.result(timeout=5)
    woke_in = time.monotonic() - t0

    assert woke_in < 1.0, woke_in
    assert isinstance(granted, Granted)
    assert granted.approval_id == approval_id and granted.created
    assert granted.waited_ms > 0 and granted.decided_by == token_id(gw) and granted.comment == "fine, once"
    trace = trace_of(granted)
    assert trace["status"] == "approved" and trace["decided_by"] == granted.decided_by and trace["waited_ms"] > 0
    after = gw.get(f"/api/approvals/{approval_id}")
    assert after["status"] == "approved" and after["used"] is True and after["comment"] == "fine, once"


def test_a_denial_refuses_the_held_call_and_every_resend_with_the_approvers_reason(gw: Harness) -> None:
    approvals = server_approvals(gw)
    held = on_server(gw, approvals.escalate(ask(gw, wait_s=10.0)))
    approval_id = pending_id(gw)
    resp = decide(gw, approval_id, "deny", "not on a Sunday")
    assert resp.status_code == 200 and resp.json()["status"] == "denied", resp.text

    with pytest.raises(ApprovalDenied) as denied:
        held.result(timeout=5)
    exc = denied.value
    assert (exc.approval_id, exc.reason, exc.decided_by, exc.created) == (
        approval_id,
        "not on a Sunday",
        token_id(gw),
        True,
    )
    assert exc.status == 403 and exc.code == "approval_denied" and "not on a Sunday" in exc.message
    assert exc.waited_ms > 0 and trace_of(exc)["status"] == "denied"

    with pytest.raises(ApprovalDenied) as again:  # the resend: refused at once, no new approval
        on_server(gw, approvals.escalate(ask(gw, wait_s=10.0))).result(timeout=5)
    assert (again.value.approval_id, again.value.created, again.value.waited_ms) == (approval_id, False, 0)
    assert [r["id"] for r in gw.get("/api/approvals")["data"]] == [approval_id]


def test_no_decision_in_time_answers_approval_required_and_a_resend_waits_on_the_same_approval(gw: Harness) -> None:
    approvals = server_approvals(gw)
    t0 = time.monotonic()
    with pytest.raises(ApprovalRequired) as first:
        on_server(gw, approvals.escalate(ask(gw, wait_s=0.3))).result(timeout=5)
    assert 0.3 <= time.monotonic() - t0 < 2.0
    exc = first.value
    assert exc.status == 403 and exc.code == "approval_required" and exc.created
    assert exc.retry_after == RETRY_AFTER_S and 250 <= exc.waited_ms < 2000
    assert exc.approval_id in exc.message and trace_of(exc)["status"] == "pending"

    with pytest.raises(ApprovalRequired) as second:
        on_server(gw, approvals.escalate(ask(gw, wait_s=0.2))).result(timeout=5)
    assert (second.value.approval_id, second.value.created) == (exc.approval_id, False)

    # Another body, run or key is another call: its own approval.
    with pytest.raises(ApprovalRequired) as other:
        on_server(gw, approvals.escalate(ask(gw, "body-2", wait_s=0))).result(timeout=5)
    assert other.value.approval_id != exc.approval_id and other.value.waited_ms < 1000


def test_a_resend_after_approval_proceeds_once_and_the_next_one_opens_a_new_approval(gw: Harness) -> None:
    approvals = server_approvals(gw)
    with pytest.raises(ApprovalRequired) as first:
        on_server(gw, approvals.escalate(ask(gw, wait_s=0))).result(timeout=5)
    assert decide(gw, first.value.approval_id, "approve").status_code == 200

    granted = on_server(gw, approvals.escalate(ask(gw, wait_s=0))).result(timeout=5)
    assert (granted.approval_id, granted.created, granted.waited_ms) == (first.value.approval_id, False, 0)
    assert granted.comment is None

    with pytest.raises(ApprovalRequired) as third:
        on_server(gw, approvals.escalate(ask(gw, wait_s=0))).result(timeout=5)
    assert third.value.approval_id != first.value.approval_id and third.value.created
    rows = gw.get("/api/approvals")["data"]
    assert [(r["id"], r["status"], r["used"]) for r in rows] == [
        (third.value.approval_id, "pending", False),
        (first.value.approval_id, "approved", True),
    ]


# -- races ------------------------------------------------------------------------------------------------------


def test_two_concurrent_decisions_one_wins_the_other_is_told_who_decided_first(gw: Harness) -> None:
    approvals = server_approvals(gw)
    with pytest.raises(ApprovalRequired) as opened:
        on_server(gw, approvals.escalate(ask(gw, wait_s=0))).result(timeout=5)
    approval_id = opened.value.approval_id
    barrier = threading.Barrier(2)
    answers: list[httpx.Response] = []

    def approve() -> None:
        barrier.wait()
        answers.append(decide(gw, approval_id, "approve"))

    threads = [threading.Thread(target=approve) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.status_code for r in answers) == [200, 409], [r.text for r in answers]
    (lost,) = [r for r in answers if r.status_code == 409]
    assert lost.json()["error"]["code"] == "conflict" and "already approved by" in lost.json()["error"]["message"]
    late = decide(gw, approval_id, "deny", "too late")
    assert late.status_code == 409 and "already approved" in late.json()["error"]["message"]
    assert gw.get(f"/api/approvals/{approval_id}")["status"] == "approved"


async def test_two_calls_held_on_one_approval_exactly_one_proceeds(gw: Harness) -> None:
    # Two replicas (each its own store and pool) hold the same call; both open "the" approval at once and agree
    # on it; once approved, exactly one uses it, the other needs an approval of its own.
    async with replica(gw, poll_s=0.05) as a, replica(gw, poll_s=0.05) as b:
        held = [
            asyncio.ensure_future(a.escalate(ask(gw, wait_s=1.0))),
            asyncio.ensure_future(b.escalate(ask(gw, wait_s=1.0))),
        ]
        approval_id = await asyncio.to_thread(pending_id, gw)
        resp = await asyncio.to_thread(decide, gw, approval_id, "approve")
        assert resp.status_code == 200, resp.text
        results = await asyncio.gather(*held, return_exceptions=True)

    granted = [r for r in results if isinstance(r, Granted)]
    refused = [r for r in results if isinstance(r, ApprovalRequired)]
    assert len(granted) == 1 and len(refused) == 1, results
    assert granted[0].approval_id == approval_id
    assert refused[0].approval_id != approval_id and refused[0].created  # the loser opened the next one
    assert sorted(r["status"] for r in gw.get("/api/approvals")["data"]) == ["approved", "pending"]


async def test_another_replica_waits_by_polling_when_no_broadcast_reaches_it(gw: Harness) -> None:
    async with replica(gw, poll_s=0.1) as other:
        held = asyncio.ensure_future(other.escalate(ask(gw, wait_s=5.0)))
        approval_id = await asyncio.to_thread(pending_id, gw)
        assert (await asyncio.to_thread(decide, gw, approval_id, "approve")).status_code == 200
        t0 = time.monotonic()
        granted = await asyncio.wait_for(held, 3)
        assert time.monotonic() - t0 < 1.0 and granted.approval_id == approval_id


def _redis_up() -> bool:
    try:
        return bool(redis.Redis.from_url(REDIS_URL, socket_timeout=0.5, socket_connect_timeout=0.5).ping())
    except redis.RedisError:
        return False


@pytest.mark.skipif(not _redis_up(), reason="Redis does not answer on 127.0.0.1:6379")
def test_a_decision_on_one_replica_wakes_a_call_held_on_another_through_redis(
    sqlite_url: str, tmp_path: Path, upstream: ServerThread
) -> None:
    redis.Redis.from_url(REDIS_URL).flushdb()
    with running_gateway(sqlite_url, tmp_path, upstream, redis_url=REDIS_URL) as gw:

        async def held_elsewhere() -> float:
            async with replica(gw, poll_s=60.0) as other:  # polling would take a minute: only the broadcast is fast
                channel = Broadcast(REDIS_URL, f"test-{uuid.uuid4().hex[:8]}", lambda kind, value: None)
                channel.apply = lambda kind, value: other.on_broadcast(value) if kind == "approval" else None
                channel.start()
                try:
                    await asyncio.wait_for(channel.ready.wait(), 5)
                    held = asyncio.ensure_future(other.escalate(ask(gw, wait_s=10.0)))
                    approval_id = await asyncio.to_thread(pending_id, gw)
                    t0 = time.monotonic()
                    resp = await asyncio.to_thread(decide, gw, approval_id, "deny", "no")
                    assert resp.status_code == 200
                    with pytest.raises(ApprovalDenied) as denied:
                        await asyncio.wait_for(held, 5)
                    assert denied.value.reason == "no"
                    return time.monotonic() - t0
                finally:
                    await channel.aclose()

        assert asyncio.run(held_elsewhere()) < 1.0


# -- expiry, listing, the API's refusals ---------------------------------------------------------------------


async def test_an_expired_approval_cannot_be_decided_and_a_resend_opens_a_new_one(gw: Harness) -> None:
    async with replica(gw, ttl_s=0.3) as approvals:
        with pytest.raises(ApprovalRequired) as first:
            await approvals.escalate(ask(gw, wait_s=0))
        approval_id = first.value.approval_id
        await asyncio.sleep(0.4)
        # Past its expiry the API says so before the sweep has run...
        assert (await asyncio.to_thread(gw.get, f"/api/approvals/{approval_id}"))["status"] == "expired"
        resp = await asyncio.to_thread(decide, gw, approval_id, "approve")
        assert resp.status_code == 409 and "expired at" in resp.json()["error"]["message"], resp.text
        # ...and the sweep writes it.
        assert await approvals.expire() >= 1
        row = await approvals.get(gw.workspace, approval_id)
        assert row is not None and row["status"] == "expired" and row["decided_by"] is None

        with pytest.raises(ApprovalRequired) as resend:
            await approvals.escalate(ask(gw, wait_s=0))
        assert resend.value.approval_id != approval_id and resend.value.created


def test_the_list_shows_pending_first_oldest_first_then_the_rest_newest_first(gw: Harness) -> None:
    approvals = server_approvals(gw)
    ids = []
    for body in ("a", "b", "c", "d"):
        with pytest.raises(ApprovalRequired) as opened:
            on_server(gw, approvals.escalate(ask(gw, body, wait_s=0))).result(timeout=5)
        ids.append(opened.value.approval_id)
        time.sleep(0.005)  # distinct created_at
    a, b, c, d = ids
    assert decide(gw, a, "deny").status_code == 200
    assert decide(gw, c, "approve").status_code == 200

    assert [r["id"] for r in gw.get("/api/approvals")["data"]] == [b, d, c, a]
    assert [r["id"] for r in gw.get("/api/approvals", status="pending")["data"]] == [b, d]
    assert [r["id"] for r in gw.get("/api/approvals", status="denied")["data"]] == [a]
    # The page is cut after ordering: the longest waiting is on the first page, however many are pending.
    assert [r["id"] for r in gw.get("/api/approvals", limit=1)["data"]] == [b]
    assert [r["id"] for r in gw.get("/api/approvals", limit=3)["data"]] == [b, d, c]
    for row in gw.get("/api/approvals")["data"]:  # what the OpenAPI document promises
        jsonschema.validate(row, APPROVAL)


def test_the_api_refuses_what_it_cannot_do_with_a_clear_error(gw: Harness) -> None:
    def error(resp: httpx.Response, status: int, param: str | None) -> str:
        assert resp.status_code == status, resp.text
        assert resp.json()["error"]["param"] == param, resp.text
        return str(resp.json()["error"]["code"])

    assert error(gw.api("GET", "/api/approvals", params={"status": "used"}), 400, "status") == "invalid_request"
    assert error(gw.api("GET", "/api/approvals", params={"limit": "0"}), 400, "limit") == "invalid_request"
    assert error(gw.api("GET", "/api/approvals/apr_nope"), 404, "approval_id") == "not_found"
    assert error(decide(gw, "apr_nope", "approve"), 404, "approval_id") == "not_found"
    assert error(gw.api("POST", "/api/approvals/bad%00id/deny"), 404, "approval_id") == "not_found"

    approvals = server_approvals(gw)
    with pytest.raises(ApprovalRequired) as opened:
        on_server(gw, approvals.escalate(ask(gw, wait_s=0))).result(timeout=5)
    path = f"/api/approvals/{opened.value.approval_id}/deny"
    assert error(gw.api("POST", path, content=b"[1]"), 400, None) == "invalid_json"
    assert error(gw.api("POST", path, json={"comment": 7}), 400, "comment") == "invalid_request"
    assert error(gw.api("POST", path, json={"comment": "x\x00"}), 400, "comment") == "invalid_request"
    assert error(gw.api("POST", path, json={"comment": "x" * 2049}), 400, "comment") == "invalid_request"
    assert gw.get(f"/api/approvals/{opened.value.approval_id}")["status"] == "pending"  # nothing decided

    viewer = asyncio.run(_viewer_token(gw))
    resp = gw.api("POST", path, headers={"authorization": f"Bearer {viewer}"})
    assert error(resp, 403, None) == "permission_denied"
    assert gw.api("GET", "/api/approvals", headers={"authorization": f"Bearer {viewer}"}).status_code == 200
    assert gw.api("GET", "/api/approvals", headers={"authorization": "Bearer adm-wrong"}).status_code == 401


async def _viewer_token(gw: Harness) -> str:
    from agentledger.core.model import Role
    from agentledger.governance import Governance
    from agentledger.secrets_box import SecretBox

    store = SQLStore(gw.settings.database_url)
    try:
        gov = Governance(store, SecretBox.from_setting(None, Path(gw.settings.data_dir) / "secret.key"))
        return await gov.create_admin_token(gw.workspace, "viewer", Role.VIEWER)
    finally:
        await store.aclose()


def test_another_workspace_sees_none_of_its_approvals(gw: Harness) -> None:
    approvals = server_approvals(gw)
    other = Ask(**_fields(ask(gw, wait_s=0), workspace_id="ws-x"))
    with pytest.raises(ApprovalRequired) as theirs:
        on_server(gw, approvals.escalate(other)).result(timeout=5)
    assert gw.get("/api/approvals")["data"] == []
    assert gw.api("GET", f"/api/approvals/{theirs.value.approval_id}").status_code == 404
    assert decide(gw, theirs.value.approval_id, "approve").status_code == 404


def _fields(a: Ask, **changes: Any) -> dict[str, Any]:
    return {**{name: getattr(a, name) for name in a.__dataclass_fields__}, **changes}


# -- the wire: error bodies, Retry-After, settings -------------------------------------------------------------


def test_approval_errors_carry_the_approval_id_in_both_wire_shapes_and_retry_after() -> None:
    required = ApprovalRequired("held", approval_id="apr_1", retry_after=RETRY_AFTER_S)
    assert openai_body(required) == {
        "error": {
            "message": "held",
            "type": "permission_error",
            "code": "approval_required",
            "param": None,
            "approval_id": "apr_1",
        }
    }
    assert anthropic_body(required) == {
        "type": "error",
        "error": {"type": "permission_error", "message": "held", "approval_id": "apr_1"},
    }
    resp = error_response(required)
    assert resp.status_code == 403 and resp.headers["retry-after"] == str(RETRY_AFTER_S)

    denied = ApprovalDenied("no", approval_id="apr_2", reason="no", decided_by="adm_1", decided_at=None)
    assert openai_body(denied)["error"]["code"] == "approval_denied"
    assert openai_body(denied)["error"]["approval_id"] == "apr_2"
    assert "retry-after" not in error_response(denied).headers


def test_approval_wait_is_bounded_and_the_ttl_positive() -> None:
    assert load_settings(environ={}).approval_wait_s == 30.0
    assert load_settings(environ={}).approval_ttl_s == 86400.0
    assert load_settings({"approval_wait_s": "0"}, environ={}).approval_wait_s == 0.0
    assert load_settings({"approval_wait_s": str(MAX_APPROVAL_WAIT_S)}, environ={}).approval_wait_s == 300.0
    for bad in ("-1", "300.5", "nan"):
        with pytest.raises(ValueError, match="approval_wait_s"):
            load_settings({"approval_wait_s": bad}, environ={})
    for bad in ("0", "-5", "inf"):
        with pytest.raises(ValueError, match="approval_ttl_s"):
            load_settings({"approval_ttl_s": bad}, environ={})


def test_the_binding_separates_every_part_of_the_call() -> None:
    base = Approvals.binding("ws", "vk", "run", "hash")
    assert len(base) == 64
    others = {
        Approvals.binding("ws2", "vk", "run", "hash"),
        Approvals.binding("ws", "vk2", "run", "hash"),
        Approvals.binding("ws", "vk", "run2", "hash"),
        Approvals.binding("ws", "vk", "run", "hash2"),
        Approvals.binding("ws", "vkr", "un", "hash"),  # parts are separated, not concatenated
        Approvals.binding("ws", None, "run", "hash"),
    }
    assert base not in others and len(others) == 6

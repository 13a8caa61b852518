"""A PostgreSQL outage under load: chat keeps serving known keys, everything else answers a JSON 503, nothing is lost.

The gateway reaches PostgreSQL through a loopback TCP proxy (tests/tcp_proxy.py) that the test cuts (every
connection dropped, new ones refused) and restores, in the middle of paced chat traffic. `cache_ttl` is 1 s so
every cached lookup expires during the cut and is served stale (stale-if-error).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from agentledger.testing import ServerThread
from tests.harness import Harness, fresh_pg_database, running_gateway
from tests.tcp_proxy import TCPProxy

pytestmark = [pytest.mark.pg, pytest.mark.slow]

CHAT = "/v1/chat/completions"
RATE = 25.0  # chat calls a second
CALLS = 300  # 12 s of traffic
CUT_AT, PROBE_AT, RESTORE_AT = 75, 150, 225  # call numbers: the cut lasts 6 s, the probes run 3 s into it


@dataclass
class Outage:
    gw: Harness
    proxy: TCPProxy
    direct_url: str  # the database itself, bypassing the proxy


@pytest.fixture
def outage(tmp_path: Path, upstream: ServerThread) -> Iterator[Outage]:
    upstream.config.app.state.fake.received.clear()
    with fresh_pg_database() as url, TCPProxy("127.0.0.1", 5432) as proxy:
        proxied = url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
        with running_gateway(proxied, tmp_path, upstream, cache_ttl=1.0) as gw:
            yield Outage(gw, proxy, url.replace("+psycopg", ""))


@dataclass
class Seen:
    chat: list[tuple[int, httpx.Response]] = field(default_factory=list)
    latency: list[float] = field(default_factory=list)  # seconds per chat call
    slowest: list[tuple[float, int]] = field(default_factory=list)  # (seconds, call number), to name the slow ones
    probes: dict[str, httpx.Response] = field(default_factory=dict)


def _chat_body(i: int) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"call {i}"}], "stream": i % 5 == 0}


def _chat_headers(gw: Harness, i: int) -> dict[str, str]:
    headers = {"authorization": f"Bearer {gw.vk}"}
    if i % 3 == 0:
        headers["x-request-id"] = f"outage-{i}-{uuid.uuid4().hex[:8]}"  # client-chosen: the idempotency path
    if i % 2 == 0:
        headers["alephant-run-id"] = f"run-outage-{i // 20}"
    return headers


async def _traffic(o: Outage, unused_key: str, revoked_key: str, replay_before: dict[str, str]) -> Seen:
    gw, seen = o.gw, Seen()
    loop = asyncio.get_running_loop()
    limits = httpx.Limits(max_connections=400, max_keepalive_connections=100)
    async with httpx.AsyncClient(base_url=gw.url, timeout=30, trust_env=False, limits=limits) as client:

        async def chat(i: int) -> None:
            t = loop.time()
            resp = await client.post(CHAT, json=_chat_body(i), headers=_chat_headers(gw, i))
            seen.latency.append(loop.time() - t)
            seen.slowest.append((seen.latency[-1], i))
            seen.chat.append((i, resp))

        async def probes() -> None:
            admin = {"authorization": f"Bearer {gw.admin}"}
            vk = {"authorization": f"Bearer {gw.vk}"}
            step = [{"name": "search", "kind": "tool_call"}]
            calls: dict[str, Any] = {
                "GET /api/runs": client.get("/api/runs", headers=admin),
                "GET /api/requests": client.get(f"/api/requests/{replay_before['id']}", headers=admin),
                "GET /api/analytics/costs": client.get("/api/analytics/costs", headers=admin),
                "POST /api/departments": client.post("/api/departments", json={"name": "Ops"}, headers=admin),
                "POST /v1/runs": client.post("/v1/runs", json={"run_id": "run-during-cut"}, headers=vk),
                "POST /v1/runs/steps": client.post("/v1/runs/run-outage-0/steps", json=step, headers=vk),
                "POST /v1/runs/end": client.post("/v1/runs/run-outage-0/end", json={}, headers=vk),
                "chat unused key": client.post(
                    CHAT, json=_chat_body(1), headers={"authorization": f"Bearer {unused_key}"}
                ),
                "chat revoked key": client.post(
                    CHAT, json=_chat_body(1), headers={"authorization": f"Bearer {revoked_key}"}
                ),
                "chat replay": client.post(
                    CHAT,
                    json=replay_before["body"],
                    headers={**vk, "x-request-id": replay_before["id"]},
                ),
                "GET /v1/models": client.get("/v1/models", headers=vk),
                "GET /readyz": client.get("/readyz"),
                "GET /healthz": client.get("/healthz"),
            }
            for name, call in calls.items():
                seen.probes[name] = await call

        start = loop.time()
        tasks: list[asyncio.Task[None]] = []
        for i in range(CALLS):
            await asyncio.sleep(max(0.0, start + i / RATE - loop.time()))
            if i == CUT_AT:
                await asyncio.to_thread(o.proxy.cut)
            elif i == PROBE_AT:
                tasks.append(asyncio.create_task(probes()))
            elif i == RESTORE_AT:
                await asyncio.to_thread(o.proxy.restore)
            tasks.append(asyncio.create_task(chat(i)))
        await asyncio.gather(*tasks)
    return seen


def _assert_store_unavailable(name: str, resp: httpx.Response) -> None:
    assert resp.status_code == 503, (name, resp.status_code, resp.text)
    assert resp.headers["content-type"] == "application/json", name
    assert resp.headers["retry-after"] == "2", name
    assert resp.headers["x-request-id"], name
    body = resp.json()
    assert body == {
        "error": {"message": body["error"]["message"], "type": "api_error", "code": "store_unavailable", "param": None}
    }, name


def test_a_store_outage_keeps_chat_serving_and_loses_nothing(outage: Outage) -> None:
    gw = outage.gw
    # Before the cut: this node sees the key (and its routes and prices), a completed client-id call, a key it
    # later revokes itself, and a key created but never used (so never cached).
    replay_body = _chat_body(1)
    first = gw.v1("POST", CHAT, json=replay_body, headers={"x-request-id": "outage-replay"})
    assert first.status_code == 200
    created = [gw.api("POST", "/api/virtual-keys", json={"name": n, "department_id": gw.department}) for n in "ab"]
    assert [r.status_code for r in created] == [201, 201]
    unused_key, revoked = created[0].json()["key"], created[1].json()
    assert (
        gw.v1("POST", CHAT, json=replay_body, headers={"authorization": f"Bearer {revoked['key']}"}).status_code == 200
    )
    assert gw.api("DELETE", f"/api/virtual-keys/{revoked['id']}").status_code == 200
    warmup_calls = len(gw.fake.received)
    assert warmup_calls == 2

    t0 = time.monotonic()
    seen = asyncio.run(_traffic(outage, unused_key, revoked["key"], {"id": "outage-replay", "body": replay_body}))
    took = time.monotonic() - t0

    # Chat for a known key: every call answered 200, through the cut. Streams ended properly.
    statuses = sorted({r.status_code for _, r in seen.chat})
    assert statuses == [200], [(i, r.status_code, r.text[:200]) for i, r in seen.chat if r.status_code != 200][:5]
    assert len(seen.chat) == CALLS
    for i, resp in seen.chat:
        if i % 5 == 0:
            assert resp.text.endswith("data: [DONE]\n\n"), (i, resp.text[-200:])
    assert len(gw.fake.received) == warmup_calls + CALLS  # each call forwarded once, the replay not at all
    # Nothing waited on the dead database, nor long behind the spool's replay after the restore (measured: 0.07 s
    # at most; 1.8 s, and 2.9 s on a slower machine, when the replay wrote each spooled batch on its own).
    assert max(seen.latency) < 1.0, sorted(seen.slowest)[-5:]

    p = seen.probes
    for name in (
        "GET /api/runs",
        "GET /api/requests",
        "GET /api/analytics/costs",
        "POST /api/departments",
        "POST /v1/runs",
        "POST /v1/runs/steps",
        "POST /v1/runs/end",
        "chat unused key",  # never seen by this node: it cannot be authenticated without the store
    ):
        _assert_store_unavailable(name, p[name])
    assert p["chat revoked key"].status_code == 401
    assert p["chat revoked key"].json()["error"]["code"] == "invalid_api_key"
    # A completed client id is replayed from this node's memory while the store is down.
    assert p["chat replay"].status_code == 200 and p["chat replay"].headers["alephant-replayed"] == "true"
    assert p["chat replay"].content == first.content
    assert p["GET /v1/models"].status_code == 200  # from the stale route cache
    assert p["GET /v1/models"].json() == {"object": "list", "data": []}  # the test's routes are globs only
    assert p["GET /healthz"].status_code == 200
    ready = p["GET /readyz"]
    assert (ready.status_code, ready.headers["retry-after"]) == (503, "2")
    assert ready.json()["status"] == "unavailable" and ready.json()["reason"] == "store_unavailable"
    assert "OperationalError" in ready.json()["detail"]

    # After the restore: ready again, and every answered call is on the books exactly once (the spool replays).
    deadline = time.monotonic() + 20
    while gw.v1("GET", "/readyz").status_code != 200:
        assert time.monotonic() < deadline, "not ready after the restore"
        time.sleep(0.1)
    answered = {r.headers["x-request-id"] for _, r in seen.chat} | {"outage-replay"}
    assert len(answered) == CALLS + 1
    with psycopg.connect(outage.direct_url) as conn:
        while True:
            rows = conn.execute(
                "SELECT id, status, attempts FROM requests WHERE workspace_id = %s AND status = 'ok'",
                (gw.workspace,),
            ).fetchall()
            conn.commit()
            ok = {r[0]: r for r in rows}
            if answered <= set(ok) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    assert sorted(answered - set(ok)) == []
    # The revoked key's warm-up call is the only other completed request of the workspace.
    assert len(ok) == len(answered) + 1
    assert {r[2] for r in rows} == {1}
    runs = gw.get("/api/runs", limit=100)["data"]
    assert sum(r["totals"]["model_calls"] for r in runs if r["id"].startswith("run-outage-")) == CALLS // 2
    assert took < 15, took  # 12 s of paced traffic: the cut did not stall it

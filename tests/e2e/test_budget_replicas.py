"""No scope spends past its limit by more than the stated bound (DESIGN §7), attacked with 200 concurrent calls,
plain and streamed, against one small budget: on two gateway processes sharing PostgreSQL and Redis, and on one
node with the in-process counters. Afterwards the books must agree to the nano-dollar: the budget's counters,
the ledger's sums, the cost analytics and what the calls were charged.

The calls use a model priced by a workspace override at $1000 per million tokens (the fake upstream serves
`priced-*`), so a few dozen calls reach the $1 limit; each sets `max_tokens`, so its reservation bounds its
cost and the stated overspend bound here is zero (docs/budgets.md).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis
from sqlalchemy import create_engine, text

from agentledger.app import build_components, create_app
from agentledger.config import Settings
from agentledger.store.sql import SQLStore
from agentledger.testing import ServerThread
from agentledger.testing.server import free_port
from tests.harness import HTTP, fresh_pg_database, provision

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CALLS = 200
LIMIT_USD = "1"
MODEL = "priced-budget"
REDIS_DB = 13


def _body(i: int) -> bytes:
    words = " ".join(f"w{i}x{j}" for j in range(20))
    return orjson.dumps(
        {"model": MODEL, "max_tokens": 12, "stream": i % 2 == 0, "messages": [{"role": "user", "content": words}]}
    )


def _setup(settings: Settings, upstream_url: str) -> dict[str, str]:
    ids = provision(settings, upstream_url)

    async def run() -> None:
        c = build_components(settings)
        await c.governance.add_price_override(
            ids["workspace"], {"model": MODEL, "input_mtok": "1000", "output_mtok": "1000"}
        )
        await c.store.aclose()

    asyncio.run(run())
    return ids


def _budget(url: str, admin: str) -> dict[str, Any]:
    resp = HTTP.post(
        url + "/api/budgets",
        headers={"authorization": f"Bearer {admin}"},
        json={"id": "cap", "scope": "workspace", "limit_usd": LIMIT_USD, "period": "24h", "action": "block_requests"},
    )
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


async def _storm(urls: list[str], vk: str) -> list[tuple[int, str]]:
    """CALLS concurrent calls spread over the gateways; (status, x-request-id) each, a stream read to its end."""
    limits = httpx.Limits(max_connections=CALLS)
    async with httpx.AsyncClient(timeout=60, trust_env=False, limits=limits) as client:

        async def call(i: int) -> tuple[int, str]:
            headers = {
                "authorization": f"Bearer {vk}",
                "x-request-id": f"storm-{i}",
                "content-type": "application/json",
            }
            url = urls[i % len(urls)] + "/v1/chat/completions"
            async with client.stream("POST", url, content=_body(i), headers=headers) as resp:
                raw = b"".join([chunk async for chunk in resp.aiter_bytes()])
                if resp.status_code == 200 and i % 2 == 0:
                    assert raw.endswith(b"data: [DONE]\n\n"), raw[-200:]
                return resp.status_code, f"storm-{i}"

        return list(await asyncio.gather(*(call(i) for i in range(CALLS))))


def _check_books(url: str, admin: str, db_url: str, workspace: str, results: list[tuple[int, str]]) -> None:
    statuses = sorted({s for s, _ in results})
    assert set(statuses) <= {200, 402}, statuses
    allowed = [rid for s, rid in results if s == 200]
    assert 0 < len(allowed) < CALLS  # the budget stopped the storm, after letting some through
    auth = {"authorization": f"Bearer {admin}"}
    deadline = time.monotonic() + 10
    while True:  # the counters settle in the background, just after each answer
        status = HTTP.get(url + "/api/budgets/cap", headers=auth).json()["status"]
        if status["reserved_usd"] == "0.000000000" or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    limit = 10**9 * int(LIMIT_USD)
    spent = int(Decimal(status["spent_usd"]) * 10**9)
    assert status["reserved_usd"] == "0.000000000"
    assert 0 < spent <= limit  # the promise: the overspend bound is zero for calls whose reservation bounds them
    charged = 0
    for rid in allowed:
        row = HTTP.get(url + f"/api/requests/{rid}", headers=auth).json()
        assert row["policy_decision"] == "allowed"
        charged += int(row["cost_nanos"])
    for rid in (rid for s, rid in results if s == 402):
        row = HTTP.get(url + f"/api/requests/{rid}", headers=auth).json()
        assert (row["policy_decision"], row["http_status"], row["cost_nanos"]) == ("blocked", 402, 0)
    costs = HTTP.get(url + "/api/analytics/costs", headers=auth, params={"group_by": "workspace"}).json()["data"]
    engine = create_engine(db_url)
    with engine.connect() as conn:
        ledger_spent, ledger_reserved = conn.execute(
            text("SELECT sum(spent_delta), sum(reserved_delta) FROM budget_ledger WHERE workspace_id = :ws"),
            {"ws": workspace},
        ).one()
    engine.dispose()
    assert (spent, int(ledger_spent), int(ledger_reserved)) == (charged, charged, 0)
    assert int(costs[0]["cost_nanos"]) == charged


def _gateway_process(
    data_dir: Path, db_url: str, redis_url: str, secret: str, log: Path
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTLEDGER_")}
    cmd = [sys.executable, "-m", "agentledger", "--data-dir", str(data_dir), "--db", db_url]
    cmd += ["--set", "bootstrap=false", "--set", f"redis_url={redis_url}", "--set", f"secret_key={secret}"]
    cmd += ["serve", "--port", str(port)]
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        assert proc.poll() is None, log.read_text()
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)


def _revoked_everywhere(urls: list[str], admin: str, vk: str) -> None:
    """A key revoked on one replica is refused by the other at once (broadcast), not after cache_ttl (30 s)."""
    auth = {"authorization": f"Bearer {admin}"}
    keys = HTTP.get(urls[0] + "/api/virtual-keys", headers=auth).json()["data"]
    key_id = next(k["id"] for k in keys if vk.startswith(k["key_prefix"]))
    assert HTTP.delete(urls[0] + f"/api/virtual-keys/{key_id}", headers=auth).status_code == 200
    deadline = time.monotonic() + 2
    while True:
        resp = HTTP.get(urls[1] + "/v1/models", headers={"authorization": f"Bearer {vk}"})
        if resp.status_code == 401 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert resp.status_code == 401


@pytest.mark.pg
def test_two_gateway_processes_sharing_postgresql_and_redis_never_overspend(
    tmp_path: Path, upstream: ServerThread
) -> None:
    redis_url = f"redis://127.0.0.1:6379/{REDIS_DB}"
    redis.Redis.from_url(redis_url).flushdb()
    with fresh_pg_database() as db_url:
        secret_file = tmp_path / "a" / "secret.key"
        settings = Settings(data_dir=str(tmp_path / "a"), db_url=db_url, redis_url=redis_url)
        ids = _setup(settings, upstream.url)
        secret = secret_file.read_text().strip()
        procs = []
        try:
            for name in ("a", "b"):
                procs.append(_gateway_process(tmp_path / name, db_url, redis_url, secret, tmp_path / f"{name}.log"))
            urls = [url for _, url in procs]
            _budget(urls[0], ids["admin"])
            # The budget was created on the first replica: the second learns it from the broadcast, not its TTL.
            deadline = time.monotonic() + 5
            while True:
                seen = HTTP.get(urls[1] + "/v1/budget", headers={"authorization": f"Bearer {ids['vk']}"}).json()
                if seen["data"] or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            assert [b["budget_id"] for b in seen["data"]] == ["cap"]
            results = asyncio.run(_storm(urls, ids["vk"]))
            _check_books(urls[0], ids["admin"], db_url, ids["workspace"], results)
            _revoked_everywhere(urls, ids["admin"], ids["vk"])
        finally:
            for proc, _ in procs:
                proc.terminate()
                proc.wait(30)
        redis.Redis.from_url(redis_url).flushdb()


def test_one_node_with_in_process_counters_never_overspends(tmp_path: Path, upstream: ServerThread) -> None:
    db_url = f"sqlite:///{tmp_path / 'one.db'}"
    settings = Settings(data_dir=str(tmp_path), db_url=db_url, batch_interval_ms=5.0)
    ids = _setup(settings, upstream.url)
    app = create_app(settings, store=SQLStore(settings.database_url))
    with ServerThread(app) as server:
        _budget(server.url, ids["admin"])
        results = asyncio.run(_storm([server.url], ids["vk"]))
        _check_books(server.url, ids["admin"], db_url, ids["workspace"], results)

"""One x-request-id reaches the provider once: concurrent duplicates on one gateway and on two sharing PostgreSQL.

50 client-chosen ids, each sent 16 times at once, must cost exactly 50 upstream calls; every other copy waits
for the first and replays its bytes. On two gateways (two servers with their own memory and pools) the store's
claim (`Store.claim_request`) is what keeps the second one from forwarding.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import openai
import pytest

from agentledger.app import create_app
from agentledger.store.sql import SQLStore
from agentledger.testing import ServerThread
from tests.harness import HTTP, Harness, running_gateway

IDS, COPIES = 50, 16
CHAT = "/v1/chat/completions"


def _ids(prefix: str) -> list[str]:
    tag = uuid.uuid4().hex[:8]
    return [f"{prefix}-{tag}-{i}" for i in range(IDS)]


def _assert_once_each(results: list[tuple[str, int, bool, bytes]], ids: list[str]) -> None:
    """Every copy answered 200; per id exactly one forwarded, the rest replayed, all with the same bytes."""
    by_id: dict[str, list[tuple[int, bool, bytes]]] = defaultdict(list)
    for request_id, status, replayed, body in results:
        by_id[request_id].append((status, replayed, body))
    assert sorted(by_id) == sorted(ids)
    for request_id, copies in by_id.items():
        assert [s for s, _, _ in copies] == [200] * COPIES, request_id
        assert sorted(r for _, r, _ in copies) == [False] + [True] * (COPIES - 1), request_id
        assert len({b for _, _, b in copies}) == 1, request_id


def _assert_recorded_once(gw: Harness, ids: list[str]) -> None:
    for request_id in ids:
        row = gw.get(f"/api/requests/{request_id}")
        assert (row["status"], row["attempts"]) == ("ok", 1), request_id


def test_sixteen_concurrent_copies_of_fifty_ids_reach_the_upstream_fifty_times(gw: Harness) -> None:
    ids = _ids("dup")

    async def one(client: openai.AsyncOpenAI, request_id: str) -> tuple[str, int, bool, bytes]:
        raw = await client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": f"hello {request_id}"}],
            extra_headers={"x-request-id": request_id},
        )
        body = await raw.http_response.aread()
        return request_id, raw.http_response.status_code, raw.headers.get("alephant-replayed") == "true", body

    async def main() -> list[tuple[str, int, bool, bytes]]:
        client = gw.async_openai(timeout=60)
        try:
            return await asyncio.gather(*[one(client, i) for i in ids for _ in range(COPIES)])
        finally:
            await client.close()

    results = asyncio.run(main())
    assert len(gw.fake.received) == IDS
    _assert_once_each(results, ids)
    _assert_recorded_once(gw, ids)


@pytest.fixture
def two_gateways(pg_url: str, tmp_path: Path, upstream: ServerThread) -> Iterator[tuple[Harness, ServerThread]]:
    """Two gateway servers over one PostgreSQL database: the harness's, and a second with its own memory, pool
    and spool (it shares only the database and, as replicas must, the secret key)."""
    upstream.config.app.state.fake.received.clear()
    # Both gateways and the fake upstream share this process and its interpreter: 800 copies at once on a loaded
    # 2-core machine kept the upstream's answers past the harness's 1 s timeouts (15 s for the test in CI), and a
    # holder whose call fails releases its claim, so the other gateway forwarded a second time. The timeouts are
    # not what this test is about.
    slow = {"read_timeout": 30.0, "first_token_timeout": 30.0, "connect_timeout": 5.0}
    with running_gateway(pg_url, tmp_path / "a", upstream, **slow) as gw:
        secret = (tmp_path / "a" / "secret.key").read_text().strip()
        settings = replace(gw.settings, data_dir=str(tmp_path / "b"), secret_key=secret)
        with ServerThread(create_app(settings, store=SQLStore(settings.database_url))) as second:
            yield gw, second


async def _post(client: httpx.AsyncClient, url: str, vk: str, request_id: str, stream: bool) -> httpx.Response:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"hi {request_id}"}], "stream": stream}
    headers = {"authorization": f"Bearer {vk}", "x-request-id": request_id}
    return await client.post(url + CHAT, json=body, headers=headers)


@pytest.mark.pg
@pytest.mark.parametrize("delay", [0.0, 0.05], ids=["instant", "slow-upstream"])
def test_concurrent_copies_spread_over_two_gateways_reach_the_upstream_once(
    two_gateways: tuple[Harness, ServerThread], delay: float
) -> None:
    gw, second = two_gateways
    ids = _ids("dup2")
    urls = [gw.url, second.url]

    async def main() -> list[tuple[str, int, bool, bytes]]:
        limits = httpx.Limits(max_connections=IDS * COPIES)
        async with httpx.AsyncClient(timeout=60, trust_env=False, limits=limits) as client:
            # Copies alternate between the gateways; even ids are streamed (their SSE bytes are replayed).
            calls = [
                _post(client, urls[c % 2], gw.vk, rid, stream=n % 2 == 0)
                for n, rid in enumerate(ids)
                for c in range(COPIES)
            ]
            responses = await asyncio.gather(*calls)
        return [
            (r.headers["x-request-id"], r.status_code, r.headers.get("alephant-replayed") == "true", r.content)
            for r in responses
        ]

    gw.fake.delay = delay
    try:
        results = asyncio.run(main())
    finally:
        gw.fake.delay = 0.0
    assert len(gw.fake.received) == IDS
    _assert_once_each(results, ids)
    for request_id, _, _, body in results:
        if int(request_id.rsplit("-", 1)[1]) % 2 == 0:
            assert body.endswith(b"data: [DONE]\n\n"), request_id
    _assert_recorded_once(gw, ids)


@pytest.mark.pg
def test_a_failed_call_on_one_gateway_may_be_retried_on_the_other(two_gateways: tuple[Harness, ServerThread]) -> None:
    gw, second = two_gateways
    request_id = f"dup-retry-{uuid.uuid4().hex[:8]}"
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"FAIL:once500 {request_id}"}]}
    headers = {"authorization": f"Bearer {gw.vk}", "x-request-id": request_id}

    failed = HTTP.post(gw.url + CHAT, json=body, headers=headers)
    assert failed.status_code == 502
    # The failure released the claim: the other gateway forwards the retry at once instead of waiting out a lease.
    retried = HTTP.post(second.url + CHAT, json=body, headers=headers, timeout=5)
    assert retried.status_code == 200 and "alephant-replayed" not in retried.headers
    replayed = HTTP.post(gw.url + CHAT, json=body, headers=headers)
    assert replayed.headers["alephant-replayed"] == "true" and replayed.content == retried.content
    assert len(gw.fake.received) == 2
    row = gw.get(f"/api/requests/{request_id}")
    assert (row["status"], row["http_status"]) == ("ok", 200)

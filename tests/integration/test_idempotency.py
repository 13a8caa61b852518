"""x-request-id idempotency against a real gateway (SQLite and PostgreSQL) and a fake upstream.

A completed request replays its stored bytes (`alephant-replayed: true`) without reaching the provider
or being charged again; a different body under the same id is a 409; a failed request may be retried
under its id, each attempt its own step; concurrent duplicates reach the provider once.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import openai
import pytest

from tests.harness import HTTP, Harness

HELLO = [{"role": "user", "content": "hello there world"}]
CHAT = "/v1/chat/completions"
# gpt-4o-mini, 'hello there world': 6 prompt tokens × 150 + 9 completion tokens × 600 nano-dollars.
HELLO_COST = 6300


def rid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def run_cost_by_analytics(gw: Harness, run_id: str) -> int:
    rows = [r for r in gw.get("/api/analytics/costs", group_by="run")["data"] if r["key"] == run_id]
    assert len(rows) == 1, rows
    return int(rows[0]["cost_nanos"])


def test_completed_request_replays_without_calling_upstream_or_charging(gw: Harness) -> None:
    client = gw.openai()
    request_id, run_id = rid("idem"), rid("run-idem")
    headers = {"x-request-id": request_id, "Alephant-Run-Id": run_id}

    first = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=HELLO, extra_headers=headers)  # type: ignore[arg-type]
    assert "alephant-replayed" not in first.headers
    assert first.headers["alephant-cost-usd"] == "0.000006300"
    assert len(gw.fake.received) == 1

    # Immediately, and again once the record is surely written: the same bytes, nothing forwarded.
    for _ in range(2):
        again = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini",
            messages=HELLO,  # type: ignore[arg-type]
            extra_headers=headers,
        )
        assert again.http_response.status_code == 200
        assert again.headers["alephant-replayed"] == "true"
        assert again.headers["x-request-id"] == request_id
        assert again.headers["alephant-run-id"] == run_id
        assert again.headers["alephant-cost-usd"] == "0.000000000"
        assert again.http_response.content == first.http_response.content
        assert again.parse().model_dump() == first.parse().model_dump()
        assert len(gw.fake.received) == 1
        gw.get(f"/api/requests/{request_id}")  # flushes the pipeline before the second round

    row = gw.get(f"/api/requests/{request_id}")
    assert (row["status"], row["attempts"], row["cost_nanos"]) == ("ok", 1, HELLO_COST)
    run = gw.get(f"/api/runs/{run_id}")
    assert [s["request_id"] for s in run["steps"]] == [request_id]
    assert (run["totals"]["model_calls"], run["totals"]["cost_nanos"]) == (1, HELLO_COST)
    assert run_cost_by_analytics(gw, run_id) == HELLO_COST


def test_completed_stream_replays_the_same_sse_bytes(gw: Harness) -> None:
    request_id, run_id = rid("idem-stream"), rid("run-idem-stream")
    body = {"model": "gpt-4o-mini", "messages": HELLO, "stream": True}
    headers = {"authorization": f"Bearer {gw.vk}", "x-request-id": request_id, "Alephant-Run-Id": run_id}

    with HTTP.stream("POST", gw.url + CHAT, json=body, headers=headers) as first:
        assert first.status_code == 200 and "alephant-replayed" not in first.headers
        original = first.read()
    assert original.endswith(b"data: [DONE]\n\n") and original.count(b"data: ") == 12
    assert len(gw.fake.received) == 1

    for _ in range(2):
        with HTTP.stream("POST", gw.url + CHAT, json=body, headers=headers) as again:
            assert again.status_code == 200
            assert again.headers["alephant-replayed"] == "true"
            assert again.headers["content-type"].startswith("text/event-stream")
            assert again.headers["alephant-run-id"] == run_id
            assert again.read() == original
        assert len(gw.fake.received) == 1
        gw.get(f"/api/requests/{request_id}")

    # The SDK reads a replayed stream like any other. (Its own bytes differ from httpx's serialization, and
    # the body hash is over the bytes, so it gets an id of its own.)
    client, sdk_id = gw.openai(), rid("idem-stream-sdk")
    texts, replayed = [], []
    for _ in range(2):
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini",
            messages=HELLO,  # type: ignore[arg-type]
            stream=True,
            extra_headers={"x-request-id": sdk_id, "Alephant-Run-Id": run_id},
        )
        replayed.append(raw.headers.get("alephant-replayed"))
        texts.append("".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices))
    assert replayed == [None, "true"]
    assert texts == ["This is a mock reply to: hello there world"] * 2
    assert len(gw.fake.received) == 2

    for req in (request_id, sdk_id):
        row = gw.get(f"/api/requests/{req}")
        assert (row["status"], row["stream"], row["attempts"], row["cost_nanos"]) == ("ok", True, 1, HELLO_COST)
    run = gw.get(f"/api/runs/{run_id}")
    assert (run["totals"]["model_calls"], run["totals"]["cost_nanos"]) == (2, 2 * HELLO_COST)
    assert run_cost_by_analytics(gw, run_id) == 2 * HELLO_COST


def test_same_id_with_a_different_body_is_409(gw: Harness) -> None:
    client = gw.openai()
    request_id, run_id = rid("idem-409"), rid("run-idem-409")
    headers = {"x-request-id": request_id, "Alephant-Run-Id": run_id}
    client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, extra_headers=headers)  # type: ignore[arg-type]

    for other in (
        {"messages": [{"role": "user", "content": "something else"}]},
        {"messages": HELLO, "temperature": 0.5},
        {"messages": HELLO, "stream": True},
    ):
        with pytest.raises(openai.ConflictError) as info:
            client.chat.completions.create(model="gpt-4o-mini", extra_headers=headers, **other)  # type: ignore[call-overload]
        exc = info.value
        assert exc.status_code == 409
        assert exc.body == {
            "message": exc.body["message"],  # type: ignore[index]
            "type": "conflict_error",
            "code": "idempotency_key_reused",
            "param": "x-request-id",
        }
        assert request_id in exc.body["message"]  # type: ignore[index]
        assert exc.response.headers["x-request-id"] == request_id

    assert len(gw.fake.received) == 1
    row = gw.get(f"/api/requests/{request_id}")
    assert (row["status"], row["attempts"], row["cost_nanos"], row["error_code"]) == ("ok", 1, HELLO_COST, None)
    assert gw.get(f"/api/runs/{run_id}")["totals"]["model_calls"] == 1


def test_failed_request_is_retried_under_its_id_and_counted_as_a_retry(gw: Harness) -> None:
    client = gw.openai()
    request_id, run_id = rid("idem-retry"), rid("run-idem-retry")
    headers = {"x-request-id": request_id, "Alephant-Run-Id": run_id}
    # The fake fails this exact content once, then answers; the body (and its hash) stay identical.
    messages = [{"role": "user", "content": f"FAIL:once500 {uuid.uuid4().hex[:8]}"}]
    # 2 words + 3 = 5 prompt tokens; 'This is a mock reply to: FAIL:once500 <tag>' = 8 completion tokens.
    cost = 5 * 150 + 8 * 600

    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="gpt-4o-mini", messages=messages, extra_headers=headers)  # type: ignore[arg-type]
    assert info.value.status_code == 502 and info.value.code == "upstream_bad_response"
    row = gw.get(f"/api/requests/{request_id}")
    assert (row["status"], row["attempts"], row["http_status"]) == ("error", 1, 502)
    assert row["error_code"] == "upstream_bad_response"

    retried = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=messages,  # type: ignore[arg-type]
        extra_headers=headers,
    )
    assert "alephant-replayed" not in retried.headers
    assert retried.headers["alephant-cost-usd"] == "0.000005550"
    assert len(gw.fake.received) == 2

    row = gw.get(f"/api/requests/{request_id}")
    assert (row["status"], row["attempts"], row["http_status"]) == ("ok", 2, 200)
    assert (row["error_code"], row["error_message"]) == (None, None)
    assert (row["input_tokens"], row["output_tokens"], row["cost_nanos"]) == (5, 8, cost)

    run = gw.get(f"/api/runs/{run_id}")
    steps = [(s["kind"], s["attempt"], s["status"], s["request_id"], s["cost_nanos"]) for s in run["steps"]]
    assert steps == [
        ("model_call", 1, "error", request_id, 0),
        ("model_call", 2, "ok", request_id, cost),
    ]
    totals = run["totals"]
    assert (totals["model_calls"], totals["errors"], totals["retries"], totals["cost_nanos"]) == (2, 1, 1, cost)
    assert run_cost_by_analytics(gw, run_id) == cost

    # Completed now: a third call is a replay of the success.
    third = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=messages,  # type: ignore[arg-type]
        extra_headers=headers,
    )
    assert third.headers["alephant-replayed"] == "true"
    assert third.http_response.content == retried.http_response.content
    assert len(gw.fake.received) == 2
    assert gw.get(f"/api/runs/{run_id}")["totals"]["model_calls"] == 2


def test_refused_request_does_not_burn_its_id(gw: Harness) -> None:
    client = gw.openai()
    request_id = rid("idem-refused")
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(
            model="llama-unknown",
            messages=HELLO,  # type: ignore[arg-type]
            extra_headers={"x-request-id": request_id},
        )
    # A different body under the same id is fine: nothing completed under it.
    client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, extra_headers={"x-request-id": request_id})  # type: ignore[arg-type]
    row = gw.get(f"/api/requests/{request_id}")
    assert (row["status"], row["model"], row["cost_nanos"]) == ("ok", "gpt-4o-mini", HELLO_COST)
    assert len(gw.fake.received) == 1


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_concurrent_duplicates_reach_the_upstream_once(gw: Harness, stream: bool) -> None:
    request_id, run_id = rid("idem-dup"), rid("run-idem-dup")
    headers = {"x-request-id": request_id, "Alephant-Run-Id": run_id}

    async def one(client: openai.AsyncOpenAI) -> tuple[bool, Any]:
        raw = await client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini",
            messages=HELLO,  # type: ignore[arg-type]
            stream=stream,
            extra_headers=headers,
        )
        content = await raw.http_response.aread()
        return raw.headers.get("alephant-replayed") == "true", content

    async def main() -> list[tuple[bool, Any]]:
        client = gw.async_openai()
        try:
            return await asyncio.gather(*[one(client) for _ in range(8)])
        finally:
            await client.close()

    gw.fake.delay = 0.2  # the first call is still in flight when the duplicates arrive
    try:
        results = asyncio.run(main())
    finally:
        gw.fake.delay = 0.0

    assert len(gw.fake.received) == 1
    assert sorted(replayed for replayed, _ in results) == [False] + [True] * 7
    assert len({content for _, content in results}) == 1
    row = gw.get(f"/api/requests/{request_id}")
    assert (row["status"], row["attempts"], row["cost_nanos"]) == ("ok", 1, HELLO_COST)
    run = gw.get(f"/api/runs/{run_id}")
    assert (run["totals"]["model_calls"], run["totals"]["cost_nanos"]) == (1, HELLO_COST)
    assert run_cost_by_analytics(gw, run_id) == HELLO_COST


def test_generated_ids_never_replay(gw: Harness) -> None:
    client = gw.openai()
    # No x-request-id: every call is new, even with the same body.
    for _ in range(2):
        raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=HELLO)  # type: ignore[arg-type]
        assert "alephant-replayed" not in raw.headers
    assert len(gw.fake.received) == 2

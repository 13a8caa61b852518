"""The real openai SDK against the gateway as a real server: exact tokens, costs and step trees."""

from __future__ import annotations

import asyncio

from tests.harness import Harness

TRACKING = {
    "Alephant-Run-Id": "run-alpha",
    "alephant-session-id": "sess-1",
    "alephant-session-path": "/plan/search",
    "alephant-session-name": "Trip planning",
    "alephant-property-env": "prod",
    "alephant-prompt-id": "planner@7",
}

# 'hello there world' → 3 words + 3 per message = 6 prompt tokens; reply 'This is a mock reply to: hello
# there world' = 9 completion tokens. gpt-4o-mini: $0.15 / $0.60 per MTok → 900 + 5400 nano-dollars.
EXPECTED_COST_NANOS = 6300


def test_non_streamed_completion_is_priced_and_traced(gw: Harness) -> None:
    client = gw.openai()
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "hello there world"}],
        extra_headers={**TRACKING, "x-request-id": "req-nonstream-1"},
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == "This is a mock reply to: hello there world"
    assert completion.usage is not None and completion.usage.prompt_tokens == 6
    assert raw.headers["x-request-id"] == "req-nonstream-1"
    assert raw.headers["alephant-run-id"] == "run-alpha"
    assert raw.headers["alephant-cost-usd"] == "0.000006300"
    assert raw.headers["alephant-cost-source"] == "computed"

    # The provider credential is injected by the gateway; the virtual key never reaches the provider.
    sent = gw.fake.received[-1]
    assert sent["headers"]["authorization"] == "Bearer sk-fake-upstream-secret"

    req = gw.get("/api/requests/req-nonstream-1")
    assert req["input_tokens"] == 6 and req["output_tokens"] == 9
    assert req["cost_nanos"] == EXPECTED_COST_NANOS and req["cost_source"] == "computed"
    assert req["run_id"] == "run-alpha" and req["session_id"] == "sess-1"
    assert req["session_path"] == "/plan/search" and req["properties"] == {"env": "prod"}
    assert req["prompt_id"] == "planner" and req["prompt_version"] == "7"
    assert req["virtual_key_id"] and req["department_id"] == gw.department

    run = gw.get("/api/runs/run-alpha")
    assert run["totals"]["cost_nanos"] == EXPECTED_COST_NANOS
    assert run["totals"]["input_tokens"] == 6 and run["totals"]["output_tokens"] == 9
    assert [s["kind"] for s in run["steps"]] == ["model_call"]
    assert run["steps"][0]["request_id"] == "req-nonstream-1"


def test_streamed_completion_hides_forced_usage_chunk(gw: Harness) -> None:
    client = gw.openai()
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "hello there world"}],
        stream=True,
        extra_headers={**TRACKING, "x-request-id": "req-stream-1"},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "This is a mock reply to: hello there world"
    assert all(c.choices for c in chunks), "the usage-only chunk the client did not ask for must be hidden"
    assert gw.fake.received[-1]["body"]["stream_options"] == {"include_usage": True}

    req = gw.get("/api/requests/req-stream-1")
    assert (req["input_tokens"], req["output_tokens"], req["cost_nanos"]) == (6, 9, EXPECTED_COST_NANOS)
    assert req["stream"] is True and req["status"] == "ok"


def test_streamed_completion_keeps_usage_chunk_when_asked(gw: Harness) -> None:
    client = gw.openai()
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "hello there world"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 9


def test_async_client_calls_roll_up_into_one_run(gw: Harness) -> None:
    async def main() -> None:
        client = gw.async_openai()
        await asyncio.gather(
            *[
                client.chat.completions.create(
                    model="gpt-4o-mini",
                    messages=[{"role": "user", "content": "hello there world"}],
                    extra_headers={"Alephant-Run-Id": "run-async"},
                )
                for _ in range(5)
            ]
        )
        await client.close()

    asyncio.run(main())
    run = gw.get("/api/runs/run-async")
    assert run["totals"]["model_calls"] == 5
    assert run["totals"]["cost_nanos"] == 5 * EXPECTED_COST_NANOS

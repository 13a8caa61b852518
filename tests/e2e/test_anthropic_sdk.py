"""The official anthropic SDK against the gateway as a real server: /v1/messages (streamed and not, tool use,
cache tokens), /v1/messages/count_tokens, exact costs and step trees, Anthropic-shaped errors."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import pytest
from genai_prices import data_snapshot

from agentledger.testing import ServerThread
from tests.harness import HTTP, Harness, running_gateway

pytestmark = pytest.mark.e2e

MODEL = "claude-haiku-4-5"  # current (not in anthropic 2.10's DEPRECATED_MODELS), priced by genai-prices
SECRET = "sk-anthropic-upstream-secret"  # what Harness.add_provider_key gives an anthropic key

# claude-haiku-4-5, dollars per million tokens: Anthropic's pricing page as genai-prices 0.2.3 carries it
# (providers/anthropic: input $1, output $5, cache read $0.10, 5-minute cache write $1.25).
# At $X per MTok one token costs X * 1000 nano-dollars.
INPUT_RATE = Decimal("1")
OUTPUT_RATE = Decimal("5")
CACHE_READ_RATE = Decimal("0.10")
CACHE_WRITE_RATE = Decimal("1.25")
CACHE_WRITE_1H_RATE = Decimal("2")  # a 1-hour cache write (`cache_control.ttl: "1h"`), same source

TRACKING = {
    "Alephant-Agent-Id": "planner",
    "Alephant-Run-Id": "run-claude",
    "alephant-session-id": "sess-claude",
    "alephant-session-path": "/plan//search/",
    "alephant-session-name": "Trip planning",
    "alephant-property-env": "prod",
    "alephant-prompt-id": "planner@7",
}

HELLO = [{"role": "user", "content": "hello there world"}]
REPLY = "This is a mock reply to: hello there world"
# 'hello there world' = 3 words + 3 for the message; 'be brief' (system) 2 words, no +3. Reply = 9 words.
# 8 × $1 + 9 × $5 per MTok = $53 per MTok = 53_000 nano-dollars.
HELLO_SYSTEM_NANOS = 53_000
# Without the system prompt: 6 × $1 + 9 × $5 = $51 per MTok.
HELLO_NANOS = 51_000

WEATHER_TOOL = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
QUESTION = "What is the weather in Paris?"
TOOL_OUTPUT = "Sunny and warm in mock today"
# Turn 1: the question 6 words + 3 = 9 in; the call's arguments '{"city": "mock"}' = 2 pieces out.
# 9 × $1 + 2 × $5 = $19 per MTok.
TOOL_TURN1 = (9, 2, 19_000)
# Turn 2: question 9 + assistant tool_use (no words) 3 + tool_result '<6 words>' 6 + 3 = 21 in; reply
# 'This is a mock reply to: Sunny and warm in mock today' = 12 out. 21 × $1 + 12 × $5 = $81 per MTok.
TOOL_TURN2 = (21, 12, 81_000)

# Dictated usage (metadata.mock_usage, Anthropic's own shape: input_tokens excludes the cache).
CACHE_USAGE = {
    "input_tokens": 100,
    "cache_creation_input_tokens": 1000,
    "cache_read_input_tokens": 4000,
    "output_tokens": 50,
}
# 100 × $1 + 1000 × $1.25 + 4000 × $0.10 + 50 × $5 = 100 + 1250 + 400 + 250 = $2000 per MTok = $0.002.
CACHE_NANOS = 2_000_000


def _nanos(plain: int = 0, write: int = 0, read: int = 0, output: int = 0) -> int:
    dollars_per_mtok = plain * INPUT_RATE + write * CACHE_WRITE_RATE + read * CACHE_READ_RATE + output * OUTPUT_RATE
    nanos = dollars_per_mtok * 1000
    assert nanos == nanos.to_integral_value()
    return int(nanos)


@pytest.fixture
def claude(gw: Harness) -> Harness:
    gw.add_provider_key(name="anthropic-main", kind="anthropic", provider="anthropic", models=["claude-*"])
    return gw


def _client(gw: Harness, **kw: Any) -> anthropic.Anthropic:
    kw.setdefault("api_key", gw.vk)
    return anthropic.Anthropic(base_url=gw.url, max_retries=0, **kw)


def _async_client(gw: Harness, **kw: Any) -> anthropic.AsyncAnthropic:
    kw.setdefault("api_key", gw.vk)
    return anthropic.AsyncAnthropic(base_url=gw.url, max_retries=0, **kw)


def _recording_client(gw: Harness, sent: list[Any], **kw: Any) -> anthropic.Anthropic:
    """A client that keeps every request it sends, so a test can compare it with what the provider got."""
    http = anthropic.DefaultHttpxClient(event_hooks={"request": [sent.append]})
    return _client(gw, http_client=http, **kw)


def _anthropic_error(exc: anthropic.APIStatusError, kind: str, content_type: str = "application/json") -> str:
    body = exc.body
    assert isinstance(body, dict) and body["type"] == "error", body
    assert set(body) == {"type", "error"} and set(body["error"]) == {"type", "message"}, body
    assert body["error"]["type"] == kind, body
    assert exc.response.headers["content-type"].startswith(content_type)
    return str(body["error"]["message"])


def test_catalog_rates_are_the_hand_written_ones() -> None:
    _, model = data_snapshot.get_snapshot().find_provider_model(MODEL, None, "anthropic", None)
    price = model.get_prices(datetime.now(UTC))
    assert (price.input_mtok, price.output_mtok) == (INPUT_RATE, OUTPUT_RATE)
    assert (price.cache_read_mtok, price.cache_write_mtok) == (CACHE_READ_RATE, CACHE_WRITE_RATE)
    assert price.cache_write_1h_mtok == CACHE_WRITE_1H_RATE
    assert CACHE_WRITE_1H_RATE > CACHE_WRITE_RATE > INPUT_RATE > CACHE_READ_RATE
    assert _nanos(plain=8, output=9) == HELLO_SYSTEM_NANOS
    assert _nanos(plain=100, write=1000, read=4000, output=50) == CACHE_NANOS
    assert _nanos(plain=TOOL_TURN1[0], output=TOOL_TURN1[1]) == TOOL_TURN1[2]
    assert _nanos(plain=TOOL_TURN2[0], output=TOOL_TURN2[1]) == TOOL_TURN2[2]


def test_non_streamed_message_is_priced_and_traced(claude: Harness) -> None:
    sent: list[Any] = []
    client = _recording_client(claude, sent)
    raw = client.messages.with_raw_response.create(
        model=MODEL,
        max_tokens=100,
        system="be brief",
        messages=HELLO,
        extra_headers={**TRACKING, "x-request-id": "req-claude-1", "anthropic-beta": "prompt-caching-2024-07-31"},
    )
    message = raw.parse()
    assert message.type == "message" and message.role == "assistant" and message.model == MODEL
    assert [b.type for b in message.content] == ["text"]
    assert message.content[0].text == REPLY  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (8, 9)
    assert (message.usage.cache_creation_input_tokens, message.usage.cache_read_input_tokens) == (0, 0)

    assert raw.status_code == 200
    assert raw.headers["x-request-id"] == "req-claude-1"
    assert raw.headers["alephant-run-id"] == "run-claude"
    assert raw.headers["alephant-cost-usd"] == "0.000053000"
    assert raw.headers["alephant-cost-source"] == "computed"
    assert raw.headers["alephant-provider"] == "anthropic-main"
    assert raw.headers["alephant-model"] == MODEL
    assert raw.headers["alephant-attempts"] == "1"

    # The provider got the provider secret as x-api-key, never the virtual key, and the client's own
    # anthropic-version and anthropic-beta.
    (got,) = claude.fake.received
    (request,) = sent
    assert got["path"] == "/v1/messages"
    # anthropic 2.10 sends `api_key` as a Bearer token; the provider must see neither form of the virtual key.
    assert request.headers["authorization"] == f"Bearer {claude.vk}"
    assert got["headers"]["x-api-key"] == SECRET
    assert "authorization" not in got["headers"]
    assert all(claude.vk not in value for value in got["headers"].values())
    assert got["headers"]["anthropic-version"] == request.headers["anthropic-version"]
    assert got["headers"]["anthropic-beta"] == request.headers["anthropic-beta"] == "prompt-caching-2024-07-31"
    assert not any(name.startswith("alephant-") for name in got["headers"])
    assert got["body"]["messages"] == HELLO and got["body"]["system"] == "be brief"

    req = claude.get("/api/requests/req-claude-1")
    assert (req["input_tokens"], req["output_tokens"]) == (8, 9)
    assert (req["cost_nanos"], req["cost_usd"], req["cost_source"]) == (HELLO_SYSTEM_NANOS, "0.000053000", "computed")
    assert req["endpoint"] == "/messages" and req["stream"] is False and req["status"] == "ok"
    assert req["provider"] == "anthropic" and req["provider_key"] == "anthropic-main" and req["model"] == MODEL
    assert req["agent_id"] == "planner" and req["department_id"] == claude.department
    assert req["run_id"] == "run-claude" and req["session_id"] == "sess-claude"
    assert req["session_path"] == "/plan/search" and req["session_name"] == "Trip planning"
    assert req["properties"] == {"env": "prod"}
    assert (req["prompt_id"], req["prompt_version"]) == ("planner", "7")

    run = claude.get("/api/runs/run-claude")
    assert run["agent_id"] == "planner" and run["session_id"] == "sess-claude"
    assert run["totals"]["cost_nanos"] == HELLO_SYSTEM_NANOS and run["totals"]["model_calls"] == 1
    assert (run["totals"]["input_tokens"], run["totals"]["output_tokens"]) == (8, 9)
    (step,) = run["steps"]
    assert step["kind"] == "model_call" and step["status"] == "ok" and step["request_id"] == "req-claude-1"
    assert (step["model"], step["provider"]) == (MODEL, "anthropic")
    assert (step["input_tokens"], step["output_tokens"], step["cost_nanos"]) == (8, 9, HELLO_SYSTEM_NANOS)
    assert step["attributes"]["format"] == "messages"
    assert step["attributes"]["provider_format"] == "messages"
    assert step["attributes"]["provider_key"] == "anthropic-main"
    assert step["attributes"]["stream"] is False and step["attributes"]["http_status"] == 200

    session = claude.get("/api/sessions/sess-claude")
    assert session["name"] == "Trip planning"
    assert [r["id"] for r in session["runs"]] == ["run-claude"]
    assert session["totals"]["cost_nanos"] == HELLO_SYSTEM_NANOS and session["totals"]["requests"] == 1
    assert [(p["path"], p["cost_nanos"]) for p in session["paths"]] == [("/plan/search", HELLO_SYSTEM_NANOS)]

    costs = claude.get("/api/analytics/costs", group_by="model")
    assert [(row["key"], row["cost_nanos"], row["requests"]) for row in costs["data"]] == [
        (MODEL, HELLO_SYSTEM_NANOS, 1)
    ]


@pytest.mark.parametrize("auth", ["x-api-key", "bearer"])
async def test_async_client_either_auth_header(claude: Harness, auth: str) -> None:
    """The virtual key as `x-api-key` (what Anthropic's API takes) or as `Authorization: Bearer` (`auth_token`)."""
    if auth == "x-api-key":
        kw: dict[str, Any] = {"default_headers": {"Authorization": anthropic.omit, "x-api-key": claude.vk}}
    else:
        kw = {"api_key": None, "auth_token": claude.vk}
    async with _async_client(claude, **kw) as client:
        raw = await client.messages.with_raw_response.create(
            model=MODEL, max_tokens=100, messages=HELLO, extra_headers={"x-request-id": f"req-claude-{auth}"}
        )
    if auth == "x-api-key":
        assert raw.http_request.headers["x-api-key"] == claude.vk
        assert "authorization" not in raw.http_request.headers
    else:
        assert raw.http_request.headers["authorization"] == f"Bearer {claude.vk}"
        assert "x-api-key" not in raw.http_request.headers
    message = await raw.parse()
    assert message.content[0].text == REPLY  # type: ignore[union-attr]
    assert raw.headers["alephant-cost-usd"] == "0.000051000"
    got = claude.fake.received[-1]["headers"]
    assert got["x-api-key"] == SECRET and "authorization" not in got
    req = claude.get(f"/api/requests/req-claude-{auth}")
    assert (req["input_tokens"], req["output_tokens"], req["cost_nanos"]) == (6, 9, HELLO_NANOS)


def test_x_api_key_and_bearer_over_plain_http(claude: Harness) -> None:
    body = {"model": MODEL, "max_tokens": 50, "messages": HELLO}
    by_key = HTTP.post(claude.url + "/v1/messages", json=body, headers={"x-api-key": claude.vk})
    by_bearer = claude.v1("POST", "/v1/messages", json=body)
    for resp in (by_key, by_bearer):
        assert resp.status_code == 200, resp.text
        assert resp.json()["content"] == [{"type": "text", "text": REPLY}]
        assert resp.headers["alephant-cost-usd"] == "0.000051000"
    # No anthropic-version from the client: the gateway sends Anthropic's required header itself.
    assert claude.fake.received[-1]["headers"]["anthropic-version"] == "2023-06-01"
    assert "anthropic-beta" not in claude.fake.received[-1]["headers"]


def test_stream_helper_final_message(claude: Harness) -> None:
    client = _client(claude)
    with client.messages.stream(
        model=MODEL,
        max_tokens=100,
        messages=HELLO,
        extra_headers={"Alephant-Run-Id": "run-claude-stream", "x-request-id": "req-claude-stream"},
    ) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
        assert stream.response.headers["alephant-run-id"] == "run-claude-stream"
        assert stream.response.headers["content-type"].startswith("text/event-stream")
    assert "".join(pieces) == REPLY and len(pieces) == 9
    assert final.content[0].text == REPLY  # type: ignore[union-attr]
    assert final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (6, 9)
    assert claude.fake.received[-1]["body"]["stream"] is True

    req = claude.get("/api/requests/req-claude-stream")
    assert (req["input_tokens"], req["output_tokens"], req["cost_nanos"]) == (6, 9, HELLO_NANOS)
    assert req["stream"] is True and req["status"] == "ok" and req["cost_source"] == "computed"
    (step,) = claude.get("/api/runs/run-claude-stream")["steps"]
    assert step["attributes"]["stream"] is True and step["attributes"]["ttft_ms"] is not None
    assert (step["input_tokens"], step["output_tokens"], step["cost_nanos"]) == (6, 9, HELLO_NANOS)


async def test_async_create_stream_events(claude: Harness) -> None:
    async with _async_client(claude) as client:
        stream = await client.messages.create(
            model=MODEL,
            max_tokens=100,
            messages=HELLO,
            stream=True,
            extra_headers={"x-request-id": "req-claude-events"},
        )
        events = [event async for event in stream]
    types = [e.type for e in events]
    assert types == [
        "message_start",
        "content_block_start",
        *["content_block_delta"] * 9,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start, delta = events[0], events[-2]
    assert start.type == "message_start" and start.message.usage.input_tokens == 6
    assert delta.type == "message_delta" and delta.usage.output_tokens == 9
    assert delta.delta.stop_reason == "end_turn"
    text = "".join(e.delta.text for e in events if e.type == "content_block_delta" and e.delta.type == "text_delta")
    assert text == REPLY

    req = claude.get("/api/requests/req-claude-events")
    assert (req["input_tokens"], req["output_tokens"], req["cost_nanos"]) == (6, 9, HELLO_NANOS)


def test_tool_use_round_trip_is_two_steps(claude: Harness) -> None:
    client = _client(claude)
    headers = {**TRACKING, "Alephant-Run-Id": "run-claude-tools"}
    ran: list[str] = []

    def get_weather(city: str) -> str:
        ran.append(city)
        return TOOL_OUTPUT

    messages: list[dict[str, Any]] = [{"role": "user", "content": QUESTION}]
    first = client.messages.with_raw_response.create(
        model=MODEL,
        max_tokens=200,
        messages=messages,  # type: ignore[arg-type]
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        extra_headers={**headers, "x-request-id": "req-tools-1"},
    )
    call = first.parse()
    assert first.headers["alephant-cost-usd"] == "0.000019000"
    assert call.stop_reason == "tool_use"
    (block,) = call.content
    assert block.type == "tool_use" and block.name == "get_weather" and block.input == {"city": "mock"}
    assert (call.usage.input_tokens, call.usage.output_tokens) == TOOL_TURN1[:2]

    result = get_weather(**block.input)  # type: ignore[arg-type]
    messages += [
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in call.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": block.id, "content": result}]},
    ]
    second = client.messages.with_raw_response.create(
        model=MODEL,
        max_tokens=200,
        messages=messages,  # type: ignore[arg-type]
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        extra_headers={**headers, "x-request-id": "req-tools-2"},
    )
    answer = second.parse()
    assert ran == ["mock"]
    assert answer.stop_reason == "end_turn"
    assert answer.content[0].text == "This is a mock reply to: " + TOOL_OUTPUT  # type: ignore[union-attr]
    assert (answer.usage.input_tokens, answer.usage.output_tokens) == TOOL_TURN2[:2]
    assert second.headers["alephant-cost-usd"] == "0.000081000"
    assert claude.fake.received[-1]["body"]["messages"][2]["content"][0]["tool_use_id"] == block.id

    run = claude.get("/api/runs/run-claude-tools")
    steps = sorted(run["steps"], key=lambda s: s["request_id"])
    assert [s["kind"] for s in steps] == ["model_call", "model_call"]
    assert [s["request_id"] for s in steps] == ["req-tools-1", "req-tools-2"]
    assert [(s["input_tokens"], s["output_tokens"], s["cost_nanos"]) for s in steps] == [TOOL_TURN1, TOOL_TURN2]
    assert all(s["attributes"]["format"] == "messages" for s in steps)
    assert run["totals"]["model_calls"] == 2
    assert run["totals"]["cost_nanos"] == TOOL_TURN1[2] + TOOL_TURN2[2] == 100_000
    assert (run["totals"]["input_tokens"], run["totals"]["output_tokens"]) == (30, 14)


async def test_streamed_tool_use_arguments_arrive_whole(claude: Harness) -> None:
    async with (
        _async_client(claude) as client,
        client.messages.stream(
            model=MODEL,
            max_tokens=200,
            messages=[{"role": "user", "content": QUESTION}],
            tools=[WEATHER_TOOL],  # type: ignore[list-item]
            extra_headers={"x-request-id": "req-tools-stream"},
        ) as stream,
    ):
        final = await stream.get_final_message()
    (block,) = final.content
    assert block.type == "tool_use" and block.input == {"city": "mock"}
    assert final.stop_reason == "tool_use"
    req = claude.get("/api/requests/req-tools-stream")
    assert (req["input_tokens"], req["output_tokens"], req["cost_nanos"]) == TOOL_TURN1


def test_cache_tokens_are_priced_at_their_own_rates(claude: Harness) -> None:
    client = _client(claude)

    def call(usage: dict[str, int], request_id: str) -> anthropic.types.Message:
        raw = client.messages.with_raw_response.create(
            model=MODEL,
            max_tokens=100,
            messages=HELLO,
            extra_body={"metadata": {"mock_usage": usage}},
            extra_headers={"x-request-id": request_id, "Alephant-Run-Id": "run-claude-cache"},
        )
        message = raw.parse()
        req = claude.get(f"/api/requests/{request_id}")
        assert raw.headers["alephant-cost-usd"] == f"{Decimal(req['cost_nanos']) / 10**9:.9f}"
        return message

    message = call(CACHE_USAGE, "req-cache-mixed")
    assert message.usage.cache_creation_input_tokens == 1000 and message.usage.cache_read_input_tokens == 4000
    assert claude.fake.received[-1]["body"]["metadata"] == {"mock_usage": CACHE_USAGE}
    req = claude.get("/api/requests/req-cache-mixed")
    # Our input_tokens include the cache: 100 + 1000 + 4000.
    assert (req["input_tokens"], req["cached_input_tokens"], req["cache_write_tokens"]) == (5100, 4000, 1000)
    assert req["output_tokens"] == 50
    assert (req["cost_nanos"], req["cost_usd"]) == (CACHE_NANOS, "0.002000000")

    # 1000 tokens each way: written $1.25, plain $1, read $0.10 per MTok.
    call({"input_tokens": 1000, "output_tokens": 0}, "req-cache-plain")
    call({"input_tokens": 0, "cache_creation_input_tokens": 1000, "output_tokens": 0}, "req-cache-write")
    call({"input_tokens": 0, "cache_read_input_tokens": 1000, "output_tokens": 0}, "req-cache-read")
    plain, write, read = (
        claude.get(f"/api/requests/req-cache-{kind}")["cost_nanos"] for kind in ("plain", "write", "read")
    )
    assert (plain, write, read) == (1_000_000, 1_250_000, 100_000)
    assert write > plain > read

    totals = claude.get("/api/runs/run-claude-cache")["totals"]
    assert totals["cost_nanos"] == CACHE_NANOS + 1_000_000 + 1_250_000 + 100_000
    assert (totals["cached_input_tokens"], totals["cache_write_tokens"]) == (5000, 2000)


def test_one_hour_cache_writes_are_priced_at_the_one_hour_rate(claude: Harness) -> None:
    """Anthropic reports which writes went to the 1-hour cache in `usage.cache_creation`; they cost $2 per MTok on
    claude-haiku-4-5, not the 5-minute $1.25. 100 plain × $1 + 1000 written for 1 h × $2 + 50 out × $5
    = 100 + 2000 + 250 = $2350 per MTok = 2_350_000 nano-dollars (genai-prices prices this usage object the same:
    `extract_usage(...).calc_price()` gives $0.00235)."""
    usage = {
        "input_tokens": 100,
        "cache_creation_input_tokens": 1000,
        "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 1000},
        "cache_read_input_tokens": 0,
        "output_tokens": 50,
    }
    raw = _client(claude).messages.with_raw_response.create(
        model=MODEL,
        max_tokens=100,
        messages=HELLO,
        extra_body={"metadata": {"mock_usage": usage}},
        extra_headers={"x-request-id": "req-cache-1h"},
    )
    message = raw.parse()
    assert message.usage.cache_creation is not None
    assert message.usage.cache_creation.ephemeral_1h_input_tokens == 1000
    expected = 100 * 1000 * INPUT_RATE + 1000 * 1000 * CACHE_WRITE_1H_RATE + 50 * 1000 * OUTPUT_RATE
    assert expected == 2_350_000
    req = claude.get("/api/requests/req-cache-1h")
    assert (req["input_tokens"], req["cache_write_tokens"], req["output_tokens"]) == (1100, 1000, 50)
    assert (req["cost_nanos"], raw.headers["alephant-cost-usd"]) == (2_350_000, "0.002350000")


async def test_streamed_cache_tokens_are_priced(claude: Harness) -> None:
    async with (
        _async_client(claude) as client,
        client.messages.stream(
            model=MODEL,
            max_tokens=100,
            messages=HELLO,
            extra_body={"metadata": {"mock_usage": CACHE_USAGE}},
            extra_headers={"x-request-id": "req-cache-stream"},
        ) as stream,
    ):
        final = await stream.get_final_message()
    assert final.usage.cache_read_input_tokens == 4000 and final.usage.cache_creation_input_tokens == 1000
    req = claude.get("/api/requests/req-cache-stream")
    assert (req["input_tokens"], req["cached_input_tokens"], req["cache_write_tokens"]) == (5100, 4000, 1000)
    assert (req["output_tokens"], req["cost_nanos"], req["stream"]) == (50, CACHE_NANOS, True)


def test_beta_messages_pass_version_and_beta_flags(claude: Harness) -> None:
    sent: list[Any] = []
    client = _recording_client(claude, sent)
    message = client.beta.messages.create(
        model=MODEL,
        max_tokens=100,
        messages=HELLO,
        betas=["interleaved-thinking-2025-05-14", "token-efficient-tools-2025-02-19"],
    )
    assert message.content[0].text == REPLY  # type: ignore[union-attr]
    (request,) = sent
    got = claude.fake.received[-1]
    assert request.headers["anthropic-beta"] == "interleaved-thinking-2025-05-14,token-efficient-tools-2025-02-19"
    assert got["headers"]["anthropic-beta"] == request.headers["anthropic-beta"]
    assert got["headers"]["anthropic-version"] == request.headers["anthropic-version"]
    assert got["headers"]["x-api-key"] == SECRET


def test_count_tokens(claude: Harness) -> None:
    sent: list[Any] = []
    client = _recording_client(claude, sent)
    count = client.messages.count_tokens(
        model=MODEL,
        system="be brief",
        messages=HELLO,
        extra_headers={"Alephant-Run-Id": "run-count-only"},
    )
    assert count.input_tokens == 8
    got = claude.fake.received[-1]
    assert got["path"] == "/v1/messages/count_tokens"
    assert got["headers"]["x-api-key"] == SECRET
    assert got["headers"]["anthropic-version"] == sent[0].headers["anthropic-version"]
    # Counting is free and not a model call: nothing is booked against the run.
    assert claude.api("GET", "/api/runs/run-count-only").status_code == 404

    with pytest.raises(anthropic.AuthenticationError) as bad_key:
        _client(claude, api_key="vk-not-a-key").messages.count_tokens(model=MODEL, messages=HELLO)
    _anthropic_error(bad_key.value, "authentication_error")
    with pytest.raises(anthropic.NotFoundError) as unknown:
        client.messages.count_tokens(model="mystery-model-1", messages=HELLO)
    _anthropic_error(unknown.value, "not_found_error")
    with pytest.raises(anthropic.NotFoundError) as not_anthropic:  # served by the default openai key only
        client.messages.count_tokens(model="gpt-4o-mini", messages=HELLO)
    assert "token counting" in _anthropic_error(not_anthropic.value, "not_found_error")


async def test_async_count_tokens(claude: Harness) -> None:
    async with _async_client(claude) as client:
        count = await client.messages.count_tokens(model=MODEL, messages=[{"role": "user", "content": QUESTION}])
    assert count.input_tokens == 9


def test_bad_key_is_an_anthropic_authentication_error(claude: Harness) -> None:
    with pytest.raises(anthropic.AuthenticationError) as exc:
        _client(claude, api_key="vk-not-a-key").messages.create(model=MODEL, max_tokens=10, messages=HELLO)
    assert exc.value.status_code == 401
    _anthropic_error(exc.value, "authentication_error")
    assert claude.fake.received == []

    missing = HTTP.post(claude.url + "/v1/messages", json={"model": MODEL, "max_tokens": 10, "messages": HELLO})
    assert missing.status_code == 401
    assert missing.json()["type"] == "error" and missing.json()["error"]["type"] == "authentication_error"


@pytest.mark.parametrize("model", ["claude-nonexistent-9", "mystery-model-1"])
def test_unknown_model_is_not_found(claude: Harness, model: str) -> None:
    """`claude-nonexistent-9` matches the key's `claude-*` but has no price; `mystery-model-1` matches no key."""
    with pytest.raises(anthropic.NotFoundError) as exc:
        _client(claude).messages.create(model=model, max_tokens=10, messages=HELLO)
    assert exc.value.status_code == 404
    assert model in _anthropic_error(exc.value, "not_found_error")
    assert claude.fake.received == []


def test_upstream_rate_limit_is_a_rate_limit_error(claude: Harness) -> None:
    client = _client(claude)
    fail = [{"role": "user", "content": "FAIL:429"}]
    with pytest.raises(anthropic.RateLimitError) as exc:
        client.messages.create(model=MODEL, max_tokens=10, messages=fail, extra_headers={"x-request-id": "req-429"})
    assert exc.value.status_code == 429
    _anthropic_error(exc.value, "rate_limit_error")
    assert exc.value.response.headers["alephant-provider"] == "anthropic-main"

    with pytest.raises(anthropic.RateLimitError) as streamed:
        client.messages.create(model=MODEL, max_tokens=10, messages=fail, stream=True)
    _anthropic_error(streamed.value, "rate_limit_error")

    req = claude.get("/api/requests/req-429")
    assert req["status"] == "error" and req["http_status"] == 429 and req["cost_nanos"] == 0


def test_upstream_server_error_is_an_api_error(claude: Harness) -> None:
    with pytest.raises(anthropic.InternalServerError) as exc:
        _client(claude).messages.create(model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "FAIL:500"}])
    assert exc.value.status_code == 502
    assert "answered 500" in _anthropic_error(exc.value, "api_error")


def test_a_repeated_request_id_is_replayed_not_billed_twice(claude: Harness) -> None:
    client = _client(claude)
    headers = {"x-request-id": "req-claude-replay", "Alephant-Run-Id": "run-claude-replay"}
    first = client.messages.with_raw_response.create(model=MODEL, max_tokens=100, messages=HELLO, extra_headers=headers)
    again = client.messages.with_raw_response.create(model=MODEL, max_tokens=100, messages=HELLO, extra_headers=headers)
    assert first.headers["alephant-cost-usd"] == "0.000051000" and "alephant-replayed" not in first.headers
    assert again.headers["alephant-replayed"] == "true" and again.headers["alephant-cost-usd"] == "0.000000000"
    assert again.parse() == first.parse()

    streamed = {"x-request-id": "req-claude-replay-stream", "Alephant-Run-Id": "run-claude-replay"}
    finals = []
    for _ in range(2):
        with client.messages.stream(model=MODEL, max_tokens=100, messages=HELLO, extra_headers=streamed) as stream:
            finals.append(stream.get_final_message())
    assert finals[0] == finals[1] and finals[1].content[0].text == REPLY  # type: ignore[union-attr]
    assert len(claude.fake.received) == 2

    totals = claude.get("/api/runs/run-claude-replay")["totals"]
    assert (totals["model_calls"], totals["cost_nanos"]) == (2, 2 * HELLO_NANOS)


def test_stream_cut_by_the_provider_ends_with_an_anthropic_error_event(claude: Harness) -> None:
    """The provider drops the stream after message_start and content_block_start: the client gets Anthropic's
    `event: error` (the SDK raises it) and no message_stop; the call is booked as a 502 at the usage
    message_start reported (6 in, 1 out: 6 × $1 + 1 × $5 per MTok = 11_000 nano-dollars)."""
    events: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as exc:
        stream = _client(claude).messages.create(
            model=MODEL,
            max_tokens=100,
            messages=[{"role": "user", "content": "FAIL:drop the stream"}],
            stream=True,
            extra_headers={"x-request-id": "req-claude-drop"},
        )
        events.extend(event.type for event in stream)
    assert events == ["message_start", "content_block_start"]
    assert exc.value.status_code == 200  # in-band: the stream had begun
    assert "dropped the stream" in _anthropic_error(exc.value, "api_error", "text/event-stream")
    req = claude.get("/api/requests/req-claude-drop")
    assert (req["status"], req["http_status"], req["error_code"]) == ("error", 502, "upstream_unavailable")
    assert (req["input_tokens"], req["output_tokens"], req["cost_nanos"]) == (6, 1, 11_000)


def test_invalid_requests_are_anthropic_shaped(claude: Harness) -> None:
    not_json = claude.v1("POST", "/v1/messages", content=b"{not json", headers={"content-type": "application/json"})
    assert not_json.status_code == 400
    assert not_json.json()["type"] == "error"
    assert not_json.json()["error"]["type"] == "invalid_request_error"

    no_max_tokens = claude.v1("POST", "/v1/messages", json={"model": MODEL, "messages": HELLO})
    assert no_max_tokens.status_code == 400
    assert no_max_tokens.json()["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in no_max_tokens.json()["error"]["message"]

    with pytest.raises(anthropic.BadRequestError) as exc:
        _client(claude).messages.create(model=MODEL, max_tokens=10, messages=[])
    _anthropic_error(exc.value, "invalid_request_error")
    with pytest.raises(anthropic.BadRequestError) as bad_header:
        _client(claude).messages.create(
            model=MODEL, max_tokens=10, messages=HELLO, extra_headers={"Alephant-Run-Id": "not an id!"}
        )
    assert "alephant-run-id" in _anthropic_error(bad_header.value, "invalid_request_error")
    with pytest.raises(anthropic.BadRequestError) as unknown_agent:
        _client(claude).messages.create(
            model=MODEL, max_tokens=10, messages=HELLO, extra_headers={"Alephant-Agent-Id": "nobody"}
        )
    assert "nobody" in _anthropic_error(unknown_agent.value, "invalid_request_error")

    # Errors met before any handler (no such route, wrong method) follow the path's format too.
    wrong_method = claude.v1("GET", "/v1/messages")
    assert wrong_method.status_code == 405 and wrong_method.json()["type"] == "error"
    no_route = claude.v1("POST", "/v1/messages/batches-nope", json={})
    assert no_route.status_code == 404 and no_route.json()["error"]["type"] == "not_found_error"
    assert claude.fake.received == []


def test_body_too_large_is_anthropic_shaped(db_url: str, tmp_path: Path, upstream: ServerThread) -> None:
    with running_gateway(db_url, tmp_path, upstream, max_body_bytes=4096) as small:
        small.add_provider_key(name="anthropic-main", kind="anthropic", provider="anthropic", models=["claude-*"])
        ok = _client(small).messages.create(model=MODEL, max_tokens=10, messages=HELLO)
        assert ok.content[0].text == REPLY  # type: ignore[union-attr]
        big = [{"role": "user", "content": "word " * 2000}]
        with pytest.raises(anthropic.APIStatusError) as exc:
            _client(small).messages.create(model=MODEL, max_tokens=10, messages=big)  # type: ignore[arg-type]
        assert exc.value.status_code == 413
        _anthropic_error(exc.value, "request_too_large")
        with pytest.raises(anthropic.APIStatusError) as counted:
            _client(small).messages.count_tokens(model=MODEL, messages=big)  # type: ignore[arg-type]
        assert counted.value.status_code == 413
        _anthropic_error(counted.value, "request_too_large")

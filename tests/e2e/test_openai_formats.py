"""The openai SDK against the gateway's other OpenAI routes: /v1/responses (streamed and not), /v1/embeddings,
and chat, embeddings and Responses through an Azure OpenAI provider key. Exact tokens and costs; OpenAI-shaped
errors."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest
from genai_prices import data_snapshot

from agentledger.providers.mock import embedding_vector
from agentledger.testing import ServerThread
from tests.harness import HTTP, Harness, running_gateway

pytestmark = pytest.mark.e2e

# Dollars per million tokens, OpenAI's pricing page as genai-prices 0.2.3 carries it (providers/openai):
# gpt-4o-mini input $0.15, output $0.60; text-embedding-3-small input $0.02 (no output).
# At $X per MTok one token costs X * 1000 nano-dollars.
MINI_INPUT = Decimal("0.15")
MINI_OUTPUT = Decimal("0.60")
EMBED_INPUT = Decimal("0.02")

TRACKING = {
    "Alephant-Agent-Id": "planner",
    "Alephant-Run-Id": "run-responses",
    "alephant-session-id": "sess-responses",
    "alephant-session-path": "/plan/search",
    "alephant-session-name": "Trip planning",
    "alephant-property-env": "prod",
    "alephant-prompt-id": "planner@7",
}
REPLY = "This is a mock reply to: hello there world"
# 'hello there world' as the only input item: 3 words + 3; 'be brief' (instructions) 2 words, no +3 → 8 in.
# The reply: 9 words out. 8 × $0.15 + 9 × $0.60 = $6.60 per MTok = 6_600 nano-dollars.
WITH_INSTRUCTIONS = (8, 9, 6_600)
# Without instructions (and for chat: one message): 6 × $0.15 + 9 × $0.60 = $6.30 per MTok.
PLAIN = (6, 9, 6_300)
# Embeddings of 'hello there world' and 'one two': 3 + 2 = 5 tokens × $0.02 per MTok = 100 nano-dollars.
EMBED_TOKENS, EMBED_NANOS = 5, 100

UPSTREAM_SECRET = "sk-fake-upstream-secret"  # the default `fake-openai` key's credential (tests/harness.py)
EMBED_SECRET = "sk-openai-upstream-secret"  # Harness.add_provider_key's default for an openai key
AZURE_SECRET = "sk-azure-upstream-secret"
AZURE_OPTIONS = {
    "api_version": "2024-10-21",
    "deployments": {"gpt-4o-mini": "my-deploy", "text-embedding-3-small": "embed-deploy"},
}


def _nanos(rate_in: Decimal, rate_out: Decimal, tokens_in: int, tokens_out: int) -> int:
    nanos = (tokens_in * rate_in + tokens_out * rate_out) * 1000
    assert nanos == nanos.to_integral_value()
    return int(nanos)


def _usd(nanos: int) -> str:
    return f"{Decimal(nanos) / 10**9:.9f}"


def _openai_error(exc: openai.APIStatusError, status: int, code: str, kind: str | None = None) -> str:
    """The SDK's typed error, and the wire body in OpenAI's shape: `{"error": {message, type, code, param}}`."""
    assert exc.status_code == status
    wire = exc.response.json()
    assert set(wire) == {"error"} and set(wire["error"]) == {"message", "type", "code", "param"}, wire
    assert wire["error"]["code"] == code, wire
    if kind is not None:
        assert wire["error"]["type"] == kind, wire
    assert exc.body == wire["error"]
    return str(wire["error"]["message"])


def _add_embeddings_key(gw: Harness) -> None:
    gw.add_provider_key(name="openai-embed", kind="openai", provider="openai", models=["text-embedding-*"])


def _add_azure_key(gw: Harness) -> None:
    gw.add_provider_key(
        name="azure-east",
        kind="azure",
        provider="azure",
        models=["gpt-4o-mini", "text-embedding-3-small"],
        options=AZURE_OPTIONS,
    )


def test_catalog_rates_are_the_hand_written_ones() -> None:
    snapshot = data_snapshot.get_snapshot()
    now = datetime.now(UTC)
    _, mini = snapshot.find_provider_model("gpt-4o-mini", None, "openai", None)
    _, embed = snapshot.find_provider_model("text-embedding-3-small", None, "openai", None)
    assert (mini.get_prices(now).input_mtok, mini.get_prices(now).output_mtok) == (MINI_INPUT, MINI_OUTPUT)
    assert embed.get_prices(now).input_mtok == EMBED_INPUT
    assert _nanos(MINI_INPUT, MINI_OUTPUT, 8, 9) == WITH_INSTRUCTIONS[2]
    assert _nanos(MINI_INPUT, MINI_OUTPUT, 6, 9) == PLAIN[2]
    assert _nanos(EMBED_INPUT, Decimal(0), EMBED_TOKENS, 0) == EMBED_NANOS


# --- Responses ----------------------------------------------------------------------------------------------


def test_responses_non_streamed_is_priced_and_traced(gw: Harness) -> None:
    raw = gw.openai().responses.with_raw_response.create(
        model="gpt-4o-mini",
        instructions="be brief",
        input="hello there world",
        extra_headers={**TRACKING, "x-request-id": "req-resp-1"},
    )
    response = raw.parse()
    assert response.status == "completed" and response.output_text == REPLY
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens) == WITH_INSTRUCTIONS[:2]
    assert raw.headers["x-request-id"] == "req-resp-1"
    assert raw.headers["alephant-run-id"] == "run-responses"
    assert raw.headers["alephant-cost-usd"] == "0.000006600"
    assert raw.headers["alephant-cost-source"] == "computed"
    assert raw.headers["alephant-provider"] == "fake-openai"
    assert raw.headers["alephant-model"] == "gpt-4o-mini"
    assert raw.headers["alephant-attempts"] == "1"

    (got,) = gw.fake.received
    assert got["path"] == "/v1/responses"
    assert got["headers"]["authorization"] == f"Bearer {UPSTREAM_SECRET}"
    assert got["body"]["input"] == "hello there world" and got["body"]["instructions"] == "be brief"

    req = gw.get("/api/requests/req-resp-1")
    assert (req["input_tokens"], req["output_tokens"], req["cost_nanos"]) == WITH_INSTRUCTIONS
    assert req["endpoint"] == "/responses" and req["stream"] is False and req["cost_source"] == "computed"
    assert req["agent_id"] == "planner" and req["session_id"] == "sess-responses"
    assert req["session_path"] == "/plan/search" and req["properties"] == {"env": "prod"}
    assert (req["prompt_id"], req["prompt_version"]) == ("planner", "7")

    run = gw.get("/api/runs/run-responses")
    (step,) = run["steps"]
    assert step["kind"] == "model_call" and step["request_id"] == "req-resp-1"
    assert (step["input_tokens"], step["output_tokens"], step["cost_nanos"]) == WITH_INSTRUCTIONS
    assert step["attributes"]["format"] == "responses"
    assert step["attributes"]["provider_format"] == "responses"
    assert step["attributes"]["provider_key"] == "fake-openai"
    assert run["totals"]["cost_nanos"] == WITH_INSTRUCTIONS[2] and run["totals"]["model_calls"] == 1


def test_responses_streamed_events_and_usage(gw: Harness) -> None:
    stream = gw.openai().responses.create(
        model="gpt-4o-mini",
        input="hello there world",
        stream=True,
        extra_headers={**TRACKING, "Alephant-Run-Id": "run-responses-stream", "x-request-id": "req-resp-stream"},
    )
    events = list(stream)
    assert [e.type for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * 9,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == REPLY
    completed = events[-1]
    assert completed.type == "response.completed"
    assert completed.response.usage is not None
    assert (completed.response.usage.input_tokens, completed.response.usage.output_tokens) == PLAIN[:2]
    assert completed.response.output_text == REPLY
    assert gw.fake.received[-1]["body"]["stream"] is True

    req = gw.get("/api/requests/req-resp-stream")
    assert (req["input_tokens"], req["output_tokens"], req["cost_nanos"]) == PLAIN
    assert req["stream"] is True and req["status"] == "ok"
    (step,) = gw.get("/api/runs/run-responses-stream")["steps"]
    assert (step["input_tokens"], step["output_tokens"], step["cost_nanos"]) == PLAIN
    assert step["attributes"]["format"] == "responses" and step["attributes"]["stream"] is True


async def test_async_responses_stream_helper_and_tool_call(gw: Harness) -> None:
    """The async client's `responses.stream` helper, answered with a function call (streamed arguments)."""
    tool = {
        "type": "function",
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
            "additionalProperties": False,
        },
        "strict": True,
    }
    async with gw.async_openai() as client:
        async with client.responses.stream(
            model="gpt-4o-mini",
            input="What is the weather in Paris?",
            tools=[tool],  # type: ignore[list-item]
            extra_headers={"x-request-id": "req-resp-tool"},
        ) as stream:
            final = await stream.get_final_response()
    (call,) = final.output
    assert call.type == "function_call" and call.name == "get_weather" and call.arguments == '{"city": "mock"}'
    # 6 words + 3 in; the arguments are 2 pieces out: 9 × $0.15 + 2 × $0.60 = $2.55 per MTok.
    assert final.usage is not None and (final.usage.input_tokens, final.usage.output_tokens) == (9, 2)
    req = gw.get("/api/requests/req-resp-tool")
    assert (req["input_tokens"], req["output_tokens"], req["cost_nanos"]) == (9, 2, 2_550)


# gpt-6-cyber, dollars per MTok as genai-prices 0.2.3 carries it (providers/openai; a model with a cache write
# rate): input $20, output $100, cache read $2, cache write $25. A call that read 1000 input tokens, 300 of them
# from the cache and 400 written to it, and wrote 10: 300 × $20 + 300 × $2 + 400 × $25 + 10 × $100
# = 6000 + 600 + 10000 + 1000 = $17,600 per MTok = 17_600_000 nano-dollars.
CYBER_RATES = (Decimal("20"), Decimal("100"), Decimal("2"), Decimal("25"))
CACHED_CALL = {"input": 1000, "cached": 300, "written": 400, "output": 10, "nanos": 17_600_000}
CACHE_USAGE_BY_FORMAT = {
    # OpenAI's own usage shapes: cached and written tokens are part of prompt_tokens / input_tokens.
    "chat": {
        "prompt_tokens": 1000,
        "prompt_tokens_details": {"cached_tokens": 300, "cache_write_tokens": 400},
        "completion_tokens": 10,
        "total_tokens": 1010,
    },
    "responses": {
        "input_tokens": 1000,
        "input_tokens_details": {"cached_tokens": 300, "cache_write_tokens": 400},
        "output_tokens": 10,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 1010,
    },
}


def test_cyber_rates_are_the_hand_written_ones() -> None:
    _, model = data_snapshot.get_snapshot().find_provider_model("gpt-6-cyber", None, "openai", None)
    price = model.get_prices(datetime.now(UTC))
    assert (price.input_mtok, price.output_mtok, price.cache_read_mtok, price.cache_write_mtok) == CYBER_RATES
    rate_in, rate_out, rate_read, rate_write = CYBER_RATES
    plain = CACHED_CALL["input"] - CACHED_CALL["cached"] - CACHED_CALL["written"]
    dollars_per_mtok = (
        plain * rate_in
        + CACHED_CALL["cached"] * rate_read
        + CACHED_CALL["written"] * rate_write
        + CACHED_CALL["output"] * rate_out
    )
    assert dollars_per_mtok * 1000 == CACHED_CALL["nanos"]


@pytest.mark.parametrize("fmt", ["chat", "responses"])
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_cache_reads_and_writes_are_priced_at_their_rates(gw: Harness, fmt: str, stream: bool) -> None:
    """The same usage, reported in each API's own shape, is booked and priced the same: the Responses API reports
    cache writes as `input_tokens_details.cache_write_tokens` as chat reports `prompt_tokens_details.cache_write_tokens`
    (openai 3.51's `InputTokensDetails.cache_write_tokens`)."""
    client = gw.openai()
    request_id = f"req-cache-{fmt}-{int(stream)}"
    extra: dict[str, Any] = {
        "extra_body": {"metadata": {"mock_usage": CACHE_USAGE_BY_FORMAT[fmt]}},
        "extra_headers": {"x-request-id": request_id},
    }
    if fmt == "chat":
        messages: Any = [{"role": "user", "content": "hello there world"}]
        if stream:
            list(client.chat.completions.create(model="gpt-6-cyber", messages=messages, stream=True, **extra))
        else:
            client.chat.completions.create(model="gpt-6-cyber", messages=messages, **extra)
    elif stream:
        list(client.responses.create(model="gpt-6-cyber", input="hello there world", stream=True, **extra))
    else:
        client.responses.create(model="gpt-6-cyber", input="hello there world", **extra)
    req = gw.get(f"/api/requests/{request_id}")
    assert req["status"] == "ok"
    assert req["cost_source"] == "computed"
    booked = (
        req["input_tokens"],
        req["cached_input_tokens"],
        req["cache_write_tokens"],
        req["output_tokens"],
        req["cost_nanos"],
    )
    assert booked == (1000, 300, 400, 10, CACHED_CALL["nanos"])


# --- Embeddings ---------------------------------------------------------------------------------------------


def test_embeddings_base64_by_default(gw: Harness) -> None:
    _add_embeddings_key(gw)
    inputs = ["hello there world", "one two"]
    raw = gw.openai().embeddings.with_raw_response.create(
        model="text-embedding-3-small",
        input=inputs,
        extra_headers={"Alephant-Run-Id": "run-embed", "x-request-id": "req-embed-1"},
    )
    result = raw.parse()
    # The SDK asks for base64 and decodes it: the vectors are the fake's float32 values, exactly.
    assert gw.fake.received[-1]["body"]["encoding_format"] == "base64"
    assert gw.fake.received[-1]["headers"]["authorization"] == f"Bearer {EMBED_SECRET}"
    assert [d.index for d in result.data] == [0, 1]
    assert [len(d.embedding) for d in result.data] == [8, 8]
    assert [d.embedding for d in result.data] == [embedding_vector(text) for text in inputs]
    assert all(math.isclose(math.fsum(x * x for x in d.embedding), 1.0, rel_tol=1e-6) for d in result.data)
    assert (result.usage.prompt_tokens, result.usage.total_tokens) == (EMBED_TOKENS, EMBED_TOKENS)
    assert raw.headers["alephant-cost-usd"] == _usd(EMBED_NANOS) == "0.000000100"
    assert raw.headers["alephant-provider"] == "openai-embed"

    req = gw.get("/api/requests/req-embed-1")
    assert (req["input_tokens"], req["output_tokens"], req["cost_nanos"]) == (EMBED_TOKENS, 0, EMBED_NANOS)
    assert req["endpoint"] == "/embeddings" and req["provider_key"] == "openai-embed"
    (step,) = gw.get("/api/runs/run-embed")["steps"]
    assert step["kind"] == "model_call" and step["cost_nanos"] == EMBED_NANOS
    assert step["attributes"]["format"] == "embeddings" and step["attributes"]["provider_format"] == "embeddings"


def test_embeddings_float_and_dimensions(gw: Harness) -> None:
    _add_embeddings_key(gw)
    client = gw.openai()
    floats = client.embeddings.create(
        model="text-embedding-3-small", input="hello there world", encoding_format="float", dimensions=16
    )
    assert gw.fake.received[-1]["body"]["encoding_format"] == "float"
    (item,) = floats.data
    assert item.embedding == embedding_vector("hello there world", 16)
    as_base64 = client.embeddings.create(model="text-embedding-3-small", input="hello there world", dimensions=16)
    assert as_base64.data[0].embedding == item.embedding
    assert floats.usage.prompt_tokens == 3


# --- Azure OpenAI -------------------------------------------------------------------------------------------


def test_chat_through_an_azure_key(gw: Harness) -> None:
    _add_azure_key(gw)
    raw = gw.openai().chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "hello there world"}],
        extra_headers={"alephant-forced-routing": "azure-east", "x-request-id": "req-azure-chat"},
    )
    assert raw.parse().choices[0].message.content == REPLY
    assert raw.headers["alephant-provider"] == "azure-east"
    assert raw.headers["alephant-cost-usd"] == _usd(PLAIN[2]) == "0.000006300"

    (got,) = gw.fake.received
    assert got["path"] == "/openai/deployments/my-deploy/chat/completions"
    assert got["query"] == "api-version=2024-10-21"
    assert got["headers"]["api-key"] == AZURE_SECRET
    assert "authorization" not in got["headers"]
    assert all(gw.vk not in value for value in got["headers"].values())

    req = gw.get("/api/requests/req-azure-chat")
    assert (req["input_tokens"], req["output_tokens"], req["cost_nanos"]) == PLAIN
    assert req["provider"] == "azure" and req["provider_key"] == "azure-east" and req["model"] == "gpt-4o-mini"


def test_streamed_chat_through_an_azure_key(gw: Harness) -> None:
    _add_azure_key(gw)
    chunks = list(
        gw.openai().chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "hello there world"}],
            stream=True,
            extra_headers={"alephant-forced-routing": "azure-east", "x-request-id": "req-azure-stream"},
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == REPLY
    got = gw.fake.received[-1]
    assert got["path"] == "/openai/deployments/my-deploy/chat/completions"
    assert got["query"] == "api-version=2024-10-21" and got["headers"]["api-key"] == AZURE_SECRET
    assert got["body"]["stream_options"] == {"include_usage": True}
    req = gw.get("/api/requests/req-azure-stream")
    assert (req["input_tokens"], req["output_tokens"], req["cost_nanos"]) == PLAIN
    assert req["provider_key"] == "azure-east" and req["stream"] is True


def test_embeddings_and_responses_through_an_azure_key(gw: Harness) -> None:
    _add_azure_key(gw)
    client = gw.openai()
    forced = {"alephant-forced-routing": "azure-east"}
    embedded = client.embeddings.create(model="text-embedding-3-small", input="hello there world", extra_headers=forced)
    assert embedded.data[0].embedding == embedding_vector("hello there world")
    got = gw.fake.received[-1]
    assert (got["path"], got["query"]) == ("/openai/deployments/embed-deploy/embeddings", "api-version=2024-10-21")
    assert got["headers"]["api-key"] == AZURE_SECRET

    raw = client.responses.with_raw_response.create(
        model="gpt-4o-mini", instructions="be brief", input="hello there world", extra_headers=forced
    )
    assert raw.parse().output_text == REPLY
    assert raw.headers["alephant-provider"] == "azure-east"
    assert raw.headers["alephant-cost-usd"] == _usd(WITH_INSTRUCTIONS[2])
    got = gw.fake.received[-1]
    assert (got["path"], got["query"]) == ("/openai/responses", "api-version=2024-10-21")
    assert got["headers"]["api-key"] == AZURE_SECRET and got["body"]["model"] == "gpt-4o-mini"


# --- errors: OpenAI's shape on /v1/responses and /v1/embeddings -----------------------------------------------


def test_bad_key_is_an_openai_authentication_error(gw: Harness) -> None:
    _add_embeddings_key(gw)
    client = gw.openai(api_key="vk-not-a-key")
    with pytest.raises(openai.AuthenticationError) as resp_exc:
        client.responses.create(model="gpt-4o-mini", input="hello")
    _openai_error(resp_exc.value, 401, "invalid_api_key", "authentication_error")
    with pytest.raises(openai.AuthenticationError) as embed_exc:
        client.embeddings.create(model="text-embedding-3-small", input="hello")
    _openai_error(embed_exc.value, 401, "invalid_api_key", "authentication_error")
    assert gw.fake.received == []


def test_unknown_model_is_not_found(gw: Harness) -> None:
    client = gw.openai()
    with pytest.raises(openai.NotFoundError) as resp_exc:
        client.responses.create(model="gpt-nonexistent-9", input="hello")
    assert "gpt-nonexistent-9" in _openai_error(resp_exc.value, 404, "model_not_found")
    with pytest.raises(openai.NotFoundError) as embed_exc:
        client.embeddings.create(model="mystery-embedder", input="hello")
    assert "mystery-embedder" in _openai_error(embed_exc.value, 404, "model_not_found")
    assert gw.fake.received == []


def test_upstream_rate_limit_is_a_rate_limit_error(gw: Harness) -> None:
    _add_embeddings_key(gw)
    client = gw.openai()
    with pytest.raises(openai.RateLimitError) as plain:
        client.responses.create(model="gpt-4o-mini", input="FAIL:429", extra_headers={"x-request-id": "req-r429"})
    _openai_error(plain.value, 429, "upstream_rate_limited", "upstream_error")
    with pytest.raises(openai.RateLimitError) as streamed:
        client.responses.create(model="gpt-4o-mini", input="FAIL:429", stream=True)
    _openai_error(streamed.value, 429, "upstream_rate_limited")
    with pytest.raises(openai.RateLimitError) as embedded:
        client.embeddings.create(model="text-embedding-3-small", input="FAIL:429")
    _openai_error(embedded.value, 429, "upstream_rate_limited")
    req = gw.get("/api/requests/req-r429")
    assert (req["status"], req["http_status"], req["cost_nanos"]) == ("error", 429, 0)


def test_provider_refusal_passes_its_status_through(gw: Harness) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        gw.openai().responses.create(model="gpt-4o-mini", input="FAIL:400")
    _openai_error(exc.value, 400, "upstream_rejected", "upstream_error")


def test_responses_stream_cut_by_the_provider_ends_with_an_error_event(gw: Harness) -> None:
    events = list(
        gw.openai().responses.create(
            model="gpt-4o-mini", input="FAIL:drop it", stream=True, extra_headers={"x-request-id": "req-resp-drop"}
        )
    )
    assert [e.type for e in events] == ["response.created", "response.in_progress", "error"]
    error = events[-1]
    assert error.type == "error" and error.code == "upstream_unavailable"
    assert "dropped the stream" in error.message
    req = gw.get("/api/requests/req-resp-drop")
    assert (req["status"], req["http_status"], req["cost_source"]) == ("error", 502, "estimated")


@pytest.mark.parametrize("path", ["/v1/responses", "/v1/embeddings"])
def test_invalid_requests_are_openai_shaped(gw: Harness, path: str) -> None:
    def check(resp: Any, status: int, code: str) -> None:
        assert resp.status_code == status, resp.text
        body = resp.json()
        assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "code", "param"}, body
        assert body["error"]["code"] == code, body

    check(gw.v1("POST", path, content=b"{not json", headers={"content-type": "application/json"}), 400, "invalid_json")
    check(gw.v1("POST", path, json=["not", "an", "object"]), 400, "invalid_json")
    check(gw.v1("POST", path, json={"input": "hello"}), 400, "invalid_request")  # no model
    check(
        HTTP.post(gw.url + path, json={"model": "gpt-4o-mini", "input": "x"}),  # no key at all
        401,
        "invalid_api_key",
    )
    if path == "/v1/embeddings":
        check(gw.v1("POST", path, json={"model": "gpt-4o-mini", "input": "x", "stream": True}), 400, "invalid_request")
    else:
        check(gw.v1("POST", path, json={"model": "gpt-4o-mini", "input": 7}), 400, "invalid_request")
    assert gw.fake.received == []


def test_formats_an_anthropic_key_cannot_answer_are_refused(gw: Harness) -> None:
    gw.add_provider_key(name="anthropic-main", kind="anthropic", provider="anthropic", models=["claude-*"])
    client = gw.openai()
    with pytest.raises(openai.BadRequestError) as resp_exc:
        client.responses.create(model="claude-haiku-4-5", input="hello")
    assert "anthropic-main" in _openai_error(resp_exc.value, 400, "invalid_request")
    with pytest.raises(openai.BadRequestError) as embed_exc:
        client.embeddings.create(model="claude-haiku-4-5", input="hello")
    _openai_error(embed_exc.value, 400, "invalid_request")
    assert gw.fake.received == []


def test_body_too_large_is_openai_shaped(db_url: str, tmp_path: Path, upstream: ServerThread) -> None:
    with running_gateway(db_url, tmp_path, upstream, max_body_bytes=4096) as small:
        _add_embeddings_key(small)
        client = small.openai()
        big = "word " * 2000
        with pytest.raises(openai.APIStatusError) as resp_exc:
            client.responses.create(model="gpt-4o-mini", input=big)
        _openai_error(resp_exc.value, 413, "request_too_large", "invalid_request_error")
        with pytest.raises(openai.APIStatusError) as embed_exc:
            client.embeddings.create(model="text-embedding-3-small", input=big)
        _openai_error(embed_exc.value, 413, "request_too_large")
        assert client.embeddings.create(model="text-embedding-3-small", input="small").usage.prompt_tokens == 1

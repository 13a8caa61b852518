"""The pass-through formats: what each reads from a provider's answer, hides, holds back and refuses."""

from __future__ import annotations

import orjson
import pytest

from agentledger.core.bounds import MAX_TOKENS
from agentledger.core.errors import InvalidRequest, UpstreamRateLimited
from agentledger.core.usage import Usage, parse_anthropic, parse_responses
from agentledger.formats.chat import CHAT_FORMAT, ChatStream
from agentledger.formats.embeddings import EMBEDDINGS_FORMAT
from agentledger.formats.errors import anthropic_body, body_for_path
from agentledger.formats.messages import MESSAGES_FORMAT, MessagesStream
from agentledger.formats.registry import bridge
from agentledger.formats.responses import RESPONSES_FORMAT, ResponsesStream


def _parse(fmt: object, payload: dict[str, object]) -> object:
    return fmt.parse(payload, orjson.dumps(payload))  # type: ignore[attr-defined]


def test_a_chat_stream_is_priced_from_the_usage_chunk_it_forced_and_hides_it() -> None:
    parsed = _parse(CHAT_FORMAT, {"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": True})
    assert orjson.loads(parsed.upstream_body)["stream_options"] == {"include_usage": True}  # type: ignore[attr-defined]
    s = ChatStream(wants_usage=False)
    assert s.feed(None, b'{"choices":[{"delta":{"content":"hi"}}],"usage":null}') == [
        b'data: {"choices":[{"delta":{"content":"hi"}}],"usage":null}\n\n'
    ]
    assert s.feed(None, b'{"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":2}}') == []
    assert s.feed(None, b"[DONE]") == [] and s.complete
    assert s.close() == [b"data: [DONE]\n\n"]
    assert s.usage() == (Usage(input_tokens=7, output_tokens=2), False)


def test_a_chat_client_that_asked_for_usage_gets_the_chunk() -> None:
    s = ChatStream(wants_usage=True)
    chunk = b'{"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1,"cost":0.5}}'
    assert s.feed(None, chunk) == [b"data: " + chunk + b"\n\n"]
    assert s.reported_cost() == "0.5"


def test_an_in_band_error_chunk_fails_the_chat_stream() -> None:
    s = ChatStream(wants_usage=False)
    assert s.feed(None, b'{"error":{"message":"overloaded"}}')
    assert s.failure == "overloaded"


ANTHROPIC_STREAM = [
    (
        "message_start",
        {
            "type": "message_start",
            "message": {
                "usage": {
                    "input_tokens": 10,
                    "cache_read_input_tokens": 100,
                    "cache_creation_input_tokens": 20,
                    "output_tokens": 1,
                }
            },
        },
    ),  # noqa: E501
    ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
    ("ping", {"type": "ping"}),
    ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "hi"}}),
    ("content_block_stop", {"type": "content_block_stop", "index": 0}),
    ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 15}}),
    ("message_stop", {"type": "message_stop"}),
]


@pytest.mark.parametrize("named", [True, False], ids=["event-names", "types-only"])
def test_a_messages_stream_passes_every_event_and_holds_message_stop(named: bool) -> None:
    s = MessagesStream()
    out = []
    for name, data in ANTHROPIC_STREAM:
        out += s.feed(name if named else None, orjson.dumps(data))
    assert [f.split(b"\n", 1)[0] for f in out] == [f"event: {n}".encode() for n, _ in ANTHROPIC_STREAM[:-1]]
    assert s.complete and s.close() == [b'event: message_stop\ndata: {"type":"message_stop"}\n\n']
    # Anthropic's input_tokens leaves the cache out; ours holds it (each part priced at its own rate).
    assert s.usage() == (
        Usage(input_tokens=130, cached_input_tokens=100, cache_write_tokens=20, output_tokens=15),
        False,
    )


def test_an_error_event_fails_the_messages_stream() -> None:
    s = MessagesStream()
    err = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    assert s.feed("error", orjson.dumps(err)) == [b"event: error\ndata: " + orjson.dumps(err) + b"\n\n"]
    assert s.failure == "Overloaded" and not s.complete


@pytest.mark.parametrize("end", ["response.completed", "response.incomplete", "response.failed"])
def test_a_responses_stream_ends_at_its_terminal_event_which_carries_usage(end: str) -> None:
    s = ResponsesStream()
    assert s.feed("response.created", b'{"type":"response.created"}') == [
        b'event: response.created\ndata: {"type":"response.created"}\n\n'
    ]
    usage = {"input_tokens": 9, "input_tokens_details": {"cached_tokens": 4}, "output_tokens": 3,
             "output_tokens_details": {"reasoning_tokens": 2}}  # fmt: skip
    final = orjson.dumps({"type": end, "response": {"usage": usage, "error": {"message": "boom"}}})
    assert s.feed(end, final) == []
    assert s.complete and s.close() == [f"event: {end}\ndata: ".encode() + final + b"\n\n"]
    assert s.usage() == (Usage(9, 4, 0, 3, 2), False)
    assert (s.failure is not None) == (end == "response.failed")


def test_usage_parsers_clamp_and_ignore_garbage() -> None:
    assert parse_anthropic({"input_tokens": "x", "output_tokens": -4}) == (Usage(), False)
    assert parse_anthropic({"input_tokens": 2**70, "cache_read_input_tokens": 5}) == (
        Usage(input_tokens=MAX_TOKENS, cached_input_tokens=5),
        True,
    )
    assert parse_responses({"prompt_tokens": 5, "total_tokens": 5}) == (Usage(input_tokens=5), False)
    assert parse_anthropic(None) is None and parse_responses([]) is None  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fmt", "payload", "param"),
    [
        (MESSAGES_FORMAT, {"model": "m", "messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
        (MESSAGES_FORMAT, {"model": "m", "messages": [], "max_tokens": 5}, "messages"),
        (MESSAGES_FORMAT, {"model": "m", "messages": [{}], "max_tokens": True}, "max_tokens"),
        (RESPONSES_FORMAT, {"model": "m", "input": 5}, "input"),
        (RESPONSES_FORMAT, {"model": "", "input": "x"}, "model"),
        (RESPONSES_FORMAT, {"model": "m", "input": "x", "stream": "yes"}, "stream"),
        (EMBEDDINGS_FORMAT, {"model": "m", "input": []}, "input"),
        (EMBEDDINGS_FORMAT, {"model": "m", "input": "x", "stream": True}, "stream"),
        (CHAT_FORMAT, {"model": "m", "messages": [{}], "stream_options": 3}, "stream_options"),
    ],
)
def test_each_format_refuses_what_it_cannot_take_naming_the_field(
    fmt: object, payload: dict[str, object], param: str
) -> None:  # noqa: E501
    with pytest.raises(InvalidRequest) as caught:
        _parse(fmt, payload)
    assert caught.value.param == param


def test_errors_take_the_shape_of_the_route() -> None:
    exc = UpstreamRateLimited("slow down")
    assert anthropic_body(exc) == {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}
    assert body_for_path(exc, "/v1/messages/count_tokens") == anthropic_body(exc)
    assert body_for_path(exc, "/v1/messagesx") == exc.body() == body_for_path(exc, "/v1/chat/completions")


def test_bridges_translate_chat_and_messages_only() -> None:
    assert bridge("chat", "anthropic") is not None and bridge("chat", "anthropic").translated  # type: ignore[union-attr]
    assert bridge("messages", "openai").translated  # type: ignore[union-attr]
    assert not bridge("messages", "mock").translated  # type: ignore[union-attr]
    assert bridge("responses", "anthropic") is None and bridge("embeddings", "anthropic") is None
    assert bridge("chat", "nonexistent") is None


def test_anthropic_one_hour_cache_writes_and_web_searches_are_read_and_priced() -> None:
    from datetime import UTC, datetime

    from agentledger.prices.catalog import price_usage

    raw = {
        "input_tokens": 100,
        "cache_creation_input_tokens": 1000,
        "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 1000},
        "output_tokens": 50,
        "server_tool_use": {"web_search_requests": 3},
    }
    usage, clamped = parse_anthropic(raw)  # type: ignore[misc]
    assert usage == Usage(1100, 0, 1000, 50, 0, cache_write_1h_tokens=1000, web_searches=3) and not clamped
    # claude-haiku-4-5 (genai-prices, Anthropic's price page): $1 input, $2 1-hour cache write, $5 output per
    # MTok, $10 per thousand searches: 100 + 2000 + 250 micro-dollars, plus 3 × 10,000.
    cost = price_usage(usage, "claude-haiku-4-5", "anthropic", datetime(2026, 11, 1, tzinfo=UTC), {})
    assert cost is not None and cost.nanos == 2_350_000 + 30_000_000


def test_a_providers_retry_after_is_kept_for_backoff_and_passed_to_the_client() -> None:
    from agentledger.providers._errors import error_for_status

    exc = error_for_status("p", 429, b'{"error":{"message":"slow"}}', {"retry-after": "2.5"})
    assert (exc.wait, exc.retry_after, exc.provider_status, exc.retryable) == (2.5, 3, 429, True)
    ms = error_for_status("p", 503, b"", {"retry-after-ms": "40"})
    assert (ms.wait, ms.retry_after, ms.status) == (0.04, 1, 502)
    bad = error_for_status("p", 400, b"", {"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"})
    assert (bad.wait, bad.retry_after, bad.retryable, bad.status) == (None, None, False, 400)

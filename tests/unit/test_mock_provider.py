"""The in-process mock provider: exact token counts, tool calls valid against their schema, each format's event
sequence, embeddings in both encodings, determinism."""

from __future__ import annotations

import base64
import json
import math
import struct
from typing import Any

import jsonschema
import orjson
import pytest

from agentledger.core.errors import UpstreamRejected
from agentledger.core.model import ProviderRoute
from agentledger.providers import mock
from agentledger.providers.base import Target

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 3},
        "note": {"type": "string"},
    },
    "required": ["city", "unit", "days"],
}
WEATHER_ARGS = {"city": "mock", "unit": "celsius", "days": 3}
WEATHER_JSON = '{"city": "mock", "unit": "celsius", "days": 3}'  # 6 space-separated pieces
CHAT_TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}}]
ANTHROPIC_TOOLS = [{"name": "get_weather", "description": "Weather", "input_schema": WEATHER}]
RESPONSES_TOOLS = [{"type": "function", "name": "get_weather", "parameters": WEATHER}]


def chat_body(**extra: Any) -> dict[str, Any]:
    return {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "You are terse."},  # 3 words + 3
            {"role": "user", "content": "What is the weather in Paris today and tomorrow please"},  # 10 + 3
        ],
        **extra,
    }


# --- chat completions ---


def test_chat_completion_counts_words_and_quotes_the_last_message() -> None:
    body = chat_body()
    assert mock.completion(body) == {
        "id": mock.completion_id(body),
        "object": "chat.completion",
        "created": mock.CREATED,
        "model": "gpt-4o-mini",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "This is a mock reply to: What is the weather in Paris today and",
                    "refusal": None,
                },
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 19, "completion_tokens": 14, "total_tokens": 33},
        "system_fingerprint": "fp_mock",
    }
    assert mock.reply_for(body) == (
        "This is a mock reply to: What is the weather in Paris today and",
        {"prompt_tokens": 19, "completion_tokens": 14, "total_tokens": 33},
    )


def test_chat_max_tokens_truncates_and_finishes_with_length() -> None:
    for key in ("max_tokens", "max_completion_tokens"):
        done = mock.completion(chat_body(**{key: 4}))
        assert done["choices"][0]["message"]["content"] == "This is a mock"
        assert done["choices"][0]["finish_reason"] == "length"
        assert done["usage"] == {"prompt_tokens": 19, "completion_tokens": 4, "total_tokens": 23}


def test_chat_mock_usage_is_used_verbatim() -> None:
    usage = {"prompt_tokens": 100, "completion_tokens": 5, "prompt_tokens_details": {"cached_tokens": 40}}
    assert mock.completion(chat_body(metadata={"mock_usage": usage}))["usage"] == usage


def test_chat_tool_call_has_arguments_valid_against_the_schema() -> None:
    done = mock.completion(chat_body(tools=CHAT_TOOLS))
    choice = done["choices"][0]
    call = choice["message"]["tool_calls"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    assert call["id"].startswith("call_") and call["type"] == "function"
    assert call["function"] == {"name": "get_weather", "arguments": WEATHER_JSON}
    jsonschema.validate(json.loads(call["function"]["arguments"]), WEATHER)
    assert done["usage"] == {"prompt_tokens": 19, "completion_tokens": 6, "total_tokens": 25}


def test_chat_answers_text_about_the_tool_result() -> None:
    body = chat_body(tools=CHAT_TOOLS)
    call = mock.completion(body)["choices"][0]["message"]
    body["messages"] += [call, {"role": "tool", "tool_call_id": call["tool_calls"][0]["id"], "content": "Sunny, 21 C"}]
    done = mock.completion(body)
    assert done["choices"][0]["message"]["content"] == "This is a mock reply to: Sunny, 21 C"
    assert done["choices"][0]["finish_reason"] == "stop"
    # system 3+3, user 10+3, assistant tool call 0+3, tool result 3+3
    assert done["usage"] == {"prompt_tokens": 28, "completion_tokens": 9, "total_tokens": 37}


def test_chat_tool_choice_none_answers_text_and_a_named_choice_picks_that_tool() -> None:
    assert mock.completion(chat_body(tools=CHAT_TOOLS, tool_choice="none"))["choices"][0]["finish_reason"] == "stop"
    tools = [{"type": "function", "function": {"name": "first"}}, *CHAT_TOOLS]
    named = {"type": "function", "function": {"name": "get_weather"}}
    call = mock.completion(chat_body(tools=tools, tool_choice=named))["choices"][0]["message"]["tool_calls"][0]
    assert call["function"]["name"] == "get_weather"
    first = mock.completion(chat_body(tools=tools))["choices"][0]["message"]["tool_calls"][0]
    assert first["function"] == {"name": "first", "arguments": "{}"}


def test_chat_stream_sends_a_word_a_chunk_then_usage_when_asked() -> None:
    body = chat_body(stream=True, stream_options={"include_usage": True}, max_tokens=3)
    chunks = mock.stream_chunks(body)
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert deltas == [
        {"role": "assistant", "content": ""},
        {"content": "This"},
        {"content": " is"},
        {"content": " a"},
        {},
    ]
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == {
        "prompt_tokens": 19,
        "completion_tokens": 3,
        "total_tokens": 22,
    }
    assert all(c["id"] == mock.completion_id(body) for c in chunks)


def test_chat_stream_streams_a_tool_call_as_openai_does() -> None:
    chunks = mock.stream_chunks(chat_body(tools=CHAT_TOOLS, stream=True))
    first = chunks[0]["choices"][0]["delta"]
    assert first["role"] == "assistant" and first["content"] is None
    head = first["tool_calls"][0]
    assert head["index"] == 0 and head["id"].startswith("call_") and head["type"] == "function"
    assert head["function"] == {"name": "get_weather", "arguments": ""}
    fragments = [c["choices"][0]["delta"]["tool_calls"][0] for c in chunks[1:-1]]
    assert all(f.keys() == {"index", "function"} for f in fragments)
    assert "".join(f["function"]["arguments"] for f in fragments) == WEATHER_JSON
    assert len(fragments) == 6
    assert chunks[-1]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "tool_calls"}


# --- Anthropic Messages ---


def anthropic_body(**extra: Any) -> dict[str, Any]:
    return {
        "model": "claude-sonnet-4-5",
        "max_tokens": 100,
        "system": "You are terse.",  # 3 words, no per-message 3
        "messages": [{"role": "user", "content": "What is the weather in Paris today and tomorrow please"}],
        **extra,
    }


def test_anthropic_message() -> None:
    body = anthropic_body()
    done = mock.message(body)
    assert done["id"].startswith("msg_") and len(done["id"]) == 28
    assert done == {
        "model": "claude-sonnet-4-5",
        "id": done["id"],
        "type": "message",
        "role": "assistant",
        "content": [{"type": "text", "text": "This is a mock reply to: What is the weather in Paris today and"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 16,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": 14,
        },
    }
    blocks = {"system": [{"type": "text", "text": "You are"}, {"type": "text", "text": "terse."}]}
    as_blocks = anthropic_body(**blocks)
    as_blocks["messages"][0]["content"] = [{"type": "text", "text": body["messages"][0]["content"]}]
    assert mock.message(as_blocks)["usage"] == done["usage"]
    assert mock.count_tokens(body) == {"input_tokens": 16}


def test_anthropic_max_tokens_stops_with_max_tokens() -> None:
    done = mock.message(anthropic_body(max_tokens=2))
    assert done["content"] == [{"type": "text", "text": "This is"}]
    assert done["stop_reason"] == "max_tokens"
    assert done["usage"]["output_tokens"] == 2


def test_anthropic_tool_use_then_text_about_the_tool_result() -> None:
    body = anthropic_body(tools=ANTHROPIC_TOOLS)
    done = mock.message(body)
    assert done["stop_reason"] == "tool_use"
    (block,) = done["content"]
    assert block == {"type": "tool_use", "id": block["id"], "name": "get_weather", "input": WEATHER_ARGS}
    assert block["id"].startswith("toolu_")
    jsonschema.validate(block["input"], WEATHER)
    assert done["usage"]["output_tokens"] == 6

    result = {"type": "tool_result", "tool_use_id": block["id"], "content": [{"type": "text", "text": "Sunny, 21 C"}]}
    body["messages"] += [{"role": "assistant", "content": done["content"]}, {"role": "user", "content": [result]}]
    after = mock.message(body)
    assert after["content"] == [{"type": "text", "text": "This is a mock reply to: Sunny, 21 C"}]
    assert after["stop_reason"] == "end_turn"
    # system 3, user 10+3, assistant tool_use 0+3, tool result 3+3
    assert after["usage"]["input_tokens"] == 25
    assert mock.message({**body, "tool_choice": {"type": "none"}})["stop_reason"] == "end_turn"


def names(events: list[tuple[str, Any]]) -> list[str]:
    return [name for name, _ in events]


def test_anthropic_stream_matches_the_api_event_by_event() -> None:
    body = anthropic_body(stream=True, max_tokens=3)
    events = mock.message_events(body)
    assert names(events) == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert all(data["type"] == name for name, data in events)
    start = events[0][1]["message"]
    assert start == {
        "model": "claude-sonnet-4-5",
        "id": mock.message(body)["id"],
        "type": "message",
        "role": "assistant",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {
            "input_tokens": 16,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": 1,
        },
    }
    assert events[1][1] == {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    assert events[2][1] == {"type": "ping"}
    assert [d["delta"] for _, d in events[3:6]] == [
        {"type": "text_delta", "text": "This"},
        {"type": "text_delta", "text": " is"},
        {"type": "text_delta", "text": " a"},
    ]
    assert events[6][1] == {"type": "content_block_stop", "index": 0}
    assert events[7][1] == {
        "type": "message_delta",
        "delta": {"stop_reason": "max_tokens", "stop_sequence": None},
        "usage": {
            "input_tokens": 16,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": 3,
        },
    }
    assert events[8][1] == {"type": "message_stop"}


def test_anthropic_stream_streams_tool_use_as_input_json_deltas() -> None:
    events = mock.message_events(anthropic_body(tools=ANTHROPIC_TOOLS, stream=True))
    assert names(events)[:4] == ["message_start", "content_block_start", "ping", "content_block_delta"]
    block = events[1][1]["content_block"]
    assert block["type"] == "tool_use" and block["name"] == "get_weather" and block["input"] == {}
    deltas = [d["delta"] for name, d in events if name == "content_block_delta"]
    assert deltas[0] == {"type": "input_json_delta", "partial_json": ""}
    assert all(d["type"] == "input_json_delta" for d in deltas)
    assert json.loads("".join(d["partial_json"] for d in deltas)) == WEATHER_ARGS
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"
    assert events[-2][1]["usage"]["output_tokens"] == 6


def test_anthropic_mock_usage_is_used_verbatim_streamed_or_not() -> None:
    usage = {
        "input_tokens": 10,
        "cache_creation_input_tokens": 200,
        "cache_read_input_tokens": 3000,
        "output_tokens": 7,
    }
    body = anthropic_body(metadata={"mock_usage": usage})
    assert mock.message(body)["usage"] == usage
    events = dict(mock.message_events({**body, "stream": True}))
    assert events["message_start"]["message"]["usage"] == {**usage, "output_tokens": 1}
    assert events["message_delta"]["usage"] == usage


# --- OpenAI Responses ---


def responses_body(**extra: Any) -> dict[str, Any]:
    return {
        "model": "gpt-4.1-mini",
        "instructions": "You are terse.",  # 3 words
        "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "What is the weather in Paris today"}]},
        ],
        **extra,
    }


def test_responses_response_object() -> None:
    body = responses_body()
    done = mock.response(body)
    item = done["output"][0]
    assert done["id"].startswith("resp_") and item["id"].startswith("msg_")
    assert {k: done[k] for k in ("object", "created_at", "status", "model", "error", "incomplete_details")} == {
        "object": "response",
        "created_at": mock.CREATED,
        "status": "completed",
        "model": "gpt-4.1-mini",
        "error": None,
        "incomplete_details": None,
    }
    assert done["instructions"] == "You are terse."
    assert (done["metadata"], done["tools"], done["tool_choice"], done["parallel_tool_calls"]) == ({}, [], "auto", True)
    assert done["text"] == {"format": {"type": "text"}, "verbosity": "medium"}
    assert done["output"] == [
        {
            "id": item["id"],
            "type": "message",
            "status": "completed",
            "content": [
                {
                    "type": "output_text",
                    "annotations": [],
                    "logprobs": [],
                    "text": "This is a mock reply to: What is the weather in Paris today",
                }
            ],
            "role": "assistant",
        }
    ]
    assert done["usage"] == {
        "input_tokens": 13,
        "input_tokens_details": {"cache_write_tokens": 0, "cached_tokens": 0},
        "output_tokens": 13,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 26,
    }
    assert mock.response({"model": "m", "input": "Hello there"})["usage"]["input_tokens"] == 5


def test_responses_function_call_then_text_about_its_output() -> None:
    body = responses_body(tools=RESPONSES_TOOLS)
    done = mock.response(body)
    (call,) = done["output"]
    assert call == {
        "id": call["id"],
        "type": "function_call",
        "status": "completed",
        "arguments": WEATHER_JSON,
        "call_id": call["call_id"],
        "name": "get_weather",
    }
    assert call["id"].startswith("fc_") and call["call_id"].startswith("call_")
    jsonschema.validate(json.loads(call["arguments"]), WEATHER)
    assert done["usage"]["output_tokens"] == 6
    assert done["tools"] == RESPONSES_TOOLS

    body["input"] += [call, {"type": "function_call_output", "call_id": call["call_id"], "output": "Sunny, 21 C"}]
    after = mock.response(body)
    assert after["output"][0]["content"][0]["text"] == "This is a mock reply to: Sunny, 21 C"
    # instructions 3, user 7+3, function_call 0+3, output 3+3
    assert after["usage"]["input_tokens"] == 22


def test_responses_max_output_tokens_makes_it_incomplete() -> None:
    done = mock.response(responses_body(max_output_tokens=2))
    assert done["status"] == "incomplete"
    assert done["incomplete_details"] == {"reason": "max_output_tokens"}
    assert done["output"][0]["status"] == "incomplete"
    assert done["output"][0]["content"][0]["text"] == "This is"
    assert done["usage"]["output_tokens"] == 2
    assert names(mock.response_events(responses_body(max_output_tokens=2, stream=True)))[-1] == "response.incomplete"


def test_responses_stream_is_the_api_event_sequence() -> None:
    body = responses_body(stream=True, max_output_tokens=50)
    events = mock.response_events(body)
    assert names(events) == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * 13,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [d["sequence_number"] for _, d in events] == list(range(len(events)))
    assert all(d["type"] == name for name, d in events)
    created = events[0][1]["response"]
    assert (created["status"], created["output"], created["usage"]) == ("in_progress", [], None)
    assert events[2][1]["item"] == {
        "id": created["id"].replace("resp_", "msg_"),
        "type": "message",
        "status": "in_progress",
        "content": [],
        "role": "assistant",
    }
    text = "".join(d["delta"] for name, d in events if name == "response.output_text.delta")
    assert text == "This is a mock reply to: What is the weather in Paris today"
    assert events[-4][1]["text"] == text
    assert events[-1][1]["response"] == mock.response(body)


def test_responses_stream_streams_a_function_call() -> None:
    events = mock.response_events(responses_body(tools=RESPONSES_TOOLS, stream=True))
    assert names(events) == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        *["response.function_call_arguments.delta"] * 6,
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    added = events[2][1]["item"]
    assert (added["type"], added["status"], added["arguments"], added["name"]) == (
        "function_call",
        "in_progress",
        "",
        "get_weather",
    )
    assert "".join(d["delta"] for _, d in events[3:9]) == WEATHER_JSON
    assert events[9][1]["arguments"] == WEATHER_JSON
    assert events[10][1]["item"] == {**added, "status": "completed", "arguments": WEATHER_JSON}


def test_responses_mock_usage_is_used_verbatim() -> None:
    usage = {
        "input_tokens": 50,
        "input_tokens_details": {"cached_tokens": 20},
        "output_tokens": 9,
        "output_tokens_details": {"reasoning_tokens": 4},
        "total_tokens": 59,
    }
    body = responses_body(metadata={"mock_usage": usage})
    assert mock.response(body)["usage"] == usage
    assert mock.response_events({**body, "stream": True})[-1][1]["response"]["usage"] == usage


def test_structured_output_answers_an_instance_of_the_schema() -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
    text = {"format": {"type": "json_schema", "name": "out", "schema": schema, "strict": True}}
    reply = mock.response(responses_body(text=text))["output"][0]["content"][0]["text"]
    assert json.loads(reply) == {"answer": "mock"}
    fmt = {"type": "json_schema", "json_schema": {"name": "out", "schema": schema}}
    assert json.loads(mock.completion(chat_body(response_format=fmt))["choices"][0]["message"]["content"]) == {
        "answer": "mock"
    }


# --- embeddings ---


def test_embeddings_float_and_base64_carry_the_same_vectors() -> None:
    body = {"model": "text-embedding-3-small", "input": ["hello big world", "x"]}
    floats = mock.embeddings(body)
    assert floats["object"] == "list" and floats["model"] == "text-embedding-3-small"
    assert floats["usage"] == {"prompt_tokens": 4, "total_tokens": 4}
    assert [(d["object"], d["index"]) for d in floats["data"]] == [("embedding", 0), ("embedding", 1)]
    vectors = [d["embedding"] for d in floats["data"]]
    assert vectors == [mock.embedding_vector("hello big world"), mock.embedding_vector("x")]
    assert all(len(v) == 8 and math.isclose(math.fsum(x * x for x in v), 1.0, rel_tol=1e-6) for v in vectors)
    assert vectors[0] != vectors[1]

    encoded = mock.embeddings({**body, "encoding_format": "base64"})
    decoded = [list(struct.unpack("<8f", base64.b64decode(d["embedding"]))) for d in encoded["data"]]
    assert decoded == vectors
    assert encoded["usage"] == floats["usage"]


def test_embeddings_dimensions_and_token_arrays() -> None:
    done = mock.embeddings({"model": "e", "input": "one two", "dimensions": 3})
    assert len(done["data"][0]["embedding"]) == 3
    arrays = mock.embeddings({"model": "e", "input": [[1, 2, 3], [4]], "dimensions": 20})
    assert arrays["usage"] == {"prompt_tokens": 4, "total_tokens": 4}
    assert [len(d["embedding"]) for d in arrays["data"]] == [20, 20]
    assert arrays["data"][0]["embedding"] == mock.embedding_vector([1, 2, 3], 20)
    single = mock.embeddings({"model": "e", "input": [1, 2, 3], "dimensions": 20})
    assert single["data"] == arrays["data"][:1]


# --- tool arguments from schemas ---

SCHEMAS: list[dict[str, Any]] = [
    {"type": "object", "properties": {}},
    {"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "number"}}, "required": ["b"]},
    {
        "type": "object",
        "properties": {
            "s": {"type": "string", "minLength": 10, "maxLength": 12},
            "t": {"type": "string", "maxLength": 2},
            "i": {"type": "integer", "exclusiveMinimum": 5, "maximum": 9},
            "j": {"type": "integer", "maximum": -4},
            "n": {"type": "number", "minimum": 0.5},
            "flag": {"type": "boolean"},
            "nothing": {"type": "null"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "pair": {"type": "array", "items": {"type": "integer"}, "minItems": 2},
            "choice": {"enum": [3, "x"]},
            "fixed": {"const": "k"},
            "maybe": {"type": ["string", "null"]},
            "either": {"anyOf": [{"type": "null"}, {"type": "integer"}]},
            "nested": {
                "type": "object",
                "properties": {"deep": {"type": "string", "enum": ["z", "y"]}, "free": {"type": "string"}},
                "required": ["deep", "free"],
                "additionalProperties": False,
            },
        },
        "required": [
            "s",
            "t",
            "i",
            "j",
            "n",
            "flag",
            "nothing",
            "tags",
            "pair",
            "choice",
            "fixed",
            "maybe",
            "either",
            "nested",
        ],
    },
    {  # strict (OpenAI structured outputs): every property, nested objects too
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "opts": {
                "type": "object",
                "properties": {"x": {"type": "integer"}},
                "required": ["x"],
                "additionalProperties": False,
            },
        },
        "required": ["city", "opts"],
        "additionalProperties": False,
    },
    {  # what pydantic emits: $defs and $ref, allOf
        "$defs": {
            "Item": {"type": "object", "properties": {"sku": {"type": "string"}}, "required": ["sku"]},
            "Base": {"type": "object", "properties": {"id": {"type": "integer"}}, "required": ["id"]},
        },
        "type": "object",
        "properties": {
            "item": {"$ref": "#/$defs/Item"},
            "items": {"type": "array", "items": {"$ref": "#/$defs/Item"}, "minItems": 1},
            "both": {"allOf": [{"$ref": "#/$defs/Base"}, {"properties": {"name": {"type": "string"}}}]},
        },
        "required": ["item", "items", "both"],
    },
]


@pytest.mark.parametrize("schema", SCHEMAS)
def test_schema_instance_validates(schema: dict[str, Any]) -> None:
    jsonschema.Draft202012Validator(schema).validate(mock.schema_instance(schema))


def test_schema_instance_fills_what_is_required_and_everything_when_strict() -> None:
    loose = {"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "integer"}}, "required": ["b"]}
    assert mock.schema_instance(loose) == {"b": 1}
    assert mock.schema_instance(loose, strict=True) == {"a": "mock", "b": 1}
    assert mock.schema_instance({**loose, "additionalProperties": False}) == {"a": "mock", "b": 1}
    assert mock.schema_instance(SCHEMAS[4]) == {"item": {"sku": "mock"}, "items": [{"sku": "mock"}], "both": {"id": 1}}


def test_strict_tools_get_every_property() -> None:
    strict = [{"type": "function", "name": "get_weather", "parameters": WEATHER, "strict": True}]
    args = json.loads(mock.response(responses_body(tools=strict))["output"][0]["arguments"])
    assert args == {**WEATHER_ARGS, "note": "mock"}


# --- determinism, validation, the Upstream ---

BODIES = [
    (mock.CHAT, chat_body()),
    (mock.CHAT, chat_body(tools=CHAT_TOOLS)),
    (mock.MESSAGES, anthropic_body()),
    (mock.MESSAGES, anthropic_body(tools=ANTHROPIC_TOOLS)),
    (mock.COUNT_TOKENS, anthropic_body()),
    (mock.RESPONSES, responses_body()),
    (mock.RESPONSES, responses_body(tools=RESPONSES_TOOLS)),
    (mock.EMBEDDINGS, {"model": "e", "input": ["a", "b"], "encoding_format": "base64"}),
]


@pytest.mark.parametrize(("path", "body"), BODIES)
def test_answers_are_byte_for_byte_reproducible(path: str, body: dict[str, Any]) -> None:
    reordered = dict(reversed(list(body.items())))
    assert orjson.dumps(mock.answer(path, body)) == orjson.dumps(mock.answer(path, reordered))
    if path in mock.STREAMABLE:
        streamed = {**body, "stream": True}
        assert mock.stream_events(path, streamed) == mock.stream_events(path, dict(reversed(list(streamed.items()))))


def test_ids_follow_the_body() -> None:
    one, two = mock.message(anthropic_body()), mock.message(anthropic_body(max_tokens=99))
    assert one["id"] != two["id"]
    assert mock.response(responses_body())["id"] != mock.response(responses_body(temperature=0.5))["id"]


@pytest.mark.parametrize(
    ("path", "raw"),
    [
        (mock.CHAT, b"not json"),
        (mock.CHAT, b"[1]"),
        (mock.CHAT, b'{"model": "m"}'),
        (mock.MESSAGES, b'{"model": "m", "messages": "hi"}'),
        (mock.COUNT_TOKENS, b'{"model": "m"}'),
        (mock.RESPONSES, b'{"model": "m", "input": 3}'),
        (mock.EMBEDDINGS, b'{"model": "m", "input": []}'),
        (mock.EMBEDDINGS, b'{"model": "m", "input": [1, "a"]}'),
        (mock.EMBEDDINGS, b'{"model": "m", "input": "a", "dimensions": 0}'),
        (mock.EMBEDDINGS, b'{"model": "m", "input": "a", "encoding_format": "hex"}'),
    ],
)
def test_invalid_bodies_are_rejected_with_400(path: str, raw: bytes) -> None:
    with pytest.raises(UpstreamRejected) as caught:
        mock.parse_body(raw, path)
    assert caught.value.status == 400


def test_unknown_endpoints_are_404_and_only_three_formats_stream() -> None:
    with pytest.raises(UpstreamRejected) as caught:
        mock.parse_body(b"{}", "/completions")
    assert caught.value.status == 404
    with pytest.raises(UpstreamRejected):
        mock.stream_events(mock.EMBEDDINGS, {"input": "a"})


def test_last_text_is_where_fail_modes_are_read() -> None:
    assert mock.last_text(mock.CHAT, {"messages": [{"role": "user", "content": "FAIL:500 now"}]}) == "FAIL:500 now"
    blocks = {"messages": [{"role": "user", "content": [{"type": "text", "text": "FAIL:drop"}]}]}
    assert mock.last_text(mock.MESSAGES, blocks) == "FAIL:drop"
    assert mock.last_text(mock.RESPONSES, {"input": "FAIL:slow"}) == "FAIL:slow"
    assert mock.last_text(mock.EMBEDDINGS, {"input": ["FAIL:429", "b"]}) == "FAIL:429"
    assert mock.last_text(mock.EMBEDDINGS, {"input": [1, 2]}) == ""


ROUTE = ProviderRoute(
    id="r1", workspace_id="w1", name="mock", provider="mock", kind="mock", base_url=None, api_key=None, models=("*",)
)


@pytest.mark.parametrize(("path", "body"), BODIES)
async def test_mock_upstream_sends_the_answer(path: str, body: dict[str, Any]) -> None:
    upstream = mock.MockUpstream()
    sent = await upstream.send(Target(ROUTE, path, "ignored"), orjson.dumps(body))
    assert (sent.status, sent.content_type) == (200, "application/json")
    assert sent.body == orjson.dumps(mock.answer(path, body))
    await upstream.aclose()


async def test_mock_upstream_answers_with_the_target_model_when_the_body_names_none() -> None:
    body = anthropic_body()
    del body["model"]
    sent = await mock.MockUpstream().send(Target(ROUTE, mock.MESSAGES, "claude-x"), orjson.dumps(body))
    assert orjson.loads(sent.body)["model"] == "claude-x"


@pytest.mark.parametrize(
    ("path", "body", "first", "last"),
    [
        (mock.CHAT, chat_body(stream=True), None, b"[DONE]"),
        (mock.MESSAGES, anthropic_body(stream=True), "message_start", b'{"type":"message_stop"}'),
        (mock.RESPONSES, responses_body(stream=True), "response.created", None),
    ],
)
async def test_mock_upstream_streams_events(path: str, body: dict[str, Any], first: str | None, last: bytes) -> None:
    async with mock.MockUpstream().stream(Target(ROUTE, path, "m"), orjson.dumps(body)) as events:
        got = [e async for e in events]
    assert got == mock.stream_events(path, body)
    assert got[0][0] == first
    if last is not None:
        assert got[-1][1] == last
    else:
        assert got[-1][0] == "response.completed" and b"[DONE]" not in b"".join(d for _, d in got)


async def test_mock_upstream_rejects_invalid_bodies() -> None:
    upstream = mock.MockUpstream()
    with pytest.raises(UpstreamRejected) as caught:
        await upstream.send(Target(ROUTE, mock.RESPONSES, "m"), b'{"model": "m"}')
    assert caught.value.status == 400
    with pytest.raises(UpstreamRejected):
        async with upstream.stream(Target(ROUTE, mock.MESSAGES, "m"), b"{}"):
            pass

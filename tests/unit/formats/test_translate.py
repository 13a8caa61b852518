"""Chat Completions ⇄ Anthropic Messages translation: requests, answers and streams, both ways.

Expected values are written out in full; the official SDKs' own types (and stream accumulators) check that
what a client receives is what its SDK understands.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import Message, RawMessageStreamEvent
from anthropic.types.message_create_params import MessageCreateParamsNonStreaming
from hypothesis import HealthCheck, given, settings, strategies as st
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.chat.completion_create_params import CompletionCreateParamsNonStreaming
from pydantic import TypeAdapter

from agentledger.core.errors import InvalidRequest
from agentledger.core.usage import Usage
from agentledger.formats.translate import (
    ChatToMessagesStream,
    MessagesToChatStream,
    chat_to_messages_request,
    chat_to_messages_response,
    messages_to_chat_request,
    messages_to_chat_response,
)

NOW = 1_764_000_000
EVENT = TypeAdapter(RawMessageStreamEvent)
# Module-level: an Iterable field validates lazily, and needs its adapter alive when it is drained.
MESSAGES_REQUEST = TypeAdapter(MessageCreateParamsNonStreaming)
CHAT_REQUEST = TypeAdapter(CompletionCreateParamsNonStreaming)


@pytest.fixture(autouse=True)
def _fixed_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(time, "time", lambda: float(NOW))


def _consumed(value: Any) -> Any:
    """Walk a pydantic-validated TypedDict, draining its lazy Iterable validators so every item is checked."""
    if isinstance(value, dict):
        return {k: _consumed(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_consumed(v) for v in value]
    if isinstance(value, Iterator):
        return [_consumed(v) for v in value]
    return value


def _valid_messages_request(body: dict[str, Any]) -> None:
    body = {k: v for k, v in body.items() if k != "stream"}
    _consumed(MESSAGES_REQUEST.validate_python(body))


def _valid_chat_request(body: dict[str, Any]) -> None:
    body = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
    _consumed(CHAT_REQUEST.validate_python(body))


def _frames(frames: list[bytes]) -> list[tuple[str | None, Any]]:
    """SSE frames → (event name, parsed data); `[DONE]` stays bytes."""
    out: list[tuple[str | None, Any]] = []
    for frame in frames:
        assert frame.endswith(b"\n\n")
        lines = frame[:-2].split(b"\n")
        name = lines[0][len(b"event: ") :].decode() if lines[0].startswith(b"event: ") else None
        data = lines[-1]
        assert data.startswith(b"data: ")
        payload = data[len(b"data: ") :]
        out.append((name, payload if payload == b"[DONE]" else orjson.loads(payload)))
    return out


def _refused(call: Any, payload: dict[str, Any], param: str) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        call(payload)
    assert info.value.param == param
    assert info.value.status == 400
    return info.value


# ----------------------------------------------------------------------- chat request → Messages request

TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def test_chat_request_with_tools_and_tool_results() -> None:
    payload = {
        "model": "claude-sonnet-4-5",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Weather in Paris and Rome?", "name": "ann"},
            {
                "role": "assistant",
                "content": "Checking.",
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                    },
                    {
                        "id": "call_2",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'},
                    },
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
            {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "21C"}]},
            {"role": "user", "content": "And tomorrow?"},
        ],
        "tools": [TOOL],
        "tool_choice": "auto",
        "max_completion_tokens": 300,
        "max_tokens": 99,  # max_completion_tokens wins
        "stop": ["END", "STOP"],
        "temperature": 0.2,
        "top_p": 0.9,
        "user": "user-42",
        "seed": 7,
        "frequency_penalty": 0.5,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    out = chat_to_messages_request(payload)
    assert out == {
        "model": "claude-sonnet-4-5",
        "system": "Be brief.",
        "messages": [
            {"role": "user", "content": "Weather in Paris and Rome?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
                    {"type": "tool_use", "id": "call_2", "name": "get_weather", "input": {"city": "Rome"}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "call_1", "content": "18C"},
                    {"type": "tool_result", "tool_use_id": "call_2", "content": [{"type": "text", "text": "21C"}]},
                    {"type": "text", "text": "And tomorrow?"},
                ],
            },
        ],
        "max_tokens": 300,
        "stop_sequences": ["END", "STOP"],
        "temperature": 0.2,
        "top_p": 0.9,
        "tools": [
            {
                "name": "get_weather",
                "description": "Weather for a city",
                "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
            }
        ],
        "tool_choice": {"type": "auto"},
        "metadata": {"user_id": "user-42"},
        "stream": True,
    }
    _valid_messages_request(out)


def test_chat_system_and_developer_messages_all_become_the_system_prompt() -> None:
    payload = {
        "model": "m",
        "messages": [
            {"role": "developer", "content": [{"type": "text", "text": "Rule one."}]},
            {"role": "user", "content": "hi"},
            {"role": "system", "content": "Rule two."},
            {"role": "user", "content": [{"type": "text", "text": "again"}]},
        ],
    }
    out = chat_to_messages_request(payload)
    assert out == {
        "model": "m",
        "system": [{"type": "text", "text": "Rule one."}, {"type": "text", "text": "Rule two."}],
        # the two user turns, no longer apart, are merged: Messages wants the roles to alternate
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "text", "text": "again"}]}],
        "max_tokens": 4096,
    }
    _valid_messages_request(out)


def test_chat_max_tokens_default_and_fallback() -> None:
    base = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    assert chat_to_messages_request(base)["max_tokens"] == 4096
    assert chat_to_messages_request({**base, "max_tokens": 12})["max_tokens"] == 12
    assert chat_to_messages_request({**base, "max_tokens": None, "max_completion_tokens": 5})["max_tokens"] == 5
    _refused(chat_to_messages_request, {**base, "max_tokens": 0}, "max_tokens")
    _refused(chat_to_messages_request, {**base, "max_completion_tokens": "9"}, "max_completion_tokens")
    # temperature is clamped into Anthropic's range; a single stop string becomes a list
    out = chat_to_messages_request({**base, "temperature": 1.7, "stop": "\n\n"})
    assert (out["temperature"], out["stop_sequences"]) == (1, ["\n\n"])


def test_chat_images_and_pdf_files() -> None:
    payload = {
        "model": "m",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Compare:", "cache_control": {"type": "ephemeral"}},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
                    {
                        "type": "file",
                        "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBERi0="},
                    },
                ],
            }
        ],
    }
    out = chat_to_messages_request(payload)
    assert out["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Compare:", "cache_control": {"type": "ephemeral"}},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
                {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="}},
            ],
        }
    ]
    _valid_messages_request(out)


def test_chat_tool_choice_forms() -> None:
    base = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "tools": [TOOL]}
    named = {"type": "function", "function": {"name": "get_weather"}}
    assert chat_to_messages_request({**base, "tool_choice": "required"})["tool_choice"] == {"type": "any"}
    assert chat_to_messages_request({**base, "tool_choice": "none"})["tool_choice"] == {"type": "none"}
    assert chat_to_messages_request({**base, "tool_choice": named})["tool_choice"] == {
        "type": "tool",
        "name": "get_weather",
    }
    assert chat_to_messages_request({**base, "parallel_tool_calls": False})["tool_choice"] == {
        "type": "auto",
        "disable_parallel_tool_use": True,
    }
    assert chat_to_messages_request({**base, "tool_choice": "none", "parallel_tool_calls": False})["tool_choice"] == {
        "type": "none"
    }
    # no tools: nothing to choose between
    assert "tool_choice" not in chat_to_messages_request({**base, "tools": None, "tool_choice": "auto"})
    no_schema = {"type": "function", "function": {"name": "now"}}
    assert chat_to_messages_request({**base, "tools": [no_schema]})["tools"] == [
        {"name": "now", "input_schema": {"type": "object", "properties": {}}}
    ]


def test_chat_json_schema_becomes_output_config() -> None:
    schema = {
        "type": "object",
        "properties": {"a": {"type": "string"}},
        "required": ["a"],
        "additionalProperties": False,
    }
    payload = {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": True}},
    }
    assert chat_to_messages_request(payload)["output_config"] == {"format": {"type": "json_schema", "schema": schema}}
    assert "output_config" not in chat_to_messages_request({**payload, "response_format": {"type": "text"}})


@pytest.mark.parametrize(
    ("patch", "param"),
    [
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"logit_bias": {"50256": -100}}, "logit_bias"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"audio": {"voice": "alloy", "format": "mp3"}}, "audio"),
        ({"web_search_options": {}}, "web_search_options"),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"function_call": "auto"}, "function_call"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"tools": [{"type": "custom", "custom": {"name": "x"}}]}, "tools[0].type"),
        ({"tools": [TOOL], "tool_choice": {"type": "allowed_tools", "allowed_tools": {}}}, "tool_choice"),
        ({"messages": [{"role": "function", "name": "f", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "system", "content": "only a system prompt"}]}, "messages"),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}]}
                ]
            },
            "messages[0].content[0].type",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": "data:image/tiff;base64,AA"}}],
                    }
                ]
            },
            "messages[0].content[0].image_url.url",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x/y.png"}}]}]},
            "messages[0].content[0].image_url.url",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "file", "file": {"file_id": "file-abc"}}]}]},
            "messages[0].content[0].file",
        ),
        ({"messages": [{"role": "tool", "content": "orphan"}]}, "messages[0].tool_call_id"),
    ],
)
def test_chat_request_refusals_name_the_field(patch: dict[str, Any], param: str) -> None:
    payload = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **patch}
    _refused(chat_to_messages_request, payload, param)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [("{not json", "is not valid JSON"), ("[1, 2]", "must encode a JSON object"), (7, "must be a string of JSON")],
)
def test_chat_tool_call_arguments_must_be_a_json_object(arguments: Any, message: str) -> None:
    payload = {
        "model": "m",
        "messages": [
            {"role": "user", "content": "hi"},
            {
                "role": "assistant",
                "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": arguments}}],
            },
        ],
    }
    error = _refused(chat_to_messages_request, payload, "messages[1].tool_calls[0].function.arguments")
    assert message in error.message


# ----------------------------------------------------------------------- Messages request → chat request


def test_messages_request_with_tools_images_and_results() -> None:
    payload = {
        "model": "gpt-4o",
        "max_tokens": 1024,
        "system": [
            {"type": "text", "text": "You are a helper."},
            {"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}},
        ],
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this, and the weather?"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/4AAQ"}},
                    {"type": "image", "source": {"type": "url", "url": "https://example.com/b.png"}},
                ],
            },
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                    {"type": "text", "text": "A cat. "},
                    {"type": "text", "text": "Checking weather."},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "(here you go)"},
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "18C"}]},
                ],
            },
        ],
        "tools": [
            {
                "name": "get_weather",
                "description": "Weather for a city",
                "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
                "cache_control": {"type": "ephemeral"},
            }
        ],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
        "stop_sequences": ["END"],
        "temperature": 0.3,
        "top_k": 40,
        "metadata": {"user_id": "user-42"},
        "thinking": {"type": "disabled"},
        "stream": True,
    }
    out = messages_to_chat_request(payload)
    assert out == {
        "model": "gpt-4o",
        "messages": [
            {"role": "system", "content": "You are a helper.\n\nBe brief."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this, and the weather?"},
                    {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQ"}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/b.png"}},
                ],
            },
            {
                "role": "assistant",
                "content": "A cat. Checking weather.",
                "tool_calls": [
                    {
                        "id": "toolu_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                    }
                ],
            },
            # the tool result goes first, right after the call, then the rest of the user turn
            {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"},
            {"role": "user", "content": "(here you go)"},
        ],
        "max_tokens": 1024,
        "stop": ["END"],
        "temperature": 0.3,
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "description": "Weather for a city",
                    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
                },
            }
        ],
        "tool_choice": "required",
        "parallel_tool_calls": False,
        "user": "user-42",
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    _valid_chat_request(out)


def test_messages_request_simple_forms() -> None:
    payload = {
        "model": "gpt-4o",
        "max_tokens": 50,
        "system": "Be kind.",
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "now", "input": {}}]},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "noon", "is_error": False}],
            },
            {"role": "assistant", "content": "It is noon."},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t2"}]},
        ],
        "tools": [{"type": "custom", "name": "now", "input_schema": {"type": "object"}, "strict": True}],
        "tool_choice": {"type": "tool", "name": "now"},
        "output_config": {"format": {"type": "json_schema", "schema": {"type": "object"}}, "effort": "low"},
    }
    out = messages_to_chat_request(payload)
    assert out == {
        "model": "gpt-4o",
        "messages": [
            {"role": "system", "content": "Be kind."},
            {"role": "user", "content": "hi"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": "t1", "type": "function", "function": {"name": "now", "arguments": "{}"}}],
            },
            {"role": "tool", "tool_call_id": "t1", "content": "noon"},
            {"role": "assistant", "content": "It is noon."},
            {"role": "tool", "tool_call_id": "t2", "content": ""},
        ],
        "max_tokens": 50,
        "tools": [{"type": "function", "function": {"name": "now", "parameters": {"type": "object"}, "strict": True}}],
        "tool_choice": {"type": "function", "function": {"name": "now"}},
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "output", "schema": {"type": "object"}, "strict": True},
        },
    }
    _valid_chat_request(out)
    assert "stream" not in out


@pytest.mark.parametrize(
    ("patch", "param"),
    [
        ({"thinking": {"type": "enabled", "budget_tokens": 2048}}, "thinking"),
        ({"thinking": {"type": "adaptive"}}, "thinking"),
        ({"container": "container_1"}, "container"),
        ({"mcp_servers": [{"type": "url", "url": "https://mcp", "name": "x"}]}, "mcp_servers"),
        ({"context_management": {"edits": []}}, "context_management"),
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools[0].type"),
        ({"tools": [{"type": "bash_20250124", "name": "bash"}]}, "tools[0].type"),
        ({"tool_choice": {"type": "sometimes"}, "tools": [{"name": "f", "input_schema": {}}]}, "tool_choice.type"),
        (
            {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "The answer is ("}]},
            "messages[1]",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "tool_result",
                                "tool_use_id": "t",
                                "content": [{"type": "image", "source": {"type": "url", "url": "https://x/y.png"}}],
                            }
                        ],
                    }
                ]
            },
            "messages[0].content[0].content[0].type",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "hi"},
                    {
                        "role": "assistant",
                        "content": [{"type": "server_tool_use", "id": "s", "name": "web_search", "input": {}}],
                    },
                    {"role": "user", "content": "go on"},
                ]
            },
            "messages[1].content[0].type",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "image", "source": {"type": "file", "file_id": "f"}}]}
                ]
            },
            "messages[0].content[0].source.type",
        ),
        ({"messages": [{"role": "system", "content": "x"}]}, "messages[0].role"),
        ({"max_tokens": -1}, "max_tokens"),
        ({"system": [{"type": "image"}]}, "system[0].type"),
    ],
)
def test_messages_request_refusals_name_the_field(patch: dict[str, Any], param: str) -> None:
    payload = {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}], **patch}
    _refused(messages_to_chat_request, payload, param)


def test_documents() -> None:
    payload = {
        "model": "m",
        "max_tokens": 10,
        "messages": [
            {
                "role": "user",
                "content": [
                    {
                        "type": "document",
                        "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="},
                    },
                    {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "plain words"}},
                ],
            }
        ],
    }
    assert messages_to_chat_request(payload)["messages"] == [
        {
            "role": "user",
            "content": [
                {
                    "type": "file",
                    "file": {"filename": "document.pdf", "file_data": "data:application/pdf;base64,JVBERi0="},
                },
                {"type": "text", "text": "plain words"},
            ],
        }
    ]


def test_round_trip_chat_request_through_messages() -> None:
    """A chat request sent the long way (chat → Messages → chat) keeps its conversation."""
    chat = {
        "model": "m",
        "max_tokens": 64,
        "messages": [
            {"role": "system", "content": "S"},
            {"role": "user", "content": "Q"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "R"},
        ],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        "tool_choice": "required",
    }
    back = messages_to_chat_request(chat_to_messages_request(chat))
    assert back == chat


# ----------------------------------------------------------------------------------- non-streamed answers


ANTHROPIC_USAGE = {
    "input_tokens": 25,
    "cache_creation_input_tokens": 10,
    "cache_read_input_tokens": 100,
    "output_tokens": 42,
}
OPENAI_USAGE = {
    "prompt_tokens": 135,
    "completion_tokens": 42,
    "total_tokens": 177,
    "prompt_tokens_details": {"cached_tokens": 100, "cache_write_tokens": 10},
}


def test_messages_answer_to_chat_completion() -> None:
    message = {
        "id": "msg_01XYZ",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5-20250929",
        "content": [
            {"type": "thinking", "thinking": "...", "signature": "s"},
            {"type": "text", "text": "Let me check."},
            {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"city": "Paris"}},
        ],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": ANTHROPIC_USAGE,
    }
    Message.model_validate(message)
    out = messages_to_chat_response(message, "my-alias")
    assert out == {
        "id": "chatcmpl-01XYZ",
        "object": "chat.completion",
        "created": NOW,
        "model": "my-alias",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Let me check.",
                    "refusal": None,
                    "tool_calls": [
                        {
                            "id": "toolu_01",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                        }
                    ],
                },
                "logprobs": None,
                "finish_reason": "tool_calls",
            }
        ],
        "usage": OPENAI_USAGE,
    }
    parsed = ChatCompletion.model_validate(out)
    assert parsed.usage is not None and parsed.usage.prompt_tokens_details is not None
    assert parsed.usage.prompt_tokens_details.cached_tokens == 100


@pytest.mark.parametrize(
    ("stop_reason", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("pause_turn", "stop"),
        ("model_context_window_exceeded", "length"),
        ("something_new", "stop"),
    ],
)
def test_anthropic_stop_reasons(stop_reason: str, finish: str) -> None:
    data = {"id": "msg_1", "content": [{"type": "text", "text": "x"}], "stop_reason": stop_reason, "usage": {}}
    assert messages_to_chat_response(data, "m")["choices"][0]["finish_reason"] == finish


def test_chat_answer_to_messages() -> None:
    completion = {
        "id": "chatcmpl-abc123",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o-2024-08-06",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Checking.",
                    "refusal": None,
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'},
                        },
                        {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": "{oops"}},
                    ],
                },
                "logprobs": None,
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {
            "prompt_tokens": 135,
            "completion_tokens": 42,
            "total_tokens": 177,
            "prompt_tokens_details": {"cached_tokens": 100},
        },
    }
    ChatCompletion.model_validate(completion)
    out = chat_to_messages_response(completion, "my-alias")
    assert out == {
        "id": "msg_abc123",
        "type": "message",
        "role": "assistant",
        "model": "my-alias",
        "content": [
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Rome"}},
            {"type": "tool_use", "id": "call_2", "name": "get_weather", "input": {"_raw": "{oops"}},
        ],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 35,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 100,
            "output_tokens": 42,
        },
    }
    Message.model_validate(out)


@pytest.mark.parametrize(
    ("finish", "has_calls", "stop_reason"),
    [
        ("stop", False, "end_turn"),
        ("length", False, "max_tokens"),
        ("tool_calls", True, "tool_use"),
        ("stop", True, "tool_use"),  # providers that say "stop" after tool calls
        ("content_filter", False, "refusal"),
        ("function_call", False, "tool_use"),
        (None, False, "end_turn"),
    ],
)
def test_chat_finish_reasons(finish: str | None, has_calls: bool, stop_reason: str) -> None:
    message: dict[str, Any] = {"role": "assistant", "content": "x"}
    if has_calls:
        message["tool_calls"] = [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    data = {"id": "chatcmpl-1", "choices": [{"index": 0, "message": message, "finish_reason": finish}]}
    assert chat_to_messages_response(data, "m")["stop_reason"] == stop_reason


def test_answers_with_nothing_in_them() -> None:
    assert chat_to_messages_response({}, "m")["content"] == []
    assert chat_to_messages_response({}, "m")["usage"] == {
        "input_tokens": 0,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": 0,
    }
    out = messages_to_chat_response({"content": "nonsense", "usage": {"input_tokens": -5}}, "m")
    assert out["choices"][0]["message"]["content"] == ""
    assert out["usage"]["prompt_tokens"] == 0
    ChatCompletion.model_validate(out)


# ---------------------------------------------------------------------------- Messages stream → chat chunks


def _anthropic_events() -> list[tuple[str, dict[str, Any]]]:
    """What Anthropic sends for a text block, then a tool call streamed in fragments."""
    return [
        (
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": "msg_01ABC",
                    "type": "message",
                    "role": "assistant",
                    "content": [],
                    "model": "claude-sonnet-4-5-20250929",
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {
                        "input_tokens": 25,
                        "cache_creation_input_tokens": 10,
                        "cache_read_input_tokens": 100,
                        "output_tokens": 1,
                    },
                },
            },
        ),
        (
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        ),
        ("ping", {"type": "ping"}),
        (
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Let me "}},
        ),
        (
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "check."}},
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 1,
                "content_block": {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {}},
            },
        ),
        (
            "content_block_delta",
            {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": ""}},
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 1,
                "delta": {"type": "input_json_delta", "partial_json": '{"city": "Par'},
            },
        ),
        (
            "content_block_delta",
            {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": 'is"}'}},
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 1}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                "usage": {"output_tokens": 42},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]


def _chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-01ABC",
        "object": "chat.completion.chunk",
        "created": NOW,
        "model": "my-alias",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        "usage": None,
    }


def test_messages_stream_to_chat_chunks() -> None:
    adapter = MessagesToChatStream("my-alias", include_usage=True)
    frames: list[bytes] = []
    for name, body in _anthropic_events():
        if name != "ping":  # the SDK reads ping apart from RawMessageStreamEvent
            EVENT.validate_python(body)  # the fixture itself is a real Anthropic event
        assert not adapter.complete
        frames += adapter.feed(name, orjson.dumps(body))
    assert adapter.complete and adapter.failure is None
    frames += adapter.close()

    assert _frames(frames) == [
        (None, _chunk({"role": "assistant", "content": ""})),
        (None, _chunk({"content": "Let me "})),
        (None, _chunk({"content": "check."})),
        (
            None,
            _chunk(
                {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "toolu_01",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": ""},
                        }
                    ]
                }
            ),
        ),
        (None, _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": "Par'}}]})),
        (None, _chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'is"}'}}]})),
        (None, _chunk({}, "tool_calls")),
        (
            None,
            {
                "id": "chatcmpl-01ABC",
                "object": "chat.completion.chunk",
                "created": NOW,
                "model": "my-alias",
                "choices": [],
                "usage": OPENAI_USAGE,
            },
        ),
        (None, b"[DONE]"),
    ]
    assert adapter.usage() == (Usage(135, 100, 10, 42, 0), False)
    assert adapter.reported_cost() is None

    # The openai SDK's own stream accumulator rebuilds the answer a chat client would see.
    state: ChatCompletionStreamState[Any] = ChatCompletionStreamState()
    for _, data in _frames(frames)[:-1]:
        state.handle_chunk(ChatCompletionChunk.model_validate(data))
    final = state.get_final_completion()
    choice = final.choices[0]
    assert choice.message.content == "Let me check."
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    call = choice.message.tool_calls[0]
    assert (call.id, call.function.name, call.function.arguments) == ("toolu_01", "get_weather", '{"city": "Paris"}')
    assert final.usage is not None and final.usage.total_tokens == 177


def test_messages_stream_without_usage_and_without_event_names() -> None:
    adapter = MessagesToChatStream("m", include_usage=False)
    frames: list[bytes] = []
    for _, body in _anthropic_events():
        frames += adapter.feed(None, orjson.dumps(body))  # a proxy that dropped the event names
    frames += adapter.close()
    parsed = _frames(frames)
    assert parsed[-1] == (None, b"[DONE]")
    assert all("usage" not in data for _, data in parsed[:-1])
    assert parsed[-2][1]["choices"][0]["finish_reason"] == "tool_calls"
    for _, data in parsed[:-1]:
        ChatCompletionChunk.model_validate(data)


def test_messages_stream_whole_tool_input_and_garbage() -> None:
    adapter = MessagesToChatStream("m", include_usage=False)
    start = {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "tool_use", "id": "t", "name": "f", "input": {"a": 1}},
    }
    frames = adapter.feed("content_block_start", orjson.dumps(start))
    frames += adapter.feed("content_block_delta", b"{not json")
    frames += adapter.feed("content_block_delta", b'{"index": 0, "delta": "x"}')
    frames += adapter.feed("content_block_stop", orjson.dumps({"type": "content_block_stop", "index": 0}))
    frames += adapter.feed("message_stop", b'{"type": "message_stop"}')
    deltas = [data["choices"][0]["delta"] for _, data in _frames(frames)]
    assert deltas == [
        {"role": "assistant", "content": ""},
        {"tool_calls": [{"index": 0, "id": "t", "type": "function", "function": {"name": "f", "arguments": ""}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"a":1}'}}]},
        {},
    ]
    assert _frames(frames)[-1][1]["choices"][0]["finish_reason"] == "tool_calls"
    assert adapter.usage() is None


def test_messages_stream_error_event() -> None:
    adapter = MessagesToChatStream("m", include_usage=True)
    body = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    frames = adapter.feed("error", orjson.dumps(body))
    assert adapter.failure == "Overloaded" and not adapter.complete
    assert _frames(frames) == [
        (None, {"error": {"message": "Overloaded", "type": "overloaded_error", "code": None, "param": None}})
    ]


# ---------------------------------------------------------------------------- chat chunks → Messages stream


def _openai_chunks() -> list[dict[str, Any]]:
    """What OpenAI sends for some text, then two tool calls, the first in fragments, then the usage chunk."""
    base = {"id": "chatcmpl-XYZ", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o", "usage": None}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}

    def call(index: int, arguments: str, id: str | None = None, name: str | None = None) -> dict[str, Any]:
        c: dict[str, Any] = {"index": index, "function": {"arguments": arguments}}
        if id is not None:
            c.update(id=id, type="function")
            c["function"]["name"] = name
        return {"tool_calls": [c]}

    return [
        chunk({"role": "assistant", "content": "", "refusal": None}),
        chunk({"content": "Checking"}),
        chunk({"content": " now."}),
        chunk(call(0, "", "call_a", "get_weather")),
        chunk(call(0, '{"city":')),
        chunk(call(0, '"Paris"}')),
        chunk(call(1, "{}", "call_b", "get_time")),
        chunk({}, "tool_calls"),
        {
            **base,
            "choices": [],
            "usage": {
                "prompt_tokens": 120,
                "completion_tokens": 30,
                "total_tokens": 150,
                "prompt_tokens_details": {"cached_tokens": 100},
                "cost": 0.0012,
            },
        },
    ]


def _ev(name: str, **body: Any) -> tuple[str, dict[str, Any]]:
    return name, {"type": name, **body}


def test_chat_stream_to_messages_events() -> None:
    adapter = ChatToMessagesStream("my-alias")
    frames: list[bytes] = []
    for chunk in _openai_chunks():
        ChatCompletionChunk.model_validate(chunk)  # the fixture itself is a real chat chunk
        frames += adapter.feed(None, orjson.dumps(chunk))
        assert not adapter.complete
    frames += adapter.feed(None, b"[DONE]")
    assert adapter.complete and adapter.failure is None
    frames += adapter.close()

    events = _frames(frames)
    assert events == [
        _ev(
            "message_start",
            message={
                "id": "msg_XYZ",
                "type": "message",
                "role": "assistant",
                "model": "my-alias",
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {
                    "input_tokens": 0,
                    "cache_creation_input_tokens": 0,
                    "cache_read_input_tokens": 0,
                    "output_tokens": 1,
                },
            },
        ),
        _ev("content_block_start", index=0, content_block={"type": "text", "text": ""}),
        _ev("content_block_delta", index=0, delta={"type": "text_delta", "text": "Checking"}),
        _ev("content_block_delta", index=0, delta={"type": "text_delta", "text": " now."}),
        _ev("content_block_stop", index=0),
        _ev(
            "content_block_start",
            index=1,
            content_block={"type": "tool_use", "id": "call_a", "name": "get_weather", "input": {}},
        ),
        _ev("content_block_delta", index=1, delta={"type": "input_json_delta", "partial_json": '{"city":'}),
        _ev("content_block_delta", index=1, delta={"type": "input_json_delta", "partial_json": '"Paris"}'}),
        _ev("content_block_stop", index=1),
        _ev(
            "content_block_start",
            index=2,
            content_block={"type": "tool_use", "id": "call_b", "name": "get_time", "input": {}},
        ),
        _ev("content_block_delta", index=2, delta={"type": "input_json_delta", "partial_json": "{}"}),
        _ev("content_block_stop", index=2),
        _ev(
            "message_delta",
            delta={"stop_reason": "tool_use", "stop_sequence": None},
            usage={
                "input_tokens": 20,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 100,
                "output_tokens": 30,
            },
        ),
        _ev("message_stop"),
    ]
    assert adapter.usage() == (Usage(120, 100, 0, 30, 0), False)
    assert adapter.reported_cost() == "0.0012"

    # Every event is one the anthropic SDK knows, and its accumulator rebuilds the full Message.
    snapshot = None
    json_bufs: dict[int, bytes] = {}
    for _, body in events:
        snapshot = accumulate_event(event=EVENT.validate_python(body), current_snapshot=snapshot, json_bufs=json_bufs)
    assert snapshot is not None
    final = Message.model_validate(snapshot.model_dump())
    assert [b.model_dump(exclude_none=True) for b in final.content] == [
        {"type": "text", "text": "Checking now."},
        {"type": "tool_use", "id": "call_a", "name": "get_weather", "input": {"city": "Paris"}},
        {"type": "tool_use", "id": "call_b", "name": "get_time", "input": {}},
    ]
    assert final.stop_reason == "tool_use"
    assert (final.usage.input_tokens, final.usage.cache_read_input_tokens, final.usage.output_tokens) == (20, 100, 30)


def test_chat_stream_without_usage_chunk_ends_at_done() -> None:
    adapter = ChatToMessagesStream("m")
    chunks = [c for c in _openai_chunks()[:3] if True] + [
        {"id": "chatcmpl-XYZ", "choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]}
    ]
    frames: list[bytes] = []
    for chunk in chunks:
        frames += adapter.feed(None, orjson.dumps(chunk))
    frames += adapter.feed(None, b"not json at all")  # skipped
    done = adapter.feed(None, b"[DONE]")
    assert _frames(done) == [
        _ev(
            "message_delta",
            delta={"stop_reason": "max_tokens", "stop_sequence": None},
            usage={
                "input_tokens": 0,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "output_tokens": 0,
            },
        )
    ]
    for _, body in _frames(frames + done + adapter.close()):
        EVENT.validate_python(body)
    assert adapter.usage() is None and adapter.reported_cost() is None


def test_chat_stream_providers_that_number_every_call_zero() -> None:
    adapter = ChatToMessagesStream("m")
    first = {"tool_calls": [{"index": 0, "id": "a", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}
    second = {"tool_calls": [{"index": 0, "id": "b", "type": "function", "function": {"name": "g", "arguments": "{}"}}]}
    frames: list[bytes] = []
    for delta in (first, second):
        frames += adapter.feed(None, orjson.dumps({"id": "x", "choices": [{"index": 0, "delta": delta}]}))
    frames += adapter.feed(
        None, orjson.dumps({"id": "x", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    )
    frames += adapter.feed(None, b"[DONE]") + adapter.close()
    events = _frames(frames)
    starts = [body["content_block"] for name, body in events if name == "content_block_start"]
    assert starts == [
        {"type": "tool_use", "id": "a", "name": "f", "input": {}},
        {"type": "tool_use", "id": "b", "name": "g", "input": {}},
    ]
    assert [body for name, body in events if name == "message_delta"][0]["delta"]["stop_reason"] == "tool_use"


def test_chat_stream_error_chunk() -> None:
    adapter = ChatToMessagesStream("m")
    frames = adapter.feed(None, b'{"error": {"message": "Rate limited upstream", "code": 429}}')
    assert adapter.failure == "Rate limited upstream"
    assert _frames(frames) == [
        ("error", {"type": "error", "error": {"type": "api_error", "message": "Rate limited upstream"}})
    ]
    # OpenRouter's shape: the error rides on a chunk that still has a choice (finish_reason "error")
    adapter = ChatToMessagesStream("m")
    chunk = {
        "id": "gen-1",
        "object": "chat.completion.chunk",
        "error": {"code": 502, "message": "Provider disconnected"},
        "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}],
    }
    assert _frames(adapter.feed(None, orjson.dumps(chunk))) == [
        ("error", {"type": "error", "error": {"type": "api_error", "message": "Provider disconnected"}})
    ]
    assert adapter.failure == "Provider disconnected"


# ------------------------------------------------------------------------------------------------- fuzzing

_WORDS = [
    "model", "messages", "role", "content", "type", "text", "system", "user", "assistant", "tool", "developer",
    "function", "tool_calls", "tool_call_id", "id", "name", "arguments", "parameters", "tools", "tool_choice",
    "image_url", "url", "image", "source", "base64", "media_type", "data", "file", "file_data", "document",
    "tool_use", "tool_result", "tool_use_id", "input", "input_schema", "max_tokens", "stop", "stop_sequences",
    "stream", "auto", "any", "none", "required", "thinking", "disabled", "metadata", "user_id", "response_format",
    "json_schema", "schema", "output_config", "format", "choices", "message", "finish_reason", "stop_reason",
    "usage", "prompt_tokens", "cached_tokens", "input_tokens", "output_tokens", "delta", "index", "refusal",
    "content_block", "partial_json", "text_delta", "input_json_delta", "error", "message_start", "message_delta",
    "data:image/png;base64,AA", "data:application/pdf;base64,AA", "https://x/y.png", "{}", '{"a":', "[DONE]",
]  # fmt: skip

_leaf = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8) | st.sampled_from(_WORDS)
_key = st.sampled_from(_WORDS) | st.text(max_size=6)
_json = st.recursive(
    _leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_key, inner, max_size=6),
    max_leaves=40,
)
_wire_leaf = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats()
    | st.text(st.characters(codec="utf-8"), max_size=8)
    | st.sampled_from(_WORDS)
)
_wire_json = st.recursive(
    _wire_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_key, inner, max_size=6),
    max_leaves=40,
)
_FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_FUZZ
@given(payload=_json, model=st.text(max_size=5))
def test_random_json_raises_nothing_but_invalid_request(payload: Any, model: str) -> None:
    for call in (chat_to_messages_request, messages_to_chat_request):
        try:
            call(payload)
        except InvalidRequest:
            pass
    messages_to_chat_response(payload, model)
    chat_to_messages_response(payload, model)


@_FUZZ
@given(
    messages=st.lists(_json, min_size=1, max_size=4),
    extra=st.dictionaries(st.sampled_from(_WORDS), _json, max_size=4),
)
def test_random_conversations_raise_nothing_but_invalid_request(messages: list[Any], extra: dict[str, Any]) -> None:
    payload = {"model": "m", "max_tokens": 5, **extra, "messages": messages}
    for call in (chat_to_messages_request, messages_to_chat_request):
        try:
            call(payload)
        except InvalidRequest:
            pass


_EVENT_NAMES = st.none() | st.sampled_from(
    [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
        "ping",
        "error",
    ]
)
_event_data = _wire_json.map(orjson.dumps) | st.binary(max_size=20) | st.just(b"[DONE]")


@_FUZZ
@given(events=st.lists(st.tuples(_EVENT_NAMES, _event_data), max_size=12), include_usage=st.booleans())
def test_random_stream_events_never_crash(events: list[tuple[str | None, bytes]], include_usage: bool) -> None:
    for adapter in (MessagesToChatStream("m", include_usage), ChatToMessagesStream("m")):
        for name, data in events:
            for frame in adapter.feed(name, data):
                assert frame.endswith(b"\n\n")
        adapter.usage()
        adapter.reported_cost()
        if adapter.complete:
            adapter.close()


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a JSON value (its own root included) that a mutation may replace."""
    paths = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            paths += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            paths += _paths(v, (*prefix, i))
    return paths


def _replaced(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    copy = dict(value) if isinstance(value, dict) else list(value)
    copy[path[0]] = _replaced(copy[path[0]], path[1:], new)
    return copy


def _valid_fixtures() -> list[tuple[Any, Any]]:
    chat = {
        "model": "m",
        "messages": [
            {"role": "system", "content": "S"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Q"},
                    {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
                ],
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "R"},
        ],
        "tools": [TOOL],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
        "stop": ["x"],
    }
    messages = {
        "model": "m",
        "max_tokens": 5,
        "system": [{"type": "text", "text": "S"}],
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Q"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA"}},
                ],
            },
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "A"},
                    {"type": "tool_use", "id": "t", "name": "f", "input": {"a": 1}},
                ],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "t", "content": [{"type": "text", "text": "R"}]}],
            },
        ],
        "tools": [{"name": "f", "input_schema": {"type": "object"}}],
        "tool_choice": {"type": "tool", "name": "f", "disable_parallel_tool_use": True},
        "output_config": {"format": {"type": "json_schema", "schema": {"type": "object"}}},
        "metadata": {"user_id": "u"},
    }
    completion = {
        "id": "chatcmpl-1",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "x",
                    "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
                },
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "prompt_tokens_details": {"cached_tokens": 1}},
    }
    message = {
        "id": "msg_1",
        "content": [{"type": "text", "text": "x"}, {"type": "tool_use", "id": "t", "name": "f", "input": {"a": 1}}],
        "stop_reason": "tool_use",
        "usage": ANTHROPIC_USAGE,
    }
    return [(chat, chat_to_messages_request), (messages, messages_to_chat_request), (completion, None), (message, None)]


@_FUZZ
@given(data=st.data())
def test_mutated_valid_bodies_raise_nothing_but_invalid_request(data: st.DataObject) -> None:
    for body, call in _valid_fixtures():
        path = data.draw(st.sampled_from(_paths(body)))
        mutated = _replaced(body, path, data.draw(_json))
        if call is not None:
            try:
                call(mutated)
            except InvalidRequest:
                pass
        else:
            messages_to_chat_response(mutated, "m")
            chat_to_messages_response(mutated, "m")


@_FUZZ
@given(data=st.data())
def test_mutated_real_streams_never_crash(data: st.DataObject) -> None:
    anthropic = [(name, body) for name, body in _anthropic_events()]
    chat: list[tuple[str | None, Any]] = [(None, c) for c in _openai_chunks()]
    for events, adapter in ((anthropic, MessagesToChatStream("m", True)), (chat, ChatToMessagesStream("m"))):
        i = data.draw(st.integers(0, len(events) - 1))
        path = data.draw(st.sampled_from(_paths(events[i][1])))
        mutated = list(events)
        mutated[i] = (events[i][0], _replaced(events[i][1], path, data.draw(_wire_json)))
        if data.draw(st.booleans()):
            mutated = data.draw(st.permutations(mutated))
        for name, body in mutated:
            adapter.feed(name, orjson.dumps(body))
        adapter.feed(None, b"[DONE]")
        adapter.usage()
        adapter.reported_cost()
        if adapter.complete:
            adapter.close()

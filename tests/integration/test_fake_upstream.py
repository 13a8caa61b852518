"""The fake upstream over real HTTP on loopback, called directly with the official SDKs: Anthropic Messages,
OpenAI Responses / Embeddings / chat, Azure OpenAI, and the ways it misbehaves on request."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest

from agentledger.providers import mock
from agentledger.testing import FakeUpstream, ServerThread, fake_upstream_app

WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"],
}
WEATHER_ARGS = {"city": "mock", "unit": "celsius"}
QUESTION = "What is the weather in Paris today"  # 7 words


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    with ServerThread(fake_upstream_app(FakeUpstream())) as running:
        yield running


@pytest.fixture
def fake(server: ServerThread) -> FakeUpstream:
    state: FakeUpstream = server.config.app.state.fake
    state.received.clear()
    state.script.clear()
    state.failed_once.clear()
    state.retry_after = None
    state.delay = 0.0
    return state


@pytest.fixture
def claude(server: ServerThread, fake: FakeUpstream) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, api_key="x", max_retries=0)


@pytest.fixture
def oai(server: ServerThread, fake: FakeUpstream) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)


@pytest.fixture
def azure(server: ServerThread, fake: FakeUpstream) -> openai.AzureOpenAI:
    return openai.AzureOpenAI(azure_endpoint=server.url, api_version="2024-10-21", api_key="k", max_retries=0)


def sse_events(raw: str) -> list[tuple[str | None, str]]:
    events: list[tuple[str | None, str]] = []
    for frame in raw.split("\n\n"):
        if not frame:
            continue
        lines = dict(line.split(": ", 1) for line in frame.split("\n"))
        events.append((lines.get("event"), lines["data"]))
    return events


# --- Anthropic ---


def test_anthropic_message(claude: anthropic.Anthropic, fake: FakeUpstream) -> None:
    done = claude.messages.create(
        model="claude-mock",
        max_tokens=100,
        system="You are terse.",
        messages=[{"role": "user", "content": QUESTION}],
    )
    assert done.model == "claude-mock" and done.role == "assistant" and done.type == "message"
    assert done.id.startswith("msg_")
    assert [(b.type, getattr(b, "text", None)) for b in done.content] == [
        ("text", "This is a mock reply to: What is the weather in Paris today")
    ]
    assert (done.stop_reason, done.stop_sequence) == ("end_turn", None)
    assert done.usage.input_tokens == 13  # system 3, user 7 + 3
    assert done.usage.output_tokens == 13
    assert (done.usage.cache_creation_input_tokens, done.usage.cache_read_input_tokens) == (0, 0)
    sent = fake.received[-1]
    assert (sent["path"], sent["query"]) == ("/v1/messages", "")
    assert "anthropic-version" in sent["headers"]
    assert sent["headers"].get("x-api-key") == "x" or sent["headers"].get("authorization") == "Bearer x"
    assert sent["body"]["system"] == "You are terse."


def test_anthropic_stream_final_message_has_the_usage(claude: anthropic.Anthropic) -> None:
    usage = {"input_tokens": 10, "cache_creation_input_tokens": 20, "cache_read_input_tokens": 300, "output_tokens": 4}
    with claude.messages.stream(
        model="claude-mock",
        max_tokens=4,
        messages=[{"role": "user", "content": QUESTION}],
        extra_body={"metadata": {"mock_usage": usage}},
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "This is a mock"
    assert final.content[0].type == "text" and final.content[0].text == "This is a mock"
    assert final.stop_reason == "max_tokens"
    assert final.usage.input_tokens == 10
    assert final.usage.cache_creation_input_tokens == 20
    assert final.usage.cache_read_input_tokens == 300
    assert final.usage.output_tokens == 4

    with claude.messages.stream(
        model="claude-mock", max_tokens=100, messages=[{"role": "user", "content": "Hello there"}]
    ) as stream:
        plain = stream.get_final_message()
    assert (plain.usage.input_tokens, plain.usage.output_tokens) == (5, 8)


def test_anthropic_stream_is_framed_with_event_names_and_pings(server: ServerThread, fake: FakeUpstream) -> None:
    body = {"model": "claude-x", "max_tokens": 2, "stream": True, "messages": [{"role": "user", "content": "Hi"}]}
    resp = httpx.post(server.url + "/v1/messages", json=body)
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
    events = sse_events(resp.text)
    assert [e for e, _ in events] == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert events == [(name, data.decode()) for name, data in mock.stream_events(mock.MESSAGES, body)]
    assert json.loads(events[2][1]) == {"type": "ping"}


def test_anthropic_tools(claude: anthropic.Anthropic) -> None:
    tools: Any = [{"name": "get_weather", "description": "Weather", "input_schema": WEATHER}]
    messages: Any = [{"role": "user", "content": QUESTION}]
    done = claude.messages.create(model="claude-x", max_tokens=100, tools=tools, messages=messages)
    assert done.stop_reason == "tool_use"
    (call,) = done.content
    assert call.type == "tool_use" and call.name == "get_weather" and call.input == WEATHER_ARGS
    assert call.id.startswith("toolu_")
    assert done.usage.output_tokens == 4  # {"city": "mock", "unit": "celsius"}

    with claude.messages.stream(model="claude-x", max_tokens=100, tools=tools, messages=messages) as stream:
        streamed = stream.get_final_message()
    assert streamed.stop_reason == "tool_use"
    assert streamed.content[0].type == "tool_use" and streamed.content[0].input == WEATHER_ARGS

    result = {"type": "tool_result", "tool_use_id": call.id, "content": "Sunny and 21 degrees"}
    messages += [{"role": "assistant", "content": done.content}, {"role": "user", "content": [result]}]
    after = claude.messages.create(model="claude-x", max_tokens=100, tools=tools, messages=messages)
    assert after.stop_reason == "end_turn"
    assert after.content[0].type == "text"
    assert after.content[0].text == "This is a mock reply to: Sunny and 21 degrees"
    assert after.usage.input_tokens == 20  # question 7+3, tool_use 0+3, tool result 4+3
    assert claude.messages.count_tokens(model="claude-x", messages=messages).input_tokens == 20


@pytest.mark.parametrize(
    ("status", "error", "kind"),
    [
        (400, anthropic.BadRequestError, "invalid_request_error"),
        (429, anthropic.RateLimitError, "rate_limit_error"),
        (500, anthropic.InternalServerError, "api_error"),
        (529, anthropic.OverloadedError, "overloaded_error"),
    ],
)
def test_anthropic_errors_are_anthropic_shaped(
    claude: anthropic.Anthropic, status: int, error: type[anthropic.APIStatusError], kind: str
) -> None:
    with pytest.raises(error) as caught:
        claude.messages.create(model="c", max_tokens=5, messages=[{"role": "user", "content": f"FAIL:{status}"}])
    assert caught.value.status_code == status
    assert caught.value.body == {"type": "error", "error": {"type": kind, "message": f"fake upstream failure {status}"}}


# --- OpenAI Responses ---


def test_responses(oai: openai.OpenAI, fake: FakeUpstream) -> None:
    done = oai.responses.create(model="gpt-4.1-mini", input=QUESTION, instructions="You are terse.")
    assert done.id.startswith("resp_") and done.object == "response" and done.status == "completed"
    assert done.model == "gpt-4.1-mini" and done.created_at == mock.CREATED
    assert done.output_text == "This is a mock reply to: What is the weather in Paris today"
    assert done.usage is not None
    assert (done.usage.input_tokens, done.usage.output_tokens, done.usage.total_tokens) == (13, 13, 26)
    assert done.usage.input_tokens_details.cached_tokens == 0
    assert done.usage.output_tokens_details.reasoning_tokens == 0
    assert (done.instructions, done.error, done.incomplete_details, done.tools) == ("You are terse.", None, None, [])
    assert fake.received[-1]["path"] == "/v1/responses"


def test_responses_stream(oai: openai.OpenAI, server: ServerThread) -> None:
    with oai.responses.stream(model="gpt-4.1-mini", input=QUESTION) as stream:
        types = [event.type for event in stream]
        final = stream.get_final_response()
    assert types == [
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
    assert final.output_text == "This is a mock reply to: What is the weather in Paris today"
    assert final.usage is not None and (final.usage.input_tokens, final.usage.output_tokens) == (10, 13)

    body = {"model": "m", "input": "Hi", "stream": True}
    raw = httpx.post(server.url + "/v1/responses", json=body).text
    events = sse_events(raw)
    assert all(name == json.loads(data)["type"] for name, data in events)
    assert [json.loads(data)["sequence_number"] for _, data in events] == list(range(len(events)))
    assert events[-1][0] == "response.completed" and "[DONE]" not in raw


def test_responses_function_call(oai: openai.OpenAI) -> None:
    tools: Any = [{"type": "function", "name": "get_weather", "parameters": WEATHER, "strict": True}]
    done = oai.responses.create(model="gpt-4.1-mini", input=QUESTION, tools=tools)
    (call,) = done.output
    assert call.type == "function_call" and call.name == "get_weather" and call.status == "completed"
    assert json.loads(call.arguments) == WEATHER_ARGS
    assert call.id is not None and call.id.startswith("fc_") and call.call_id.startswith("call_")

    with oai.responses.stream(model="gpt-4.1-mini", input=QUESTION, tools=tools) as stream:
        deltas = [e.delta for e in stream if e.type == "response.function_call_arguments.delta"]
        final = stream.get_final_response()
    assert json.loads("".join(deltas)) == WEATHER_ARGS
    assert final.output[0].type == "function_call"

    follow: Any = [
        {"role": "user", "content": QUESTION},
        {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny and 21 degrees"},
    ]
    after = oai.responses.create(model="gpt-4.1-mini", input=follow, tools=tools)
    assert after.output_text == "This is a mock reply to: Sunny and 21 degrees"
    assert after.usage is not None and after.usage.input_tokens == 20  # question 7+3, function_call 0+3, its output 4+3


# --- OpenAI embeddings and chat ---


def test_embeddings_default_base64_and_float(oai: openai.OpenAI, fake: FakeUpstream) -> None:
    done = oai.embeddings.create(model="text-embedding-3-small", input=["hello big world", "x"])
    assert fake.received[-1]["body"]["encoding_format"] == "base64"
    assert [d.embedding for d in done.data] == [mock.embedding_vector("hello big world"), mock.embedding_vector("x")]
    assert [d.index for d in done.data] == [0, 1]
    assert (done.usage.prompt_tokens, done.usage.total_tokens) == (4, 4)
    assert done.model == "text-embedding-3-small"

    floats = oai.embeddings.create(model="e", input="hello", encoding_format="float", dimensions=16)
    assert floats.data[0].embedding == mock.embedding_vector("hello", 16)


def test_chat_with_tools(oai: openai.OpenAI) -> None:
    tools: Any = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}}]
    done = oai.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": QUESTION}], tools=tools
    )
    choice = done.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    assert choice.message.tool_calls is not None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == WEATHER_ARGS
    assert done.usage is not None and (done.usage.prompt_tokens, done.usage.completion_tokens) == (10, 4)

    stream = oai.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": QUESTION}],
        tools=tools,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    fragments = [c.choices[0].delta.tool_calls for c in chunks if c.choices and c.choices[0].delta.tool_calls]
    assert fragments[0] is not None and fragments[0][0].function is not None
    assert fragments[0][0].function.name == "get_weather"
    arguments = "".join((f[0].function.arguments or "") for f in fragments if f[0].function is not None)
    assert json.loads(arguments) == WEATHER_ARGS
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4


# --- Azure OpenAI ---


def test_azure_chat_and_embeddings(azure: openai.AzureOpenAI, fake: FakeUpstream) -> None:
    done = azure.chat.completions.create(model="my-gpt", messages=[{"role": "user", "content": "Hello there"}])
    assert done.model == "my-gpt"
    assert done.choices[0].message.content == "This is a mock reply to: Hello there"
    sent = fake.received[-1]
    assert (sent["path"], sent["query"]) == ("/openai/deployments/my-gpt/chat/completions", "api-version=2024-10-21")
    assert sent["headers"]["api-key"] == "k"

    vectors = azure.embeddings.create(model="my-embedder", input="hello")
    assert vectors.model == "my-embedder"
    assert vectors.data[0].embedding == mock.embedding_vector("hello")
    assert fake.received[-1]["path"] == "/openai/deployments/my-embedder/embeddings"

    answered = azure.responses.create(model="my-gpt", input="Hello there")
    assert answered.output_text == "This is a mock reply to: Hello there"
    assert (fake.received[-1]["path"], fake.received[-1]["query"]) == ("/openai/responses", "api-version=2024-10-21")


def test_azure_requires_the_api_version(server: ServerThread, fake: FakeUpstream) -> None:
    body = {"messages": [{"role": "user", "content": "Hi"}]}
    for path in ("/openai/deployments/d/chat/completions", "/openai/responses"):
        resp = httpx.post(server.url + path, json={**body, "input": "Hi"})
        assert resp.status_code == 400
        assert resp.json()["error"]["message"] == "Missing required query parameter: api-version"
    v1 = httpx.post(server.url + "/openai/v1/responses", json={"model": "d", "input": "Hi"})
    assert v1.status_code == 200 and v1.json()["model"] == "d"


# --- misbehaving on request ---


def test_script_answers_its_statuses_in_order(server: ServerThread, fake: FakeUpstream) -> None:
    fake.script = [429, 500]
    fake.retry_after = "7"
    body = {"model": "m", "messages": [{"role": "user", "content": "Hi"}]}
    first = httpx.post(server.url + "/v1/chat/completions", json=body)
    second = httpx.post(server.url + "/v1/chat/completions", json=body)
    third = httpx.post(server.url + "/v1/chat/completions", json=body)
    assert [first.status_code, second.status_code, third.status_code] == [429, 500, 200]
    assert first.headers["retry-after"] == "7" and "retry-after" not in second.headers
    assert first.json() == {
        "error": {"message": "fake upstream scripted failure 429", "type": "fake_error", "code": "429", "param": None}
    }
    assert third.json()["choices"][0]["message"]["content"] == "This is a mock reply to: Hi"
    assert fake.script == [] and len(fake.received) == 3

    fake.script = [529]
    overloaded = httpx.post(server.url + "/v1/messages", json={"model": "c", "max_tokens": 5, "messages": []})
    assert overloaded.status_code == 529
    assert overloaded.json() == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "fake upstream scripted failure 529"},
    }


def test_sdk_retries_honour_retry_after(server: ServerThread, fake: FakeUpstream) -> None:
    fake.script = [429, 429]
    fake.retry_after = "0.01"
    client = anthropic.Anthropic(base_url=server.url, api_key="x", max_retries=2)
    done = client.messages.create(model="c", max_tokens=5, messages=[{"role": "user", "content": "Hi"}])
    assert done.content[0].type == "text" and done.content[0].text == "This is a mock reply"
    assert len(fake.received) == 3

    fake.script = [429]
    fake.retry_after = "12"
    with pytest.raises(openai.RateLimitError) as caught:
        openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0).embeddings.create(model="e", input="a")
    assert caught.value.response.headers["retry-after"] == "12"


def test_fail_modes_in_every_format(server: ServerThread, fake: FakeUpstream) -> None:
    fake.retry_after = "3"
    chat = httpx.post(server.url + "/v1/embeddings", json={"model": "e", "input": ["FAIL:429", "ok"]})
    assert chat.status_code == 429 and chat.headers["retry-after"] == "3"
    assert chat.json()["error"]["code"] == "429"
    responses = httpx.post(server.url + "/v1/responses", json={"model": "m", "input": "FAIL:400 bad"})
    assert responses.status_code == 400 and responses.json()["error"]["message"] == "fake upstream failure 400"

    garbage = httpx.post(server.url + "/v1/responses", json={"model": "m", "input": "FAIL:garbage"})
    assert garbage.status_code == 200 and garbage.content == b"<html>bad gateway</html>"

    once = {"model": "c", "max_tokens": 9, "messages": [{"role": "user", "content": "FAIL:once500 x"}]}
    assert httpx.post(server.url + "/v1/messages", json=once).status_code == 500
    assert httpx.post(server.url + "/v1/messages", json=once).status_code == 200


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "FAIL:drop"}]}),
        ("/v1/messages", {"model": "c", "max_tokens": 9, "messages": [{"role": "user", "content": "FAIL:drop"}]}),
        ("/v1/responses", {"model": "m", "input": "FAIL:drop"}),
    ],
)
def test_drop_cuts_the_stream_after_two_events(server: ServerThread, path: str, body: dict[str, Any]) -> None:
    received = b""
    with pytest.raises(httpx.RemoteProtocolError):
        with httpx.stream("POST", server.url + path, json={**body, "stream": True}) as resp:
            assert resp.status_code == 200
            for piece in resp.iter_bytes():
                received += piece
    assert received.count(b"\n\n") == 2


def test_slow_spaces_the_events(server: ServerThread) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "FAIL:slow"}], "stream": True, "max_tokens": 1}
    with httpx.Client() as client:
        resp = client.post(server.url + "/v1/chat/completions", json=body)
    assert resp.text.endswith("data: [DONE]\n\n")
    assert resp.elapsed.total_seconds() >= 0.2 * 3  # role, one word, finish, [DONE]: three gaps

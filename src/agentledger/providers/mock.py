"""A deterministic model, in-process, speaking four wire formats: the offline demo provider and the tests' upstream.

Endpoints (`Target.path`): `/chat/completions` (OpenAI chat), `/messages` and `/messages/count_tokens` (Anthropic
Messages), `/responses` (OpenAI Responses), `/embeddings` (OpenAI Embeddings).

Token counts are words, so tests can predict them exactly, in every format:
    input  = words of every message's text (chat messages, Anthropic messages, Responses input items: each one
             also counts 3) + words of the system prompt (Anthropic `system`, Responses `instructions`, which do
             not count the 3: only messages do)
    output = words of the reply; for a tool call, the space-separated pieces of its arguments JSON
             (`{"city": "mock"}` is 2), which is also how its arguments are streamed, one piece an event.
A message's text is its string content, or its text parts (`text`, `input_text`, `output_text`) and tool results
joined; a tool call an assistant made counts 3 and no words. Embeddings count the words of each input string, or
the length of each token array.

The reply is "This is a mock reply to: <first 8 words of the last message's text>". When the request offers
function tools and the conversation does not end with a tool result, the answer is instead one call of the first
function tool (or the one `tool_choice` names; none when it is "none"), with arguments made from the tool's JSON
schema so they validate against it (`schema_instance`). A request asking for JSON-schema structured output gets an
instance of that schema as its text. `max_tokens` / `max_completion_tokens` / `max_output_tokens` truncate a text
reply the way each API reports it.

A request may dictate its usage instead with `"metadata": {"mock_usage": {...}}`, in the usage shape of the
request's own format, used verbatim: this is how tests exercise cached and reasoning tokens. Everything is a pure
function of the request body: `created` is fixed and ids are derived from a hash of the body, so an answer is
byte-for-byte reproducible.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import orjson

from agentledger.core.errors import UpstreamRejected
from agentledger.providers.base import Event, Target, UpstreamResponse

CREATED = 1_764_000_000  # fixed so replies are byte-for-byte reproducible

CHAT = "/chat/completions"
MESSAGES = "/messages"
COUNT_TOKENS = "/messages/count_tokens"
RESPONSES = "/responses"
EMBEDDINGS = "/embeddings"
PATHS = (CHAT, MESSAGES, COUNT_TOKENS, RESPONSES, EMBEDDINGS)
STREAMABLE = (CHAT, MESSAGES, RESPONSES)

DEFAULT_DIMENSIONS = 8
MAX_DIMENSIONS = 4096

Json = dict[str, Any]


# --- what every format reduces a request to ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Tool:
    name: str
    schema: Json
    strict: bool


@dataclass(frozen=True, slots=True)
class _Turn:
    texts: list[str]  # each message's (input item's) text
    system: str
    last: str  # the last message's text: what the reply quotes, and where the fake reads FAIL:<mode>
    tool: _Tool | None  # the tool to call; None: answer with text
    max_tokens: int | None
    json_schema: Json | None  # structured output asked for
    strict_schema: bool


@dataclass(frozen=True, slots=True)
class _Answer:
    text: str | None  # None when the answer is a tool call
    call: tuple[str, str] | None  # (tool name, arguments JSON)
    input_tokens: int
    output_tokens: int
    truncated: bool

    def pieces(self) -> list[str]:
        """What a stream sends, one piece an event: words (text) or argument pieces (tool call), space-led."""
        whole = self.call[1] if self.call is not None else self.text or ""
        return [p if i == 0 else " " + p for i, p in enumerate(whole.split(" "))]


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts: list[str] = []
        for p in content:
            if not isinstance(p, dict):
                continue
            if p.get("type") == "tool_result":
                parts.append(_text(p.get("content")))
            elif isinstance(p.get("text"), str):
                parts.append(p["text"])
        return " ".join(parts)
    return ""


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _first_int(*values: Any) -> int | None:
    return next((v for v in map(_int, values) if v is not None), None)


def _words(text: str) -> int:
    return len(text.split())


def _dicts(items: Any) -> list[Json]:
    return [i for i in items if isinstance(i, dict)] if isinstance(items, list) else []


def _pick(tools: list[_Tool], wanted: Any) -> _Tool | None:
    if not tools:
        return None
    return next((t for t in tools if t.name == wanted), tools[0])


def _schema(value: Any) -> Json:
    return value if isinstance(value, dict) and value else {"type": "object", "properties": {}}


def _chat_turn(body: Json) -> _Turn:
    messages = _dicts(body.get("messages"))
    last = messages[-1] if messages else {}
    after_tool = last.get("role") in ("tool", "function")
    choice = body.get("tool_choice")
    tools = [
        _Tool(t["function"]["name"], _schema(t["function"].get("parameters")), t["function"].get("strict") is True)
        for t in _dicts(body.get("tools"))
        if t.get("type") == "function"
        and isinstance(t.get("function"), dict)
        and isinstance(t["function"].get("name"), str)
    ]
    wanted = choice.get("function", {}).get("name") if isinstance(choice, dict) else None
    fmt = body.get("response_format")
    spec = fmt.get("json_schema") if isinstance(fmt, dict) and fmt.get("type") == "json_schema" else None
    return _Turn(
        texts=[_text(m.get("content")) for m in messages],
        system="",
        last=_text(last.get("content")),
        tool=None if after_tool or choice == "none" else _pick(tools, wanted),
        max_tokens=_first_int(body.get("max_completion_tokens"), body.get("max_tokens")),
        json_schema=_schema(spec.get("schema")) if isinstance(spec, dict) else None,
        strict_schema=isinstance(spec, dict) and spec.get("strict") is True,
    )


def _messages_turn(body: Json) -> _Turn:
    messages = _dicts(body.get("messages"))
    last = messages[-1] if messages else {}
    content = last.get("content")
    after_tool = last.get("role") == "user" and any(b.get("type") == "tool_result" for b in _dicts(content))
    choice = body.get("tool_choice")
    # Only custom tools have an input_schema; server tools (web search, ...) are the provider's to run.
    tools = [
        _Tool(t["name"], _schema(t.get("input_schema")), t.get("strict") is True)
        for t in _dicts(body.get("tools"))
        if isinstance(t.get("name"), str) and isinstance(t.get("input_schema"), dict)
    ]
    no_tool = after_tool or (isinstance(choice, dict) and choice.get("type") == "none")
    wanted = choice.get("name") if isinstance(choice, dict) and choice.get("type") == "tool" else None
    return _Turn(
        texts=[_text(m.get("content")) for m in messages],
        system=_text(body.get("system")),
        last=_text(content),
        tool=None if no_tool else _pick(tools, wanted),
        max_tokens=_int(body.get("max_tokens")),
        json_schema=None,
        strict_schema=False,
    )


def _input_items(body: Json) -> list[Json]:
    raw = body.get("input")
    if isinstance(raw, str):
        return [{"role": "user", "content": raw}]
    return _dicts(raw)


def _item_text(item: Json) -> str:
    if item.get("type") == "function_call_output":
        return _text(item.get("output"))
    if item.get("type") == "function_call":
        return ""
    return _text(item.get("content"))


def _responses_turn(body: Json) -> _Turn:
    items = _input_items(body)
    last = items[-1] if items else {}
    choice = body.get("tool_choice")
    tools = [
        _Tool(t["name"], _schema(t.get("parameters")), t.get("strict") is True)
        for t in _dicts(body.get("tools"))
        if t.get("type") == "function" and isinstance(t.get("name"), str)
    ]
    wanted = choice.get("name") if isinstance(choice, dict) else None
    text = body.get("text")
    fmt = text.get("format") if isinstance(text, dict) else None
    structured = isinstance(fmt, dict) and fmt.get("type") == "json_schema"
    instructions = body.get("instructions")
    return _Turn(
        texts=[_item_text(i) for i in items],
        system=instructions if isinstance(instructions, str) else "",
        last=_item_text(last),
        tool=None if last.get("type") == "function_call_output" or choice == "none" else _pick(tools, wanted),
        max_tokens=_int(body.get("max_output_tokens")),
        json_schema=_schema(fmt.get("schema")) if structured and isinstance(fmt, dict) else None,
        strict_schema=structured and isinstance(fmt, dict) and fmt.get("strict") is True,
    )


def _answer(turn: _Turn) -> _Answer:
    input_tokens = _words(turn.system) + sum(_words(t) + 3 for t in turn.texts)
    if turn.tool is not None:
        # Stdlib separators (", ", ": ") so the JSON splits into pieces on spaces: that is its token count.
        args = json.dumps(_arguments(turn.tool), ensure_ascii=False)
        return _Answer(None, (turn.tool.name, args), input_tokens, len(args.split(" ")), False)
    if turn.json_schema is not None:
        reply = json.dumps(schema_instance(turn.json_schema, strict=turn.strict_schema), ensure_ascii=False)
    else:
        words = turn.last.split()[:8]
        reply = "This is a mock reply to: " + " ".join(words) if words else "This is a mock reply."
    output_tokens = _words(reply)
    truncated = turn.max_tokens is not None and turn.max_tokens < output_tokens
    if truncated and turn.max_tokens is not None:
        output_tokens = turn.max_tokens
        reply = " ".join(reply.split()[:output_tokens])
    return _Answer(reply, None, input_tokens, output_tokens, truncated)


def _arguments(tool: _Tool) -> Json:
    args = schema_instance(tool.schema, strict=tool.strict)
    return args if isinstance(args, dict) else {}


def _digest(body: Json) -> str:
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


def _mock_usage(body: Json) -> Json | None:
    meta = body.get("metadata")
    if isinstance(meta, dict) and isinstance(meta.get("mock_usage"), dict):
        return dict(meta["mock_usage"])
    return None


# --- JSON schema instances -----------------------------------------------------------------------------------


def schema_instance(schema: Any, *, strict: bool = False, root: Any = None, _depth: int = 0) -> Any:
    """A value valid against `schema`: enum → its first value; string "mock", integer/number 1 (moved into any
    bounds), boolean true, array of `minItems` items, object with its `required` properties (every property when
    `strict` or `additionalProperties: false`). Follows local `$ref`s, the first `anyOf`/`oneOf` branch that is not
    null, and merges `allOf`."""
    root = schema if root is None else root
    if not isinstance(schema, dict) or _depth > 32:
        return None

    def sub(s: Any) -> Any:
        return schema_instance(s, strict=strict, root=root, _depth=_depth + 1)

    if isinstance(schema.get("$ref"), str):
        return sub(_resolve(root, schema["$ref"]))
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    for key in ("anyOf", "oneOf"):
        options = _dicts(schema.get(key))
        if options:
            return sub(next((o for o in options if o.get("type") != "null"), options[0]))
    if _dicts(schema.get("allOf")):
        merged: Json = {k: v for k, v in schema.items() if k != "allOf"}
        for part in _dicts(schema["allOf"]):
            resolved = part
            while isinstance(resolved.get("$ref"), str):
                nxt = _resolve(root, resolved["$ref"])
                if nxt is None:
                    break
                resolved = nxt
            merged.setdefault("properties", {}).update(resolved.get("properties") or {})
            merged["required"] = list(merged.get("required") or []) + list(resolved.get("required") or [])
            merged.update({k: v for k, v in resolved.items() if k not in ("properties", "required")})
        return sub(merged)

    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in schema else "array" if "items" in schema else "string"
    if kind == "object":
        props: Json = schema["properties"] if isinstance(schema.get("properties"), dict) else {}
        closed = strict or schema.get("additionalProperties") is False
        names = list(props) if closed else [n for n in schema.get("required") or [] if isinstance(n, str)]
        return {n: sub(props.get(n, {})) for n in names}
    if kind == "array":
        count = _int(schema.get("minItems")) or 0
        return [sub(schema.get("items", {})) for _ in range(count)]
    if kind == "string":
        low, high = _int(schema.get("minLength")), _int(schema.get("maxLength"))
        text = "mock" if low is None or low <= 4 else "m" * low
        return text[:high] if high is not None else text
    if kind in ("integer", "number"):
        return _bounded(schema)
    if kind == "boolean":
        return True
    return None


def _resolve(root: Any, ref: str) -> Json | None:
    """A local JSON pointer (`#/$defs/Item`); None for anything else."""
    if not ref.startswith("#"):
        return None
    target: Any = root
    for part in ref[1:].split("/")[1:]:
        target = target.get(part.replace("~1", "/").replace("~0", "~")) if isinstance(target, dict) else None
    return target if isinstance(target, dict) else None


def _bounded(schema: Json) -> int:
    value = 1
    low, high = schema.get("minimum"), schema.get("maximum")
    ex_low, ex_high = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
    if isinstance(low, int | float) and value < low:
        value = math.ceil(low)
    if isinstance(ex_low, int | float) and not isinstance(ex_low, bool) and value <= ex_low:
        value = math.floor(ex_low) + 1
    if isinstance(high, int | float) and value > high:
        value = math.floor(high)
    if isinstance(ex_high, int | float) and not isinstance(ex_high, bool) and value >= ex_high:
        value = math.ceil(ex_high) - 1
    return value


# --- chat completions ----------------------------------------------------------------------------------------


def _chat_usage(body: Json, answer: _Answer) -> Json:
    usage = _mock_usage(body)
    if usage is not None:
        return usage
    return {
        "prompt_tokens": answer.input_tokens,
        "completion_tokens": answer.output_tokens,
        "total_tokens": answer.input_tokens + answer.output_tokens,
    }


def _chat_finish(answer: _Answer) -> str:
    return "tool_calls" if answer.call is not None else "length" if answer.truncated else "stop"


def reply_for(body: Json) -> tuple[str, Json]:
    """A chat request's reply text ("" when it answers with a tool call) and its usage (OpenAI shape)."""
    answer = _answer(_chat_turn(body))
    return answer.text or "", _chat_usage(body, answer)


def completion_id(body: Json) -> str:
    return "chatcmpl-mock" + _digest(body)[:20]


def completion(body: Json) -> Json:
    """A chat completion (`/chat/completions`, not streamed)."""
    answer = _answer(_chat_turn(body))
    message: Json = {"role": "assistant", "content": answer.text, "refusal": None}
    if answer.call is not None:
        name, args = answer.call
        call = {"id": "call_" + _digest(body)[:24], "type": "function", "function": {"name": name, "arguments": args}}
        message = {"role": "assistant", "content": None, "tool_calls": [call], "refusal": None}
    return {
        "id": completion_id(body),
        "object": "chat.completion",
        "created": CREATED,
        "model": body.get("model"),
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": _chat_finish(answer)}],
        "usage": _chat_usage(body, answer),
        "system_fingerprint": "fp_mock",
    }


def stream_chunks(body: Json) -> list[Json]:
    """The chunks OpenAI would send: a role chunk, one chunk a word, a finish chunk, then usage if asked.
    A tool call streams as OpenAI streams one: its id and name (arguments "") in the role chunk, then a
    `tool_calls` delta per piece of its arguments."""
    answer = _answer(_chat_turn(body))
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    base = {
        "id": completion_id(body),
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": body.get("model"),
    }
    extra = {"usage": None} if include_usage else {}

    def chunk(delta: Json, finish: str | None = None) -> Json:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {**base, "system_fingerprint": "fp_mock", "choices": [choice], **extra}

    if answer.call is not None:
        name, _ = answer.call
        head = {"index": 0, "id": "call_" + _digest(body)[:24], "type": "function"}
        start = [{**head, "function": {"name": name, "arguments": ""}}]
        chunks = [chunk({"role": "assistant", "content": None, "tool_calls": start, "refusal": None})]
        chunks += [chunk({"tool_calls": [{"index": 0, "function": {"arguments": p}}]}) for p in answer.pieces()]
    else:
        chunks = [chunk({"role": "assistant", "content": ""})]
        chunks += [chunk({"content": p}) for p in answer.pieces()]
    chunks.append(chunk({}, _chat_finish(answer)))
    if include_usage:
        chunks.append({**base, "system_fingerprint": "fp_mock", "choices": [], "usage": _chat_usage(body, answer)})
    return chunks


# --- Anthropic Messages --------------------------------------------------------------------------------------

_ANTHROPIC_COUNTS = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens", "output_tokens")


def _anthropic_usage(body: Json, answer: _Answer) -> Json:
    usage = _mock_usage(body)
    if usage is not None:
        return usage
    return {
        "input_tokens": answer.input_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": answer.output_tokens,
    }


def _stop_reason(answer: _Answer) -> str:
    return "tool_use" if answer.call is not None else "max_tokens" if answer.truncated else "end_turn"


def _tool_use_id(body: Json) -> str:
    return "toolu_" + _digest(body)[:24]


def message(body: Json) -> Json:
    """An Anthropic Message (`/messages`, not streamed)."""
    answer = _answer(_messages_turn(body))
    if answer.call is not None:
        name, args = answer.call
        content: list[Json] = [{"type": "tool_use", "id": _tool_use_id(body), "name": name, "input": json.loads(args)}]
    else:
        content = [{"type": "text", "text": answer.text}]
    # Field order as the API sends it today (model first: see the captures cited at message_events).
    return {
        "model": body.get("model"),
        "id": "msg_" + _digest(body)[:24],
        "type": "message",
        "role": "assistant",
        "content": content,
        "stop_reason": _stop_reason(answer),
        "stop_sequence": None,
        "usage": _anthropic_usage(body, answer),
    }


def message_events(body: Json) -> list[tuple[str, Json]]:
    """The events the Messages API streams, event by event.

    Matched against real captured streams (claude-sonnet-4-5, claude-haiku-4-5) kept as test fixtures in the Vercel
    AI SDK (packages/anthropic/src/__fixtures__/anthropic-text.chunks.txt, anthropic-json-tool.1.chunks.txt,
    anthropic-tool-no-args.chunks.txt) and Anthropic's "Streaming Messages" guide: message_start carries the
    input counts and output_tokens 1; a `ping` follows the first content_block_start; a tool_use block starts with
    `input: {}` and an empty `partial_json` before the argument pieces; message_delta's usage repeats the input
    counts (cumulative, as the API sends them since 2025) next to the final output_tokens.
    """
    answer = _answer(_messages_turn(body))
    final = _anthropic_usage(body, answer)
    start_usage = {k: final.get(k, 0) for k in _ANTHROPIC_COUNTS[:3]} | {"output_tokens": 1}
    head = message(body) | {"content": [], "stop_reason": None, "stop_sequence": None, "usage": start_usage}
    events: list[tuple[str, Json]] = [("message_start", {"type": "message_start", "message": head})]

    def delta(d: Json) -> tuple[str, Json]:
        return "content_block_delta", {"type": "content_block_delta", "index": 0, "delta": d}

    if answer.call is not None:
        block: Json = {"type": "tool_use", "id": _tool_use_id(body), "name": answer.call[0], "input": {}}
        deltas = [delta({"type": "input_json_delta", "partial_json": p}) for p in ["", *answer.pieces()]]
    else:
        block = {"type": "text", "text": ""}
        deltas = [delta({"type": "text_delta", "text": p}) for p in answer.pieces()]
    events.append(("content_block_start", {"type": "content_block_start", "index": 0, "content_block": block}))
    events.append(("ping", {"type": "ping"}))
    events += deltas
    events.append(("content_block_stop", {"type": "content_block_stop", "index": 0}))
    end_usage = {k: final[k] for k in (*_ANTHROPIC_COUNTS, "server_tool_use") if k in final}
    stop = {"stop_reason": _stop_reason(answer), "stop_sequence": None}
    events.append(("message_delta", {"type": "message_delta", "delta": stop, "usage": end_usage}))
    events.append(("message_stop", {"type": "message_stop"}))
    return events


def count_tokens(body: Json) -> Json:
    """`/messages/count_tokens`: the input tokens a `/messages` call with this body would be billed."""
    return {"input_tokens": _answer(_messages_turn(body)).input_tokens}


# --- OpenAI Responses ----------------------------------------------------------------------------------------


def _responses_usage(body: Json, answer: _Answer) -> Json:
    usage = _mock_usage(body)
    if usage is not None:
        return usage
    return {
        "input_tokens": answer.input_tokens,
        "input_tokens_details": {"cache_write_tokens": 0, "cached_tokens": 0},
        "output_tokens": answer.output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": answer.input_tokens + answer.output_tokens,
    }


def _output_item(body: Json, answer: _Answer, status: str) -> Json:
    digest = _digest(body)
    if answer.call is not None:
        name, args = answer.call
        arguments = args if status == "completed" else ""
        return {
            "id": "fc_" + digest[:32],
            "type": "function_call",
            "status": status,
            "arguments": arguments,
            "call_id": "call_" + digest[:24],
            "name": name,
        }
    content = [_text_part(answer.text or "")] if status != "in_progress" else []
    return {"id": "msg_" + digest[:32], "type": "message", "status": status, "content": content, "role": "assistant"}


def _text_part(text: str) -> Json:
    return {"type": "output_text", "annotations": [], "logprobs": [], "text": text}


def _response_object(body: Json, answer: _Answer, *, done: bool) -> Json:
    status = ("incomplete" if answer.truncated else "completed") if done else "in_progress"
    output = [_output_item(body, answer, "incomplete" if answer.truncated else "completed")] if done else []
    reasoning = body.get("reasoning")
    text = body.get("text")
    # The fields and order the API returns (captured gpt-4o-mini / gpt-5.1 streams, Vercel AI SDK fixtures
    # packages/openai/src/responses/__fixtures__/issue-20047-openai-responses.chunks.txt and
    # issue-19493-gpt-5.1-tool-call.chunks.txt); request parameters are echoed as the API echoes them.
    return {
        "id": "resp_" + _digest(body)[:32],
        "object": "response",
        "created_at": CREATED,
        "status": status,
        "background": False,
        "completed_at": CREATED if done else None,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if done and answer.truncated else None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "max_tool_calls": body.get("max_tool_calls"),
        "model": body.get("model"),
        "output": output,
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": body.get("previous_response_id"),
        "prompt_cache_key": body.get("prompt_cache_key"),
        "reasoning": reasoning if isinstance(reasoning, dict) else {"effort": None, "summary": None},
        "safety_identifier": body.get("safety_identifier"),
        "service_tier": "default",
        "store": body.get("store", True),
        "temperature": body.get("temperature", 1.0),
        "text": text if isinstance(text, dict) else {"format": {"type": "text"}, "verbosity": "medium"},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools") or [],
        "top_logprobs": body.get("top_logprobs", 0),
        "top_p": body.get("top_p", 1.0),
        "truncation": body.get("truncation", "disabled"),
        "usage": _responses_usage(body, answer) if done else None,
        "user": None,
        "metadata": {},
    }


def response(body: Json) -> Json:
    """An OpenAI Response (`/responses`, not streamed). A reply cut by `max_output_tokens` is `incomplete`."""
    return _response_object(body, _answer(_responses_turn(body)), done=True)


def response_events(body: Json) -> list[tuple[str, Json]]:
    """The events the Responses API streams (sources at `_response_object`); each has `type` and
    `sequence_number`; the stream ends with `response.completed` (`response.incomplete` when cut short by
    `max_output_tokens`) and no `[DONE]`."""
    answer = _answer(_responses_turn(body))
    final = _response_object(body, answer, done=True)
    item = final["output"][0]
    events: list[Json] = [
        {"type": "response.created", "response": _response_object(body, answer, done=False)},
        {"type": "response.in_progress", "response": _response_object(body, answer, done=False)},
        {"type": "response.output_item.added", "item": _output_item(body, answer, "in_progress"), "output_index": 0},
    ]
    where = {"item_id": item["id"], "output_index": 0}
    if answer.call is not None:
        events += [{"type": "response.function_call_arguments.delta", "delta": p, **where} for p in answer.pieces()]
        events.append({"type": "response.function_call_arguments.done", "arguments": item["arguments"], **where})
    else:
        text = answer.text or ""
        part = {"content_index": 0, **where}
        events.append({"type": "response.content_part.added", **part, "part": _text_part("")})
        events += [{"type": "response.output_text.delta", **part, "delta": p, "logprobs": []} for p in answer.pieces()]
        events.append({"type": "response.output_text.done", **part, "logprobs": [], "text": text})
        events.append({"type": "response.content_part.done", **part, "part": _text_part(text)})
    events.append({"type": "response.output_item.done", "item": item, "output_index": 0})
    end = "response.incomplete" if answer.truncated else "response.completed"
    events.append({"type": end, "response": final})
    return [(e["type"], {**e, "sequence_number": n}) for n, e in enumerate(events)]


# --- OpenAI Embeddings ---------------------------------------------------------------------------------------


def _embedding_inputs(raw: Any) -> list[str | list[int]] | None:
    """The inputs of an embeddings request (a string, strings, a token array, token arrays), or None if malformed."""
    if isinstance(raw, str):
        return [raw]
    if not isinstance(raw, list) or not raw:
        return None
    if all(_int(t) is not None for t in raw):
        return [list(raw)]
    if all(isinstance(s, str) for s in raw):
        return list(raw)
    if all(isinstance(a, list) and a and all(_int(t) is not None for t in a) for a in raw):
        return [list(a) for a in raw]
    return None


def embedding_vector(item: str | list[int], dimensions: int = DEFAULT_DIMENSIONS) -> list[float]:
    """A unit vector derived from a hash of the input; every component is a float32 value, so the `float` and
    `base64` (float32 little-endian) encodings carry exactly the same numbers."""
    key = item.encode() if isinstance(item, str) else orjson.dumps(item)
    raw: list[float] = []
    block = 0
    while len(raw) < dimensions:
        digest = hashlib.sha256(key + block.to_bytes(4, "little")).digest()
        raw += [int.from_bytes(digest[i : i + 4], "little") / 2**31 - 1.0 for i in range(0, 32, 4)]
        block += 1
    raw = raw[:dimensions]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    return [struct.unpack("<f", struct.pack("<f", x / norm))[0] for x in raw]


def embeddings(body: Json) -> Json:
    """An embeddings list (`/embeddings`): `dimensions` long (default 8), `encoding_format` float or base64."""
    inputs = _embedding_inputs(body.get("input")) or []
    dimensions = _int(body.get("dimensions")) or DEFAULT_DIMENSIONS
    as_base64 = body.get("encoding_format") == "base64"
    data: list[Json] = []
    tokens = 0
    for index, item in enumerate(inputs):
        tokens += _words(item) if isinstance(item, str) else len(item)
        vector = embedding_vector(item, dimensions)
        encoded: Any = base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode() if as_base64 else vector
        data.append({"object": "embedding", "index": index, "embedding": encoded})
    return {
        "object": "list",
        "data": data,
        "model": body.get("model"),
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


# --- dispatch ------------------------------------------------------------------------------------------------


def parse_body(body: bytes, path: str = CHAT) -> Json:
    """The request body as JSON, checked as the provider would for the endpoint; raises UpstreamRejected (400,
    or 404 for an endpoint the mock does not serve)."""
    if path not in PATHS:
        raise UpstreamRejected(f"Mock provider: no endpoint {path}.", status=404)
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise UpstreamRejected("Mock provider: the body is not JSON.", status=400) from None
    if not isinstance(data, dict):
        raise UpstreamRejected("Mock provider: the body must be a JSON object.", status=400)
    if path in (CHAT, MESSAGES, COUNT_TOKENS) and not isinstance(data.get("messages"), list):
        raise UpstreamRejected("Mock provider: 'messages' must be a list.", status=400)
    if path == RESPONSES and not isinstance(data.get("input"), str | list):
        raise UpstreamRejected("Mock provider: 'input' must be a string or a list.", status=400)
    if path == EMBEDDINGS:
        if _embedding_inputs(data.get("input")) is None:
            raise UpstreamRejected(
                "Mock provider: 'input' must be a string, strings, or token arrays, not empty.", status=400
            )
        dimensions = data.get("dimensions")
        if dimensions is not None and not (_int(dimensions) is not None and 0 < dimensions <= MAX_DIMENSIONS):
            raise UpstreamRejected(f"Mock provider: 'dimensions' must be 1..{MAX_DIMENSIONS}.", status=400)
        if data.get("encoding_format") not in (None, "float", "base64"):
            raise UpstreamRejected("Mock provider: 'encoding_format' must be float or base64.", status=400)
    return data


def last_text(path: str, body: Json) -> str:
    """The text a request ends with (the last message or input item; an embeddings request's first input
    string): what the reply quotes, and where the fake upstream reads `FAIL:<mode>`."""
    if path == EMBEDDINGS:
        inputs = _embedding_inputs(body.get("input")) or []
        return inputs[0] if inputs and isinstance(inputs[0], str) else ""
    if path in (MESSAGES, COUNT_TOKENS):
        return _messages_turn(body).last
    if path == RESPONSES:
        return _responses_turn(body).last
    return _chat_turn(body).last


def answer(path: str, body: Json) -> Json:
    """The non-streamed answer to a parsed request on `path`."""
    if path == MESSAGES:
        return message(body)
    if path == COUNT_TOKENS:
        return count_tokens(body)
    if path == RESPONSES:
        return response(body)
    if path == EMBEDDINGS:
        return embeddings(body)
    return completion(body)


def stream_events(path: str, body: Json) -> list[Event]:
    """The streamed answer as SSE events (name, data): chat's chunks unnamed and then `[DONE]`, the other
    formats' events named. Raises UpstreamRejected for an endpoint that does not stream."""
    if path == MESSAGES:
        return [(name, orjson.dumps(data)) for name, data in message_events(body)]
    if path == RESPONSES:
        return [(name, orjson.dumps(data)) for name, data in response_events(body)]
    if path == CHAT:
        chunks: list[Event] = [(None, orjson.dumps(c)) for c in stream_chunks(body)]
        return [*chunks, (None, b"[DONE]")]
    raise UpstreamRejected(f"Mock provider: {path} does not stream.", status=400)


def _request(target: Target, body: bytes) -> Json:
    data = parse_body(body, target.path)
    if not data.get("model"):
        data["model"] = target.model
    return data


class MockUpstream:
    """In-process provider: no network, deterministic, with usage on every reply (streamed or not)."""

    async def send(self, target: Target, body: bytes) -> UpstreamResponse:
        return UpstreamResponse(200, orjson.dumps(answer(target.path, _request(target, body))), "application/json")

    @asynccontextmanager
    async def stream(self, target: Target, body: bytes) -> AsyncIterator[AsyncIterator[Event]]:
        events = stream_events(target.path, _request(target, body))

        async def replay() -> AsyncIterator[Event]:
            for event in events:
                yield event

        yield replay()

    async def aclose(self) -> None:
        return None

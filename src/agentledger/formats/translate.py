"""OpenAI Chat Completions ⇄ Anthropic Messages, both ways, streamed and not. Pure: no I/O.

A client speaking one format reaches a provider speaking the other: its request is translated to the
provider's format, and the provider's answer (a body, or a stream of SSE events) back to the client's.
Text, images, tool definitions, tool calls and tool results, the system prompt, `max_tokens`, stop sequences,
sampling, stop reasons and usage (cache reads and writes included) translate both ways.

What cannot be translated is decided per field: a field whose loss leaves the answer's meaning intact is
dropped (or mapped to its nearest equivalent); a field whose loss would change what the answer means, or that
asks for something the other side cannot produce, is refused with `InvalidRequest` (400) naming the field, so
a client learns at once instead of receiving a silently different answer.

Chat request → Messages request (`chat_to_messages_request`)
    mapped    system/developer messages → `system` (all of them, in order, wherever they stood);
              `max_completion_tokens`, else `max_tokens` → `max_tokens` (default 4096, which Messages
              requires); `stop` → `stop_sequences`; `temperature` (clamped to Anthropic's 0..1 range) and
              `top_p`; function `tools` (a missing `parameters` is an empty object schema); `tool_choice`
              auto/none/required/named → auto/none/any/tool; `parallel_tool_calls: false` →
              `disable_parallel_tool_use`; `response_format` json_schema → `output_config.format`;
              `user` → `metadata.user_id`; `stream` (without `stream_options`: Messages always reports usage).
              Assistant `tool_calls` → `tool_use` blocks (arguments must be a JSON object; "" reads as {});
              `role: tool` messages → `tool_result` blocks in a user turn; consecutive turns of one role are
              merged (Messages wants them alternating); empty messages are left out; a lone text block is
              sent as a plain string. Images: data: (base64 jpeg/png/gif/webp) and http(s) URLs; files:
              inline PDFs (`file_data` data: URL) → `document` blocks. `cache_control` on a content part is
              kept. A trailing assistant message becomes Anthropic's prefill (the answer continues it).
    dropped   `seed`, `frequency_penalty`, `presence_penalty`, `reasoning_effort`, `verbosity`,
              `prediction`, `store`, `metadata` (OpenAI's stored-completion tags), `service_tier`,
              `prompt_cache_*`, `safety_identifier`, `stream_options`, a message's `name`, an image's
              `detail`, a function's `strict`, and any field not named here: sampling, latency and
              bookkeeping knobs that do not change what the answer means.
    refused   `n` > 1 (one answer only), `logprobs`/`top_logprobs`, `logit_bias` (bans or forces tokens),
              `audio` and `modalities` other than text, `web_search_options`, `moderation`, legacy
              `functions`/`function_call` (and `role: function` messages), `response_format` json_object
              (Messages has no schemaless JSON mode), custom (non-function) tools and tool calls,
              `allowed_tools` tool choice, audio input and file-id/non-PDF files.

Messages request → chat request (`messages_to_chat_request`)
    mapped    `system` (string or text blocks, joined by a blank line) → a system message; text, image
              (base64 → data: URL, url) and document (base64 PDF → inline file; plain-text source → text)
              blocks; `tool_use` → `tool_calls` (input serialized); `tool_result` → `role: tool` messages
              (sent before the rest of their user turn, as chat wants them right after the calls);
              `max_tokens`; `stop_sequences` → `stop`; `temperature`, `top_p`; custom tools → function tools
              (`strict` kept); `tool_choice` auto/any/tool/none → auto/required/named/none and
              `disable_parallel_tool_use` → `parallel_tool_calls: false`; `output_config.format` (or the
              beta `output_format`) → `response_format` json_schema (strict); `metadata.user_id` → `user`;
              `stream: true` → also `stream_options.include_usage` (the gateway always needs the usage).
    dropped   `top_k`, `service_tier`, `speed`, `inference_geo`, `diagnostics`, top-level and per-block
              `cache_control`, `output_config.effort`, a tool result's `is_error` (its text says what went
              wrong), a document's `title`/`context`/`citations`, earlier `thinking`/`redacted_thinking`
              blocks (another model cannot use them), `thinking: {"type": "disabled"}`, and unknown fields.
    refused   `thinking` enabled (any type but disabled), `container`, `mcp_servers`, `context_management`,
              server and Anthropic-defined tools (any tool `type` but custom), server-tool blocks
              (`server_tool_use`, `*_tool_result`, `search_result`, ...), images inside tool results (a chat
              tool message holds text only), Files-API sources and URL documents, and a conversation ending
              in an assistant turn (Anthropic's prefill: a chat model would answer anew, not continue it).

Answers (`messages_to_chat_response`, `chat_to_messages_response`, and both stream adapters)
    Stop reasons: end_turn/stop_sequence/pause_turn → stop, max_tokens/model_context_window_exceeded →
    length, tool_use → tool_calls, refusal → content_filter; back: stop → end_turn (or tool_use when the
    answer holds tool calls: some providers say "stop" there, and Anthropic clients run tools only on
    tool_use), length → max_tokens, tool_calls/function_call → tool_use, content_filter → refusal.
    Usage: OpenAI `prompt_tokens` = input + cache reads + cache writes, `prompt_tokens_details.cached_tokens`
    = cache reads, `.cache_write_tokens` = cache writes; back, Anthropic `input_tokens` = prompt − both.
    Thinking blocks (and chat `reasoning_content`) are not carried: neither side can take the other's.
    Tool-call arguments that are not a JSON object are passed to an Anthropic client as `{"_raw": "<text>"}`,
    so the malformed call stays visible (and answerable with a tool_result) instead of vanishing.
    A provider's answer is never refused: what is missing or malformed in it is read as absent.

Streams: a provider's in-band error sets `failure` and is forwarded in the client's error shape (an
`{"error": {...}}` chunk for chat, an `error` event for Messages). A chat provider's tool-call fragments are
expected in order (each call's fragments before the next call's, as OpenAI and vLLM send them); a fragment
for a call whose block was already closed cannot be placed in an Anthropic stream and is dropped.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson

from agentledger.core.bounds import MAX_TOKENS
from agentledger.core.errors import InvalidRequest
from agentledger.core.usage import Usage, merge_anthropic, parse_anthropic, parse_openai, reported_cost
from agentledger.formats.base import sse

DEFAULT_MAX_TOKENS = 4096
_IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
_TO_CHAT_FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
_TO_ANTHROPIC_STOP = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
_DONE = b"data: [DONE]\n\n"


# ---------------------------------------------------------------------------------------------- helpers


def _bad(param: str, message: str) -> InvalidRequest:
    return InvalidRequest(message, param=param)


def _untranslatable(param: str, what: str, target: str) -> InvalidRequest:
    return InvalidRequest(f"'{param}': {what} cannot be translated to {target}.", param=param)


def _show(value: Any) -> str:
    """A client's value quoted in an error message, kept short."""
    text = value if isinstance(value, str) else type(value).__name__
    return repr(text[:40])


def _loads(data: bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return None


def _dumps(value: Any) -> str | None:
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # orjson.JSONEncodeError: an integer past 64 bits, a lone surrogate, too deep
        return None


def _string(value: Any, param: str, *, empty: bool = True) -> str:
    if not isinstance(value, str) or (not empty and not value):
        raise _bad(param, f"'{param}' must be a {'' if empty else 'non-empty '}string.")
    return value


def _object(value: Any, param: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _bad(param, f"'{param}' must be an object.")
    return value


def _array(value: Any, param: str) -> list[Any]:
    if not isinstance(value, list):
        raise _bad(param, f"'{param}' must be an array.")
    return value


def _number(value: Any, param: str) -> int | float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad(param, f"'{param}' must be a number.")
    return value


def _max_tokens(value: Any, param: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_TOKENS:
        raise _bad(param, f"'{param}' must be a positive integer.")
    return value


def _stops(value: Any, param: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    return [_string(s, f"{param}[{i}]") for i, s in enumerate(_array(value, param))]


def _data_url(url: str, param: str) -> tuple[str, str]:
    """`data:<media type>[;params];base64,<data>` → (media type, data)."""
    header, comma, data = url[5:].partition(",")
    params = header.split(";")
    if not comma or "base64" not in params[1:]:
        raise _bad(param, f"'{param}': only base64 data: URLs can be translated.")
    return params[0].strip().lower(), data


def _text_of(blocks: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """A lone plain text block is sent as a string, the shorthand both formats accept."""
    if len(blocks) == 1 and blocks[0].get("type") == "text" and set(blocks[0]) == {"type", "text"}:
        text: str = blocks[0]["text"]
        return text
    return blocks


def _chat_id(anthropic_id: Any) -> str:
    if isinstance(anthropic_id, str) and anthropic_id:
        return "chatcmpl-" + anthropic_id.removeprefix("msg_")
    return "chatcmpl-" + uuid.uuid4().hex


def _message_id(chat_id: Any) -> str:
    if isinstance(chat_id, str) and chat_id:
        return "msg_" + chat_id.removeprefix("chatcmpl-")
    return "msg_" + uuid.uuid4().hex


def _openai_usage(parsed: tuple[Usage, bool] | None) -> dict[str, Any]:
    u = parsed[0] if parsed is not None else Usage()
    return {
        "prompt_tokens": u.input_tokens,
        "completion_tokens": u.output_tokens,
        "total_tokens": u.total_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_input_tokens, "cache_write_tokens": u.cache_write_tokens},
    }


def _anthropic_usage(parsed: tuple[Usage, bool] | None) -> dict[str, Any]:
    u = parsed[0] if parsed is not None else Usage()
    return {
        "input_tokens": max(u.input_tokens - u.cached_input_tokens - u.cache_write_tokens, 0),
        "cache_creation_input_tokens": u.cache_write_tokens,
        "cache_read_input_tokens": u.cached_input_tokens,
        "output_tokens": u.output_tokens,
    }


# ------------------------------------------------------------------------ chat request → Messages request

_CHAT_REFUSED = {
    "audio": "audio output",
    "web_search_options": "OpenAI's built-in web search",
    "moderation": "OpenAI's moderation policy",
    "functions": "legacy 'functions' (use 'tools')",
    "function_call": "legacy 'function_call' (use 'tool_choice')",
}
_TO_MESSAGES = "Anthropic Messages"
_TO_CHAT = "Chat Completions"


def chat_to_messages_request(payload: dict[str, Any]) -> dict[str, Any]:
    """A chat completions request body → the Anthropic Messages request body that asks the same."""
    if not isinstance(payload, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    _refuse_chat_only(payload)
    system, turns = _chat_messages(payload.get("messages"))
    out: dict[str, Any] = {"model": payload.get("model")}
    if system:
        out["system"] = _text_of(system)
    out["messages"] = turns

    limit = payload.get("max_completion_tokens")
    param = "max_completion_tokens"
    if limit is None:
        limit, param = payload.get("max_tokens"), "max_tokens"
    out["max_tokens"] = DEFAULT_MAX_TOKENS if limit is None else _max_tokens(limit, param)
    if payload.get("stop") is not None:
        stops = _stops(payload["stop"], "stop")
        if stops:
            out["stop_sequences"] = stops
    if payload.get("temperature") is not None:
        out["temperature"] = min(_number(payload["temperature"], "temperature"), 1)
    if payload.get("top_p") is not None:
        out["top_p"] = _number(payload["top_p"], "top_p")

    tools = _chat_tools(payload.get("tools"))
    if tools:
        out["tools"] = tools
        choice = _chat_tool_choice(payload.get("tool_choice"))
        parallel = payload.get("parallel_tool_calls")
        if parallel is not None and not isinstance(parallel, bool):
            raise _bad("parallel_tool_calls", "'parallel_tool_calls' must be a boolean.")
        if parallel is False and (choice is None or choice["type"] != "none"):
            choice = {**(choice or {"type": "auto"}), "disable_parallel_tool_use": True}
        if choice is not None:
            out["tool_choice"] = choice

    output_format = _chat_response_format(payload.get("response_format"))
    if output_format is not None:
        out["output_config"] = {"format": output_format}
    user = payload.get("user")
    if user is not None:
        out["metadata"] = {"user_id": _string(user, "user")}
    if payload.get("stream") is True:
        out["stream"] = True
    return out


def _refuse_chat_only(payload: dict[str, Any]) -> None:
    n = payload.get("n")
    if n is not None and n != 1:
        raise _untranslatable("n", "more than one choice (n > 1)", _TO_MESSAGES)
    if payload.get("logprobs"):
        raise _untranslatable("logprobs", "log probabilities", _TO_MESSAGES)
    if payload.get("top_logprobs"):
        raise _untranslatable("top_logprobs", "log probabilities", _TO_MESSAGES)
    if payload.get("logit_bias"):
        raise _untranslatable("logit_bias", "a logit bias", _TO_MESSAGES)
    modalities = payload.get("modalities")
    if modalities is not None and (not isinstance(modalities, list) or any(m != "text" for m in modalities)):
        raise _untranslatable("modalities", "an output modality other than text", _TO_MESSAGES)
    for field, what in _CHAT_REFUSED.items():
        if payload.get(field) is not None:
            raise _untranslatable(field, what, _TO_MESSAGES)


def _chat_messages(messages: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Chat messages → (system text blocks, alternating Messages turns)."""
    if not isinstance(messages, list) or not messages:
        raise _bad("messages", "'messages' must be a non-empty array.")
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        p = f"messages[{i}]"
        message = _object(message, p)
        role = message.get("role")
        if role in ("system", "developer"):
            system += _chat_parts(message.get("content"), f"{p}.content", ("text",))
        elif role == "user":
            _append(turns, "user", _chat_parts(message.get("content"), f"{p}.content", ("text", "image_url", "file")))
        elif role == "assistant":
            _append(turns, "assistant", _chat_assistant(message, p))
        elif role == "tool":
            _append(turns, "user", [_chat_tool_result(message, p)])
        elif role == "function":
            raise _untranslatable(f"{p}.role", "a legacy 'function' message (use 'tool')", _TO_MESSAGES)
        else:
            raise _bad(f"{p}.role", f"'{p}.role' {_show(role)} is not a chat role.")
    if not turns:
        raise _bad("messages", "'messages' must hold at least one user or assistant message with content.")
    for turn in turns:
        turn["content"] = _text_of(turn["content"])
    return system, turns


def _append(turns: list[dict[str, Any]], role: str, blocks: list[dict[str, Any]]) -> None:
    if not blocks:
        return
    if turns and turns[-1]["role"] == role:
        turns[-1]["content"].extend(blocks)
    else:
        turns.append({"role": role, "content": blocks})


def _chat_parts(content: Any, param: str, allowed: tuple[str, ...]) -> list[dict[str, Any]]:
    """A chat message's content (string, parts or null) → Anthropic content blocks (empty text left out)."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks: list[dict[str, Any]] = []
    for j, part in enumerate(_array(content, param)):
        p = f"{param}[{j}]"
        part = _object(part, p)
        kind = part.get("type")
        if kind not in allowed:
            if kind in ("text", "image_url", "file", "refusal", "input_audio"):
                raise _untranslatable(f"{p}.type", f"a {kind!r} part in this message", _TO_MESSAGES)
            raise _bad(f"{p}.type", f"'{p}.type' {_show(kind)} is not a content part type.")
        if kind in ("text", "refusal"):
            text = _string(part.get(kind), f"{p}.{kind}")
            if not text:
                continue
            block: dict[str, Any] = {"type": "text", "text": text}
        elif kind == "image_url":
            image = part.get("image_url")
            block = _chat_image(image.get("url") if isinstance(image, dict) else image, f"{p}.image_url.url")
        else:  # file
            block = _chat_file(_object(part.get("file"), f"{p}.file"), f"{p}.file")
        if isinstance(part.get("cache_control"), dict):
            block["cache_control"] = part["cache_control"]
        blocks.append(block)
    return blocks


def _chat_image(url: Any, param: str) -> dict[str, Any]:
    url = _string(url, param, empty=False)
    if url[:5].lower() == "data:":
        media, data = _data_url(url, param)
        if media not in _IMAGE_TYPES:
            raise _untranslatable(param, f"an image of type {_show(media)} (jpeg, png, gif and webp can)", _TO_MESSAGES)
        return {"type": "image", "source": {"type": "base64", "media_type": media, "data": data}}
    if url[:8].lower() == "https://" or url[:7].lower() == "http://":
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise _bad(param, f"'{param}' must be an http(s) URL or a base64 data: URL.")


def _chat_file(file: dict[str, Any], param: str) -> dict[str, Any]:
    data = file.get("file_data")
    if not isinstance(data, str) or data[:5].lower() != "data:":
        raise _untranslatable(param, "a file other than an inline PDF (file_data as a data: URL)", _TO_MESSAGES)
    media, encoded = _data_url(data, f"{param}.file_data")
    if media != "application/pdf":
        raise _untranslatable(f"{param}.file_data", f"a file of type {_show(media)} (PDF can)", _TO_MESSAGES)
    return {"type": "document", "source": {"type": "base64", "media_type": media, "data": encoded}}


def _chat_assistant(message: dict[str, Any], p: str) -> list[dict[str, Any]]:
    for field, what in (("function_call", "a legacy 'function_call'"), ("audio", "an audio answer")):
        if message.get(field) is not None:
            raise _untranslatable(f"{p}.{field}", what, _TO_MESSAGES)
    blocks = _chat_parts(message.get("content"), f"{p}.content", ("text", "refusal"))
    refusal = message.get("refusal")
    if not blocks and isinstance(refusal, str) and refusal:
        blocks.append({"type": "text", "text": refusal})
    calls = message.get("tool_calls")
    if calls is None:
        return blocks
    for k, call in enumerate(_array(calls, f"{p}.tool_calls")):
        cp = f"{p}.tool_calls[{k}]"
        call = _object(call, cp)
        if call.get("type", "function") != "function":
            raise _untranslatable(f"{cp}.type", f"a {_show(call.get('type'))} tool call", _TO_MESSAGES)
        function = _object(call.get("function"), f"{cp}.function")
        blocks.append(
            {
                "type": "tool_use",
                "id": _string(call.get("id"), f"{cp}.id", empty=False),
                "name": _string(function.get("name"), f"{cp}.function.name", empty=False),
                "input": _arguments(function.get("arguments"), f"{cp}.function.arguments"),
            }
        )
    return blocks


def _arguments(arguments: Any, param: str) -> dict[str, Any]:
    """A tool call's JSON-encoded arguments → the object Anthropic's `input` must be."""
    if isinstance(arguments, dict):
        return arguments
    if arguments is None or (isinstance(arguments, str) and not arguments.strip()):
        return {}
    if not isinstance(arguments, str):
        raise _bad(param, f"'{param}' must be a string of JSON.")
    try:
        parsed = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        raise _bad(param, f"'{param}' is not valid JSON.") from None
    if not isinstance(parsed, dict):
        raise _bad(param, f"'{param}' must encode a JSON object.")
    return parsed


def _chat_tool_result(message: dict[str, Any], p: str) -> dict[str, Any]:
    block: dict[str, Any] = {
        "type": "tool_result",
        "tool_use_id": _string(message.get("tool_call_id"), f"{p}.tool_call_id", empty=False),
    }
    content = message.get("content")
    if isinstance(content, str):
        if content:
            block["content"] = content
    else:
        parts = _chat_parts(content, f"{p}.content", ("text",))
        if parts:
            block["content"] = parts
    return block


def _chat_tools(tools: Any) -> list[dict[str, Any]]:
    if tools is None:
        return []
    out = []
    for i, tool in enumerate(_array(tools, "tools")):
        tool = _object(tool, f"tools[{i}]")
        if tool.get("type", "function") != "function":
            raise _untranslatable(f"tools[{i}].type", f"a {_show(tool.get('type'))} tool", _TO_MESSAGES)
        function = _object(tool.get("function"), f"tools[{i}].function")
        schema = function.get("parameters")
        translated: dict[str, Any] = {
            "name": _string(function.get("name"), f"tools[{i}].function.name", empty=False),
            "input_schema": {"type": "object", "properties": {}}
            if schema is None
            else _object(schema, f"tools[{i}].function.parameters"),
        }
        description = function.get("description")
        if description is not None:
            translated["description"] = _string(description, f"tools[{i}].function.description")
        out.append(translated)
    return out


def _chat_tool_choice(choice: Any) -> dict[str, Any] | None:
    if choice is None:
        return None
    simple = {"auto": "auto", "none": "none", "required": "any"}
    if isinstance(choice, str) and choice in simple:
        return {"type": simple[choice]}
    if isinstance(choice, dict) and choice.get("type") == "function":
        function = _object(choice.get("function"), "tool_choice.function")
        return {"type": "tool", "name": _string(function.get("name"), "tool_choice.function.name", empty=False)}
    if isinstance(choice, dict) and choice.get("type") in ("allowed_tools", "custom"):
        raise _untranslatable("tool_choice", f"a {choice['type']!r} tool choice", _TO_MESSAGES)
    raise _bad("tool_choice", "'tool_choice' must be 'auto', 'none', 'required' or a named function.")


def _chat_response_format(fmt: Any) -> dict[str, Any] | None:
    if fmt is None:
        return None
    fmt = _object(fmt, "response_format")
    kind = fmt.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        raise _untranslatable("response_format", "JSON mode without a schema (json_object)", _TO_MESSAGES)
    if kind != "json_schema":
        raise _bad("response_format.type", "'response_format.type' must be 'text', 'json_object' or 'json_schema'.")
    spec = _object(fmt.get("json_schema"), "response_format.json_schema")
    return {"type": "json_schema", "schema": _object(spec.get("schema"), "response_format.json_schema.schema")}


# ------------------------------------------------------------------------ Messages request → chat request

_MESSAGES_REFUSED = {
    "container": "a code-execution container",
    "mcp_servers": "remote MCP servers",
    "context_management": "Anthropic's context management",
}


def messages_to_chat_request(payload: dict[str, Any]) -> dict[str, Any]:
    """An Anthropic Messages request body → the chat completions request body that asks the same."""
    if not isinstance(payload, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    _refuse_messages_only(payload)
    messages: list[dict[str, Any]] = []
    system = _system_text(payload.get("system"))
    if system:
        messages.append({"role": "system", "content": system})
    raw = payload.get("messages")
    if not isinstance(raw, list) or not raw:
        raise _bad("messages", "'messages' must be a non-empty array.")
    for i, message in enumerate(raw):
        messages += _anthropic_message(_object(message, f"messages[{i}]"), f"messages[{i}]")
    if raw[-1].get("role") == "assistant":
        raise _untranslatable(
            f"messages[{len(raw) - 1}]", "a final assistant turn (prefill, which Messages continues)", _TO_CHAT
        )
    out: dict[str, Any] = {"model": payload.get("model"), "messages": messages}

    if payload.get("max_tokens") is not None:
        out["max_tokens"] = _max_tokens(payload["max_tokens"], "max_tokens")
    if payload.get("stop_sequences") is not None:
        stops = _stops(payload["stop_sequences"], "stop_sequences")
        if stops:
            out["stop"] = stops
    for field in ("temperature", "top_p"):
        if payload.get(field) is not None:
            out[field] = _number(payload[field], field)

    tools = _anthropic_tools(payload.get("tools"))
    if tools:
        out["tools"] = tools
        choice = payload.get("tool_choice")
        if choice is not None:
            out["tool_choice"] = _anthropic_tool_choice(_object(choice, "tool_choice"))
            if choice.get("disable_parallel_tool_use") is True and out["tool_choice"] != "none":
                out["parallel_tool_calls"] = False

    response_format = _anthropic_output_format(payload)
    if response_format is not None:
        out["response_format"] = response_format
    metadata = payload.get("metadata")
    if isinstance(metadata, dict) and metadata.get("user_id") is not None:
        out["user"] = _string(metadata["user_id"], "metadata.user_id")
    if payload.get("stream") is True:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    return out


def _refuse_messages_only(payload: dict[str, Any]) -> None:
    thinking = payload.get("thinking")
    if thinking is not None and not (isinstance(thinking, dict) and thinking.get("type") == "disabled"):
        raise _untranslatable("thinking", "extended thinking", _TO_CHAT)
    for field, what in _MESSAGES_REFUSED.items():
        if payload.get(field) not in (None, []):
            raise _untranslatable(field, what, _TO_CHAT)


def _system_text(system: Any) -> str:
    if system is None or isinstance(system, str):
        return system or ""
    texts = []
    for i, block in enumerate(_array(system, "system")):
        block = _object(block, f"system[{i}]")
        if block.get("type") != "text":
            raise _bad(f"system[{i}].type", "'system' blocks must be text blocks.")
        texts.append(_string(block.get("text"), f"system[{i}].text"))
    return "\n\n".join(t for t in texts if t)


def _anthropic_message(message: dict[str, Any], p: str) -> list[dict[str, Any]]:
    role = message.get("role")
    content = message.get("content")
    if role not in ("user", "assistant"):
        raise _bad(f"{p}.role", f"'{p}.role' must be 'user' or 'assistant'.")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    blocks = _array(content, f"{p}.content")
    if role == "assistant":
        return [_anthropic_assistant(blocks, p)]
    tool_messages: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for j, block in enumerate(blocks):
        bp = f"{p}.content[{j}]"
        block = _object(block, bp)
        kind = block.get("type")
        if kind == "text":
            parts.append({"type": "text", "text": _string(block.get("text"), f"{bp}.text")})
        elif kind == "image":
            parts.append(_anthropic_image(_object(block.get("source"), f"{bp}.source"), f"{bp}.source"))
        elif kind == "document":
            parts.append(_anthropic_document(_object(block.get("source"), f"{bp}.source"), f"{bp}.source"))
        elif kind == "tool_result":
            tool_messages.append(_anthropic_tool_result(block, bp))
        else:
            raise _untranslatable(f"{bp}.type", f"a {_show(kind)} block in a user turn", _TO_CHAT)
    if parts:
        tool_messages.append({"role": "user", "content": _text_of(parts)})
    return tool_messages


def _anthropic_image(source: dict[str, Any], param: str) -> dict[str, Any]:
    kind = source.get("type")
    if kind == "base64":
        media = _string(source.get("media_type"), f"{param}.media_type", empty=False)
        data = _string(source.get("data"), f"{param}.data")
        return {"type": "image_url", "image_url": {"url": f"data:{media};base64,{data}"}}
    if kind == "url":
        return {"type": "image_url", "image_url": {"url": _string(source.get("url"), f"{param}.url", empty=False)}}
    raise _untranslatable(f"{param}.type", f"an image source of type {_show(kind)}", _TO_CHAT)


def _anthropic_document(source: dict[str, Any], param: str) -> dict[str, Any]:
    kind = source.get("type")
    if kind == "base64" and source.get("media_type") == "application/pdf":
        data = _string(source.get("data"), f"{param}.data")
        return {
            "type": "file",
            "file": {"filename": "document.pdf", "file_data": f"data:application/pdf;base64,{data}"},
        }
    if kind == "text":
        return {"type": "text", "text": _string(source.get("data"), f"{param}.data")}
    raise _untranslatable(f"{param}.type", "a document other than an inline PDF or plain text", _TO_CHAT)


def _anthropic_tool_result(block: dict[str, Any], bp: str) -> dict[str, Any]:
    call_id = _string(block.get("tool_use_id"), f"{bp}.tool_use_id", empty=False)
    content = block.get("content")
    if content is None or isinstance(content, str):
        return {"role": "tool", "tool_call_id": call_id, "content": content or ""}
    parts: list[dict[str, Any]] = []
    for k, item in enumerate(_array(content, f"{bp}.content")):
        ip = f"{bp}.content[{k}]"
        item = _object(item, ip)
        if item.get("type") != "text":
            what = f"a {_show(item.get('type'))} block inside a tool result (a chat tool message holds text only)"
            raise _untranslatable(f"{ip}.type", what, _TO_CHAT)
        parts.append({"type": "text", "text": _string(item.get("text"), f"{ip}.text")})
    return {"role": "tool", "tool_call_id": call_id, "content": _text_of(parts) if parts else ""}


def _anthropic_assistant(blocks: list[Any], p: str) -> dict[str, Any]:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(blocks):
        bp = f"{p}.content[{j}]"
        block = _object(block, bp)
        kind = block.get("type")
        if kind == "text":
            texts.append(_string(block.get("text"), f"{bp}.text"))
        elif kind == "tool_use":
            tool_input = block.get("input")
            arguments = _dumps({} if tool_input is None else _object(tool_input, f"{bp}.input"))
            if arguments is None:
                raise _bad(f"{bp}.input", f"'{bp}.input' cannot be encoded as JSON.")
            call_id = _string(block.get("id"), f"{bp}.id", empty=False)
            name = _string(block.get("name"), f"{bp}.name", empty=False)
            calls.append({"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}})
        elif kind not in ("thinking", "redacted_thinking"):
            raise _untranslatable(f"{bp}.type", f"a {_show(kind)} block in an assistant turn", _TO_CHAT)
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts or not calls else None}
    if calls:
        message["tool_calls"] = calls
    return message


def _anthropic_tools(tools: Any) -> list[dict[str, Any]]:
    if tools is None:
        return []
    out = []
    for i, tool in enumerate(_array(tools, "tools")):
        tool = _object(tool, f"tools[{i}]")
        if tool.get("type") not in (None, "custom"):
            raise _untranslatable(f"tools[{i}].type", f"the Anthropic tool {_show(tool.get('type'))}", _TO_CHAT)
        function: dict[str, Any] = {"name": _string(tool.get("name"), f"tools[{i}].name", empty=False)}
        if tool.get("description") is not None:
            function["description"] = _string(tool["description"], f"tools[{i}].description")
        function["parameters"] = _object(tool.get("input_schema"), f"tools[{i}].input_schema")
        if isinstance(tool.get("strict"), bool):
            function["strict"] = tool["strict"]
        out.append({"type": "function", "function": function})
    return out


def _anthropic_tool_choice(choice: dict[str, Any]) -> str | dict[str, Any]:
    kind = choice.get("type")
    simple = {"auto": "auto", "any": "required", "none": "none"}
    if isinstance(kind, str) and kind in simple:
        return simple[kind]
    if kind == "tool":
        return {"type": "function", "function": {"name": _string(choice.get("name"), "tool_choice.name", empty=False)}}
    raise _bad("tool_choice.type", "'tool_choice.type' must be 'auto', 'any', 'tool' or 'none'.")


def _anthropic_output_format(payload: dict[str, Any]) -> dict[str, Any] | None:
    fmt, param = None, "output_format"
    config = payload.get("output_config")
    if config is not None:
        fmt, param = _object(config, "output_config").get("format"), "output_config.format"
    if fmt is None:
        fmt, param = payload.get("output_format"), "output_format"
    if fmt is None:
        return None
    fmt = _object(fmt, param)
    if fmt.get("type") != "json_schema":
        raise _bad(f"{param}.type", f"'{param}.type' must be 'json_schema'.")
    schema = _object(fmt.get("schema"), f"{param}.schema")
    return {"type": "json_schema", "json_schema": {"name": "output", "schema": schema, "strict": True}}


# ------------------------------------------------------------------------------------ non-streamed answers


def messages_to_chat_response(data: dict[str, Any], model: str) -> dict[str, Any]:
    """An Anthropic Message → the `chat.completion` a chat client expects."""
    data = data if isinstance(data, dict) else {}
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    content = data.get("content")
    for block in content if isinstance(content, list) else []:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif block.get("type") == "tool_use":
            tool_input = block.get("input")
            arguments = _dumps(tool_input if isinstance(tool_input, dict) else {}) or "{}"
            calls.append(
                {
                    "id": block["id"] if isinstance(block.get("id"), str) else f"call_{len(calls)}",
                    "type": "function",
                    "function": {
                        "name": block["name"] if isinstance(block.get("name"), str) else "",
                        "arguments": arguments,
                    },
                }
            )
    message: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(texts) if texts or not calls else None,
        "refusal": None,
    }
    if calls:
        message["tool_calls"] = calls
    stop = data.get("stop_reason")
    finish = _TO_CHAT_FINISH.get(stop, "stop") if isinstance(stop, str) else ("tool_calls" if calls else "stop")
    return {
        "id": _chat_id(data.get("id")),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
        "usage": _openai_usage(parse_anthropic(data.get("usage"))),
    }


def chat_to_messages_response(data: dict[str, Any], model: str) -> dict[str, Any]:
    """A `chat.completion` → the Anthropic Message a Messages client expects."""
    data = data if isinstance(data, dict) else {}
    choices = data.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
    message: dict[str, Any] = choice["message"] if isinstance(choice.get("message"), dict) else {}
    content: list[dict[str, Any]] = []
    text = _answer_text(message.get("content"))
    refusal = message.get("refusal")
    if not text and isinstance(refusal, str):
        text = refusal
    if text:
        content.append({"type": "text", "text": text})
    calls = message.get("tool_calls")
    for k, call in enumerate(calls if isinstance(calls, list) else []):
        if not isinstance(call, dict):
            continue
        function: dict[str, Any] = call["function"] if isinstance(call.get("function"), dict) else {}
        content.append(
            {
                "type": "tool_use",
                "id": call["id"] if isinstance(call.get("id"), str) and call["id"] else f"toolu_{k}",
                "name": function["name"] if isinstance(function.get("name"), str) else "",
                "input": _answer_arguments(function.get("arguments")),
            }
        )
    has_calls = any(block["type"] == "tool_use" for block in content)
    return {
        "id": _message_id(data.get("id")),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": _anthropic_stop(choice.get("finish_reason"), has_calls),
        "stop_sequence": None,
        "usage": _anthropic_usage(parse_openai(data.get("usage"))),
    }


def _answer_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # some providers answer in parts
        return "".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def _answer_arguments(arguments: Any) -> dict[str, Any]:
    if isinstance(arguments, dict):
        return arguments
    if not isinstance(arguments, str) or not arguments.strip():
        return {}
    parsed = _loads(arguments.encode("utf-8", "replace"))
    return parsed if isinstance(parsed, dict) else {"_raw": arguments}


def _anthropic_stop(finish: Any, has_calls: bool) -> str:
    if has_calls and finish in (None, "stop", "tool_calls", "function_call"):
        return "tool_use"
    return _TO_ANTHROPIC_STOP.get(finish, "end_turn") if isinstance(finish, str) else "end_turn"


# --------------------------------------------------------------------------------- Messages stream → chat


class MessagesToChatStream:
    """An Anthropic Messages event stream → chat.completion.chunk frames, for a chat client."""

    __slots__ = (
        "model",
        "include_usage",
        "complete",
        "failure",
        "raw_usage",
        "_id",
        "_created",
        "_started",
        "_finished",
        "_finish",
        "_tools",
        "_streamed_args",
        "_start_input",
    )

    def __init__(self, model: str, include_usage: bool) -> None:
        self.model = model
        self.include_usage = include_usage
        self.complete = False
        self.failure: str | None = None
        self.raw_usage: dict[str, Any] | None = None
        self._id = _chat_id(None)
        self._created = int(time.time())
        self._started = False  # the role chunk went out
        self._finished = False  # the finish chunk went out
        self._finish: str | None = None
        self._tools: dict[int, int] = {}  # Anthropic block index → tool call ordinal
        self._streamed_args: set[int] = set()  # blocks whose input arrived as input_json_delta
        self._start_input: dict[int, dict[str, Any]] = {}

    def feed(self, event: str | None, data: bytes) -> list[bytes]:
        parsed = _loads(data)
        if not isinstance(parsed, dict):
            return []
        kind = event if event is not None else parsed.get("type")
        index = parsed.get("index")
        index = index if isinstance(index, int) and not isinstance(index, bool) else -1
        if kind == "message_start":
            message = parsed.get("message")
            if isinstance(message, dict):
                if isinstance(message.get("id"), str) and message["id"] and not self._started:
                    self._id = _chat_id(message["id"])
                if isinstance(message.get("usage"), dict):
                    self.raw_usage = merge_anthropic(self.raw_usage, message["usage"])
            return self._role()
        if kind == "content_block_start":
            return self._block_start(parsed.get("content_block"), index)
        if kind == "content_block_delta":
            delta = parsed.get("delta")
            if not isinstance(delta, dict):
                return []
            if delta.get("type") == "text_delta" and isinstance(delta.get("text"), str) and delta["text"]:
                return self._role() + [self._chunk({"content": delta["text"]})]
            fragment = delta.get("partial_json")
            if delta.get("type") == "input_json_delta" and index in self._tools and isinstance(fragment, str):
                self._streamed_args.add(index)
                if fragment:
                    return self._role() + [
                        self._tool_chunk({"index": self._tools[index], "function": {"arguments": fragment}})
                    ]
            return []
        if kind == "content_block_stop":
            held = self._start_input.pop(index, None)
            if held and index not in self._streamed_args:  # a tool_use that came whole, not in fragments
                arguments = _dumps(held) or "{}"
                return self._role() + [
                    self._tool_chunk({"index": self._tools[index], "function": {"arguments": arguments}})
                ]
            return []
        if kind == "message_delta":
            if isinstance(parsed.get("usage"), dict):
                self.raw_usage = merge_anthropic(self.raw_usage, parsed["usage"])
            delta = parsed.get("delta")
            stop = delta.get("stop_reason") if isinstance(delta, dict) else None
            if isinstance(stop, str):
                self._finish = _TO_CHAT_FINISH.get(stop, "stop")
                return self._finish_chunk()
            return []
        if kind == "message_stop":
            self.complete = True
            return self._finish_chunk()
        if kind == "error":
            err = parsed.get("error")
            err = err if isinstance(err, dict) else {}
            message = err.get("message")
            self.failure = (message if isinstance(message, str) and message else "provider stream error")[:500]
            kind_of = err.get("type") if isinstance(err.get("type"), str) else "api_error"
            body = {"error": {"message": self.failure, "type": kind_of, "code": None, "param": None}}
            return [sse(None, orjson.dumps(body))]
        return []  # ping, thinking and signature deltas, anything newer

    def close(self) -> list[bytes]:
        frames = []
        if self.include_usage:
            chunk = {
                "id": self._id,
                "object": "chat.completion.chunk",
                "created": self._created,
                "model": self.model,
                "choices": [],
                "usage": _openai_usage(parse_anthropic(self.raw_usage)),
            }
            frames.append(sse(None, orjson.dumps(chunk)))
        frames.append(_DONE)
        return frames

    def usage(self) -> tuple[Usage, bool] | None:
        return parse_anthropic(self.raw_usage)

    def reported_cost(self) -> str | None:
        return None

    def _block_start(self, block: Any, index: int) -> list[bytes]:
        if not isinstance(block, dict):
            return []
        if block.get("type") == "text" and isinstance(block.get("text"), str) and block["text"]:
            return self._role() + [self._chunk({"content": block["text"]})]
        if block.get("type") != "tool_use" or index in self._tools:
            return []
        self._tools[index] = ordinal = len(self._tools)
        if isinstance(block.get("input"), dict) and block["input"]:
            self._start_input[index] = block["input"]
        call = {
            "index": ordinal,
            "id": block["id"] if isinstance(block.get("id"), str) else f"call_{ordinal}",
            "type": "function",
            "function": {"name": block["name"] if isinstance(block.get("name"), str) else "", "arguments": ""},
        }
        return self._role() + [self._tool_chunk(call)]

    def _role(self) -> list[bytes]:
        if self._started:
            return []
        self._started = True
        return [self._chunk({"role": "assistant", "content": ""})]

    def _finish_chunk(self) -> list[bytes]:
        if self._finished:
            return []
        self._finished = True
        return self._role() + [self._chunk({}, self._finish or ("tool_calls" if self._tools else "stop"))]

    def _tool_chunk(self, call: dict[str, Any]) -> bytes:
        return self._chunk({"tool_calls": [call]})

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        chunk: dict[str, Any] = {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if self.include_usage:
            chunk["usage"] = None  # as OpenAI sends every chunk before the usage chunk
        return sse(None, orjson.dumps(chunk))


# --------------------------------------------------------------------------------- chat stream → Messages


class ChatToMessagesStream:
    """chat.completion.chunk events (then `[DONE]`) → Anthropic Messages events, for a Messages client."""

    __slots__ = (
        "model",
        "complete",
        "failure",
        "raw_usage",
        "_id",
        "_started",
        "_blocks",
        "_open",
        "_tools",
        "_stop",
        "_delta_sent",
    )

    def __init__(self, model: str) -> None:
        self.model = model
        self.complete = False
        self.failure: str | None = None
        self.raw_usage: dict[str, Any] | None = None
        self._id: str | None = None
        self._started = False
        self._blocks = 0  # content blocks opened so far (the next block's index)
        self._open: tuple[str, int] | None = None  # ("text" | "tool", block index) of the open block
        self._tools: dict[int | str, tuple[int, str]] = {}  # chat tool call key → (block index, call id)
        self._stop: str | None = None  # the chat finish_reason, once seen
        self._delta_sent = False

    def feed(self, event: str | None, data: bytes) -> list[bytes]:
        if data.strip() == b"[DONE]":
            self.complete = True
            return self._begin(None) + self._close_block() + self._message_delta()
        chunk = _loads(data)
        if not isinstance(chunk, dict):
            return []
        if chunk.get("error") is not None:  # OpenRouter and others report a failure mid-stream in a chunk
            err = chunk["error"]
            message = err.get("message") if isinstance(err, dict) else err
            self.failure = (message if isinstance(message, str) and message else "provider stream error")[:500]
            body = {"type": "error", "error": {"type": "api_error", "message": self.failure}}
            return [sse("error", orjson.dumps(body))]
        out = self._begin(chunk.get("id"))
        if isinstance(chunk.get("usage"), dict):
            self.raw_usage = chunk["usage"]
        choices = chunk.get("choices")
        for choice in choices if isinstance(choices, list) else []:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue  # we only ever ask for one choice
            delta = choice.get("delta")
            if isinstance(delta, dict):
                for key in ("content", "refusal"):
                    if isinstance(delta.get(key), str) and delta[key]:
                        out += self._text(delta[key])
                calls = delta.get("tool_calls")
                for call in calls if isinstance(calls, list) else []:
                    if isinstance(call, dict):
                        out += self._tool(call)
            finish = choice.get("finish_reason")
            if isinstance(finish, str) and finish:
                self._stop = finish
                out += self._close_block()
        if self._stop is not None and not choices and self.raw_usage is not None:
            out += self._message_delta()  # the usage chunk after the finish chunk
        return out

    def close(self) -> list[bytes]:
        return [self._event("message_stop", {"type": "message_stop"})]

    def usage(self) -> tuple[Usage, bool] | None:
        return parse_openai(self.raw_usage)

    def reported_cost(self) -> str | None:
        return reported_cost(self.raw_usage)

    def _begin(self, chat_id: Any) -> list[bytes]:
        if self._started:
            return []
        self._started = True
        self._id = _message_id(chat_id)
        message: dict[str, Any] = {
            "id": self._id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            # Anthropic sends the input counts here; a chat provider tells them only at the end, in the usage
            # chunk, so they follow in message_delta (cumulative, as newer Messages API versions send them).
            "usage": {
                "input_tokens": 0,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "output_tokens": 1,
            },
        }
        return [self._event("message_start", {"type": "message_start", "message": message})]

    def _text(self, text: str) -> list[bytes]:
        out = []
        if self._open is None or self._open[0] != "text":
            out += self._open_block("text", {"type": "text", "text": ""})
        assert self._open is not None
        delta = {"type": "text_delta", "text": text}
        out.append(
            self._event("content_block_delta", {"type": "content_block_delta", "index": self._open[1], "delta": delta})
        )
        return out

    def _tool(self, call: dict[str, Any]) -> list[bytes]:
        function: dict[str, Any] = call["function"] if isinstance(call.get("function"), dict) else {}
        arguments = function.get("arguments") if isinstance(function.get("arguments"), str) else ""
        call_id = call.get("id") if isinstance(call.get("id"), str) and call["id"] else None
        index = call.get("index")
        key: int | str
        if isinstance(index, int) and not isinstance(index, bool):
            key = index
        elif call_id is not None:
            key = call_id
        elif self._open is not None and self._open[0] == "tool":  # a fragment without index or id: the open call
            key = next((k for k, (block, _) in self._tools.items() if block == self._open[1]), len(self._tools))
        else:
            key = len(self._tools)
        if key in self._tools and call_id is not None and call_id != self._tools[key][1]:
            key = f"{key}:{call_id}"  # a provider that numbers every call 0: a new id is a new call
        out = []
        if key not in self._tools:
            call_id = call_id or f"toolu_{self._blocks}"
            name = function.get("name") if isinstance(function.get("name"), str) else ""
            out += self._open_block("tool", {"type": "tool_use", "id": call_id, "name": name, "input": {}})
            self._tools[key] = (self._blocks - 1, call_id)
        block = self._tools[key][0]
        if arguments and self._open == ("tool", block):
            delta = {"type": "input_json_delta", "partial_json": arguments}
            out.append(
                self._event("content_block_delta", {"type": "content_block_delta", "index": block, "delta": delta})
            )
        return out

    def _open_block(self, kind: str, content_block: dict[str, Any]) -> list[bytes]:
        out = self._close_block()
        index = self._blocks
        self._blocks += 1
        self._open = (kind, index)
        start = {"type": "content_block_start", "index": index, "content_block": content_block}
        return out + [self._event("content_block_start", start)]

    def _close_block(self) -> list[bytes]:
        if self._open is None:
            return []
        index = self._open[1]
        self._open = None
        return [self._event("content_block_stop", {"type": "content_block_stop", "index": index})]

    def _message_delta(self) -> list[bytes]:
        if self._delta_sent:
            return []
        self._delta_sent = True
        delta = {"stop_reason": _anthropic_stop(self._stop, bool(self._tools)), "stop_sequence": None}
        usage = _anthropic_usage(parse_openai(self.raw_usage))
        return [self._event("message_delta", {"type": "message_delta", "delta": delta, "usage": usage})]

    @staticmethod
    def _event(name: str, body: dict[str, Any]) -> bytes:
        return sse(name, orjson.dumps(body))

"""Request bodies, both ways: a chat completions request → an Anthropic Messages request, and back. What is
mapped, dropped or refused is decided in the package docstring.
"""

from __future__ import annotations

from typing import Any

import orjson

from agentledger.core.errors import InvalidRequest
from agentledger.formats.translate._common import (
    DEFAULT_MAX_TOKENS,
    array,
    bad,
    data_url,
    dumps,
    max_tokens,
    number,
    object_,
    show,
    stops,
    string,
    text_of,
    untranslatable,
)

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
_IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")


def chat_to_messages_request(payload: dict[str, Any]) -> dict[str, Any]:
    """A chat completions request body → the Anthropic Messages request body that asks the same."""
    if not isinstance(payload, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    _refuse_chat_only(payload)
    system, turns = _chat_messages(payload.get("messages"))
    out: dict[str, Any] = {"model": payload.get("model")}
    if system:
        out["system"] = text_of(system)
    out["messages"] = turns

    limit = payload.get("max_completion_tokens")
    param = "max_completion_tokens"
    if limit is None:
        limit, param = payload.get("max_tokens"), "max_tokens"
    out["max_tokens"] = DEFAULT_MAX_TOKENS if limit is None else max_tokens(limit, param)
    if payload.get("stop") is not None:
        sequences = stops(payload["stop"], "stop")
        if sequences:
            out["stop_sequences"] = sequences
    if payload.get("temperature") is not None:
        out["temperature"] = min(number(payload["temperature"], "temperature"), 1)
    if payload.get("top_p") is not None:
        out["top_p"] = number(payload["top_p"], "top_p")

    tools = _chat_tools(payload.get("tools"))
    if tools:
        out["tools"] = tools
        choice = _chat_tool_choice(payload.get("tool_choice"))
        parallel = payload.get("parallel_tool_calls")
        if parallel is not None and not isinstance(parallel, bool):
            raise bad("parallel_tool_calls", "'parallel_tool_calls' must be a boolean.")
        if parallel is False and (choice is None or choice["type"] != "none"):
            choice = {**(choice or {"type": "auto"}), "disable_parallel_tool_use": True}
        if choice is not None:
            out["tool_choice"] = choice

    output_format = _chat_response_format(payload.get("response_format"))
    if output_format is not None:
        out["output_config"] = {"format": output_format}
    user = payload.get("user")
    if user is not None:
        out["metadata"] = {"user_id": string(user, "user")}
    if payload.get("stream") is True:
        out["stream"] = True
    return out


def _refuse_chat_only(payload: dict[str, Any]) -> None:
    n = payload.get("n")
    if n is not None and n != 1:
        raise untranslatable("n", "more than one choice (n > 1)", _TO_MESSAGES)
    if payload.get("logprobs"):
        raise untranslatable("logprobs", "log probabilities", _TO_MESSAGES)
    if payload.get("top_logprobs"):
        raise untranslatable("top_logprobs", "log probabilities", _TO_MESSAGES)
    if payload.get("logit_bias"):
        raise untranslatable("logit_bias", "a logit bias", _TO_MESSAGES)
    modalities = payload.get("modalities")
    if modalities is not None and (not isinstance(modalities, list) or any(m != "text" for m in modalities)):
        raise untranslatable("modalities", "an output modality other than text", _TO_MESSAGES)
    for field, what in _CHAT_REFUSED.items():
        if payload.get(field) is not None:
            raise untranslatable(field, what, _TO_MESSAGES)


def _chat_messages(messages: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Chat messages → (system text blocks, alternating Messages turns)."""
    if not isinstance(messages, list) or not messages:
        raise bad("messages", "'messages' must be a non-empty array.")
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        p = f"messages[{i}]"
        message = object_(message, p)
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
            raise untranslatable(f"{p}.role", "a legacy 'function' message (use 'tool')", _TO_MESSAGES)
        else:
            raise bad(f"{p}.role", f"'{p}.role' {show(role)} is not a chat role.")
    if not turns:
        raise bad("messages", "'messages' must hold at least one user or assistant message with content.")
    for turn in turns:
        turn["content"] = text_of(turn["content"])
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
    for j, part in enumerate(array(content, param)):
        p = f"{param}[{j}]"
        part = object_(part, p)
        kind = part.get("type")
        if kind not in allowed:
            if kind in ("text", "image_url", "file", "refusal", "input_audio"):
                raise untranslatable(f"{p}.type", f"a {kind!r} part in this message", _TO_MESSAGES)
            raise bad(f"{p}.type", f"'{p}.type' {show(kind)} is not a content part type.")
        if kind in ("text", "refusal"):
            text = string(part.get(kind), f"{p}.{kind}")
            if not text:
                continue
            block: dict[str, Any] = {"type": "text", "text": text}
        elif kind == "image_url":
            image = part.get("image_url")
            block = _chat_image(image.get("url") if isinstance(image, dict) else image, f"{p}.image_url.url")
        else:  # file
            block = _chat_file(object_(part.get("file"), f"{p}.file"), f"{p}.file")
        if isinstance(part.get("cache_control"), dict):
            block["cache_control"] = part["cache_control"]
        blocks.append(block)
    return blocks


def _chat_image(url: Any, param: str) -> dict[str, Any]:
    url = string(url, param, empty=False)
    if url[:5].lower() == "data:":
        media, data = data_url(url, param)
        if media not in _IMAGE_TYPES:
            raise untranslatable(param, f"an image of type {show(media)} (jpeg, png, gif and webp can)", _TO_MESSAGES)
        return {"type": "image", "source": {"type": "base64", "media_type": media, "data": data}}
    if url[:8].lower() == "https://" or url[:7].lower() == "http://":
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise bad(param, f"'{param}' must be an http(s) URL or a base64 data: URL.")


def _chat_file(file: dict[str, Any], param: str) -> dict[str, Any]:
    data = file.get("file_data")
    if not isinstance(data, str) or data[:5].lower() != "data:":
        raise untranslatable(param, "a file other than an inline PDF (file_data as a data: URL)", _TO_MESSAGES)
    media, encoded = data_url(data, f"{param}.file_data")
    if media != "application/pdf":
        raise untranslatable(f"{param}.file_data", f"a file of type {show(media)} (PDF can)", _TO_MESSAGES)
    return {"type": "document", "source": {"type": "base64", "media_type": media, "data": encoded}}


def _chat_assistant(message: dict[str, Any], p: str) -> list[dict[str, Any]]:
    for field, what in (("function_call", "a legacy 'function_call'"), ("audio", "an audio answer")):
        if message.get(field) is not None:
            raise untranslatable(f"{p}.{field}", what, _TO_MESSAGES)
    blocks = _chat_parts(message.get("content"), f"{p}.content", ("text", "refusal"))
    refusal = message.get("refusal")
    if not blocks and isinstance(refusal, str) and refusal:
        blocks.append({"type": "text", "text": refusal})
    calls = message.get("tool_calls")
    if calls is None:
        return blocks
    for k, call in enumerate(array(calls, f"{p}.tool_calls")):
        cp = f"{p}.tool_calls[{k}]"
        call = object_(call, cp)
        if call.get("type", "function") != "function":
            raise untranslatable(f"{cp}.type", f"a {show(call.get('type'))} tool call", _TO_MESSAGES)
        function = object_(call.get("function"), f"{cp}.function")
        blocks.append(
            {
                "type": "tool_use",
                "id": string(call.get("id"), f"{cp}.id", empty=False),
                "name": string(function.get("name"), f"{cp}.function.name", empty=False),
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
        raise bad(param, f"'{param}' must be a string of JSON.")
    try:
        parsed = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        raise bad(param, f"'{param}' is not valid JSON.") from None
    if not isinstance(parsed, dict):
        raise bad(param, f"'{param}' must encode a JSON object.")
    return parsed


def _chat_tool_result(message: dict[str, Any], p: str) -> dict[str, Any]:
    block: dict[str, Any] = {
        "type": "tool_result",
        "tool_use_id": string(message.get("tool_call_id"), f"{p}.tool_call_id", empty=False),
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
    for i, tool in enumerate(array(tools, "tools")):
        tool = object_(tool, f"tools[{i}]")
        if tool.get("type", "function") != "function":
            raise untranslatable(f"tools[{i}].type", f"a {show(tool.get('type'))} tool", _TO_MESSAGES)
        function = object_(tool.get("function"), f"tools[{i}].function")
        schema = function.get("parameters")
        translated: dict[str, Any] = {
            "name": string(function.get("name"), f"tools[{i}].function.name", empty=False),
            "input_schema": {"type": "object", "properties": {}}
            if schema is None
            else object_(schema, f"tools[{i}].function.parameters"),
        }
        description = function.get("description")
        if description is not None:
            translated["description"] = string(description, f"tools[{i}].function.description")
        out.append(translated)
    return out


def _chat_tool_choice(choice: Any) -> dict[str, Any] | None:
    if choice is None:
        return None
    simple = {"auto": "auto", "none": "none", "required": "any"}
    if isinstance(choice, str) and choice in simple:
        return {"type": simple[choice]}
    if isinstance(choice, dict) and choice.get("type") == "function":
        function = object_(choice.get("function"), "tool_choice.function")
        return {"type": "tool", "name": string(function.get("name"), "tool_choice.function.name", empty=False)}
    if isinstance(choice, dict) and choice.get("type") in ("allowed_tools", "custom"):
        raise untranslatable("tool_choice", f"a {choice['type']!r} tool choice", _TO_MESSAGES)
    raise bad("tool_choice", "'tool_choice' must be 'auto', 'none', 'required' or a named function.")


def _chat_response_format(fmt: Any) -> dict[str, Any] | None:
    if fmt is None:
        return None
    fmt = object_(fmt, "response_format")
    kind = fmt.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        raise untranslatable("response_format", "JSON mode without a schema (json_object)", _TO_MESSAGES)
    if kind != "json_schema":
        raise bad("response_format.type", "'response_format.type' must be 'text', 'json_object' or 'json_schema'.")
    spec = object_(fmt.get("json_schema"), "response_format.json_schema")
    return {"type": "json_schema", "schema": object_(spec.get("schema"), "response_format.json_schema.schema")}


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
        raise bad("messages", "'messages' must be a non-empty array.")
    for i, message in enumerate(raw):
        messages += _anthropic_message(object_(message, f"messages[{i}]"), f"messages[{i}]")
    if raw[-1].get("role") == "assistant":
        raise untranslatable(
            f"messages[{len(raw) - 1}]", "a final assistant turn (prefill, which Messages continues)", _TO_CHAT
        )
    out: dict[str, Any] = {"model": payload.get("model"), "messages": messages}

    if payload.get("max_tokens") is not None:
        out["max_tokens"] = max_tokens(payload["max_tokens"], "max_tokens")
    if payload.get("stop_sequences") is not None:
        sequences = stops(payload["stop_sequences"], "stop_sequences")
        if sequences:
            out["stop"] = sequences
    for field in ("temperature", "top_p"):
        if payload.get(field) is not None:
            out[field] = number(payload[field], field)

    tools = _anthropic_tools(payload.get("tools"))
    if tools:
        out["tools"] = tools
        choice = payload.get("tool_choice")
        if choice is not None:
            out["tool_choice"] = _anthropic_tool_choice(object_(choice, "tool_choice"))
            if choice.get("disable_parallel_tool_use") is True and out["tool_choice"] != "none":
                out["parallel_tool_calls"] = False

    response_format = _anthropic_output_format(payload)
    if response_format is not None:
        out["response_format"] = response_format
    metadata = payload.get("metadata")
    if isinstance(metadata, dict) and metadata.get("user_id") is not None:
        out["user"] = string(metadata["user_id"], "metadata.user_id")
    if payload.get("stream") is True:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    return out


def _refuse_messages_only(payload: dict[str, Any]) -> None:
    thinking = payload.get("thinking")
    if thinking is not None and not (isinstance(thinking, dict) and thinking.get("type") == "disabled"):
        raise untranslatable("thinking", "extended thinking", _TO_CHAT)
    for field, what in _MESSAGES_REFUSED.items():
        if payload.get(field) not in (None, []):
            raise untranslatable(field, what, _TO_CHAT)


def _system_text(system: Any) -> str:
    if system is None or isinstance(system, str):
        return system or ""
    texts = []
    for i, block in enumerate(array(system, "system")):
        block = object_(block, f"system[{i}]")
        if block.get("type") != "text":
            raise bad(f"system[{i}].type", "'system' blocks must be text blocks.")
        texts.append(string(block.get("text"), f"system[{i}].text"))
    return "\n\n".join(t for t in texts if t)


def _anthropic_message(message: dict[str, Any], p: str) -> list[dict[str, Any]]:
    role = message.get("role")
    content = message.get("content")
    if role not in ("user", "assistant"):
        raise bad(f"{p}.role", f"'{p}.role' must be 'user' or 'assistant'.")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    blocks = array(content, f"{p}.content")
    if role == "assistant":
        return [_anthropic_assistant(blocks, p)]
    tool_messages: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for j, block in enumerate(blocks):
        bp = f"{p}.content[{j}]"
        block = object_(block, bp)
        kind = block.get("type")
        if kind == "text":
            parts.append({"type": "text", "text": string(block.get("text"), f"{bp}.text")})
        elif kind == "image":
            parts.append(_anthropic_image(object_(block.get("source"), f"{bp}.source"), f"{bp}.source"))
        elif kind == "document":
            parts.append(_anthropic_document(object_(block.get("source"), f"{bp}.source"), f"{bp}.source"))
        elif kind == "tool_result":
            tool_messages.append(_anthropic_tool_result(block, bp))
        else:
            raise untranslatable(f"{bp}.type", f"a {show(kind)} block in a user turn", _TO_CHAT)
    if parts:
        tool_messages.append({"role": "user", "content": text_of(parts)})
    return tool_messages


def _anthropic_image(source: dict[str, Any], param: str) -> dict[str, Any]:
    kind = source.get("type")
    if kind == "base64":
        media = string(source.get("media_type"), f"{param}.media_type", empty=False)
        data = string(source.get("data"), f"{param}.data")
        return {"type": "image_url", "image_url": {"url": f"data:{media};base64,{data}"}}
    if kind == "url":
        return {"type": "image_url", "image_url": {"url": string(source.get("url"), f"{param}.url", empty=False)}}
    raise untranslatable(f"{param}.type", f"an image source of type {show(kind)}", _TO_CHAT)


def _anthropic_document(source: dict[str, Any], param: str) -> dict[str, Any]:
    kind = source.get("type")
    if kind == "base64" and source.get("media_type") == "application/pdf":
        data = string(source.get("data"), f"{param}.data")
        return {
            "type": "file",
            "file": {"filename": "document.pdf", "file_data": f"data:application/pdf;base64,{data}"},
        }
    if kind == "text":
        return {"type": "text", "text": string(source.get("data"), f"{param}.data")}
    raise untranslatable(f"{param}.type", "a document other than an inline PDF or plain text", _TO_CHAT)


def _anthropic_tool_result(block: dict[str, Any], bp: str) -> dict[str, Any]:
    call_id = string(block.get("tool_use_id"), f"{bp}.tool_use_id", empty=False)
    content = block.get("content")
    if content is None or isinstance(content, str):
        return {"role": "tool", "tool_call_id": call_id, "content": content or ""}
    parts: list[dict[str, Any]] = []
    for k, item in enumerate(array(content, f"{bp}.content")):
        ip = f"{bp}.content[{k}]"
        item = object_(item, ip)
        if item.get("type") != "text":
            what = f"a {show(item.get('type'))} block inside a tool result (a chat tool message holds text only)"
            raise untranslatable(f"{ip}.type", what, _TO_CHAT)
        parts.append({"type": "text", "text": string(item.get("text"), f"{ip}.text")})
    return {"role": "tool", "tool_call_id": call_id, "content": text_of(parts) if parts else ""}


def _anthropic_assistant(blocks: list[Any], p: str) -> dict[str, Any]:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(blocks):
        bp = f"{p}.content[{j}]"
        block = object_(block, bp)
        kind = block.get("type")
        if kind == "text":
            texts.append(string(block.get("text"), f"{bp}.text"))
        elif kind == "tool_use":
            tool_input = block.get("input")
            arguments = dumps({} if tool_input is None else object_(tool_input, f"{bp}.input"))
            if arguments is None:
                raise bad(f"{bp}.input", f"'{bp}.input' cannot be encoded as JSON.")
            call_id = string(block.get("id"), f"{bp}.id", empty=False)
            name = string(block.get("name"), f"{bp}.name", empty=False)
            calls.append({"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}})
        elif kind not in ("thinking", "redacted_thinking"):
            raise untranslatable(f"{bp}.type", f"a {show(kind)} block in an assistant turn", _TO_CHAT)
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts or not calls else None}
    if calls:
        message["tool_calls"] = calls
    return message


def _anthropic_tools(tools: Any) -> list[dict[str, Any]]:
    if tools is None:
        return []
    out = []
    for i, tool in enumerate(array(tools, "tools")):
        tool = object_(tool, f"tools[{i}]")
        if tool.get("type") not in (None, "custom"):
            raise untranslatable(f"tools[{i}].type", f"the Anthropic tool {show(tool.get('type'))}", _TO_CHAT)
        function: dict[str, Any] = {"name": string(tool.get("name"), f"tools[{i}].name", empty=False)}
        if tool.get("description") is not None:
            function["description"] = string(tool["description"], f"tools[{i}].description")
        function["parameters"] = object_(tool.get("input_schema"), f"tools[{i}].input_schema")
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
        return {"type": "function", "function": {"name": string(choice.get("name"), "tool_choice.name", empty=False)}}
    raise bad("tool_choice.type", "'tool_choice.type' must be 'auto', 'any', 'tool' or 'none'.")


def _anthropic_output_format(payload: dict[str, Any]) -> dict[str, Any] | None:
    fmt, param = None, "output_format"
    config = payload.get("output_config")
    if config is not None:
        fmt, param = object_(config, "output_config").get("format"), "output_config.format"
    if fmt is None:
        fmt, param = payload.get("output_format"), "output_format"
    if fmt is None:
        return None
    fmt = object_(fmt, param)
    if fmt.get("type") != "json_schema":
        raise bad(f"{param}.type", f"'{param}.type' must be 'json_schema'.")
    schema = object_(fmt.get("schema"), f"{param}.schema")
    return {"type": "json_schema", "json_schema": {"name": "output", "schema": schema, "strict": True}}

"""Non-streamed answers, both ways: an Anthropic Message → a `chat.completion`, and back."""

from __future__ import annotations

import time
from typing import Any

from agentledger.core.usage import parse_anthropic, parse_openai
from agentledger.formats.translate._common import (
    TO_CHAT_FINISH,
    anthropic_stop,
    anthropic_usage,
    chat_id,
    dumps,
    loads,
    message_id,
    openai_usage,
)

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
            arguments = dumps(tool_input if isinstance(tool_input, dict) else {}) or "{}"
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
    finish = TO_CHAT_FINISH.get(stop, "stop") if isinstance(stop, str) else ("tool_calls" if calls else "stop")
    return {
        "id": chat_id(data.get("id")),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
        "usage": openai_usage(parse_anthropic(data.get("usage"))),
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
        "id": message_id(data.get("id")),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": anthropic_stop(choice.get("finish_reason"), has_calls),
        "stop_sequence": None,
        "usage": anthropic_usage(parse_openai(data.get("usage"))),
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
    parsed = loads(arguments.encode("utf-8", "replace"))
    return parsed if isinstance(parsed, dict) else {"_raw": arguments}

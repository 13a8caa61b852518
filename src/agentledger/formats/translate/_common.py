"""What the translators share: request-field validators and error helpers, JSON in and out, ids, usage
shapes, stop-reason maps and the default `max_tokens`. Package-internal.
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson

from agentledger.core.bounds import MAX_TOKENS
from agentledger.core.errors import InvalidRequest
from agentledger.core.usage import Usage

DEFAULT_MAX_TOKENS = 4096
TO_CHAT_FINISH = {
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


# ---------------------------------------------------------------------------------------------- helpers


def bad(param: str, message: str) -> InvalidRequest:
    return InvalidRequest(message, param=param)


def untranslatable(param: str, what: str, target: str) -> InvalidRequest:
    return InvalidRequest(f"'{param}': {what} cannot be translated to {target}.", param=param)


def show(value: Any) -> str:
    """A client's value quoted in an error message, kept short."""
    text = value if isinstance(value, str) else type(value).__name__
    return repr(text[:40])


def loads(data: bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return None


def dumps(value: Any) -> str | None:
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # orjson.JSONEncodeError: an integer past 64 bits, a lone surrogate, too deep
        return None


def string(value: Any, param: str, *, empty: bool = True) -> str:
    if not isinstance(value, str) or (not empty and not value):
        raise bad(param, f"'{param}' must be a {'' if empty else 'non-empty '}string.")
    return value


def object_(value: Any, param: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise bad(param, f"'{param}' must be an object.")
    return value


def array(value: Any, param: str) -> list[Any]:
    if not isinstance(value, list):
        raise bad(param, f"'{param}' must be an array.")
    return value


def number(value: Any, param: str) -> int | float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise bad(param, f"'{param}' must be a number.")
    return value


def max_tokens(value: Any, param: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_TOKENS:
        raise bad(param, f"'{param}' must be a positive integer.")
    return value


def stops(value: Any, param: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    return [string(s, f"{param}[{i}]") for i, s in enumerate(array(value, param))]


def data_url(url: str, param: str) -> tuple[str, str]:
    """`data:<media type>[;params];base64,<data>` → (media type, data)."""
    header, comma, data = url[5:].partition(",")
    params = header.split(";")
    if not comma or "base64" not in params[1:]:
        raise bad(param, f"'{param}': only base64 data: URLs can be translated.")
    return params[0].strip().lower(), data


def text_of(blocks: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """A lone plain text block is sent as a string, the shorthand both formats accept."""
    if len(blocks) == 1 and blocks[0].get("type") == "text" and set(blocks[0]) == {"type", "text"}:
        text: str = blocks[0]["text"]
        return text
    return blocks


def chat_id(anthropic_id: Any) -> str:
    if isinstance(anthropic_id, str) and anthropic_id:
        return "chatcmpl-" + anthropic_id.removeprefix("msg_")
    return "chatcmpl-" + uuid.uuid4().hex


def message_id(chat_id: Any) -> str:
    if isinstance(chat_id, str) and chat_id:
        return "msg_" + chat_id.removeprefix("chatcmpl-")
    return "msg_" + uuid.uuid4().hex


def openai_usage(parsed: tuple[Usage, bool] | None) -> dict[str, Any]:
    u = parsed[0] if parsed is not None else Usage()
    return {
        "prompt_tokens": u.input_tokens,
        "completion_tokens": u.output_tokens,
        "total_tokens": u.total_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_input_tokens, "cache_write_tokens": u.cache_write_tokens},
    }


def anthropic_usage(parsed: tuple[Usage, bool] | None) -> dict[str, Any]:
    u = parsed[0] if parsed is not None else Usage()
    return {
        "input_tokens": max(u.input_tokens - u.cached_input_tokens - u.cache_write_tokens, 0),
        "cache_creation_input_tokens": u.cache_write_tokens,
        "cache_read_input_tokens": u.cached_input_tokens,
        "output_tokens": u.output_tokens,
    }


def anthropic_stop(finish: Any, has_calls: bool) -> str:
    if has_calls and finish in (None, "stop", "tool_calls", "function_call"):
        return "tool_use"
    return _TO_ANTHROPIC_STOP.get(finish, "end_turn") if isinstance(finish, str) else "end_turn"

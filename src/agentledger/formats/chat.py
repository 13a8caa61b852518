"""OpenAI Chat Completions (`POST /v1/chat/completions`), as clients and OpenAI-compatible providers speak it."""

from __future__ import annotations

from typing import Any

import orjson

from agentledger.core.errors import InvalidRequest
from agentledger.core.usage import Usage, parse_openai, reported_cost
from agentledger.formats.base import CHAT, Format, Parsed, loads, model_of, stream_of
from agentledger.formats.errors import chat_error_frame, openai_body

DONE = b"data: [DONE]\n\n"


def parse(payload: dict[str, Any], body: bytes) -> Parsed:
    model = model_of(payload)
    messages = payload.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' must be a non-empty array.", param="messages")
    stream = stream_of(payload)
    options = payload.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise InvalidRequest("'stream_options' must be an object.", param="stream_options")
    wants_usage = bool(options and options.get("include_usage"))
    if stream and not wants_usage:
        # Streams are always priced: ask for the usage chunk, and hide it from this client later.
        payload = {**payload, "stream_options": {**(options or {}), "include_usage": True}}
        return Parsed(model, stream, wants_usage, payload, orjson.dumps(payload))
    return Parsed(model, stream, wants_usage, payload, body)


def usage(data: Any) -> tuple[Usage, bool] | None:
    return parse_openai(data.get("usage")) if isinstance(data, dict) else None


def may_hold_usage(data: bytes) -> bool:
    return b'"usage"' in data and b'"usage":null' not in data and b'"usage": null' not in data


class ChatStream:
    """Chunks pass through as bytes; only one that may carry usage (or an error) is parsed."""

    __slots__ = ("wants_usage", "raw_usage", "complete", "failure")

    def __init__(self, wants_usage: bool) -> None:
        self.wants_usage = wants_usage
        self.raw_usage: dict[str, Any] | None = None
        self.complete = False
        self.failure: str | None = None

    def feed(self, event: str | None, data: bytes) -> list[bytes]:
        if data == b"[DONE]":
            self.complete = True
            return []
        if may_hold_usage(data):
            chunk = loads(data)
            if isinstance(chunk, dict) and isinstance(chunk.get("usage"), dict):
                self.raw_usage = chunk["usage"]
                if not chunk.get("choices") and not self.wants_usage:
                    return []  # the usage-only chunk we forced; this client did not ask for it
        elif data.startswith(b'{"error"'):
            # OpenRouter and others report a failure mid-stream as a chunk holding only an error.
            chunk = loads(data)
            err = chunk.get("error") if isinstance(chunk, dict) else None
            self.failure = str(err.get("message") if isinstance(err, dict) else err)[:500]
        return [b"data: " + data + b"\n\n"]

    def close(self) -> list[bytes]:
        return [DONE]

    def usage(self) -> tuple[Usage, bool] | None:
        return parse_openai(self.raw_usage)

    def reported_cost(self) -> str | None:
        return reported_cost(self.raw_usage)


CHAT_FORMAT = Format(
    name=CHAT,
    endpoint="/chat/completions",
    parse=parse,
    usage=usage,
    stream=lambda parsed: ChatStream(parsed.wants_usage),
    error_body=openai_body,
    error_frame=chat_error_frame,
)

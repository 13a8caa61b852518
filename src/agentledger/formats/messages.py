"""Anthropic Messages (`POST /v1/messages`), as the anthropic SDK, Claude Code and Anthropic speak it.

Usage arrives without being asked for: in `message_start` (input and cache counts) and in each
`message_delta` (cumulative output; newer API versions repeat the input counts there).
"""

from __future__ import annotations

from typing import Any

from agentledger.core.bounds import MAX_TOKENS
from agentledger.core.errors import InvalidRequest
from agentledger.core.usage import Usage, merge_anthropic, parse_anthropic, reported_cost
from agentledger.formats.base import MESSAGES, Format, Parsed, loads, model_of, sse, stream_of
from agentledger.formats.errors import anthropic_body, anthropic_error_frame


def parse(payload: dict[str, Any], body: bytes) -> Parsed:
    model = model_of(payload)
    messages = payload.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' must be a non-empty array.", param="messages")
    max_tokens = payload.get("max_tokens")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or not 1 <= max_tokens <= MAX_TOKENS:
        raise InvalidRequest("'max_tokens' must be a positive integer (Messages requires it).", param="max_tokens")
    return Parsed(model, stream_of(payload), False, payload, body)


def usage(data: Any) -> tuple[Usage, bool] | None:
    return parse_anthropic(data.get("usage")) if isinstance(data, dict) else None


class MessagesStream:
    """Events pass through with their names; `message_start`, `message_delta` and `error` are read."""

    __slots__ = ("raw_usage", "complete", "failure", "_stop")

    def __init__(self) -> None:
        self.raw_usage: dict[str, Any] | None = None
        self.complete = False
        self.failure: str | None = None
        self._stop = b""

    def feed(self, event: str | None, data: bytes) -> list[bytes]:
        if event is None:  # a proxy that drops event names still sends each event's type in its data
            parsed = loads(data)
            kind = parsed.get("type") if isinstance(parsed, dict) else None
            event = kind if isinstance(kind, str) else None
        if event in ("content_block_delta", "ping", "content_block_start", "content_block_stop"):
            return [sse(event, data)]
        if event == "message_start":
            parsed = loads(data)
            message = parsed.get("message") if isinstance(parsed, dict) else None
            if isinstance(message, dict) and isinstance(message.get("usage"), dict):
                self.raw_usage = merge_anthropic(self.raw_usage, message["usage"])
        elif event == "message_delta":
            parsed = loads(data)
            if isinstance(parsed, dict) and isinstance(parsed.get("usage"), dict):
                self.raw_usage = merge_anthropic(self.raw_usage, parsed["usage"])
        elif event == "message_stop":
            self.complete = True
            self._stop = sse(event, data)
            return []
        elif event == "error":
            parsed = loads(data)
            err = parsed.get("error") if isinstance(parsed, dict) else None
            self.failure = str(err.get("message") if isinstance(err, dict) else data[:200])[:500]
        return [sse(event, data)]

    def close(self) -> list[bytes]:
        return [self._stop]

    def usage(self) -> tuple[Usage, bool] | None:
        return parse_anthropic(self.raw_usage)

    def reported_cost(self) -> str | None:
        return reported_cost(self.raw_usage)


MESSAGES_FORMAT = Format(
    name=MESSAGES,
    endpoint="/messages",
    parse=parse,
    usage=usage,
    stream=lambda parsed: MessagesStream(),
    error_body=anthropic_body,
    error_frame=anthropic_error_frame,
)

"""What every wire format (API shape) gives the one gateway flow. Pure: no I/O, no framework.

A format is what a client speaks on a route (`chat`, `messages`, `responses`, `embeddings`) and what a provider
speaks on its endpoint. When the two differ, a translator (formats/translate/) sits between them; when they
match, the provider's answer passes through untouched but for what the gateway must read (usage) or hide (the
usage chunk it forced on a client that did not ask for it).

A stream adapter is made per call. The flow hands it every SSE event of the provider's stream and sends on the
frames it returns; at the provider's end it sends `close()`'s frames only once the call's record is durable, so
a client that saw its stream end can trust the books have it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from agentledger.core.errors import AgentLedgerError, InvalidRequest
from agentledger.core.frozen import frozen
from agentledger.core.usage import Usage

# Wire format names, recorded on each model_call step (requested format and provider format).
CHAT = "chat"
MESSAGES = "messages"
RESPONSES = "responses"
EMBEDDINGS = "embeddings"


@frozen
class Parsed:
    """A validated client request: what the gateway relies on, and the body to send a provider of the same
    format (the client's bytes unless something had to be added, such as forcing a stream's usage)."""

    model: str
    stream: bool
    wants_usage: bool  # chat only: the client asked for the stream's usage chunk itself
    payload: dict[str, Any]
    upstream_body: bytes


class StreamAdapter(Protocol):
    """The provider's SSE events in, the client's SSE frames out, the provider's usage kept."""

    complete: bool  # the provider ended its stream properly ([DONE], message_stop, response.completed, ...)
    failure: str | None  # the provider sent an in-band error event (its message); the call is then an error

    def feed(self, event: str | None, data: bytes) -> list[bytes]:
        """One provider event (`event:` name or None, `data:` payload) → the frames to send the client now."""
        ...

    def close(self) -> list[bytes]:
        """The frames that end the client's stream, sent after the provider's stream ended (held until the
        record is durable). Called at most once, and only when `complete`."""
        ...

    def usage(self) -> tuple[Usage, bool] | None:
        """The provider's usage seen so far, normalized, and whether any count had to be clamped."""
        ...

    def reported_cost(self) -> str | None:
        """A cost the provider reported in its usage (OpenRouter), as an exact decimal string, or None."""
        ...


def sse(event: str | None, data: bytes) -> bytes:
    """One SSE frame. Anthropic and the Responses API name every event; chat completions name none."""
    if event is None:
        return b"data: " + data + b"\n\n"
    return b"event: " + event.encode() + b"\ndata: " + data + b"\n\n"


@dataclass(frozen=True, slots=True)
class Format:
    """One API shape, as a client speaks it on a route and a provider on its endpoint."""

    name: str
    endpoint: str  # the provider's path for it, below its base URL
    parse: Callable[[dict[str, Any], bytes], Parsed]  # validate a client request (raises InvalidRequest)
    usage: Callable[[Any], tuple[Usage, bool] | None]  # of a non-streamed answer (parsed JSON)
    stream: Callable[[Parsed], StreamAdapter] | None  # the pass-through adapter; None: this format never streams
    error_body: Callable[[AgentLedgerError], dict[str, Any]]
    error_frame: Callable[[AgentLedgerError], bytes]  # an error after the stream began, in-band


def loads(data: bytes) -> Any:
    """JSON or None: a provider's bytes are read, never trusted to parse."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return None


def model_of(payload: dict[str, Any]) -> str:
    model = payload.get("model")
    if not isinstance(model, str) or not model or len(model) > 256:
        raise InvalidRequest("'model' must be a non-empty string of at most 256 characters.", param="model")
    return model


def stream_of(payload: dict[str, Any]) -> bool:
    stream = payload.get("stream", False)
    if stream is None:
        return False
    if not isinstance(stream, bool):
        raise InvalidRequest("'stream' must be a boolean.", param="stream")
    return stream


# Where each format caps a call's output, in the order they are read.
OUTPUT_CAPS = ("max_tokens", "max_completion_tokens", "max_output_tokens")


def positive_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def output_cap(payload: dict[str, Any]) -> int | None:
    """The output tokens a request allows itself (its first positive cap), or None when it sets none."""
    return next(filter(None, (positive_int(payload.get(k)) for k in OUTPUT_CAPS)), None)

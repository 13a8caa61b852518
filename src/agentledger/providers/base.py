"""The Upstream seam: how the gateway reaches a model provider.

An Upstream is a transport. It gets the client's (already validated, possibly rewritten) request body
and the route holding the credential, and returns the provider's answer untouched. It never raises
anything but `core.errors.UpstreamError` subclasses: translating transport/provider failures happens at
this boundary (see `providers._errors`), so the gateway does not know which library spoke HTTP.

Example:
    upstream = OpenAIUpstream(timeouts)
    target = Target(route, "/chat/completions", "gpt-4o-mini")
    resp = await upstream.send(target, body)
    if resp.status == 200: ...
    async with upstream.stream(target, body) as events:
        async for event, data in events:   # each SSE event: its name (or None) and its data payload
            ...
The caller closes the stream by leaving the `async with`; the adapter closes the HTTP response then.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol

from agentledger.core.frozen import frozen
from agentledger.core.model import ProviderRoute


@dataclass(frozen=True, slots=True)
class UpstreamTimeouts:
    connect: float = 5.0
    read: float = 120.0  # between bytes; a long completion may take minutes overall
    first_token: float = 60.0


DEFAULT_TIMEOUTS = UpstreamTimeouts()


@frozen
class UpstreamResponse:
    status: int
    body: bytes
    content_type: str


@frozen
class Target:
    """Where one attempt goes: the provider key (route), the endpoint in the provider's own format
    (`/chat/completions`, `/messages`, `/messages/count_tokens`, `/responses`, `/embeddings`: the adapter maps it
    to the provider's URL, e.g. an Azure deployment), the model, and the client headers a provider reads
    (`anthropic-version`, `anthropic-beta`) as lower-case (name, value) pairs."""

    route: ProviderRoute
    path: str
    model: str
    headers: tuple[tuple[str, str], ...] = ()


# One SSE event of a provider's stream: its `event:` name (None when the provider names none, as chat
# completions do) and its `data:` payload.
Event = tuple[str | None, bytes]


class Upstream(Protocol):
    async def send(self, target: Target, body: bytes) -> UpstreamResponse:
        """POST `body`; return a 2xx answer or raise an UpstreamError."""
        ...

    def stream(self, target: Target, body: bytes) -> AbstractAsyncContextManager[AsyncIterator[Event]]:
        """POST a streaming request; yield each SSE event, as the provider sent it (`[DONE]` included).
        Errors before the first byte raise on entering the context; a connection dropped mid-stream raises
        UpstreamUnavailable from the iterator. Whether the stream ended properly is the format's to judge."""
        ...

    async def aclose(self) -> None: ...

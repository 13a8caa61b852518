"""The Upstream seam: how the gateway reaches a model provider.

An Upstream is a transport. It gets the client's (already validated, possibly rewritten) request body
and the route holding the credential, and returns the provider's answer untouched. It never raises
anything but `core.errors.UpstreamError` subclasses: translating transport/provider failures happens at
this boundary (see `providers._errors`), so the gateway does not know which library spoke HTTP.

Example:
    upstream = OpenAIUpstream(timeouts)
    resp = await upstream.send(route, "/chat/completions", body)
    if resp.status == 200: ...
    async with upstream.stream(route, "/chat/completions", body) as events:
        async for data in events:   # each SSE `data:` payload as bytes, "[DONE]" included
            ...
The caller closes the stream by leaving the `async with`; the adapter closes the HTTP response then.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol

from agentledger.core.model import ProviderRoute


@dataclass(frozen=True, slots=True)
class UpstreamTimeouts:
    connect: float = 5.0
    read: float = 120.0  # between bytes; a long completion may take minutes overall
    first_token: float = 60.0


DEFAULT_TIMEOUTS = UpstreamTimeouts()


@dataclass(frozen=True, slots=True)
class UpstreamResponse:
    status: int
    body: bytes
    content_type: str


class Upstream(Protocol):
    async def send(self, route: ProviderRoute, path: str, body: bytes) -> UpstreamResponse:
        """POST `body` to `path`; return a 2xx answer or raise an UpstreamError."""
        ...

    def stream(self, route: ProviderRoute, path: str, body: bytes) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        """POST a streaming request; yield each SSE data payload. Errors before the first byte raise on
        entering the context; a connection dropped mid-stream raises UpstreamUnavailable from the iterator."""
        ...

    async def aclose(self) -> None: ...

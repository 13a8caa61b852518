"""OpenAI-compatible upstream (OpenAI, OpenRouter, vLLM, llama.cpp, any `/v1` base URL) over aiohttp.

Why aiohttp and not httpx (which STYLE.md names): the benchmark (docs/benchmark.md) measured httpx's
connection pool at 0.5-0.9 ms of CPU per call (it probes every pooled connection per request), against
~0.1-0.2 ms for aiohttp, and that difference alone decides whether the gateway adds under 1 ms.
The session keeps no cookies: one tenant's upstream cookies must never ride along on another's calls.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp

from agentledger.core.errors import UpstreamUnavailable
from agentledger.core.model import ProviderRoute
from agentledger.providers._errors import error_for_status, map_transport_errors
from agentledger.providers.base import DEFAULT_TIMEOUTS, UpstreamResponse, UpstreamTimeouts

DEFAULT_BASE_URL = "https://api.openai.com/v1"
USER_AGENT = "agentledger"
MAX_LINE = 1 << 22  # an SSE line may carry a large tool-call argument; aiohttp's default limit is 64 KiB


class OpenAIUpstream:
    def __init__(self, timeouts: UpstreamTimeouts = DEFAULT_TIMEOUTS, *, max_connections: int = 512) -> None:
        self.timeouts = timeouts
        self.max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self._timeouts = {
            stream: aiohttp.ClientTimeout(
                total=None,
                connect=timeouts.connect,
                sock_read=timeouts.first_token if stream else timeouts.read,
            )
            for stream in (False, True)
        }

    def _client(self) -> aiohttp.ClientSession:
        # Created on first use: an aiohttp session belongs to the event loop that runs the server.
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.max_connections, limit_per_host=0),
                cookie_jar=aiohttp.DummyCookieJar(),
                read_bufsize=MAX_LINE,
                trust_env=False,
            )
        return self._session

    def _post(self, route: ProviderRoute, path: str, body: bytes, stream: bool) -> Any:
        headers = {
            "accept": "text/event-stream" if stream else "application/json",
            "content-type": "application/json",
            "user-agent": USER_AGENT,
        }
        if route.api_key:
            headers["authorization"] = f"Bearer {route.api_key}"
        url = (route.base_url or DEFAULT_BASE_URL).rstrip("/") + path
        return self._client().post(url, data=body, headers=headers, timeout=self._timeouts[stream])

    async def send(self, route: ProviderRoute, path: str, body: bytes) -> UpstreamResponse:
        with map_transport_errors(route.name):
            async with self._post(route, path, body, stream=False) as resp:
                content = await resp.read()
                status = resp.status
                content_type = resp.headers.get("content-type", "application/json")
        if status >= 400:
            raise error_for_status(route.name, status, content)
        return UpstreamResponse(status, content, content_type)

    @asynccontextmanager
    async def stream(self, route: ProviderRoute, path: str, body: bytes) -> AsyncIterator[AsyncIterator[bytes]]:
        with map_transport_errors(route.name):
            resp = await self._post(route, path, body, stream=True)
        try:
            if resp.status >= 400:
                with map_transport_errors(route.name):
                    content = await resp.read()
                raise error_for_status(route.name, resp.status, content)
            yield self._events(route, resp)
        finally:
            resp.release()

    async def _events(self, route: ProviderRoute, resp: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
        done = False
        with map_transport_errors(route.name, mid_stream=True):
            async for line in resp.content:
                if line.startswith(b"data:"):
                    data = line[5:].strip()
                    done = data == b"[DONE]"
                    yield data
        if not done:
            raise UpstreamUnavailable(f"Provider {route.name!r} ended the stream without [DONE].")

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

"""The HTTP upstreams over aiohttp: `openai` (OpenAI, OpenRouter, Gemini's and every other OpenAI-compatible
`/v1` base URL, vLLM, llama.cpp), `azure` (Azure OpenAI) and `anthropic`. They differ only in how a call is
addressed (URL and credential header, `_address`); the transport, SSE parsing and error mapping are one.

Why aiohttp and not httpx (which STYLE.md names): the benchmark (docs/benchmark.md) measured httpx's
connection pool at 0.5-0.9 ms of CPU per call (it probes every pooled connection per request), against
~0.1-0.2 ms for aiohttp, and that difference alone decides whether the gateway adds under 1 ms.
The session keeps no cookies: one tenant's upstream cookies must never ride along on another's calls.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote

import aiohttp

from agentledger.core.model import ProviderRoute
from agentledger.providers._errors import error_for_status, map_transport_errors
from agentledger.providers.base import DEFAULT_TIMEOUTS, Event, Target, UpstreamResponse, UpstreamTimeouts

OPENAI_BASE_URL = "https://api.openai.com/v1"
ANTHROPIC_BASE_URL = "https://api.anthropic.com/v1"
ANTHROPIC_VERSION = "2023-06-01"
AZURE_API_VERSION = "2024-10-21"
USER_AGENT = "agentledger"
MAX_LINE = 1 << 22  # an SSE line may carry a large tool-call argument; aiohttp's default limit is 64 KiB


def _address(target: Target) -> tuple[str, dict[str, str]]:
    """The URL and the credential (and version) headers of one call, by the route's kind."""
    route = target.route
    headers: dict[str, str] = {}
    if route.kind == "anthropic":
        url = (route.base_url or ANTHROPIC_BASE_URL).rstrip("/") + target.path
        if route.api_key:
            headers["x-api-key"] = route.api_key
        # The client's own version and beta flags win: they decide what the answer looks like.
        passed = dict(target.headers)
        headers["anthropic-version"] = passed.get(
            "anthropic-version", str(route.options.get("anthropic_version", ANTHROPIC_VERSION))
        )
        if "anthropic-beta" in passed:
            headers["anthropic-beta"] = passed["anthropic-beta"]
        return url, headers
    if route.kind == "azure":
        if route.api_key:
            headers["api-key"] = route.api_key
        base = (route.base_url or "").rstrip("/")
        if base.endswith("/openai/v1"):  # Azure's v1 API: OpenAI's paths, the model in the body
            return base + target.path, headers
        version = quote(str(route.options.get("api_version", AZURE_API_VERSION)), safe="")
        if target.path == "/responses":
            return f"{base}/openai/responses?api-version={version}", headers
        deployments = route.options.get("deployments") or {}
        deployment = quote(str(deployments.get(target.model, target.model)), safe="")
        return f"{base}/openai/deployments/{deployment}{target.path}?api-version={version}", headers
    if route.api_key:
        headers["authorization"] = f"Bearer {route.api_key}"
    return (route.base_url or OPENAI_BASE_URL).rstrip("/") + target.path, headers


class HTTPUpstream:
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

    def _post(self, target: Target, body: bytes, stream: bool) -> Any:
        url, headers = _address(target)
        headers["accept"] = "text/event-stream" if stream else "application/json"
        headers["content-type"] = "application/json"
        headers["user-agent"] = USER_AGENT
        return self._client().post(url, data=body, headers=headers, timeout=self._timeouts[stream])

    async def send(self, target: Target, body: bytes) -> UpstreamResponse:
        name = target.route.name
        with map_transport_errors(name):
            async with self._post(target, body, stream=False) as resp:
                content = await resp.read()
                status = resp.status
                content_type = resp.headers.get("content-type", "application/json")
                if status >= 400:
                    raise error_for_status(name, status, content, resp.headers, secret=target.route.api_key)
        return UpstreamResponse(status, content, content_type)

    @asynccontextmanager
    async def stream(self, target: Target, body: bytes) -> AsyncIterator[AsyncIterator[Event]]:
        name = target.route.name
        with map_transport_errors(name):
            resp = await self._post(target, body, stream=True)
        try:
            if resp.status >= 400:
                with map_transport_errors(name):
                    content = await resp.read()
                raise error_for_status(name, resp.status, content, resp.headers, secret=target.route.api_key)
            yield self._events(target.route, resp)
        finally:
            resp.release()

    async def _events(self, route: ProviderRoute, resp: aiohttp.ClientResponse) -> AsyncIterator[Event]:
        """SSE as the spec frames it: `event:` and `data:` lines up to a blank line make one event (several data
        lines joined by newlines); comments (`:`), `id:` and `retry:` are dropped."""
        event: str | None = None
        data: list[bytes] = []
        with map_transport_errors(route.name, mid_stream=True):
            async for line in resp.content:
                if line.startswith(b"data:"):
                    data.append(line[5:].strip())
                elif line.startswith(b"event:"):
                    event = line[6:].strip().decode("utf-8", "replace")
                elif not line.strip() and data:
                    yield event, data[0] if len(data) == 1 else b"\n".join(data)
                    event, data = None, []
            if data:  # a last event without its blank line
                yield event, data[0] if len(data) == 1 else b"\n".join(data)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

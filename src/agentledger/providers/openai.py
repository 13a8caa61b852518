"""OpenAI-compatible upstream (OpenAI, OpenRouter, vLLM, llama.cpp, any `/v1` base URL)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx

from agentledger.core.errors import UpstreamTimeout, UpstreamUnavailable
from agentledger.core.model import ProviderRoute
from agentledger.providers._errors import error_for_status, map_httpx_errors
from agentledger.providers.base import DEFAULT_TIMEOUTS, UpstreamResponse, UpstreamTimeouts

DEFAULT_BASE_URL = "https://api.openai.com/v1"
USER_AGENT = "agentledger"


class OpenAIUpstream:
    """Requests go straight to httpx's connection-pool transport: `AsyncClient.send` would add cookie
    persistence (wrong for a gateway: one tenant's upstream cookies would ride along on another's calls),
    auth and redirect hooks we do not use, and about a quarter of the CPU of each upstream call."""

    def __init__(self, timeouts: UpstreamTimeouts = DEFAULT_TIMEOUTS, *, max_connections: int = 512) -> None:
        self.timeouts = timeouts
        self.transport = httpx.AsyncHTTPTransport(
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            trust_env=False,
        )
        self._timeouts = {
            stream: httpx.Timeout(
                connect=timeouts.connect,
                read=timeouts.first_token if stream else timeouts.read,
                write=30.0,
                pool=timeouts.connect,
            ).as_dict()
            for stream in (False, True)
        }
        self._urls: dict[tuple[str | None, str], httpx.URL] = {}

    def _url(self, base_url: str | None, path: str) -> httpx.URL:
        url = self._urls.get((base_url, path))
        if url is None:
            if len(self._urls) > 10_000:
                self._urls.clear()
            url = self._urls[(base_url, path)] = httpx.URL((base_url or DEFAULT_BASE_URL).rstrip("/") + path)
        return url

    def _request(self, route: ProviderRoute, path: str, body: bytes, stream: bool) -> httpx.Request:
        headers = {
            "accept": "text/event-stream" if stream else "application/json",
            "accept-encoding": "gzip, deflate",
            "content-type": "application/json",
            "user-agent": USER_AGENT,
        }
        if route.api_key:
            headers["authorization"] = f"Bearer {route.api_key}"
        return httpx.Request(
            "POST",
            self._url(route.base_url, path),
            content=body,
            headers=headers,
            extensions={"timeout": self._timeouts[stream]},
        )

    async def send(self, route: ProviderRoute, path: str, body: bytes) -> UpstreamResponse:
        with map_httpx_errors(route.name):
            resp = await self.transport.handle_async_request(self._request(route, path, body, stream=False))
            try:
                content = await resp.aread()
            finally:
                await resp.aclose()
        if resp.status_code >= 400:
            raise error_for_status(route.name, resp.status_code, content)
        return UpstreamResponse(resp.status_code, content, resp.headers.get("content-type", "application/json"))

    @asynccontextmanager
    async def stream(self, route: ProviderRoute, path: str, body: bytes) -> AsyncIterator[AsyncIterator[bytes]]:
        with map_httpx_errors(route.name):
            resp = await self.transport.handle_async_request(self._request(route, path, body, stream=True))
        try:
            if resp.status_code >= 400:
                with map_httpx_errors(route.name):
                    content = await resp.aread()
                raise error_for_status(route.name, resp.status_code, content)
            yield self._events(route, resp)
        finally:
            await resp.aclose()

    async def _events(self, route: ProviderRoute, resp: httpx.Response) -> AsyncIterator[bytes]:
        done = False
        try:
            async for line in resp.aiter_lines():
                if line.startswith("data:"):
                    data = line[5:].strip().encode()
                    done = data == b"[DONE]"
                    yield data
        except httpx.TimeoutException as exc:
            raise UpstreamTimeout(f"Provider {route.name!r} stalled mid-stream.") from exc
        except httpx.HTTPError as exc:
            raise UpstreamUnavailable(f"Provider {route.name!r} dropped the stream.") from exc
        if not done:
            raise UpstreamUnavailable(f"Provider {route.name!r} ended the stream without [DONE].")

    async def aclose(self) -> None:
        await self.transport.aclose()

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


class OpenAIUpstream:
    def __init__(self, timeouts: UpstreamTimeouts = DEFAULT_TIMEOUTS, *, max_connections: int = 512) -> None:
        self.timeouts = timeouts
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(connect=timeouts.connect, read=timeouts.read, write=30.0, pool=timeouts.connect),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            trust_env=False,
        )

    def _request(self, route: ProviderRoute, path: str, body: bytes, stream: bool) -> httpx.Request:
        headers = {"content-type": "application/json", "accept": "text/event-stream" if stream else "application/json"}
        if route.api_key:
            headers["authorization"] = f"Bearer {route.api_key}"
        url = (route.base_url or DEFAULT_BASE_URL).rstrip("/") + path
        timeout = httpx.Timeout(
            connect=self.timeouts.connect,
            read=self.timeouts.first_token if stream else self.timeouts.read,
            write=30.0,
            pool=self.timeouts.connect,
        )
        return self.client.build_request("POST", url, content=body, headers=headers, timeout=timeout)

    async def send(self, route: ProviderRoute, path: str, body: bytes) -> UpstreamResponse:
        with map_httpx_errors(route.name):
            resp = await self.client.send(self._request(route, path, body, stream=False))
        if resp.status_code >= 400:
            raise error_for_status(route.name, resp.status_code, resp.content)
        return UpstreamResponse(resp.status_code, resp.content, resp.headers.get("content-type", "application/json"))

    @asynccontextmanager
    async def stream(self, route: ProviderRoute, path: str, body: bytes) -> AsyncIterator[AsyncIterator[bytes]]:
        with map_httpx_errors(route.name):
            resp = await self.client.send(self._request(route, path, body, stream=True), stream=True)
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
        await self.client.aclose()

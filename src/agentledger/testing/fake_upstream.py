"""A fake model provider over real HTTP, for tests and the benchmark: OpenAI, Azure OpenAI and Anthropic routes.

    POST /v1/chat/completions                                  OpenAI chat completions
    POST /v1/messages, /v1/messages/count_tokens               Anthropic Messages
    POST /v1/responses                                         OpenAI Responses
    POST /v1/embeddings                                        OpenAI Embeddings
    POST /openai/deployments/{deployment}/chat/completions     Azure OpenAI (`api-version` query required; the
    POST /openai/deployments/{deployment}/embeddings           deployment name is the model it answers with)
    POST /openai/responses                                     Azure OpenAI Responses (`api-version` required)
    POST /openai/v1/responses                                  Azure OpenAI v1 Responses (`api-version` optional)

It answers like `providers.mock` (same tokens, same text, same events; streams framed as each provider frames
them) and misbehaves on request. When the last message's text (the last input item's for Responses, the first
input string for embeddings) starts with `FAIL:<mode>`, it answers
    FAIL:<status>       that status (400, 429, 500, 529, ...) with an error body in the route's provider format:
                        Anthropic `{"type": "error", "error": {"type": "rate_limit_error", ...}}`, else OpenAI's
                        `{"error": {...}}`
    FAIL:timeout        nothing for 30 s (or until the client hangs up)
    FAIL:garbage        200 with a body that is not JSON
    FAIL:drop           (stream) two events, then the connection is cut
    FAIL:once500        500 the first time this exact text is seen, then a normal answer
    FAIL:slow           (stream) a normal answer, 0.2 s between events
`FakeUpstream.script` makes the next requests fail whatever they say: `[429, 500]` answers the first request
429, the second 500 (in the route's error format), and lets the third through. `retry_after`, when set, is
sent as a `retry-after` header on every 429. Every request it receives is kept in `FakeUpstream.received`
(path, query string, headers, parsed body), whatever it was answered.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from agentledger.core.errors import UpstreamRejected
from agentledger.providers import mock


@dataclass
class FakeUpstream:
    received: list[dict[str, Any]] = field(default_factory=list)  # {path, query, headers, body} per request
    delay: float = 0.0  # seconds before answering, to model provider latency
    failed_once: set[str] = field(default_factory=set)  # texts FAIL:once500 has already failed
    script: list[int] = field(default_factory=list)  # statuses for the next requests, popped one a request
    retry_after: str | None = None  # `retry-after` header value sent on every 429
    # A scripted failure quotes the credential it was sent, as some providers do ("Incorrect API key provided: …").
    echo_credential: bool = False


ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


def _error(anthropic: bool, status: int, message: str, retry_after: str | None) -> Response:
    body: dict[str, Any]
    if anthropic:
        body = {"type": "error", "error": {"type": ANTHROPIC_ERROR_TYPES.get(status, "api_error"), "message": message}}
    else:
        body = {"error": {"message": message, "type": "fake_error", "code": str(status), "param": None}}
    headers = {"retry-after": retry_after} if status == 429 and retry_after is not None else None
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


def _mode(path: str, body: dict[str, Any]) -> str | None:
    text = mock.last_text(path, body)
    if text.startswith("FAIL:"):
        words = text[5:].split()
        return words[0] if words else ""
    return None


def _frame(event: str | None, data: bytes) -> bytes:
    # Anthropic and the Responses API name every event; chat completions name none.
    if event is None:
        return b"data: " + data + b"\n\n"
    return b"event: " + event.encode() + b"\ndata: " + data + b"\n\n"


Endpoint = Callable[[Request], Awaitable[Response]]


def fake_upstream_app(state: FakeUpstream | None = None) -> Starlette:
    fake = state or FakeUpstream()

    def endpoint(path: str, *, anthropic: bool = False, api_version: bool = False) -> Endpoint:
        """The handler of one route: `path` is the mock endpoint it answers as; `api_version`: the query
        parameter Azure requires."""

        async def handle(request: Request) -> Response:
            raw = await request.body()
            try:
                parsed: Any = orjson.loads(raw)
            except orjson.JSONDecodeError:
                parsed = None
            fake.received.append(
                {
                    "path": request.url.path,
                    "query": request.url.query,
                    "headers": dict(request.headers),
                    "body": parsed,
                }
            )
            if fake.delay:
                await asyncio.sleep(fake.delay)

            def error(status: int, message: str) -> Response:
                return _error(anthropic, status, message, fake.retry_after)

            if api_version and not request.query_params.get("api-version"):
                return error(400, "Missing required query parameter: api-version")
            if fake.script:
                status = fake.script.pop(0)
                if status >= 400:
                    said = f"fake upstream scripted failure {status}"
                    if fake.echo_credential:
                        given = request.headers.get("x-api-key") or request.headers.get("authorization", "")[7:]
                        said += f": Incorrect API key provided: {given}"
                    return error(status, said)
            try:
                body = mock.parse_body(raw, path)
            except UpstreamRejected as exc:
                return error(exc.status, exc.message)
            if "deployment" in request.path_params:
                body = {**body, "model": request.path_params["deployment"]}
            return await _answer(request, path, body, fake, error)

        return handle

    anthropic = {"anthropic": True}
    azure = {"api_version": True}
    deployment = "/openai/deployments/{deployment}"
    app = Starlette(
        routes=[
            Route("/v1/chat/completions", endpoint(mock.CHAT), methods=["POST"]),
            Route("/v1/messages", endpoint(mock.MESSAGES, **anthropic), methods=["POST"]),
            Route("/v1/messages/count_tokens", endpoint(mock.COUNT_TOKENS, **anthropic), methods=["POST"]),
            Route("/v1/responses", endpoint(mock.RESPONSES), methods=["POST"]),
            Route("/v1/embeddings", endpoint(mock.EMBEDDINGS), methods=["POST"]),
            Route(deployment + "/chat/completions", endpoint(mock.CHAT, **azure), methods=["POST"]),
            Route(deployment + "/embeddings", endpoint(mock.EMBEDDINGS, **azure), methods=["POST"]),
            Route("/openai/responses", endpoint(mock.RESPONSES, **azure), methods=["POST"]),
            Route("/openai/v1/responses", endpoint(mock.RESPONSES), methods=["POST"]),
        ]
    )
    app.state.fake = fake
    return app


async def _answer(
    request: Request,
    path: str,
    body: dict[str, Any],
    fake: FakeUpstream,
    error: Callable[[int, str], Response],
) -> Response:
    mode = _mode(path, body)
    if mode is not None and mode.isdigit() and 400 <= int(mode) <= 599:
        return error(int(mode), f"fake upstream failure {mode}")
    if mode == "once500":
        text = mock.last_text(path, body)
        if text not in fake.failed_once:
            fake.failed_once.add(text)
            return error(500, "fake upstream failure once500")
    if mode == "timeout":
        # Poll for the hang-up so a stopping server never waits out the full 30 s.
        for _ in range(300):
            if await request.is_disconnected():
                return Response(status_code=499)
            await asyncio.sleep(0.1)
    if mode == "garbage":
        return Response(b"<html>bad gateway</html>", media_type="application/json")
    if body.get("stream") is not True or path not in mock.STREAMABLE:
        return Response(orjson.dumps(mock.answer(path, body)), media_type="application/json")
    frames = [_frame(name, data) for name, data in mock.stream_events(path, body)]

    async def events() -> AsyncIterator[bytes]:
        for i, frame in enumerate(frames):
            if mode == "drop" and i == 2:
                raise ConnectionResetError("fake upstream dropped the stream")
            if mode == "slow" and i:
                await asyncio.sleep(0.2)
            yield frame

    return StreamingResponse(events(), media_type="text/event-stream")

"""A fake OpenAI-compatible provider over real HTTP, for tests and the benchmark.

It answers like `providers.mock` (same tokens, same text) and misbehaves on request: when the last
message's content starts with `FAIL:<mode>` it answers
    FAIL:500 / FAIL:429 / FAIL:400   that status with an OpenAI error body
    FAIL:timeout                     nothing for 30 s (or until the client hangs up)
    FAIL:garbage                     200 with a body that is not JSON
    FAIL:drop                        (stream) two chunks, then the connection is cut
    FAIL:once500                     500 the first time this exact content is seen, then a normal answer
    FAIL:slow                        (stream) a normal answer, 0.2 s between chunks
Every request it receives is kept in `FakeUpstream.received` (headers and parsed body).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from agentledger.providers.mock import completion, stream_chunks


@dataclass
class FakeUpstream:
    received: list[dict[str, Any]] = field(default_factory=list)
    delay: float = 0.0  # seconds before answering, to model provider latency
    failed_once: set[str] = field(default_factory=set)  # contents FAIL:once500 has already failed


def _mode(body: dict[str, Any]) -> str | None:
    messages = body.get("messages") or []
    content = messages[-1].get("content") if messages and isinstance(messages[-1], dict) else None
    if isinstance(content, str) and content.startswith("FAIL:"):
        return content[5:].split()[0] if content[5:].split() else ""
    return None


def _error(status: int, message: str) -> Response:
    body = {"error": {"message": message, "type": "fake_error", "code": str(status), "param": None}}
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def fake_upstream_app(state: FakeUpstream | None = None) -> Starlette:
    state = state or FakeUpstream()

    async def chat(request: Request) -> Response:
        body = orjson.loads(await request.body())
        state.received.append({"headers": dict(request.headers), "body": body})
        if state.delay:
            await asyncio.sleep(state.delay)
        mode = _mode(body)
        if mode in ("500", "429", "400"):
            return _error(int(mode), f"fake upstream failure {mode}")
        if mode == "once500":
            content = body["messages"][-1]["content"]
            if content not in state.failed_once:
                state.failed_once.add(content)
                return _error(500, "fake upstream failure once500")
        if mode == "timeout":
            # Poll for the hang-up so a stopping server never waits out the full 30 s.
            for _ in range(300):
                if await request.is_disconnected():
                    return Response(status_code=499)
                await asyncio.sleep(0.1)
        if mode == "garbage":
            return Response(b"<html>bad gateway</html>", media_type="application/json")
        if not body.get("stream"):
            return Response(orjson.dumps(completion(body)), media_type="application/json")
        chunks = stream_chunks(body)

        async def events() -> Any:
            for i, chunk in enumerate(chunks):
                if mode == "drop" and i == 2:
                    raise ConnectionResetError("fake upstream dropped the stream")
                if mode == "slow" and i:
                    await asyncio.sleep(0.2)
                yield b"data: " + orjson.dumps(chunk) + b"\n\n"
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    app = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])
    app.state.fake = state
    return app

"""The floor: a bare pass-through on the gateway's own stack, measured beside it (`scripts/bench --floor`).

uvicorn (uvloop, httptools) serving one raw ASGI app that forwards each POST to the upstream as it came (its body,
content type and credential) over one aiohttp session, and the answer back as it comes (a stream chunk by chunk).
It parses nothing, authenticates nothing, records nothing: what any Python gateway on this stack spends before it
does anything. The project's speed targets were written against this floor on another machine (0.11 ms of CPU a
plain call, 0.15 a streamed one, says the developers' guide); measured in the same run, it says how much slower or
faster this machine is, so the gateway's figures can be read against the targets (docs/benchmark.md).

Usage: python benchmarks/floor.py PORT UPSTREAM_URL
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import aiohttp
import uvicorn

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

PASSED = (b"content-type", b"authorization", b"x-api-key", b"anthropic-version")


def floor_app(upstream: str) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    session: aiohttp.ClientSession | None = None

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        nonlocal session
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    session = aiohttp.ClientSession(
                        connector=aiohttp.TCPConnector(limit=0), auto_decompress=False, skip_auto_headers=["User-Agent"]
                    )
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    if session is not None:
                        await session.close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        assert session is not None
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        headers = {k.decode(): v.decode() for k, v in scope["headers"] if k in PASSED}
        async with session.post(upstream + scope["path"], data=body, headers=headers) as resp:
            kind = resp.headers.get("content-type", "application/json")
            await send(
                {"type": "http.response.start", "status": resp.status, "headers": [(b"content-type", kind.encode())]}
            )
            if kind.startswith("text/event-stream"):
                async for chunk in resp.content.iter_any():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b""})
            else:
                await send({"type": "http.response.body", "body": await resp.read()})

    return app


if __name__ == "__main__":
    port, upstream = int(sys.argv[1]), sys.argv[2].rstrip("/")
    uvicorn.run(
        floor_app(upstream),
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        log_level="warning",
        access_log=False,
    )

"""A lean pure-ASGI SSE response: frames go to the client as they come, nothing is buffered.

Starlette's StreamingResponse does the same through an anyio task group per response; on the hot path
a plain asyncio task watching for the client's disconnect costs a fraction of that (docs/benchmark.md).
When the client leaves, the event source is closed (`aclose`), so its `finally` runs and the call is
still recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping

from starlette.responses import Response
from starlette.types import Receive, Scope, Send


class SSEResponse(Response):
    """A Response only in type (so routes stay uniform); it never builds a body."""

    media_type = "text/event-stream"

    def __init__(self, first: bytes | None, events: AsyncIterator[bytes], headers: Mapping[str, str]) -> None:
        self.first = first
        self.events = events
        self.status_code = 200
        self.background = None
        self.raw_headers = [(b"content-type", b"text/event-stream")] + [
            (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        stream = asyncio.current_task()
        assert stream is not None

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            stream.cancel()

        watcher = asyncio.create_task(watch())
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            if self.first is not None:
                await send({"type": "http.response.body", "body": self.first, "more_body": True})
            async for frame in self.events:
                await send({"type": "http.response.body", "body": frame, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if watcher.done() and not watcher.cancelled():
                stream.uncancel()  # our own cancel, not the server's: consume it
                return  # the client left: nothing more to send, the source is closed below
            raise
        finally:
            watcher.cancel()
            aclose = getattr(self.events, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()

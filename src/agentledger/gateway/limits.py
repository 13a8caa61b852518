"""`max_body_bytes` for every route, as pure ASGI: a body over the limit is refused with 413 before it is
read in full, so an oversized upload never sits in memory and never reaches a provider."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agentledger.core.errors import RequestTooLarge
from agentledger.gateway.responses import error_for_path


class BodyLimitMiddleware:
    """Refuses a declared `Content-Length` over the limit at once, and counts a chunked (or lying) body as
    it arrives: the receive call that would pass the limit raises `RequestTooLarge` instead of returning.

    Handlers that catch `AgentLedgerError` render it themselves; when it escapes a handler, it is rendered
    here. Either way nothing past the limit is buffered: uvicorn holds at most one read (64 KiB) ahead.
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.limit = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name.lower() == b"content-length" and value.strip().isdigit() and int(value) > self.limit:
                await error_for_path(self._error(), scope.get("path", ""))(scope, receive, send)
                return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise self._error()
            return message

        async def watching_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, watching_send)
        except RequestTooLarge as exc:
            if started:
                raise
            await error_for_path(exc, scope.get("path", ""))(scope, receive, send)

    def _error(self) -> RequestTooLarge:
        return RequestTooLarge(f"The request body is larger than the {self.limit} bytes this server accepts.")

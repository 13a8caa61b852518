"""Pure-ASGI last line of defence: no request is ever answered with a text/plain 500.

An exception that escapes a handler is rendered in the OpenAI error shape instead of Starlette's plain-text
"Internal Server Error": an `AgentLedgerError` as itself (e.g. `StoreUnavailable` → 503 `store_unavailable`
with Retry-After, from a route that did not catch it), anything else as a JSON 500 `internal_error`, logged
with its traceback. Once a response has started (a stream) its status is sent; the exception propagates and
the server closes the connection.
"""

from __future__ import annotations

import logging

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agentledger.core.errors import AgentLedgerError
from agentledger.gateway.responses import error_for_path

log = logging.getLogger(__name__)


class ErrorMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watch_start(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, watch_start)
        except Exception as exc:
            if started:
                raise
            if isinstance(exc, AgentLedgerError):
                err = exc
                log.warning("%s %s: %s (%s)", scope.get("method"), scope.get("path"), err.code, err.message)
            else:
                err = AgentLedgerError("The server failed to handle this request; it has been logged.")
                log.exception("unhandled error in %s %s", scope.get("method"), scope.get("path"))
            await error_for_path(err, scope.get("path", ""))(scope, receive, send)

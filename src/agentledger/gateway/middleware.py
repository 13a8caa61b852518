"""Pure-ASGI middleware: streaming passes straight through, nothing is buffered."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agentledger.core.headers import ID_RE, MAX_ID_LEN
from agentledger.core.ids import new_id


class RequestIdMiddleware:
    """Every response carries `x-request-id`: the client's when it sent a well-formed one, else a new one.

    The id is put in `scope["state"]["request_id"]` so handlers and error renderers use the same value.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = None
        for name, value in scope["headers"]:
            if name.lower() == b"x-request-id":
                request_id = _valid_id(value)
                break
        request_id = request_id or new_id("req")
        scope.setdefault("state", {})["request_id"] = request_id
        raw = request_id.encode()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                headers.append((b"x-request-id", raw))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_id)


def _valid_id(value: bytes) -> str | None:
    try:
        text = value.decode("ascii").strip()
    except UnicodeDecodeError:
        return None
    return text if 0 < len(text) <= MAX_ID_LEN and ID_RE.match(text) else None

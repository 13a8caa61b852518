"""Admin tokens for /api: workspace-scoped, role-checked (viewers read, admins and owners write)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from agentledger.core.errors import AgentLedgerError, AuthenticationError, NotFound, PermissionDenied
from agentledger.core.headers import is_id
from agentledger.core.keys import hash_secret
from agentledger.core.model import AdminPrincipal, Role
from agentledger.gateway.bodies import parse_json_object
from agentledger.gateway.cache import TTLCache
from agentledger.gateway.responses import error_response
from agentledger.store.base import Store

Handler = Callable[[Request, AdminPrincipal], Awaitable[Response]]


class AdminAuth:
    def __init__(self, store: Store, ttl: float = 30.0, *, stale_if_error: float = 0.0) -> None:
        self.store = store
        # Stale-if-error as for virtual keys: during an outage a known admin still authenticates, and then
        # gets the 503 of the route's own store call rather than a misleading one from the token lookup.
        self.cache: TTLCache[str, AdminPrincipal] = TTLCache(ttl, stale_if_error=stale_if_error)

    async def principal(self, request: Request) -> AdminPrincipal:
        auth = request.headers.get("authorization", "")
        token = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
        if not token:
            raise AuthenticationError("Missing admin token: send 'Authorization: Bearer adm-...'.")
        token_hash = hash_secret(token)
        admin = await self.cache.get(token_hash, lambda: self.store.admin_for_token(token_hash))
        if admin is None:
            raise AuthenticationError("Invalid or revoked admin token.")
        return admin

    def guard(self, handler: Handler, *, write: bool = False) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                admin = await self.principal(request)
                if write and admin.role is Role.VIEWER:
                    raise PermissionDenied("This token is read-only (viewer).")
                return await handler(request, admin)
            except AgentLedgerError as exc:
                return error_response(exc)

        return endpoint


async def json_body(request: Request) -> dict[str, Any]:
    return parse_json_object(await request.body())


def path_id(request: Request, name: str, what: str) -> str:
    """The id in the path under `name`. One that is not in id format names nothing: a 404 before any lookup
    (PostgreSQL refuses NUL in a query, which was a 500)."""
    value: str = request.path_params[name]
    if not is_id(value):
        raise NotFound(f"{what} {value!r} does not exist.", param=name)
    return value

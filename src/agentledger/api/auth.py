"""Credentials for /api: admin tokens (`adm-…`, bootstrap and CLI) and members' personal access tokens (`pat_…`),
workspace-scoped; what each may do is the permission matrix (api/permissions.py), checked here for every route.

Every write route is guarded with `write=True` and the audit actions it may record (`audit=`): its handler says
what it changed (`describe`), and the guard records that as an audit event once the write has succeeded, durable
before the answer (docs/audit.md). A refused credential is recorded too, at most once a minute per source.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response

from agentledger.api.permissions import permits, required
from agentledger.audit.changes import Change
from agentledger.core.errors import AgentLedgerError, AuthenticationError, NotFound, PermissionDenied
from agentledger.core.headers import is_id
from agentledger.core.keys import PAT_PREFIX, hash_secret
from agentledger.core.model import Actor, AdminPrincipal
from agentledger.gateway.bodies import parse_json_object
from agentledger.gateway.cache import TTLCache
from agentledger.gateway.responses import error_response
from agentledger.store.base import Store

if TYPE_CHECKING:
    from agentledger.audit_trail import AuditTrail
    from agentledger.store.members import MemberStore

log = logging.getLogger(__name__)
Handler = Callable[[Request, AdminPrincipal], Awaitable[Response]]
Endpoint = Callable[[Request], Awaitable[Response]]


class AdminAuth:
    def __init__(self, store: Store, ttl: float = 30.0, *, stale_if_error: float = 0.0) -> None:
        self.store = store
        # Stale-if-error as for virtual keys: during an outage a known admin still authenticates, and then
        # gets the 503 of the route's own store call rather than a misleading one from the token lookup.
        self.cache: TTLCache[str, AdminPrincipal] = TTLCache(ttl, stale_if_error=stale_if_error)
        self.trail: AuditTrail | None = None  # the audit log (app.py); None records nothing
        # The caller's address as the gateway reads it (setting client_ip_header); the peer's without one.
        self.client_ip: Callable[[str | None, Any], str | None] = lambda peer, headers: peer
        self.members: MemberStore | None = None  # PATs (app.py); None: admin tokens only
        # Tells the other replicas a PAT was revoked (gateway/broadcast.py, kind "pat"); set when redis_url is.
        self.broadcast: Callable[[str, str], None] | None = None
        self.clock: Callable[[], datetime] = lambda: datetime.now(UTC)

    async def principal(self, request: Request) -> AdminPrincipal:
        auth = request.headers.get("authorization", "")
        token = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
        if not token:
            raise AuthenticationError("Missing admin token: send 'Authorization: Bearer adm-...'.")
        token_hash = hash_secret(token)
        if token.startswith(PAT_PREFIX):
            members = self.members
            pat = None
            if members is not None:
                pat = await self.cache.get(token_hash, lambda: members.principal_for_token(token_hash))
            if pat is None:
                raise AuthenticationError("Invalid or revoked personal access token.")
            # Checked per request: the principal is cached past its expiry.
            if pat.expires_at is not None and pat.expires_at <= self.clock():
                raise AuthenticationError("This personal access token has expired.")
            return pat
        admin = await self.cache.get(token_hash, lambda: self.store.admin_for_token(token_hash))
        if admin is None:
            raise AuthenticationError("Invalid or revoked admin token.")
        return admin

    def forget(self, token_hashes: Sequence[str], *, everywhere: bool = True) -> None:
        """Revoked PATs refused at once: here, and (broadcast) on every replica."""
        for token_hash in token_hashes:
            self.cache.put(token_hash, None)
            if everywhere and self.broadcast is not None:
                self.broadcast("pat", token_hash)

    def guard(self, handler: Handler, *, write: bool = False, audit: Sequence[str] = ()) -> Endpoint:
        """Allowed when the caller's role ∩ scopes grant the permission the matrix gives the matched route
        (api/permissions.py; a route without an entry is refused to all). `write`: audited: `audit` names the
        actions its handler may `describe` (a test walks every mounted write route and requires them)."""

        async def endpoint(request: Request) -> Response:
            try:
                try:
                    admin = await self.principal(request)
                except AuthenticationError as exc:
                    await self._refused(request, exc)
                    raise
                route = request.scope.get("route")
                method = "GET" if request.method == "HEAD" else request.method
                permission = required(method, route.path) if route is not None else None
                if permission is None:  # fail closed: a route the matrix does not know is nobody's
                    log.error("no permission entry for %s %s", method, getattr(route, "path", request.url.path))
                    raise PermissionDenied("This route has no entry in the permission matrix.")
                if not permits(admin, permission):
                    raise PermissionDenied(f"Not allowed: this needs {permission} ({_who(admin)}).")
                response = await handler(request, admin)
                if write and response.status_code < 400:
                    await self._record(request, admin, audit)
                return response
            except AgentLedgerError as exc:
                return error_response(exc)

        endpoint.audit_actions = tuple(audit)  # type: ignore[attr-defined]
        endpoint.writes = write  # type: ignore[attr-defined]
        return endpoint

    def _context(self, request: Request) -> tuple[str | None, str | None]:
        peer = request.client.host if request.client else None
        return self.client_ip(peer, request.headers), getattr(request.state, "request_id", None)

    async def _record(self, request: Request, admin: AdminPrincipal, declared: Sequence[str]) -> None:
        if self.trail is None:
            return
        changes: tuple[Change, ...] | None = getattr(request.state, "audit", None)
        if changes is None:  # a write route whose handler did not say what it changed: recorded all the same
            log.error(
                "write route %s %s did not describe its change for the audit log", request.method, request.url.path
            )
            action = declared[0] if len(declared) == 1 else "api.write"
            changes = (Change(action, "route", f"{request.method} {request.url.path}"),)
        for change in changes:
            if change.action not in declared:
                log.error("audit action %s is not declared by %s %s", change.action, request.method, request.url.path)
        client_ip, request_id = self._context(request)
        actor = actor_of(admin)
        try:
            await self.trail.record(admin.workspace_id, actor, changes, client_ip=client_ip, request_id=request_id)
        except AgentLedgerError:
            # The change is made; only a malformed event ends here (logged and counted by the pipeline). The
            # answer still says what was done: a client told to retry would make the change twice.
            log.exception("the audit event of %s %s could not be recorded", request.method, request.url.path)

    async def record_session(self, request: Request, admin: AdminPrincipal, action: str) -> None:
        """A dashboard sign-in or sign-out (`session.signin` / `session.signout`): a login is a control-plane event
        (issue 11), recorded for the token's workspace with the token as actor, never the token itself."""
        if self.trail is None:
            return
        client_ip, request_id = self._context(request)
        change = Change(action, "session", admin.token_id)
        try:
            await self.trail.record(
                admin.workspace_id, actor_of(admin), (change,), client_ip=client_ip, request_id=request_id
            )
        except AgentLedgerError:
            log.warning("the audit event of a dashboard %s could not be recorded", action, exc_info=True)

    async def _refused(self, request: Request, exc: AuthenticationError) -> None:
        if self.trail is None:
            return
        auth = request.headers.get("authorization", "")
        token = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
        client_ip, request_id = self._context(request)
        try:
            await self.trail.failed_authentication(token, client_ip, request_id, request.url.path, exc.message)
        except AgentLedgerError:
            log.warning("a failed authentication could not be recorded", exc_info=True)


def actor_of(admin: AdminPrincipal) -> Actor:
    """The audit actor: an admin token, or a member's PAT (`id` the PAT's; its member is the PAT's `member_id`,
    kept for good: PATs and members are revoked, never deleted)."""
    if admin.member_id is not None:
        return Actor("pat", admin.token_id, admin.role.value)
    return Actor("admin_token", admin.token_id, admin.role.value)


def _who(admin: AdminPrincipal) -> str:
    if admin.scopes is None:
        return f"role {admin.role.value}"
    return f"role {admin.role.value}, scopes {', '.join(sorted(admin.scopes)) or 'none'}"


def describe(request: Request, *changes: Change) -> None:
    """What this write changed, for the audit log: the guard records it once the handler has answered. With no
    change, the write changed nothing (e.g. revoking what was revoked already), and nothing is recorded."""
    request.state.audit = changes


async def json_body(request: Request) -> dict[str, Any]:
    return parse_json_object(await request.body())


def path_id(request: Request, name: str, what: str) -> str:
    """The id in the path under `name`. One that is not in id format names nothing: a 404 before any lookup
    (PostgreSQL refuses NUL in a query, which was a 500)."""
    value: str = request.path_params[name]
    if not is_id(value):
        raise NotFound(f"{what} {value!r} does not exist.", param=name)
    return value

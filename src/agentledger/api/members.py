"""Members (`/api/members`) and personal access tokens (`/api/tokens`), docs/security.md.

A PAT never carries more rights than who creates it: its effective permissions (member's role ∩ scopes) must be a
subset of the caller's, or 403. Revoking a member revokes their virtual keys and PATs in one transaction and drops
them from every replica's caches.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from agentledger.api.auth import AdminAuth, describe, json_body, path_id
from agentledger.api.permissions import SCOPES, grants, permits
from agentledger.audit.changes import Change
from agentledger.core.errors import InvalidRequest, NotFound, PermissionDenied
from agentledger.core.fields import id_field, text_field, time_field
from agentledger.core.ids import new_id
from agentledger.core.keys import DEFAULT_PAT_DAYS, MAX_PAT_DAYS, PAT_PREFIX, display_prefix, hash_secret, new_secret
from agentledger.core.model import AdminPrincipal, Role
from agentledger.gateway.responses import JSONResponse
from agentledger.store.base import Store
from agentledger.store.members import MemberStore

EMAIL_RE = re.compile(
    r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9-]+)+$"
)
ROLES = tuple(r.value for r in Role)
STATUSES = ("active", "revoked")


def _email(value: Any) -> str:
    email = text_field(value, "email", limit=320, strip=True)
    if not EMAIL_RE.fullmatch(email):
        raise InvalidRequest("'email' must be an email address.", param="email")
    return email.lower()


def _role(value: Any) -> Role:
    if value not in ROLES:
        raise InvalidRequest(f"'role' must be one of {', '.join(ROLES)}.", param="role")
    return Role(value)


def member_row(
    workspace_id: str, email: str, name: str, department_id: str | None, role: str, now: datetime
) -> dict[str, Any]:
    """A new active member, as stored and as its `member.create` event shows it (the API's and the CLI's)."""
    return {
        "workspace_id": workspace_id,
        "id": new_id("mem"),
        "email": email,
        "name": name,
        "department_id": department_id,
        "role": role,
        "status": "active",
        "created_at": now,
        "updated_at": now,
        "revoked_at": None,
    }


def token_row(
    workspace_id: str,
    member_id: str,
    name: str,
    scopes: list[str],
    created_by: str,
    now: datetime,
    expires_at: datetime,
) -> tuple[dict[str, Any], str]:
    """A new PAT as stored, and its secret (shown once)."""
    secret = new_secret(PAT_PREFIX)
    row: dict[str, Any] = {
        "workspace_id": workspace_id,
        "id": new_id("pat"),
        "member_id": member_id,
        "name": name,
        "scopes": scopes,
        "token_hash": hash_secret(secret),
        "token_prefix": display_prefix(secret),
        "created_by": created_by,
        "created_at": now,
        "expires_at": expires_at,
        "revoked_at": None,
    }
    return row, secret


def public_token(row: dict[str, Any]) -> dict[str, Any]:
    """A PAT row without its hash: what responses and audit events show."""
    return {k: v for k, v in row.items() if k != "token_hash"}


def member_routes(
    auth: AdminAuth,
    store: Store,
    members: MemberStore,
    invalidate_key: Callable[[str | None], None],
    clock: Callable[[], datetime],
) -> list[Route]:
    async def department(admin: AdminPrincipal, value: Any) -> str | None:
        if value is None:
            return None
        dep = id_field(value, "department_id")
        if not any(d["id"] == dep for d in await store.list_departments(admin.workspace_id)):
            raise InvalidRequest(f"Department {dep!r} does not exist.", param="department_id")
        return dep

    def owner_only(admin: AdminPrincipal, *roles: Role | str | None) -> None:
        # Only an owner makes, unmakes or touches an owner: an admin cannot promote itself past the owner.
        if Role.OWNER in roles and admin.role is not Role.OWNER:
            raise PermissionDenied("Only an owner may grant the owner role or change an owner.")

    async def found(admin: AdminPrincipal, member_id: str) -> dict[str, Any]:
        row = await members.get(admin.workspace_id, member_id)
        if row is None:
            raise NotFound(f"Member {member_id!r} does not exist.", param="member_id")
        return row

    async def create_member(request: Request, admin: AdminPrincipal) -> Response:
        body = await json_body(request)
        email = _email(body.get("email"))
        role = _role(body.get("role", "viewer"))
        owner_only(admin, role)
        dep = await department(admin, body.get("department_id"))
        if role is Role.DEPARTMENT_ADMIN and dep is None:
            raise InvalidRequest("A department_admin needs a 'department_id'.", param="department_id")
        now = clock()
        name = text_field(body["name"], "name", strip=True) if body.get("name") is not None else email
        row = member_row(admin.workspace_id, email, name, dep, role.value, now)
        await members.create(row)
        describe(request, Change("member.create", "member", row["id"], after=row))
        return JSONResponse(row, status_code=201)

    async def list_members(request: Request, admin: AdminPrincipal) -> Response:
        return JSONResponse({"data": await members.list_members(admin.workspace_id)})

    async def get_member(request: Request, admin: AdminPrincipal) -> Response:
        return JSONResponse(await found(admin, path_id(request, "member_id", "Member")))

    async def revoke(request: Request, admin: AdminPrincipal, before: dict[str, Any]) -> dict[str, Any]:
        now = clock()
        revoked = await members.revoke(admin.workspace_id, before["id"], now)
        if revoked is None:
            raise NotFound(f"Member {before['id']!r} does not exist.", param="member_id")
        keys, pats = revoked
        for key_hash in keys:  # refused at once, here and on every replica (gateway/broadcast.py)
            invalidate_key(key_hash)
        auth.forget(pats)
        return {**before, "status": "revoked", "revoked_at": now, "updated_at": now}

    async def update_member(request: Request, admin: AdminPrincipal) -> Response:
        before = await found(admin, path_id(request, "member_id", "Member"))
        body = await json_body(request)
        changes: dict[str, Any] = {}
        if "name" in body:
            changes["name"] = text_field(body["name"], "name", strip=True)
        if "role" in body:
            changes["role"] = _role(body["role"]).value
        if "department_id" in body:
            changes["department_id"] = await department(admin, body["department_id"])
        status = body.get("status", before["status"])
        if status not in STATUSES:
            raise InvalidRequest("'status' must be active or revoked.", param="status")
        owner_only(admin, before["role"], changes.get("role"))
        merged = {**before, **changes}
        if merged["role"] == Role.DEPARTMENT_ADMIN and merged["department_id"] is None:
            raise InvalidRequest("A department_admin needs a 'department_id'.", param="department_id")
        after = merged
        if changes:
            changes["updated_at"] = clock()
            await members.update(admin.workspace_id, before["id"], changes)
            after = {**merged, "updated_at": changes["updated_at"]}
        if status == "revoked" and before["status"] != "revoked":
            after = await revoke(request, admin, after)
            after = {**after, **changes, "status": "revoked"}
        elif status == "active" and before["status"] == "revoked":
            # Back in: the keys and PATs revoked with the member stay revoked (new ones are made).
            now = clock()
            await members.update(admin.workspace_id, before["id"], {"status": "active", "revoked_at": None})
            after = {**after, "status": "active", "revoked_at": None, "updated_at": now}
        # A role or department is in the cached principal of each of the member's PATs.
        auth.forget(await members.token_hashes(admin.workspace_id, before["id"]))
        if after != before:
            describe(request, Change("member.update", "member", before["id"], before=before, after=after))
        else:
            describe(request)
        return JSONResponse(await found(admin, before["id"]))

    async def delete_member(request: Request, admin: AdminPrincipal) -> Response:
        before = await found(admin, path_id(request, "member_id", "Member"))
        owner_only(admin, before["role"])
        if before["status"] == "revoked":
            describe(request)  # revoked already: nothing changed
            return JSONResponse({"id": before["id"], "revoked": True})
        after = await revoke(request, admin, before)
        describe(request, Change("member.revoke", "member", before["id"], before=before, after=after))
        return JSONResponse({"id": before["id"], "revoked": True})

    # -- personal access tokens ------------------------------------------------------------------------------
    def scopes_of(value: Any) -> list[str]:
        if not isinstance(value, list) or not value or not all(isinstance(s, str) and s in SCOPES for s in value):
            raise InvalidRequest("'scopes' must be a non-empty array of read, write, admin.", param="scopes")
        return sorted(set(value))

    def expiry(body: dict[str, Any], now: datetime) -> datetime:
        if body.get("expires_at") is not None and body.get("expires_in_days") is not None:
            raise InvalidRequest("Send 'expires_at' or 'expires_in_days', not both.", param="expires_at")
        if body.get("expires_at") is not None:
            at = time_field(body["expires_at"], "expires_at")
            if at <= now or at > now + timedelta(days=MAX_PAT_DAYS):
                raise InvalidRequest(f"'expires_at' must be in the next {MAX_PAT_DAYS} days.", param="expires_at")
            return at
        days = body.get("expires_in_days", DEFAULT_PAT_DAYS)
        if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_PAT_DAYS:
            raise InvalidRequest(f"'expires_in_days' must be an integer, 1 to {MAX_PAT_DAYS}.", param="expires_in_days")
        return now + timedelta(days=days)

    def others(admin: AdminPrincipal) -> bool:
        return permits(admin, "members.write")

    async def create_token(request: Request, admin: AdminPrincipal) -> Response:
        body = await json_body(request)
        member_id = admin.member_id if body.get("member_id") is None else id_field(body["member_id"], "member_id")
        if member_id is None:
            raise InvalidRequest("An admin token belongs to no member: name the PAT's 'member_id'.", param="member_id")
        if member_id != admin.member_id and not others(admin):
            raise PermissionDenied("Only members.write may create tokens for another member.")
        member = await members.get(admin.workspace_id, member_id)
        if member is None or member["status"] != "active":
            raise InvalidRequest(f"Member {member_id!r} does not exist or is revoked.", param="member_id")
        name = text_field(body.get("name", "token"), "name", strip=True)
        scopes = scopes_of(body.get("scopes"))
        now = clock()
        expires_at = expiry(body, now)
        new = AdminPrincipal(admin.workspace_id, "-", Role(member["role"]), member_id, frozenset(scopes))
        if not grants(new) <= grants(admin):
            raise PermissionDenied("A token cannot have more rights than the credential that creates it.")
        row, secret = token_row(admin.workspace_id, member_id, name, scopes, admin.token_id, now, expires_at)
        await members.create_token(row)
        public = public_token(row)
        describe(request, Change("pat.create", "personal_access_token", row["id"], after=public))
        return JSONResponse({**public, "token": secret}, status_code=201)

    async def list_tokens(request: Request, admin: AdminPrincipal) -> Response:
        rows = await members.list_tokens(admin.workspace_id, None if others(admin) else admin.member_id or "")
        return JSONResponse({"data": rows})

    async def revoke_token(request: Request, admin: AdminPrincipal) -> Response:
        token_id = path_id(request, "token_id", "Token")
        row = await members.get_token(admin.workspace_id, token_id)
        # Another member's token is not found, rather than forbidden: its existence is not the caller's business.
        if row is None or (row["member_id"] != admin.member_id and not others(admin)):
            raise NotFound(f"Token {token_id!r} does not exist.", param="token_id")
        public = public_token(row)
        if row["revoked_at"] is None:
            now = clock()
            await members.revoke_token(admin.workspace_id, token_id, now)
            auth.forget([row["token_hash"]])
            after = {**public, "revoked_at": now}
            describe(request, Change("pat.revoke", "personal_access_token", token_id, before=public, after=after))
        else:
            describe(request)
        return JSONResponse({"id": token_id, "revoked": True})

    g = auth.guard
    return [
        Route("/api/members", g(list_members), methods=["GET"]),
        Route("/api/members", g(create_member, write=True, audit=["member.create"]), methods=["POST"]),
        Route("/api/members/{member_id}", g(get_member), methods=["GET"]),
        Route(
            "/api/members/{member_id}",
            g(update_member, write=True, audit=["member.update"]),
            methods=["PATCH"],
        ),
        Route("/api/members/{member_id}", g(delete_member, write=True, audit=["member.revoke"]), methods=["DELETE"]),
        Route("/api/tokens", g(list_tokens), methods=["GET"]),
        Route("/api/tokens", g(create_token, write=True, audit=["pat.create"]), methods=["POST"]),
        Route("/api/tokens/{token_id}", g(revoke_token, write=True, audit=["pat.revoke"]), methods=["DELETE"]),
    ]

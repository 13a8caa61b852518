"""The CLI's members and personal access tokens (docs/security.md): `members create|list|revoke`, `tokens
create|list|revoke`. The same rules as `/api/members` and `/api/tokens` (api/members.py), with the host's rights:
the CLI may make an owner, and a PAT for any member. Every change is an audit event with actor `cli`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from typing import Any

import click

from agentledger.audit.changes import Change
from agentledger.cli_audit import record
from agentledger.core.errors import InvalidRequest, NotFound
from agentledger.core.fields import id_field, text_field
from agentledger.core.keys import DEFAULT_PAT_DAYS, MAX_PAT_DAYS
from agentledger.core.model import Role
from agentledger.governance import Governance
from agentledger.store.members import MemberStore

WithGovernance = Callable[[Any, Callable[[Governance], Awaitable[Any]]], Any]
# A running gateway caches what it authenticated for cache_ttl; the CLI cannot reach its memory.
_CACHE_NOTE = " (a running gateway stops accepting them within cache_ttl)"
MEMBER_COLUMNS = ("id", "email", "name", "role", "department_id", "status", "created_at", "revoked_at")
TOKEN_COLUMNS = ("id", "member_id", "name", "scopes", "token_prefix", "created_at", "expires_at", "revoked_at")


def member_groups(
    with_governance: WithGovernance,
    settings_of: Callable[[click.Context], Any],
    echo_json: Callable[[Any], None],
    echo_table: Callable[[Sequence[dict[str, Any]], Sequence[str]], None],
) -> list[click.Group]:
    def run(ctx: click.Context, workspace: str, fn: Callable[[Governance, MemberStore], Awaitable[Any]]) -> Any:
        async def go(g: Governance) -> Any:
            await g.require_workspace(workspace)
            return await fn(g, MemberStore(g.store))  # type: ignore[arg-type]

        return with_governance(settings_of(ctx), go)

    workspace_option = click.option("--workspace", default="default", show_default=True, help="Workspace id.")
    json_option = click.option("--json", "as_json", is_flag=True, help='JSON ({"data": [...]}, as the API answers).')

    @click.group()
    def members() -> None:
        """Members of a workspace, with their roles."""

    @members.command("create")
    @workspace_option
    @click.option("--email", required=True)
    @click.option("--role", type=click.Choice([r.value for r in Role]), default="viewer", show_default=True)
    @click.option("--name", default=None, help="  [default: the email]")
    @click.option("--department", "department_id", default=None, help="Their department (a department_admin's).")
    @click.pass_context
    def members_create(
        ctx: click.Context, workspace: str, email: str, role: str, name: str | None, department_id: str | None
    ) -> None:
        """Add a member to a workspace."""
        from agentledger.api.members import _email, member_row

        async def create(g: Governance, store: MemberStore) -> dict[str, Any]:
            address = _email(email)
            dep = id_field(department_id, "department_id") if department_id is not None else None
            if dep is not None and not any(d["id"] == dep for d in await g.store.list_departments(workspace)):
                raise InvalidRequest(f"Department {dep!r} does not exist.", param="department_id")
            if role == Role.DEPARTMENT_ADMIN.value and dep is None:
                raise InvalidRequest("A department_admin needs a '--department'.", param="department_id")
            shown = text_field(name, "name", strip=True) if name is not None else address
            row = member_row(workspace, address, shown, dep, role, g.clock())
            await store.create(row)
            await record(g, workspace, Change("member.create", "member", row["id"], after=row))
            return row

        echo_json(run(ctx, workspace, create))

    @members.command("list")
    @workspace_option
    @json_option
    @click.pass_context
    def members_list(ctx: click.Context, workspace: str, as_json: bool) -> None:
        """List a workspace's members."""
        rows = run(ctx, workspace, lambda g, store: store.list_members(workspace))
        echo_json({"data": rows}) if as_json else echo_table(rows, MEMBER_COLUMNS)

    @members.command("revoke")
    @click.argument("id")
    @workspace_option
    @json_option
    @click.pass_context
    def members_revoke(ctx: click.Context, id: str, workspace: str, as_json: bool) -> None:
        """Revoke a member, with every virtual key they own and every PAT they hold."""

        async def revoke(g: Governance, store: MemberStore) -> None:
            before = await store.get(workspace, id)
            if before is None:
                raise NotFound(f"Member {id!r} does not exist.", param="id")
            now = g.clock()
            await store.revoke(workspace, id, now)
            if before["status"] != "revoked":  # revoking what was revoked changes nothing
                after = {**before, "status": "revoked", "revoked_at": now, "updated_at": now}
                await record(g, workspace, Change("member.revoke", "member", id, before=before, after=after))

        run(ctx, workspace, revoke)
        if as_json:
            echo_json({"id": id, "revoked": True})
        else:
            click.echo(f"revoked member {id} in workspace {workspace}, with their keys and tokens{_CACHE_NOTE}")

    @click.group()
    def tokens() -> None:
        """Members' personal access tokens (`pat_…`, shown once)."""

    @tokens.command("create")
    @workspace_option
    @click.option("--member", "member_id", required=True, help="The member the token acts for.")
    @click.option("--scope", "scopes", type=click.Choice(["read", "write", "admin"]), multiple=True, required=True)
    @click.option(
        "--expires-in-days", type=click.IntRange(1, MAX_PAT_DAYS), default=DEFAULT_PAT_DAYS, show_default=True
    )
    @click.option("--name", default="token", show_default=True)
    @click.pass_context
    def tokens_create(
        ctx: click.Context, workspace: str, member_id: str, scopes: tuple[str, ...], expires_in_days: int, name: str
    ) -> None:
        """Create a personal access token for a member (printed once)."""

        async def create(g: Governance, store: MemberStore) -> dict[str, Any]:
            member = await store.get(workspace, id_field(member_id, "member_id"))
            if member is None or member["status"] != "active":
                raise InvalidRequest(f"Member {member_id!r} does not exist or is revoked.", param="member_id")
            from agentledger.api.members import public_token, token_row

            now = g.clock()
            expires_at = now + timedelta(days=expires_in_days)
            shown = text_field(name, "name", strip=True)
            row, secret = token_row(workspace, member["id"], shown, sorted(set(scopes)), "cli", now, expires_at)
            await store.create_token(row)
            public = public_token(row)
            await record(g, workspace, Change("pat.create", "personal_access_token", row["id"], after=public))
            return {**public, "token": secret}

        echo_json(run(ctx, workspace, create))

    @tokens.command("list")
    @workspace_option
    @json_option
    @click.pass_context
    def tokens_list(ctx: click.Context, workspace: str, as_json: bool) -> None:
        """List personal access tokens (their prefixes; a token itself is never shown again)."""
        rows = run(ctx, workspace, lambda g, store: store.list_tokens(workspace, None))
        echo_json({"data": rows}) if as_json else echo_table(rows, TOKEN_COLUMNS)

    @tokens.command("revoke")
    @click.argument("id")
    @workspace_option
    @json_option
    @click.pass_context
    def tokens_revoke(ctx: click.Context, id: str, workspace: str, as_json: bool) -> None:
        """Revoke a personal access token by its id."""

        async def revoke(g: Governance, store: MemberStore) -> None:
            from agentledger.api.members import public_token

            row = await store.get_token(workspace, id)
            if row is None:
                raise NotFound(f"Token {id!r} does not exist.", param="id")
            if row["revoked_at"] is None:
                now = g.clock()
                await store.revoke_token(workspace, id, now)
                public = public_token(row)
                after = {**public, "revoked_at": now}
                change = Change("pat.revoke", "personal_access_token", id, before=public, after=after)
                await record(g, workspace, change)

        run(ctx, workspace, revoke)
        if as_json:
            echo_json({"id": id, "revoked": True})
        else:
            click.echo(f"revoked token {id} in workspace {workspace}{_CACHE_NOTE.replace('them', 'it')}")

    return [members, tokens]

"""The command line: thin wrappers over library calls. `agentledger` alone means `agentledger serve`.

Errors a user can cause (a bad option, an unknown workspace, a duplicate id, a database that cannot be
reached) end as click errors: one `Error: ...` line on stderr, exit 2 for usage and 1 for the rest, never
a traceback.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import click
import orjson
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError

from agentledger.audit.changes import Change
from agentledger.cli_audit import audit_group, record
from agentledger.cli_members import member_groups
from agentledger.config import SETTINGS, Settings, load_settings
from agentledger.core.budget_config import budget_row, rate_limit_row
from agentledger.core.budgets import Action, Figures, Period, Scope, counter_key
from agentledger.core.errors import AgentLedgerError, InvalidRequest, NotFound
from agentledger.core.fields import id_field, time_field
from agentledger.core.ids import new_id
from agentledger.core.keys import hash_secret
from agentledger.core.model import Role
from agentledger.core.money import format_usd
from agentledger.governance import PROVIDER_KINDS, Governance
from agentledger.pipeline.journal import Journal, JournalLocked, journal_dir
from agentledger.pipeline.queue import TracePipeline
from agentledger.secrets_box import SecretBox
from agentledger.store.base import Store
from agentledger.store.budgets import budget_of
from agentledger.store.sql import SQLStore

T = TypeVar("T")


def _settings(ctx: click.Context) -> Settings:
    obj: Settings = ctx.obj
    return obj


def _shown_url(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


async def _catch_up(store: SQLStore) -> None:
    """What a stopped gateway left in its trace journal (SQLite, strict: acknowledged, maybe not in the database
    yet) is written first, so a command reads every answered call. A running gateway's journal is its own, being
    written to the database as it goes: left alone."""
    path = journal_dir(store.url)
    if path is None or not path.is_dir():
        return
    journal = Journal(path)
    try:
        journal.open()
    except JournalLocked:
        return
    pipeline = TracePipeline(store, durability="strict", journal=journal)
    try:
        await pipeline.recover()
    finally:
        await pipeline.aclose()  # (never started: it closes the journal and its thread)


def _with_governance(settings: Settings, fn: Callable[[Governance], Awaitable[T]]) -> T:
    """Runs `fn` against a migrated store, turning the errors a user can cause into click errors."""
    url = _shown_url(settings.database_url)
    try:
        # Only the store and the secret box: the management commands need no gateway, and not importing
        # `app` (aiohttp, starlette, the price catalog) halves their start-up time.
        store = SQLStore(settings.database_url)
        box = SecretBox.from_setting(settings.secret_key or None, Path(settings.data_dir) / "secret.key")
    except ArgumentError as exc:
        raise click.BadParameter(str(exc), param_hint="'--db' (db_url)") from None
    except ImportError as exc:
        raise click.ClickException(f"no driver for the database {url}: {exc}") from None
    except (ValueError, OSError) as exc:  # a malformed secret_key, an unwritable data_dir
        raise click.ClickException(f"cannot open the data directory or secret key: {exc}") from None

    async def run() -> T:
        try:
            await store.migrate()
            await _catch_up(store)
            return await fn(Governance(store, box))
        finally:
            await store.aclose()

    try:
        return asyncio.run(run())
    except InvalidRequest as exc:
        ctx = click.get_current_context()
        param = next((p for p in ctx.command.params if p.name == exc.param), None)
        if param is None:
            raise click.UsageError(exc.message, ctx) from None
        raise click.BadParameter(exc.message, ctx, param) from None
    except AgentLedgerError as exc:
        raise click.ClickException(exc.message) from None
    except DBAPIError as exc:
        detail = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else type(exc).__name__
        raise click.ClickException(f"database {url}: {detail}") from None


def _json(data: Any) -> str:
    # The API's serialization (orjson): timestamps are ISO 8601 with a "T", as /api prints them.
    return orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS | orjson.OPT_INDENT_2, default=str).decode()


def _echo_json(data: Any) -> None:
    click.echo(_json(data))


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return _json(value).strip('"')
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value) or "-"
    return str(value)


def _echo_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(columns)]
    for line in [list(columns), *cells]:
        click.echo("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip())


def _configure_logging(settings: Settings) -> None:
    try:
        logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    except ValueError:
        raise click.BadParameter(
            f"expected debug, info, warning or error, got {settings.log_level!r}", param_hint="'log_level'"
        ) from None
    if settings.log_level.lower() != "debug":
        # Alembic narrates every migration check at INFO; on a first start that buried the banner.
        logging.getLogger("alembic").setLevel(logging.WARNING)


@click.group(invoke_without_command=True)
@click.option(
    "--set", "sets", multiple=True, metavar="NAME=VALUE", help="Override a setting (see docs/configuration.md)."
)
@click.option("--db", default=None, help="Database URL (same as --set db_url=...).")
@click.option("--data-dir", default=None, help="Data directory (same as --set data_dir=...).")
@click.option("--host", default=None, help="Interface to serve on (same as --set host=...).")
@click.option("--port", default=None, type=int, help="Port to serve on (same as --set port=...).")
@click.pass_context
def main(
    ctx: click.Context, sets: tuple[str, ...], db: str | None, data_dir: str | None, host: str | None, port: int | None
) -> None:
    overrides: dict[str, Any] = {"db_url": db, "data_dir": data_dir, "host": host, "port": port}
    for item in sets:
        name, sep, value = item.partition("=")
        if not sep:
            raise click.BadParameter(f"expected NAME=VALUE, got {item!r}", param_hint="'--set'")
        overrides[name] = value
    try:
        ctx.obj = load_settings(overrides)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--set'") from None
    if ctx.invoked_subcommand is None:  # `agentledger` alone means `agentledger serve`
        ctx.invoke(serve)


@main.command()
@click.option("--host", default=None)
@click.option("--port", default=None, type=int)
@click.pass_context
def serve(ctx: click.Context, host: str | None, port: int | None) -> None:
    """Run the gateway (bootstrapping a demo workspace on first start)."""
    import uvicorn

    from agentledger.app import create_app  # the gateway's imports are needed only here

    settings = _settings(ctx)
    settings = load_settings(
        {
            **{s.name: getattr(settings, s.name) for s in SETTINGS},
            "host": host or settings.host,
            "port": port or settings.port,
        }
    )
    _configure_logging(settings)
    if settings.workers > 1:
        # Each worker is a replica: what one node keeps in memory (budget counters, rate windows) must be shared.
        if not settings.redis_url:
            raise click.ClickException(
                "workers > 1 needs redis_url: with in-process counters each worker would enforce budgets and rate "
                "limits alone (set --set redis_url=redis://127.0.0.1:6379/0, or keep workers at 1)."
            )
        if settings.database_url.startswith("sqlite"):
            raise click.ClickException(
                "workers > 1 needs PostgreSQL (--db postgresql+psycopg://...): SQLite has one writer."
            )
    base_url = f"http://{settings.host}:{settings.port}"
    _prepare(settings, base_url)
    options: dict[str, Any] = dict(
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,
        loop="uvloop" if sys.platform != "win32" else "asyncio",
        http="httptools",
        timeout_graceful_shutdown=30,
    )
    if settings.workers > 1:
        for s in SETTINGS:  # the workers are new processes: they read the settings from the environment
            os.environ[s.env] = str(getattr(settings, s.name))
        uvicorn.run("agentledger.app:app_from_env", factory=True, workers=settings.workers, **options)
        return
    uvicorn.run(create_app(settings), **options)


def _prepare(settings: Settings, base_url: str) -> None:
    """Migrates (so an unreachable database is one clear error, not a startup traceback) and, on the first
    start, creates the demo workspace and prints its banner: the first thing on stdout."""

    async def run(gov: Governance) -> Any:
        if not settings.bootstrap or await gov.store.list_workspaces("default"):
            return None
        return await gov.bootstrap()

    boot = _with_governance(settings, run)
    database = _shown_url(settings.database_url)
    if boot is None:
        click.echo(f"agentledger: serving {base_url} (database {database}); dashboard {base_url}/", err=True)
        return
    click.echo(
        "\n".join(
            [
                "agentledger — first start: created a demo workspace (keys are shown once, store them now)",
                f"  base URL      {base_url}/v1",
                f"  workspace     {boot.workspace_id}   department {boot.department_id}",
                f"  agent         {boot.agent_id}   (the demo key is bound to it: its runs show this agent_id)",
                f"  virtual key   {boot.virtual_key}",
                f"  admin token   {boot.admin_token}",
                "  provider      built-in mock (offline); add a real one with `agentledger provider-keys create`",
                f"  database      {database}",
                f"  dashboard     {base_url}/   (sign in with the admin token; `agentledger demo` fills it)",
                "",
                f"  curl {base_url}/v1/chat/completions -H 'Authorization: Bearer {boot.virtual_key}' \\",
                "    -H 'Content-Type: application/json' \\",
                """    -d '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'""",
                "",
            ]
        )
    )


@main.command()
@click.pass_context
def migrate(ctx: click.Context) -> None:
    """Apply database migrations and exit."""

    async def run(gov: Governance) -> None:
        return None

    _with_governance(_settings(ctx), run)
    click.echo("migrated")


def _workspace_option() -> click.Option:
    return click.Option(["--workspace"], default="default", show_default=True, help="Workspace id.")


def _json_option() -> click.Option:
    return click.Option(["--json", "as_json"], is_flag=True, help='JSON ({"data": [...]}, as the API answers).')


def _in_workspace(workspace: str, fn: Callable[[Governance], Awaitable[T]]) -> Callable[[Governance], Awaitable[T]]:
    async def run(gov: Governance) -> T:
        await gov.require_workspace(workspace)
        return await fn(gov)

    return run


def _provider_key_body(body: dict[str, Any]) -> dict[str, Any]:
    """The CLI's flat flags → the API's `fallbacks`, `retry` and `options` objects."""
    if "fallbacks" in body:
        entries = []
        for given in body["fallbacks"]:
            key, sep, model = given.partition(":")
            entries.append({"key": key or None, "model": model or None} if sep else {"key": key})
        body["fallbacks"] = entries
    retry = {
        name: body.pop(flag)
        for flag, name in (
            ("retry_attempts", "attempts"),
            ("retry_backoff_ms", "backoff_ms"),
            ("retry_max_backoff_ms", "max_backoff_ms"),
        )
        if flag in body
    }
    if retry:
        body["retry"] = retry
    options: dict[str, Any] = {k: body.pop(k) for k in ("api_version", "anthropic_version") if k in body}
    if "deployments" in body:
        pairs = [d.partition("=") for d in body.pop("deployments")]
        if any(not sep or not model or not name for model, sep, name in pairs):
            raise click.BadParameter("expected MODEL=DEPLOYMENT", param_hint="'--deployment'")
        options["deployments"] = {model: name for model, _, name in pairs}
    if options:
        body["options"] = options
    return body


Create = Callable[[Governance, str, dict[str, Any]], Awaitable[Any]]


def _create_command(
    group: click.Group,
    name: str,
    method: str | Create,
    options: list[click.Option],
    help: str,
    one_of: tuple[str, ...] = (),
    shape: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    *,
    action: str,
) -> None:
    """`method`: a Governance method's name, or a function of (governance, workspace, body). `action`: what the
    audit log records of it (the created object as `after`, actor `cli`)."""
    create: Create = method if callable(method) else lambda g, ws, body: getattr(g, method)(ws, body)

    async def audited(g: Governance, workspace: str, body: dict[str, Any]) -> Any:
        made = await create(g, workspace, body)
        await record(g, workspace, Change(action, action.split(".")[0], str(made["id"]), after=made))
        return made

    @click.pass_context
    def command(ctx: click.Context, /, workspace: str, **data: Any) -> None:
        body = {k: v for k, v in data.items() if v not in (None, ())}
        if one_of and not any(k in body for k in one_of):
            flags = [p.opts[0] for p in ctx.command.params if p.name in one_of]
            raise click.UsageError(f"Missing option {' or '.join(repr(f) for f in flags)}.", ctx)
        for k in ("allowed_models", "models", "thresholds"):
            if k in body:
                body[k] = list(body[k])
        if shape is not None:
            body = shape(body)
        result = _with_governance(_settings(ctx), _in_workspace(workspace, lambda g: audited(g, workspace, body)))
        _echo_json(result)

    params: list[click.Parameter] = [_workspace_option(), *options]
    group.add_command(click.Command(name, callback=command, params=params, help=help))


def _list_command(
    group: click.Group,
    columns: Sequence[str],
    fetch: Callable[[Governance, str], Awaitable[list[dict[str, Any]]]],
    help: str,
    name: str = "list",
    cells: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> None:
    """`cells`: what the table shows of a row, when it is not the row's own fields (the JSON is the row)."""

    @click.pass_context
    def command(ctx: click.Context, /, workspace: str, as_json: bool) -> None:
        rows = _with_governance(_settings(ctx), _in_workspace(workspace, lambda g: fetch(g, workspace)))
        if as_json:
            _echo_json({"data": rows})
        else:
            _echo_table([cells(r) for r in rows] if cells else rows, columns)

    group.add_command(click.Command(name, callback=command, params=[_workspace_option(), _json_option()], help=help))


def _revoke_command(
    group: click.Group,
    what: str,
    revoke: Callable[[Governance, str, str], Awaitable[Any]],
    note: str = "",
    *,
    action: str,
    table: str,
) -> None:
    async def audited(g: Governance, workspace: str, ident: str) -> None:
        before = await g.store.audit.current(table, workspace, ident)
        await revoke(g, workspace, ident)
        if before is not None and before["revoked_at"] is None:  # revoking what was revoked changes nothing
            after = {**before, "revoked_at": g.clock()}
            await record(g, workspace, Change(action, action.split(".")[0], ident, before=before, after=after))

    @click.pass_context
    def command(ctx: click.Context, /, id: str, workspace: str, as_json: bool) -> None:
        _with_governance(_settings(ctx), _in_workspace(workspace, lambda g: audited(g, workspace, id)))
        if as_json:
            _echo_json({"id": id, "revoked": True})
        else:
            click.echo(f"revoked {what} {id} in workspace {workspace}{note}")

    params: list[click.Parameter] = [click.Argument(["id"]), _workspace_option(), _json_option()]
    group.add_command(click.Command("revoke", callback=command, params=params, help=f"Revoke a {what} by its id."))


# A running gateway caches what it authenticated for cache_ttl; the CLI cannot reach its memory.
_CACHE_NOTE = " (a running gateway stops accepting it within cache_ttl)"


@main.group()
def workspaces() -> None:
    """Workspaces (each with its own owner token)."""


@workspaces.command("create")
@click.argument("name")
@click.option("--id", "workspace_id", default=None)
@click.pass_context
def workspaces_create(ctx: click.Context, name: str, workspace_id: str | None) -> None:
    """Create a workspace and print its owner token (shown once)."""

    async def create(g: Governance) -> tuple[str, str]:
        ws, token = await g.create_workspace(name, workspace_id=workspace_id)
        after = {"id": ws, "name": name, "owner_token": token}  # the token as its prefix (audit/changes.py)
        await record(g, ws, Change("workspace.create", "workspace", ws, after=after))
        return ws, token

    ws, token = _with_governance(_settings(ctx), create)
    _echo_json({"id": ws, "name": name, "owner_token": token})


@workspaces.command("list")
@click.option("--json", "as_json", is_flag=True, help='JSON ({"data": [...]}, as the API answers).')
@click.pass_context
def workspaces_list(ctx: click.Context, as_json: bool) -> None:
    """List every workspace."""
    rows = _with_governance(_settings(ctx), lambda g: g.store.list_all_workspaces())
    if as_json:
        _echo_json({"data": rows})
    else:
        _echo_table(rows, ("id", "name", "created_at"))


@main.group()
def departments() -> None:
    """Departments."""


@main.group()
def agents() -> None:
    """Agents."""


@main.group()
def keys() -> None:
    """Virtual keys (shown once)."""


@main.group("provider-keys")
def provider_keys() -> None:
    """Provider keys (encrypted at rest)."""


@main.group()
def prices() -> None:
    """Per-workspace price overrides."""


_create_command(
    departments,
    "create",
    "create_department",
    [click.Option(["--name"], required=True), click.Option(["--id"])],
    "Create a department.",
    action="department.create",
)
_create_command(
    agents,
    "create",
    "create_agent",
    [
        click.Option(["--name"], required=True),
        click.Option(["--department", "department_id"], required=True),
        click.Option(["--id"]),
        click.Option(["--kind"], type=click.Choice(["ai", "workflow"])),
    ],
    "Create an agent in a department.",
    action="agent.create",
)
_create_command(
    keys,
    "create",
    "create_virtual_key",
    [
        click.Option(["--name"], default="key"),
        click.Option(["--department", "department_id"]),
        click.Option(["--agent", "agent_id"], help="Bind the key to this agent (and its department)."),
        click.Option(["--allow-model", "allowed_models"], multiple=True),
    ],
    "Create a virtual key (printed once) for a department, or bound to an agent.",
    one_of=("department_id", "agent_id"),
    action="virtual_key.create",
)
_create_command(
    provider_keys,
    "create",
    "create_provider_key",
    [
        click.Option(["--name"]),
        click.Option(["--kind"], type=click.Choice(list(PROVIDER_KINDS)), default="openai"),
        click.Option(["--provider"], help="Price-catalog provider id: openai, openrouter, anthropic, ..."),
        click.Option(["--base-url", "base_url"]),
        click.Option(["--api-key", "api_key"], envvar="AGENTLEDGER_PROVIDER_API_KEY"),
        click.Option(["--model", "models"], multiple=True, help="Model name or glob; repeatable (default '*')."),
        click.Option(["--priority"], type=int),
        click.Option(
            ["--fallback", "fallbacks"],
            multiple=True,
            help="KEY, KEY:MODEL or :MODEL, tried in order when this key fails; repeatable.",
        ),
        click.Option(["--retry-attempts", "retry_attempts"], type=int, help="Tries on this key before fallbacks."),
        click.Option(["--retry-backoff-ms", "retry_backoff_ms"], type=int),
        click.Option(["--retry-max-backoff-ms", "retry_max_backoff_ms"], type=int),
        click.Option(["--api-version", "api_version"], help="azure: the api-version (default 2024-10-21)."),
        click.Option(["--deployment", "deployments"], multiple=True, help="azure: MODEL=DEPLOYMENT; repeatable."),
        click.Option(["--anthropic-version", "anthropic_version"], help="anthropic: default anthropic-version."),
    ],
    "Add a provider credential and the models it serves.",
    shape=_provider_key_body,
    action="provider_key.create",
)
_create_command(
    prices,
    "set",
    "add_price_override",
    [
        click.Option(["--model"], required=True),
        click.Option(["--input-mtok", "input_mtok"], required=True),
        click.Option(["--output-mtok", "output_mtok"], required=True),
        click.Option(["--cached-input-mtok", "cached_input_mtok"]),
        click.Option(["--cache-write-mtok", "cache_write_mtok"]),
        click.Option(["--effective-from", "effective_from"]),
    ],
    "Set a workspace's price for a model (dollars per million tokens).",
    action="price_override.create",
)

_list_command(
    departments, ("id", "name", "created_at"), lambda g, ws: g.store.list_departments(ws), "List departments."
)
_list_command(
    agents, ("id", "name", "department_id", "kind", "created_at"), lambda g, ws: g.store.list_agents(ws), "List agents."
)
_list_command(
    keys,
    ("id", "name", "key_prefix", "department_id", "agent_id", "allowed_models", "created_at", "revoked_at"),
    lambda g, ws: g.store.list_virtual_keys(ws),
    "List virtual keys (their prefixes; a key itself is never shown again).",
)
_list_command(
    provider_keys,
    ("id", "name", "provider", "kind", "base_url", "models", "priority", "created_at", "revoked_at"),
    lambda g, ws: g.store.list_provider_keys(ws),
    "List provider keys (never their secrets).",
)
_list_command(
    prices,
    (
        "id",
        "model",
        "input_mtok",
        "output_mtok",
        "cached_input_mtok",
        "cache_write_mtok",
        "effective_from",
        "created_at",
    ),
    lambda g, ws: g.store.list_price_overrides(ws),
    "List the workspace's price overrides.",
)
_revoke_command(
    keys,
    "virtual key",
    lambda g, ws, id: g.revoke_virtual_key(ws, id),
    _CACHE_NOTE,
    action="virtual_key.revoke",
    table="virtual_keys",
)
_revoke_command(
    provider_keys,
    "provider key",
    lambda g, ws, id: g.revoke_provider_key(ws, id),
    _CACHE_NOTE,
    action="provider_key.revoke",
    table="provider_keys",
)


_ADMIN_OPTIONS = (
    click.option("--workspace", default=None, help="Workspace id.  [default: default]"),
    click.option("--name", default=None, help="  [default: admin]"),
    click.option("--role", type=click.Choice([r.value for r in Role]), default=None, help="  [default: admin]"),
)


def _admin_options(fn: Callable[..., None]) -> Callable[..., None]:
    for option in reversed(_ADMIN_OPTIONS):
        fn = option(fn)
    return fn


def _create_admin_token(ctx: click.Context, workspace: str | None, name: str | None, role: str | None) -> None:
    ws, role = workspace or "default", role or "admin"

    async def create(g: Governance) -> str:
        token = await g.create_admin_token(ws, name or "admin", Role(role))
        made = await g.store.admin_for_token(hash_secret(token))
        assert made is not None
        after = {"id": made.token_id, "name": name or "admin", "role": role, "token": token}  # the token: its prefix
        await record(g, ws, Change("admin_token.create", "admin_token", made.token_id, after=after))
        return token

    token = _with_governance(_settings(ctx), _in_workspace(ws, create))
    _echo_json({"workspace": ws, "role": role, "token": token})


@main.group("admin-token", invoke_without_command=True)
@_admin_options
@click.pass_context
def admin_token(ctx: click.Context, workspace: str | None, name: str | None, role: str | None) -> None:
    """Admin tokens for the /api. Without a subcommand: create one (printed once), as `admin-token create`."""
    if ctx.invoked_subcommand is None:
        _create_admin_token(ctx, workspace, name, role)
    elif (workspace, name, role) != (None, None, None):
        raise click.UsageError(f"Put the options after the subcommand: admin-token {ctx.invoked_subcommand} ...", ctx)


@admin_token.command("create")
@_admin_options
@click.pass_context
def admin_token_create(ctx: click.Context, workspace: str | None, name: str | None, role: str | None) -> None:
    """Create an admin token for the /api (printed once)."""
    _create_admin_token(ctx, workspace, name, role)


_list_command(
    admin_token,
    ("id", "name", "role", "created_at", "revoked_at"),
    lambda g, ws: g.store.list_admin_tokens(ws),
    "List admin tokens (never the tokens themselves).",
)
_revoke_command(
    admin_token,
    "admin token",
    lambda g, ws, id: g.revoke_admin_token(ws, id),
    _CACHE_NOTE,
    action="admin_token.revoke",
    table="admin_tokens",
)


@main.group()
def rollups() -> None:
    """The totals and rollups kept at write time (run totals, session paths, hourly cost rollups, run marks)."""


@rollups.command("verify")
@click.option("--workspace", default=None, help="Only this workspace (default: all).")
@click.option("--json", "as_json", is_flag=True, help='JSON ({"ok": bool, "mismatches": [...]}).')
@click.pass_context
def rollups_verify(ctx: click.Context, workspace: str | None, as_json: bool) -> None:
    """Recompute every kept total from the raw rows and compare; exit 1 naming each row that differs."""
    mismatches = _with_governance(_settings(ctx), lambda gov: gov.store.verify_books(workspace))
    if as_json:
        _echo_json({"ok": not mismatches, "mismatches": [m.describe() for m in mismatches]})
    elif not mismatches:
        click.echo("rollups verified: every kept total equals its recomputation")
    else:
        for m in mismatches[:100]:
            click.echo(m.describe())
        more = " (first 100 shown)" if len(mismatches) > 100 else ""
        click.echo(f"{len(mismatches)} kept rows differ from their recomputation{more}; fix with `rollups rebuild`")
    if mismatches:
        ctx.exit(1)


@rollups.command("rebuild")
@click.option("--workspace", default=None, help="Only this workspace (default: all).")
@click.pass_context
def rollups_rebuild(ctx: click.Context, workspace: str | None) -> None:
    """Replace the kept totals with their recomputation from the raw rows. Trace writes wait meanwhile."""
    rows = _with_governance(_settings(ctx), lambda gov: gov.store.rebuild_books(workspace))
    click.echo(f"rollups rebuilt: {rows} rows")


# -- budgets and rate limits (docs/budgets.md) ----------------------------------------------------------------------
# The CLI writes the store; a running gateway reads budgets and rate limits through a cache of cache_ttl, so it
# applies a change made here within that time (one made through the API, at once).
_RULES_NOTE = " (a running gateway applies it within cache_ttl)"


async def _check_scope(store: Store, workspace: str, row: dict[str, Any]) -> None:
    """As api.budgets checks (a 404 there; here a bad --scope-value)."""
    scope, value = Scope(row["scope"]), row["scope_value"]
    if not await store.budgets.scope_exists(workspace, scope, value):
        raise InvalidRequest(
            f"the {scope.value} {value!r} does not exist in workspace {workspace!r}.", param="scope_value"
        )


async def _with_ledger_figures(store: Store, rows: list[dict[str, Any]], now: datetime) -> list[dict[str, Any]]:
    """Each budget row as the API shows it, its `status` from the ledger's sums over the budget's counter in the
    current window (the API reads the running gateway's counters, which the CLI cannot reach)."""
    budgets = [budget_of(r) for r in rows]
    keys = {b.id: counter_key(b, now, None) for b in budgets if b.period is not Period.RUN}
    sums = await store.budgets.totals(list(keys.values())) if keys else {}
    out = []
    for row, budget in zip(rows, budgets, strict=True):
        shown = {k: v for k, v in row.items() if k != "deleted_at"}
        shown["limit_usd"] = format_usd(budget.limit_nanos)
        key = keys.get(budget.id)
        if key is None:  # a `run` budget: each run has its own allowance
            shown["status"] = None
        else:
            spent, reserved = sums.get(key, (0, 0))
            shown["status"] = Figures(budget, key, spent, reserved).view(now)
        out.append(shown)
    return out


async def _create_budget(g: Governance, workspace: str, data: dict[str, Any]) -> dict[str, Any]:
    now = g.clock()
    anchor = time_field(data["anchor"], "anchor") if "anchor" in data else None
    row = budget_row(data, now, anchor)
    await _check_scope(g.store, workspace, row)
    row = {"workspace_id": workspace, "id": id_field(data["id"], "id") if "id" in data else new_id("bud"), **row}
    await g.store.budgets.create_budget(row)
    return (await _with_ledger_figures(g.store, [row], now))[0]


async def _create_rate_limit(g: Governance, workspace: str, data: dict[str, Any]) -> dict[str, Any]:
    row = rate_limit_row(data, g.clock())
    await _check_scope(g.store, workspace, row)
    row = {"workspace_id": workspace, "id": id_field(data["id"], "id") if "id" in data else new_id("rl"), **row}
    await g.store.budgets.create_rate_limit(row)
    return row


async def _list_budgets(g: Governance, workspace: str) -> list[dict[str, Any]]:
    return await _with_ledger_figures(g.store, await g.store.budgets.list_budgets(workspace), g.clock())


def _budget_cells(row: dict[str, Any]) -> dict[str, Any]:
    status = row["status"] or {}
    scope = status.get("scope_label") or budget_of(row).scope_label
    return {**row, **status, "scope": scope}


def _delete_command(group: click.Group, what: str, table: str) -> None:
    param = f"{table.removesuffix('s')}_id"

    @click.pass_context
    def command(ctx: click.Context, /, id: str, workspace: str, as_json: bool) -> None:
        async def delete(g: Governance) -> None:
            before = await g.store.audit.current(table, workspace, id)
            if not await g.store.budgets.delete(table, workspace, id, g.clock()):
                raise NotFound(f"{what.capitalize()} {id!r} does not exist in workspace {workspace!r}.", param=param)
            kind = table.removesuffix("s")
            await record(g, workspace, Change(f"{kind}.delete", kind, id, before=before))

        _with_governance(_settings(ctx), _in_workspace(workspace, delete))
        if as_json:
            _echo_json({"id": id, "deleted": True})
        else:
            click.echo(
                f"deleted {what} {id} in workspace {workspace} (a running gateway stops applying it within cache_ttl)"
            )

    params: list[click.Parameter] = [click.Argument(["id"]), _workspace_option(), _json_option()]
    group.add_command(click.Command("delete", callback=command, params=params, help=f"Delete a {what} by its id."))


def _scope_options() -> list[click.Option]:
    return [
        click.Option(["--scope"], type=click.Choice([s.value for s in Scope]), required=True),
        click.Option(
            ["--scope-value", "--value", "scope_value"],
            help="The department, agent or virtual key id, the workflow name or the property's value (every scope "
            "but workspace).",
        ),
        click.Option(["--property"], help="The property's name, for --scope property."),
        click.Option(["--name"]),
        click.Option(["--id"]),
    ]


@main.group()
def budgets() -> None:
    """Budgets: a USD limit per scope and period, and what happens at the limit (docs/budgets.md)."""


@main.group("rate-limits")
def rate_limits() -> None:
    """Rate limits: requests and tokens per minute, concurrent calls (docs/budgets.md)."""


_create_command(
    budgets,
    "create",
    _create_budget,
    [
        *_scope_options(),
        click.Option(["--limit-usd", "limit_usd"], required=True, help='Dollars, a decimal such as "25.00".'),
        click.Option(["--period"], type=click.Choice([p.value for p in Period]), required=True),
        click.Option(["--anchor"], help="ISO 8601: where the windows start (default: today, 00:00 UTC)."),
        click.Option(
            ["--action"], type=click.Choice([a.value for a in Action]), help="At the limit (default block_requests)."
        ),
        click.Option(
            ["--threshold", "thresholds"], type=int, multiple=True, help="Alert percentage; repeatable (50, 80, 100)."
        ),
        click.Option(["--throttle-rpm", "throttle_rpm"], type=int, help="soft_throttle: requests a minute past it."),
    ],
    "Create a budget" + _RULES_NOTE + ". Its `status` figures are the ledger's sums.",
    action="budget.create",
)
_list_command(
    budgets,
    (
        "id",
        "scope",
        "period",
        "action",
        "limit_usd",
        "spent_usd",
        "reserved_usd",
        "remaining_usd",
        "window_start",
        "window_end",
    ),
    _list_budgets,
    "List budgets with their current window's figures. The CLI cannot reach a running gateway's counters: spent "
    "and reserved are the ledger's sums for the window (what the counters are rebuilt from on start; entries a "
    "running gateway has not written yet are missing). A run budget has no figures here (each run has its own).",
    cells=_budget_cells,
)
_delete_command(budgets, "budget", "budgets")

_create_command(
    rate_limits,
    "create",
    _create_rate_limit,
    [
        *_scope_options(),
        click.Option(["--rpm", "requests_per_minute"], type=int, help="Requests per minute."),
        click.Option(["--tpm", "tokens_per_minute"], type=int, help="Tokens per minute (estimated, then corrected)."),
        click.Option(["--concurrent"], type=int, help="Calls in flight at once."),
    ],
    "Create a rate limit" + _RULES_NOTE + ".",
    one_of=("requests_per_minute", "tokens_per_minute", "concurrent"),
    action="rate_limit.create",
)
_list_command(
    rate_limits,
    ("id", "name", "scope", "scope_value", "property", "requests_per_minute", "tokens_per_minute", "concurrent"),
    lambda g, ws: g.store.budgets.list_rate_limits(ws),
    "List rate limits.",
)
_delete_command(rate_limits, "rate limit", "rate_limits")


def _usd_cells(row: dict[str, Any], *fields: str) -> dict[str, Any]:
    return {**row, **{f.removesuffix("_nanos").removesuffix("_delta") + "_usd": format_usd(row[f]) for f in fields}}


@main.command()
@click.option("--workspace", default="default", show_default=True, help="Workspace id.")
@click.option("--budget", default=None, help="Only this budget's entries.")
@click.option("--run", default=None, help="Only this run's entries.")
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help='JSON ({"data": [...]}, as GET /api/ledger answers).')
@click.pass_context
def ledger(ctx: click.Context, workspace: str, budget: str | None, run: str | None, limit: int, as_json: bool) -> None:
    """The budget ledger, newest first: every reserve, settle, release, expire, spend and adjust entry."""

    async def fetch(g: Governance) -> list[dict[str, Any]]:
        return await g.store.budgets.ledger(
            workspace,
            budget_id=id_field(budget, "budget") if budget is not None else None,
            run_id=id_field(run, "run") if run is not None else None,
            limit=limit,
        )

    rows = _with_governance(_settings(ctx), _in_workspace(workspace, fetch))
    if as_json:
        _echo_json({"data": rows})
        return
    _echo_table(
        [_usd_cells(r, "reserved_delta", "spent_delta") for r in rows],
        ("at", "kind", "budget_id", "reserved_usd", "spent_usd", "reservation_id", "request_id", "step_id", "run_id"),
    )


@main.command()
@click.option("--workspace", default="default", show_default=True, help="Workspace id.")
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help='JSON ({"data": [...]}, as GET /api/alerts answers).')
@click.pass_context
def alerts(ctx: click.Context, workspace: str, limit: int, as_json: bool) -> None:
    """Budget thresholds crossed (each once per budget and window), newest first."""
    rows = _with_governance(
        _settings(ctx), _in_workspace(workspace, lambda g: g.store.budgets.alerts(workspace, limit=limit))
    )
    if as_json:
        _echo_json({"data": rows})
        return
    _echo_table(
        [_usd_cells(r, "spent_nanos", "limit_nanos") for r in rows],
        ("at", "budget_id", "window_key", "threshold", "spent_usd", "limit_usd", "request_id", "run_id"),
    )


main.add_command(audit_group(_with_governance, _settings, _echo_json))
for _group in member_groups(_with_governance, _settings, _echo_json, _echo_table):
    main.add_command(_group)


@main.command()
@click.option("--url", default=None, help="The gateway to fill (default: this installation's host and port).")
@click.option(
    "--admin-token",
    default=None,
    envvar="AGENTLEDGER_ADMIN_TOKEN",
    help="An admin token of workspace default (default: one made for the demo in this installation's store).",
)
@click.pass_context
def demo(ctx: click.Context, url: str | None, admin_token: str | None) -> None:
    """Fill a running gateway with realistic traffic (agents, sessions, a blocked and an escalated call, a sale)."""
    from agentledger.demo import DemoError, describe, run_demo

    settings = _settings(ctx)
    url = url or f"http://{settings.host}:{settings.port}"
    if admin_token is None:
        # The banner's admin token was shown once; the demo runs beside the gateway, so it makes its own.
        async def create(g: Governance) -> str:
            token = await g.create_admin_token("default", "demo", Role.ADMIN)
            made = await g.store.admin_for_token(hash_secret(token))
            assert made is not None
            after = {"id": made.token_id, "name": "demo", "role": "admin", "token": token}
            await record(g, "default", Change("admin_token.create", "admin_token", made.token_id, after=after))
            return token

        admin_token = _with_governance(settings, _in_workspace("default", create))
    try:
        report = run_demo(url, admin_token)
    except DemoError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(
            f"cannot reach the gateway at {url} ({exc}); start it with ./scripts/serve"
        ) from None
    click.echo("\n".join(describe(report)))

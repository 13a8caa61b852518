"""The command line: thin wrappers over library calls. `agentledger` alone means `agentledger serve`."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click

from agentledger.app import build_components, create_app
from agentledger.config import SETTINGS, Settings, load_settings
from agentledger.core.model import Role
from agentledger.governance import Governance

T = TypeVar("T")


def _settings(ctx: click.Context) -> Settings:
    obj: Settings = ctx.obj
    return obj


def _with_governance(settings: Settings, fn: Callable[[Governance], Awaitable[T]]) -> T:
    async def run() -> T:
        c = build_components(settings)
        await c.store.migrate()
        try:
            return await fn(c.governance)
        finally:
            await c.store.aclose()

    return asyncio.run(run())


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


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
            raise click.BadParameter(f"expected NAME=VALUE, got {item!r}", param_hint="--set")
        overrides[name] = value
    try:
        ctx.obj = load_settings(overrides)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    if ctx.invoked_subcommand is None:  # `agentledger` alone means `agentledger serve`
        ctx.invoke(serve)


@main.command()
@click.option("--host", default=None)
@click.option("--port", default=None, type=int)
@click.pass_context
def serve(ctx: click.Context, host: str | None, port: int | None) -> None:
    """Run the gateway (bootstrapping a demo workspace on first start)."""
    import uvicorn

    settings = _settings(ctx)
    settings = load_settings(
        {
            **{s.name: getattr(settings, s.name) for s in SETTINGS},
            "host": host or settings.host,
            "port": port or settings.port,
        }
    )
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    base_url = f"http://{settings.host}:{settings.port}"
    if settings.bootstrap:
        _bootstrap(settings, base_url)
    app = create_app(settings)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,
        loop="uvloop" if sys.platform != "win32" else "asyncio",
        http="httptools",
        timeout_graceful_shutdown=30,
    )


def _bootstrap(settings: Settings, base_url: str) -> None:
    async def run(gov: Governance) -> Any:
        if await gov.store.list_workspaces("default"):
            return None
        return await gov.bootstrap()

    boot = _with_governance(settings, run)
    if boot is None:
        click.echo(f"agentledger: serving {base_url} (database {settings.database_url})", err=True)
        return
    click.echo(
        "\n".join(
            [
                "agentledger — first start: created a demo workspace (keys are shown once, store them now)",
                f"  base URL      {base_url}/v1",
                f"  workspace     {boot.workspace_id}   department {boot.department_id}   agent {boot.agent_id}",
                f"  virtual key   {boot.virtual_key}",
                f"  admin token   {boot.admin_token}",
                "  provider      built-in mock (offline); add a real one with `agentledger provider-keys create`",
                f"  database      {settings.database_url}",
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


@main.group()
def workspaces() -> None:
    """Workspaces (each with its own owner token)."""


@workspaces.command("create")
@click.argument("name")
@click.option("--id", "workspace_id", default=None)
@click.pass_context
def workspaces_create(ctx: click.Context, name: str, workspace_id: str | None) -> None:
    ws, token = _with_governance(_settings(ctx), lambda g: g.create_workspace(name, workspace_id=workspace_id))
    _echo_json({"id": ws, "name": name, "owner_token": token})


def _create_command(group: click.Group, name: str, method: str, options: list[click.Option]) -> None:
    @click.pass_context
    def command(ctx: click.Context, /, workspace: str, **data: Any) -> None:
        body = {k: v for k, v in data.items() if v not in (None, ())}
        for k in ("allowed_models", "models"):
            if k in body:
                body[k] = list(body[k])
        result = _with_governance(_settings(ctx), lambda g: getattr(g, method)(workspace, body))
        _echo_json(result)

    params: list[click.Parameter] = [click.Option(["--workspace"], default="default", show_default=True), *options]
    group.add_command(click.Command(name, callback=command, params=params, help=f"Create ({method})."))


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
    departments, "create", "create_department", [click.Option(["--name"], required=True), click.Option(["--id"])]
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
)
_create_command(
    keys,
    "create",
    "create_virtual_key",
    [
        click.Option(["--name"], default="key"),
        click.Option(["--department", "department_id"]),
        click.Option(["--agent", "agent_id"]),
        click.Option(["--allow-model", "allowed_models"], multiple=True),
    ],
)
_create_command(
    provider_keys,
    "create",
    "create_provider_key",
    [
        click.Option(["--name"]),
        click.Option(["--kind"], type=click.Choice(["openai", "mock"]), default="openai"),
        click.Option(["--provider"], help="Price-catalog provider id: openai, openrouter, anthropic, ..."),
        click.Option(["--base-url", "base_url"]),
        click.Option(["--api-key", "api_key"], envvar="AGENTLEDGER_PROVIDER_API_KEY"),
        click.Option(["--model", "models"], multiple=True, help="Model name or glob; repeatable (default '*')."),
        click.Option(["--priority"], type=int),
    ],
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
)


@main.command("admin-token")
@click.option("--workspace", default="default", show_default=True)
@click.option("--name", default="admin")
@click.option("--role", type=click.Choice([r.value for r in Role]), default="admin")
@click.pass_context
def admin_token(ctx: click.Context, workspace: str, name: str, role: str) -> None:
    """Create an admin token for the /api (shown once)."""
    token = _with_governance(_settings(ctx), lambda g: g.create_admin_token(workspace, name, Role(role)))
    _echo_json({"workspace": workspace, "role": role, "token": token})

"""The CLI's side of the audit log (docs/audit.md): the management commands' changes recorded with actor `cli`
(`record`), and the `audit` commands: `verify` (the database's chains, or an export file offline), `public-key`,
`export`, `list` and `checkpoint`. No command edits or deletes an event.
"""

from __future__ import annotations

import getpass
import socket
import sys
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import click
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agentledger.audit.changes import ACTION_FILTER_RE, Change
from agentledger.audit.checkpoints import key_id, load_public
from agentledger.audit.export import read_csv, read_jsonl, verify_export
from agentledger.audit.verify import Report
from agentledger.audit_trail import AuditTrail
from agentledger.core.errors import StoreUnavailable
from agentledger.core.model import Actor, TraceEvent
from agentledger.governance import Governance
from agentledger.store.audit import INSTALLATION, AuditFilter
from agentledger.store.base import WriteResult

WithGovernance = Callable[[Any, Callable[[Governance], Awaitable[Any]]], Any]


def cli_actor() -> Actor:
    """The CLI on this host: `user@host` (the OS account that ran it)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry nor USER: a container's anonymous uid
        user = "unknown"
    return Actor("cli", f"{user}@{socket.gethostname()}"[:256])


def trail_of(gov: Governance) -> AuditTrail:
    """The audit log written straight to the store: the CLI has no pipeline, and each change's event is committed
    before the command reports success."""
    store = gov.store

    async def commit(events: Sequence[TraceEvent]) -> None:
        if await store.write_batch(events) is not WriteResult.SUCCESS:
            raise StoreUnavailable(
                "The change was made, but its audit event could not be written: the database failed."
            )

    return AuditTrail(store, gov.box, commit)


async def record(gov: Governance, workspace_id: str, *changes: Change) -> None:
    await trail_of(gov).record(workspace_id, cli_actor(), changes)


async def _known(gov: Governance, workspace: str) -> None:
    """A workspace, or the installation's own chain (failed authentications that named no workspace)."""
    if workspace != INSTALLATION:
        await gov.require_workspace(workspace)


def _pinned(paths: Sequence[str]) -> dict[str, Ed25519PublicKey] | None:
    if not paths:
        return None
    keys = {}
    for path in paths:
        try:
            key = load_public(Path(path).read_bytes())
        except (OSError, ValueError) as exc:
            raise click.BadParameter(
                f"{path}: not an Ed25519 public key in PEM ({exc})", param_hint="'--public-key'"
            ) from None
        keys[key_id(key)] = key
    return keys


def _lines(path: str) -> Iterator[str]:
    with open(path, encoding="utf-8", newline="") as f:
        yield from f


def _verify_file(path: str, pinned: dict[str, Ed25519PublicKey] | None) -> Report:
    try:
        with open(path, encoding="utf-8") as f:
            first = f.readline()
    except OSError as exc:
        raise click.BadParameter(str(exc), param_hint="'--file'") from None
    records = read_jsonl(_lines(path)) if first.lstrip().startswith("{") else read_csv(_lines(path))
    try:
        return verify_export(records, pinned)
    except ValueError as exc:
        raise click.ClickException(f"{path}: {exc}") from None


def _show(reports: Sequence[Report], as_json: bool, echo_json: Callable[[Any], None]) -> None:
    if as_json:
        echo_json(reports[0].as_dict() if len(reports) == 1 else {"data": [r.as_dict() for r in reports]})
    else:
        for r in reports:
            click.echo(r.describe())


def audit_group(
    with_governance: WithGovernance, settings_of: Callable[[click.Context], Any], echo_json: Callable[[Any], None]
) -> click.Group:
    """The `audit` commands, given the CLI's own helpers (cli.py), which this module may not import."""

    @click.group()
    def audit() -> None:
        """The audit log: verify its hash chain and signed checkpoints, export it, read it (docs/audit.md)."""

    @audit.command("verify")
    @click.option("--workspace", default=None, help="Only this workspace (default: every chain in the database).")
    @click.option("--file", "path", default=None, help="Verify an export (JSONL or CSV) offline, without a database.")
    @click.option(
        "--public-key",
        "keys",
        multiple=True,
        help="The published key (PEM) to trust; repeatable. Without it: the keys the database or the file holds.",
    )
    @click.option("--json", "as_json", is_flag=True, help="The report as JSON.")
    @click.pass_context
    def verify(
        ctx: click.Context, workspace: str | None, path: str | None, keys: tuple[str, ...], as_json: bool
    ) -> None:
        """Recompute every hash of the chain and check every checkpoint's signature; exit 1 naming the first broken
        link (its seq and what differs)."""
        pinned = _pinned(keys)
        if path is not None:
            reports = [_verify_file(path, pinned)]
        else:

            async def run(gov: Governance) -> list[Report]:
                chains = [workspace] if workspace is not None else await gov.store.audit.chains()
                return [await gov.store.audit.verify(ws, pinned) for ws in chains]

            reports = with_governance(settings_of(ctx), run)
        _show(reports, as_json, echo_json)
        if any(not r.ok for r in reports):
            ctx.exit(1)

    @audit.command("public-key")
    @click.option("--workspace", default="default", show_default=True, help="Workspace id.")
    @click.pass_context
    def public_key(ctx: click.Context, workspace: str) -> None:
        """Print the workspace's checkpoint-signing public key (PEM): publish it, and verify exports against it."""

        async def run(gov: Governance) -> dict[str, Any]:
            await _known(gov, workspace)
            return await trail_of(gov).public_key(workspace)

        click.echo(with_governance(settings_of(ctx), run)["public_key"], nl=False)

    @audit.command("checkpoint")
    @click.option("--workspace", default=None, help="Only this workspace (default: every chain).")
    @click.pass_context
    def checkpoint(ctx: click.Context, workspace: str | None) -> None:
        """Sign every chain's head now (a running gateway does it every audit_checkpoint_interval_s)."""
        made = with_governance(settings_of(ctx), lambda gov: trail_of(gov).checkpoint(1, workspace))
        click.echo(f"signed {made} checkpoint{'s' if made != 1 else ''}")

    @audit.command("export")
    @click.option("--workspace", default="default", show_default=True, help="Workspace id.")
    @click.option("--format", "kind", type=click.Choice(["jsonl", "csv"]), default="jsonl", show_default=True)
    @click.option("--output", default=None, help="File to write (default: stdout).")
    @click.pass_context
    def export(ctx: click.Context, workspace: str, kind: str, output: str | None) -> None:
        """Every kept event with the keys and checkpoints to verify it offline (`audit verify --file`)."""

        async def run(gov: Governance) -> int:
            await _known(gov, workspace)
            out = await trail_of(gov).export(workspace, kind)
            sink: IO[bytes] = open(output, "wb") if output else sys.stdout.buffer  # noqa: SIM115
            written = 0
            try:
                async for chunk in out.body:
                    sink.write(chunk)
                    written += len(chunk)
            finally:
                if output:
                    sink.close()
                else:
                    sink.flush()
            return written

        written = with_governance(settings_of(ctx), run)
        if output:
            click.echo(f"exported {written} bytes to {output}", err=True)

    @audit.command("list")
    @click.option("--workspace", default="default", show_default=True, help="Workspace id.")
    @click.option("--action", default=None, help="An action, or a prefix such as budget.*")
    @click.option("--limit", type=click.IntRange(1, 200), default=50, show_default=True)
    @click.option("--json", "as_json", is_flag=True, help='JSON ({"data": [...]}, as GET /api/audit-logs answers).')
    @click.pass_context
    def listing(ctx: click.Context, workspace: str, action: str | None, limit: int, as_json: bool) -> None:
        """The newest audit events first."""

        if action is not None and not ACTION_FILTER_RE.fullmatch(action):
            raise click.BadParameter(
                "an action such as budget.create, or a prefix such as budget.*", param_hint="'--action'"
            )

        async def run(gov: Governance) -> list[dict[str, Any]]:
            await _known(gov, workspace)
            return await gov.store.audit.events(workspace, AuditFilter(action=action, limit=limit))

        rows = with_governance(settings_of(ctx), run)
        if as_json:
            echo_json({"data": rows})
            return
        for r in rows:
            actor, target = r["actor"], r["target"]
            who, what = f"{actor['type']}:{actor['id']}", f"{target['type']}:{target['id']}"
            click.echo(f"{r['seq']:>6}  {r['time']}  {who}  {r['action']}  {what}")

    return audit

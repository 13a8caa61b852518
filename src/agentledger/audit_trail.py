"""The audit log as a service (docs/audit.md), shared by the API and the CLI: recording changes through the durable
path, failed authentications (rate-limited), each workspace's signing key, periodic signed checkpoints, verification
and the streamed export. The chain itself is appended by the trace writer (store/audit.py); the pure rules are in
audit/.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from agentledger.audit import export as fmt
from agentledger.audit.chain import time_text
from agentledger.audit.changes import Change, scrub
from agentledger.audit.checkpoints import ALGORITHM, key_id, load_private, new_key, private_pem, public_pem, sign
from agentledger.audit.throttle import FailureThrottle
from agentledger.audit.verify import Report
from agentledger.core.errors import StoreUnavailable
from agentledger.core.ids import new_id
from agentledger.core.keys import display_prefix, hash_secret
from agentledger.core.model import Actor, AuditRecord, TraceEvent
from agentledger.secrets_box import SecretBox
from agentledger.store.audit import INSTALLATION
from agentledger.store.base import Store

log = logging.getLogger(__name__)
Commit = Callable[[Sequence[TraceEvent]], Awaitable[None]]
MAX_CLIENT_IP = 64  # the column's width (a proxy header can say anything)


@dataclass(frozen=True, slots=True)
class Export:
    """A streamed export: its response headers (the head, the last checkpoint, the public key) and its body."""

    headers: dict[str, str]
    body: AsyncIterator[bytes]
    media_type: str


class AuditTrail:
    def __init__(
        self,
        store: Store,
        box: SecretBox,
        commit: Commit,
        *,
        emit: Callable[[TraceEvent], None] | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        checkpoint_events: int = 1000,
        checkpoint_interval: float = 60.0,
    ) -> None:
        """`commit`: writes events durably before it returns (the pipeline's `submit`, or the store itself for the
        CLI). `emit`: queues events without waiting (failed authentications); `commit` when not given."""
        self.store = store
        self.box = box
        self.commit = commit
        self.emit = emit
        self.clock = clock
        self.checkpoint_events = checkpoint_events
        self.checkpoint_interval = checkpoint_interval
        self.throttle = FailureThrottle()
        self._keys: dict[str, Ed25519PrivateKey] = {}

    # -- recording ---------------------------------------------------------------------------------------------------
    def event(
        self,
        workspace_id: str,
        actor: Actor,
        change: Change,
        *,
        client_ip: str | None = None,
        request_id: str | None = None,
    ) -> AuditRecord:
        return AuditRecord(
            workspace_id=workspace_id,
            event_id=new_id("aud"),
            at=self.clock(),
            actor=Actor(actor.type, actor.id[:256], actor.role),
            action=change.action,
            target_type=change.target_type[:64],
            target_id=change.target_id[:256],
            before=scrub(change.before),
            after=scrub(change.after),
            client_ip=client_ip[:MAX_CLIENT_IP] if client_ip else None,
            request_id=request_id,
        )

    async def record(
        self,
        workspace_id: str,
        actor: Actor,
        changes: Sequence[Change],
        *,
        client_ip: str | None = None,
        request_id: str | None = None,
    ) -> None:
        """Record changes that were made: durable (committed, or spooled while the store is down) when it returns."""
        if changes:
            await self.commit(
                [self.event(workspace_id, actor, c, client_ip=client_ip, request_id=request_id) for c in changes]
            )

    async def failed_authentication(
        self, token: str, client_ip: str | None, request_id: str | None, path: str, reason: str
    ) -> None:
        """A refused /api credential: at most one event per source address and token prefix a minute (the next
        says how many were not recorded). A revoked token's event goes to its workspace's trail; one that names no
        workspace to the installation's."""
        prefix = display_prefix(token) if token else ""
        suppressed = self.throttle.admit((client_ip or "", prefix), time.monotonic())
        if suppressed is None:
            return
        workspace, actor = INSTALLATION, Actor("anonymous", prefix or "-")
        if token:
            try:
                owner = await self.store.audit.token_owner(hash_secret(token))
            except StoreUnavailable:
                owner = None
            if owner is not None:
                workspace, actor = owner["workspace_id"], Actor("admin_token", owner["id"], owner["role"])
        after = {"path": path, "reason": reason, "token_prefix": prefix or None, "suppressed": suppressed}
        change = Change("auth.failed", "api", path, after=after)
        record = self.event(workspace, actor, change, client_ip=client_ip, request_id=request_id)
        if self.emit is not None:
            self.emit(record)
        else:
            await self.commit([record])

    # -- signing keys and checkpoints --------------------------------------------------------------------------------
    async def signing_key(self, workspace_id: str) -> Ed25519PrivateKey:
        """The workspace's signing key, made (and kept encrypted) the first time one is needed."""
        key = self._keys.get(workspace_id)
        if key is not None:
            return key
        row = await self.store.audit.signing_key(workspace_id)
        if row is None:
            fresh = new_key()
            await self.store.audit.add_key(
                {
                    "workspace_id": workspace_id,
                    "key_id": key_id(fresh.public_key()),
                    "algorithm": ALGORITHM,
                    "public_key": public_pem(fresh.public_key()),
                    "private_key_encrypted": self.box.encrypt(private_pem(fresh)),
                    "created_at": self.clock(),
                }
            )
            row = await self.store.audit.signing_key(workspace_id)  # another process's, if it made one first
            assert row is not None
        key = load_private(self.box.decrypt(row["private_key_encrypted"]))
        self._keys[workspace_id] = key
        return key

    async def public_key(self, workspace_id: str) -> dict[str, Any]:
        """The current signing key's public half, and every older key still verifying older checkpoints."""
        await self.signing_key(workspace_id)
        keys = await self.store.audit.public_keys(workspace_id)
        current = keys[-1]
        return {
            "workspace_id": workspace_id,
            "key_id": current["key_id"],
            "algorithm": current["algorithm"],
            "public_key": current["public_key"],
            "created_at": current["created_at"],
            "keys": [{k: r[k] for k in ("key_id", "algorithm", "public_key", "created_at")} for r in keys],
        }

    async def checkpoint(self, min_events: int = 1, workspace_id: str | None = None) -> int:
        """Sign the head of every chain with at least `min_events` events after its last checkpoint. Returns how many
        checkpoints were made. Two replicas signing one head keep one checkpoint (the seq is the key)."""
        made = 0
        for head in await self.store.audit.unsigned_heads():
            ws = head["workspace_id"]
            if (workspace_id is not None and ws != workspace_id) or head["seq"] - head["signed"] < min_events:
                continue
            key = await self.signing_key(ws)
            await self.store.audit.add_checkpoint(
                sign(key, ws, int(head["seq"]), head["hash"], time_text(self.clock()))
            )
            made += 1
        return made

    async def run(self, tick: float = 1.0) -> None:
        """Checkpoint every `checkpoint_events` events this process appended, and every `checkpoint_interval` seconds
        any chain that moved."""
        audit = self.store.audit
        counted, since = audit.appended, time.monotonic()
        while True:
            await asyncio.sleep(min(tick, self.checkpoint_interval))
            timed = time.monotonic() - since >= self.checkpoint_interval
            if not timed and audit.appended - counted < self.checkpoint_events:
                continue
            try:
                mark = audit.appended
                await self.checkpoint(1 if timed else self.checkpoint_events)
                counted = mark
                if timed:
                    since = time.monotonic()
            except StoreUnavailable:
                continue
            except Exception:  # the loop must outlive any one failure
                log.exception("audit checkpoint failed; retrying")

    # -- verification and export -------------------------------------------------------------------------------------
    async def verify(self, workspace_id: str, pinned: Mapping[str, Ed25519PublicKey] | None = None) -> Report:
        return await self.store.audit.verify(workspace_id, pinned)

    async def export(self, workspace_id: str, kind: str) -> Export:
        """Every kept event up to the head as it is now, with the keys and checkpoints to verify it offline
        (audit/export.py), read a page at a time."""
        audit = self.store.audit
        # Checkpoints before the head: a checkpoint is made only of a head already committed, so each one read
        # first is at or below the head read next, unless the head was moved back (which the verifier then names).
        checkpoints = await audit.checkpoints(workspace_id)
        keys = await audit.public_keys(workspace_id)
        head = await audit.head(workspace_id)
        through = head[0] if head else 0
        leading: list[dict[str, Any]] = [
            fmt.header(workspace_id, time_text(self.clock()), head),
            *(fmt.key_record(workspace_id, k["key_id"], k["algorithm"], k["public_key"]) for k in keys),
            *({"type": "checkpoint", **cp} for cp in checkpoints),
        ]
        headers = {"audit-head": f"{head[0]}:{head[1]}" if head else "0:"}
        if checkpoints:
            last = checkpoints[-1]
            headers["audit-checkpoint"] = ";".join(f"{k}={last[k]}" for k in ("seq", "hash", "key_id", "signed_at"))
            headers["audit-checkpoint-signature"] = last["signature"]
        if keys:
            der = serialization.load_pem_public_key(keys[-1]["public_key"].encode()).public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            headers["audit-public-key"] = base64.b64encode(der).decode()
        csv = kind == "csv"

        def encode(records: list[dict[str, Any]], first: bool = False) -> bytes:
            if csv:
                return fmt.csv_rows(records, with_header=first)
            return b"".join(fmt.jsonl(r) for r in records)

        async def body() -> AsyncIterator[bytes]:
            yield encode(leading, first=True)
            count = 0
            async for page in audit.pages(workspace_id, through):
                count += len(page)
                yield encode([{"type": "event", **v} for v in page])
            yield encode([fmt.end(count)])

        name = f"audit-{workspace_id}.{'csv' if csv else 'jsonl'}"
        headers["content-disposition"] = f'attachment; filename="{name}"'
        return Export(headers, body(), "text/csv; charset=utf-8" if csv else "application/x-ndjson")

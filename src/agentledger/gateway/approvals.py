"""Approvals: a call a policy escalated waits for a human's decision.

An approval is bound to the call it allows: workspace, virtual key, run and body hash (`Approvals.binding`), so
a resend of the same call finds it. `escalate` holds the call up to `wait_s` for a decision: approved, the call
proceeds (the approval is *used*: one call, by one conditional UPDATE, whichever replica or duplicate gets
there first); denied, it is refused with the approver's reason, now and on every resend; no decision in time,
it is answered 403 `approval_required` with the approval's id, and a resend is held again on the same approval.

A decision wakes the waiters at once: on this replica through `decided`, on the others through the broadcast
(gateway/broadcast.py, kind "approval"). A lost broadcast costs at most `poll_s`: waiters read the approval
again at that interval anyway.

Approval ids of one binding are derived from the approval they follow (none, or the used / expired one before),
so two replicas that open "the next approval" for the same call at once compute the same id: one insert wins,
the other waits on it, and a human never sees the same call twice.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from agentledger.core.errors import ApprovalDenied, ApprovalRequired, Conflict, NotFound
from agentledger.store.base import Store

# A resend is held again for up to wait_s (a long poll), so it may come soon; 5 s keeps a client of a gateway
# that holds nothing (approval_wait_s 0) from hammering it.
RETRY_AFTER_S = 5
POLL_S = 1.0  # fallback re-read while waiting, in case a broadcast is lost
STATUSES = ("pending", "approved", "denied", "expired")
DECISIONS = ("approved", "denied")


@dataclass(frozen=True, slots=True)
class Ask:
    """An escalated call, as the flow knows it when the policies escalate it."""

    workspace_id: str
    virtual_key_id: str | None
    agent_id: str | None
    run_id: str | None
    request_id: str | None
    body_hash: str
    reason: str
    kind: str = "model_call"  # or the tool/api kind of a spend authorization
    summary: dict[str, Any] = field(default_factory=dict)  # model, name, amount_usd, max_tokens, ...
    policy_id: str | None = None
    policy_version: int | None = None
    rule_id: str | None = None
    wait_s: float | None = None  # the policy's approval_wait_s; None: the gateway's default


@dataclass(frozen=True, slots=True)
class Granted:
    """The call may proceed: the approval was used for it. `created`: this call opened the approval."""

    approval_id: str
    created: bool
    waited_ms: int
    decided_by: str | None
    decided_at: datetime | None
    comment: str | None
    status: str = "approved"


Outcome = Granted | ApprovalDenied | ApprovalRequired


def trace_of(outcome: Outcome) -> dict[str, Any]:
    """What the run's policy_check step shows of an escalation: escalated → approved / denied / pending, by whom,
    when, and how long the call waited."""
    if isinstance(outcome, ApprovalRequired):
        decided: dict[str, Any] = {"status": "pending", "decided_by": None, "decided_at": None, "comment": None}
    elif isinstance(outcome, ApprovalDenied):
        decided = {"status": "denied", "decided_by": outcome.decided_by, "comment": outcome.reason}
        decided["decided_at"] = outcome.decided_at.isoformat() if outcome.decided_at else None
    else:
        decided = {"status": outcome.status, "decided_by": outcome.decided_by, "comment": outcome.comment}
        decided["decided_at"] = outcome.decided_at.isoformat() if outcome.decided_at else None
    return {"approval_id": outcome.approval_id, "created": outcome.created, "waited_ms": outcome.waited_ms, **decided}


class Approvals:
    def __init__(
        self,
        store: Store,
        clock: Callable[[], datetime],
        *,
        wait_s: float,
        ttl_s: float,
        publish: Callable[[str, str], None] | None = None,
        poll_s: float = POLL_S,
    ) -> None:
        self.store = store.governance
        self.clock = clock
        self.wait_s = wait_s
        self.ttl = timedelta(seconds=ttl_s)
        self.publish = publish  # set once the broadcast runs (app lifespan); None: one node
        self.poll_s = poll_s
        # Told of each approval this node opens (the policies raise `approval_pending` with it).
        self.on_open: Callable[[Ask, str], None] | None = None
        # The waiters of each approval on this node, one event each: a decision sets them all.
        self._waiters: dict[tuple[str, str], set[asyncio.Event]] = {}

    @staticmethod
    def binding(workspace_id: str, virtual_key_id: str | None, run_id: str | None, body_hash: str) -> str:
        # NUL cannot occur in an id, so no two different tuples join to the same text.
        parts = (workspace_id, virtual_key_id or "", run_id or "", body_hash)
        return hashlib.sha256("\0".join(parts).encode()).hexdigest()

    async def escalate(self, ask: Ask) -> Granted:
        """Wait for a human's decision on this call (see the module docstring). Returns when it may proceed;
        raises `ApprovalDenied`, or `ApprovalRequired` when no decision came within the wait."""
        started = time.monotonic()
        deadline = started + (self.wait_s if ask.wait_s is None else max(0.0, ask.wait_s))
        waited_from: float | None = None
        ws = ask.workspace_id
        binding = self.binding(ws, ask.virtual_key_id, ask.run_id, ask.body_hash)
        row = await self.store.approval_for(ws, binding)
        created = False

        def waited() -> int:
            return 0 if waited_from is None else int((time.monotonic() - waited_from) * 1000)

        while True:
            if row is not None:
                status = row["status"]
                if status == "denied":
                    raise _denied(row, created, waited())
                if status == "approved" and row["used_at"] is None:
                    if await self.store.use_approval(ws, row["id"], self.clock()):
                        return Granted(
                            row["id"], created, waited(), row["decided_by"], row["decided_at"], row["comment"]
                        )
                    # Another call with the same binding (a duplicate) took it: this one needs its own approval.
                elif status == "pending" and row["expires_at"] > self.clock():
                    if waited_from is None:
                        waited_from = time.monotonic()
                    row = await self._until_decided(ws, row, deadline)
                    if row["status"] != "pending":
                        continue
                    if row["expires_at"] > self.clock() or time.monotonic() >= deadline:
                        raise self._required(row, created, waited())
                    # Expired while held, with time left: the next approval is opened below.
            row, created = await self._open(ask, binding, row)
            if created and self.on_open is not None:
                self.on_open(ask, row["id"])  # people hear of it now, while the call is held, not after

    async def _open(self, ask: Ask, binding: str, before: dict[str, Any] | None) -> tuple[dict[str, Any], bool]:
        """A new pending approval after `before` (None, used or expired); or, when another replica or call opened
        the same one first, that one. True: this call opened it."""
        approval_id = "apr_" + hashlib.sha256(f"{binding}:{before['id'] if before else ''}".encode()).hexdigest()[:24]
        now = self.clock()
        row: dict[str, Any] = {
            "workspace_id": ask.workspace_id,
            "id": approval_id,
            "status": "pending",
            "binding": binding,
            "kind": ask.kind[:32],  # the column's width; a tool kind may be longer (the summary keeps it whole)
            "request_id": ask.request_id,
            "virtual_key_id": ask.virtual_key_id,
            "agent_id": ask.agent_id,
            "run_id": ask.run_id,
            "summary": {**ask.summary, "kind": ask.kind},
            "policy_id": ask.policy_id,
            "policy_version": ask.policy_version,
            "rule_id": ask.rule_id[:128] if ask.rule_id else None,
            "reason": ask.reason[:1024],
            "created_at": now,
            "expires_at": now + self.ttl,
            "decided_at": None,
            "decided_by": None,
            "comment": None,
            "used_at": None,
        }
        try:
            await self.store.create_approval(row)
        except Conflict:
            found = await self.store.get_approval(ask.workspace_id, approval_id)
            if found is None:
                raise
            return found, False
        return row, True

    async def _until_decided(self, workspace_id: str, row: dict[str, Any], deadline: float) -> dict[str, Any]:
        """The approval once it is no longer pending, or as it stands at the deadline or its expiry."""
        key = (workspace_id, row["id"])
        event = asyncio.Event()
        waiters = self._waiters.setdefault(key, set())
        waiters.add(event)
        try:
            while True:
                # Cleared before the read, so a decision after the read sets it again: no wake-up is lost.
                event.clear()
                found = await self.store.get_approval(workspace_id, row["id"])
                if found is not None:
                    row = found
                if row["status"] != "pending":
                    return row
                left = min(deadline - time.monotonic(), (row["expires_at"] - self.clock()).total_seconds())
                if left <= 0:
                    return row
                try:
                    await asyncio.wait_for(event.wait(), min(left, self.poll_s))
                except TimeoutError:
                    pass
        finally:
            waiters.discard(event)
            if not waiters and self._waiters.get(key) is waiters:
                del self._waiters[key]

    def _required(self, row: dict[str, Any], created: bool, waited_ms: int) -> ApprovalRequired:
        return ApprovalRequired(
            f"This call needs a human's approval ({row['reason']}); approval {row['id']} is pending. Resend it with "
            "the same x-request-id once it is approved.",
            approval_id=row["id"],
            retry_after=RETRY_AFTER_S,
            created=created,
            waited_ms=waited_ms,
        )

    def decided(self, workspace_id: str, approval_id: str) -> None:
        """Wake this node's waiters on an approval just decided (here, or on another replica: the broadcast)."""
        for event in self._waiters.get((workspace_id, approval_id), ()):
            event.set()

    def on_broadcast(self, value: str) -> None:
        """A decision another replica broadcast: "<workspace>\\0<approval id>"."""
        workspace_id, sep, approval_id = value.partition("\0")
        if sep:
            self.decided(workspace_id, approval_id)

    async def decide(
        self, workspace_id: str, approval_id: str, status: str, by: str, comment: str | None
    ) -> dict[str, Any]:
        """pending → `status` (approved or denied) and wake the waiters, here and on every replica. NotFound for an
        unknown id; Conflict naming what happened first: decided (by whom, when) or expired."""
        if status not in DECISIONS:
            raise ValueError(f"status must be one of {DECISIONS}, not {status!r}")
        if not await self.store.decide_approval(workspace_id, approval_id, status, by, comment, self.clock()):
            row = await self.store.get_approval(workspace_id, approval_id)
            if row is None:
                raise NotFound(f"Approval {approval_id!r} does not exist.", param="approval_id")
            if row["status"] in DECISIONS:
                at = row["decided_at"].isoformat() if row["decided_at"] else "?"
                raise Conflict(
                    f"Approval {approval_id!r} was already {row['status']} by {row['decided_by']} at {at}.",
                    param="approval_id",
                )
            raise Conflict(
                f"Approval {approval_id!r} expired at {row['expires_at'].isoformat()}; a resend of the call opens a "
                "new one.",
                param="approval_id",
            )
        self.decided(workspace_id, approval_id)
        if self.publish is not None:
            self.publish("approval", f"{workspace_id}\0{approval_id}")
        row = await self.store.get_approval(workspace_id, approval_id)
        assert row is not None  # decisions only move forward; an approval is never deleted
        return row

    async def get(self, workspace_id: str, approval_id: str) -> dict[str, Any] | None:
        return await self.store.get_approval(workspace_id, approval_id)

    async def list_approvals(
        self, workspace_id: str, *, status: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        return await self.store.list_approvals(workspace_id, status=status, limit=limit)

    async def expire(self) -> int:
        """Mark approvals pending past their expiry `expired` (the sweep; deciding or using one past its expiry is
        refused anyway)."""
        return await self.store.expire_approvals(self.clock())

    def view(self, row: dict[str, Any]) -> dict[str, Any]:
        """An approval as the API shows it: a pending one past its expiry, which the sweep has not reached yet,
        already says `expired`; `used` says whether the call it allowed went through."""
        out = {k: v for k, v in row.items() if k != "binding"}
        if out["status"] == "pending" and out["expires_at"] <= self.clock():
            out["status"] = "expired"
        out["used"] = out["used_at"] is not None
        return out


def _denied(row: dict[str, Any], created: bool, waited_ms: int) -> ApprovalDenied:
    reason = row["comment"] or "no reason given"
    return ApprovalDenied(
        f"Approval {row['id']} for this call was denied by {row['decided_by']}: {reason}",
        approval_id=row["id"],
        reason=row["comment"],
        decided_by=row["decided_by"],
        decided_at=row["decided_at"],
        created=created,
        waited_ms=waited_ms,
    )

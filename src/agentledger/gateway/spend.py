"""Spend outside model calls, on the same counters and ledger as the calls (gateway/budgets.py): authorizing a
tool or paid API call before it happens, charging steps that report a cost after the fact, and the figures a
key or an admin reads."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime

from agentledger.core.budgets import Figures, Subject, applicable_budgets, counter_key
from agentledger.core.ids import new_id
from agentledger.core.model import LedgerEntry, StepRecord, TraceEvent
from agentledger.gateway.budgets import BudgetGate, Governed
from agentledger.limits.base import Charge, CountersUnavailable

log = logging.getLogger(__name__)


class SpendDesk:
    """Spend outside model calls: authorizing a tool or paid API call before it happens, charging steps that
    report a cost after the fact, and the figures a key or an admin reads. Same counters, same ledger."""

    def __init__(self, gate: BudgetGate):
        self.gate = gate

    async def figures(self, subject: Subject) -> list[Figures]:
        """Each budget that applies to `subject`, in its current window (a `run` budget: this run's)."""
        budgets, limits = await self.gate.rules_for(subject.workspace_id)
        subject = await self.gate.subject(subject, budgets, limits)
        applied = applicable_budgets(budgets, subject)
        now = self.gate.clock()
        keys = [counter_key(b, now, subject.run_id) for b in applied]
        found = await self.gate.counters.standing(keys) if keys else {}
        return [Figures(b, k, found[k].spent, found[k].reserved) for b, k in zip(applied, keys, strict=True)]

    async def authorize(
        self, governed: Governed, subject: Subject, amount: int, *, kind: str, name: str
    ) -> list[TraceEvent]:
        """Reserve `amount` against every applicable budget into `governed`, or raise BudgetExceeded (`governed`
        then says which budget refused, for the caller to record)."""
        budgets, limits = await self.gate.rules_for(subject.workspace_id)
        subject = await self.gate.subject(subject, budgets, limits)
        applied = applicable_budgets(budgets, subject)
        now = self.gate.clock()
        if not applied:
            return []
        await self.gate.hold(governed, applied, subject.run_id, amount, now, f"{kind} {name!r}")
        return self.gate.entries(governed, "reserve", None, subject.run_id, now)

    async def charge_steps(
        self, steps: Sequence[StepRecord], workflow: str | None, reservations: dict[str, str]
    ) -> list[TraceEvent]:
        """Ledger entries for steps that report a cost: a step naming a reservation settles it (what was not
        spent is released), any other is spent against the budgets that apply to it."""
        events: list[TraceEvent] = []
        now = self.gate.clock()
        settled: set[str] = set()
        for step in steps:
            reservation = reservations.get(step.step_id)
            if reservation is not None and reservation not in settled:
                settled.add(reservation)  # two steps of a batch naming one reservation: the first settles it
                found = await self._settle_reservation(step, reservation, now)
                if found is not None:
                    events += found
                    continue
            elif reservation is not None:
                continue
            if step.cost_nanos:  # no reservation, or one nobody made: spent after the fact
                events += await self._spend(step, workflow, now)
        return events

    async def _spend(self, step: StepRecord, workflow: str | None, now: datetime) -> list[TraceEvent]:
        a = step.attribution
        subject = Subject.of(a, workflow=workflow, run_id=step.run_id)
        budgets, _ = await self.gate.rules_for(a.workspace_id)
        applied = applicable_budgets(budgets, subject)
        if not applied:
            return []
        keys = [counter_key(b, now, step.run_id) for b in applied]
        events: list[TraceEvent] = []
        try:
            after = await self.gate.counters.add([Charge(k, None, step.cost_nanos) for k in keys])
            events += self.gate.alerts(dict(zip(keys, applied, strict=True)), after, step.cost_nanos, None, step.run_id)
        except CountersUnavailable:
            # The ledger entry below is still written; the counters catch up when they are next loaded from the
            # ledger (docs/budgets.md, "Redis down").
            log.warning("budget counters unavailable: step %s charged to the ledger only", step.step_id)
        events += [
            LedgerEntry(
                workspace_id=a.workspace_id,
                entry_id=new_id("led"),
                budget_id=b.id,
                counter_key=k,
                kind="spend",
                reserved_delta=0,
                spent_delta=step.cost_nanos,
                at=now,
                step_id=step.step_id,
                run_id=step.run_id,
                note=f"{step.kind.value} {step.name}"[:256],
            )
            for b, k in zip(applied, keys, strict=True)
        ]
        return events

    async def _settle_reservation(self, step: StepRecord, reservation: str, now: datetime) -> list[TraceEvent] | None:
        """Settle an authorization with the step's cost: its entries, [] when it was settled or expired already
        (not charged twice), None when no such reservation was ever made (the step is then plain spend)."""
        ws = step.attribution.workspace_id
        found = await self.gate.reservation_of(ws, reservation) if self.gate.reservation_of is not None else {}
        if not found:
            return None
        held = {key: (budget_id, reserved) for key, (budget_id, reserved, _) in found.items() if reserved != 0}
        if not held:
            return []  # settled or expired already
        try:
            after = await self.gate.counters.settle(reservation, step.cost_nanos)
            if not after:
                return []  # another batch settled it first (the counters' settle is atomic and answers once)
        except CountersUnavailable:
            log.warning("budget counters unavailable: reservation %s settled in the ledger only", reservation)
            after = {}
        budgets, _ = await self.gate.rules_for(ws)
        by_id = {b.id: b for b in budgets}
        by_key = {key: by_id[budget_id] for key, (budget_id, _) in held.items() if budget_id in by_id}
        events = self.gate.alerts(by_key, after, step.cost_nanos, None, step.run_id)
        return events + [
            LedgerEntry(
                workspace_id=ws,
                entry_id=new_id("led"),
                budget_id=budget_id,
                counter_key=key,
                kind="settle",
                reserved_delta=-reserved,
                spent_delta=step.cost_nanos,
                at=now,
                reservation_id=reservation,
                step_id=step.step_id,
                run_id=step.run_id,
            )
            for key, (budget_id, reserved) in held.items()
        ]

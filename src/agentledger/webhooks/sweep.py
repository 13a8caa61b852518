"""The alert sweep: every minute, the detectors (core/alerts.py) over what the store keeps.

Bounded work per round: one count of the last minutes' requests per workspace (the requests' time index); per
workspace, the last full hour's spend per agent (a range of the hourly rollup's key), and the trailing days only
for the agents over the floor; the last full hour's margin per paid endpoint and per agent (two more ranges of the
hourly rollup). Alerts go through the trace pipeline like any event: recorded once per window.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

from agentledger.core import alerts as a
from agentledger.core.errors import StoreUnavailable
from agentledger.core.model import Alert, TraceEvent
from agentledger.store.webhooks import WebhookStore

log = logging.getLogger(__name__)
Commit = Callable[[list[TraceEvent]], Awaitable[None]]


class AlertSweep:
    def __init__(
        self,
        store: WebhookStore,
        commit: Commit,
        anomaly: a.AnomalyRule,
        spike: a.SpikeRule,
        margin: a.MarginRule | None = None,
    ) -> None:
        self.store = store
        self.commit = commit
        self.anomaly = anomaly
        self.spike = spike
        self.margin = margin or a.MarginRule()

    async def run(self, clock: Callable[[], datetime], every: float) -> None:
        while True:
            await asyncio.sleep(every)
            try:
                await self.tick(clock())
            except StoreUnavailable:
                continue
            except Exception:  # a sweep must never stop sweeping
                log.exception("alert sweep failed; retrying")

    async def tick(self, now: datetime) -> list[Alert]:
        found = await self.error_spikes(now) + await self.spend_anomalies(now) + await self.margin_losses(now)
        if found:
            await self.commit(list(found))
        return found

    async def error_spikes(self, now: datetime) -> list[Alert]:
        counts = await self.store.error_counts(now - timedelta(minutes=self.spike.minutes))
        return [
            a.error_spike(ws, calls, errors, self.spike, now=now)
            for ws, (calls, errors) in counts.items()
            if a.is_error_spike(calls, errors, self.spike)
        ]

    async def margin_losses(self, now: datetime) -> list[Alert]:
        """Paid endpoints, then agents, whose last full hour had revenue and a known margin under the floor."""
        hour = a.last_full_hour(now)
        found = []
        for ws in await self.store.workspace_ids():
            for subject, by in (("endpoint", "endpoint_id"), ("agent", "agent_id")):
                rows = await self.store.margins(ws, hour, hour + timedelta(hours=1), by)
                for key, (revenue, margin, agent, department) in rows.items():
                    if a.is_margin_loss(revenue, margin, self.margin):
                        found.append(
                            a.margin_loss(
                                ws,
                                subject,
                                key,
                                hour,
                                revenue,
                                margin,
                                self.margin,
                                at=now,
                                agent_id=agent,
                                department_id=department,
                            )
                        )
        return found

    async def spend_anomalies(self, now: datetime) -> list[Alert]:
        hour = a.last_full_hour(now)
        start = hour - timedelta(days=self.anomaly.days)
        found = []
        for ws in await self.store.workspace_ids():
            last = await self.store.agent_spend(ws, hour, hour + timedelta(hours=1))
            hot = {agent: v for agent, v in last.items() if v[0] >= self.anomaly.floor_nanos}
            if not hot:
                continue
            trailing = await self.store.agent_spend(ws, start, hour, hot)
            for agent, (spent, department) in hot.items():
                before = trailing.get(agent, (0, None))[0]
                if a.is_spend_anomaly(spent, before, self.anomaly):
                    baseline = a.hourly_baseline(before, self.anomaly)
                    found.append(
                        a.spend_anomaly(
                            ws, agent, hour, spent, baseline, self.anomaly, at=now, department_id=department
                        )
                    )
        return found

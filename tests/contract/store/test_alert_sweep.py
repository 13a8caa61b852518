"""The alert sweep's margin_loss over the kept books, on SQLite and PostgreSQL: which endpoints and selling agents
it judges, the exact margins it names, once per subject and hour."""

from __future__ import annotations

from datetime import timedelta

from agentledger.core import alerts as a
from agentledger.core.model import Alert, Payment, TraceEvent
from agentledger.core.pricing import CostSource
from agentledger.store.base import WriteResult
from agentledger.store.sql import SQLStore
from agentledger.store.webhooks import WebhookStore
from agentledger.webhooks.sweep import AlertSweep
from tests.contract.store.test_finance_books import IN, SETTLED, T0, call, payment, seeded, start

NOW = T0 + timedelta(hours=1, minutes=5)  # the last full hour is T0's, where the seeded sales are


def sweep(store: SQLStore, floor_usd: str, written: list[TraceEvent]) -> AlertSweep:
    async def commit(events: list[TraceEvent]) -> None:
        written.extend(events)
        assert await store.write_batch(events) is WriteResult.SUCCESS

    rule = a.MarginRule(floor_nanos=int(float(floor_usd) * a.NANOS_PER_USD))
    return AlertSweep(WebhookStore(store), commit, a.AnomalyRule(floor_nanos=10**18), a.SpikeRule(), rule)


def mine(found: list[Alert], ws: str) -> dict[str, Alert]:
    return {f"{x.data['subject']}:{x.data[x.data['subject'] + '_id']}": x for x in found if x.workspace_id == ws}


async def test_endpoints_and_selling_agents_under_the_floor_are_alerted_once(store: SQLStore) -> None:
    ws = await seeded(store)
    # The seeded hour: ep-weather sold 2 × $2 (one refunded) for $0.14636 of cost and fees, ep-news $1 for nothing;
    # the seller agent made both. A floor of $0 (any loss) finds no loss.
    assert mine(await sweep(store, "0", []).margin_losses(NOW), ws) == {}

    found = mine(await sweep(store, "2", []).margin_losses(NOW), ws)
    assert set(found) == {"endpoint:ep-weather", "endpoint:ep-news"}  # the seller's $2.85364 is over $2
    weather = found["endpoint:ep-weather"]
    assert (weather.data["revenue_nanos"], weather.data["margin_nanos"]) == (4_000_000_000, 1_853_640_000)
    assert weather.severity == "warning" and weather.agent_id == "seller" and weather.department_id == "sales"
    assert weather.dedupe_key == f"margin:endpoint:ep-weather:{a.window_key(T0)}"
    assert found["endpoint:ep-news"].data["margin_nanos"] == 1_000_000_000


async def test_a_loss_is_critical_and_recorded_once_per_hour(store: SQLStore) -> None:
    ws = await seeded(store)
    # A dear sale on a new endpoint: $0.10 in, $0.50 of model cost out.
    t = T0 + timedelta(minutes=30)
    batch: list[TraceEvent] = [
        start(ws, "r-dear", "ep-dear", "wf-sell", T0, agent="dear-seller"),
        payment(ws, "r-dear", "p1", Payment(IN, SETTLED, 100_000_000), t),
        *call(ws, "r-dear", "q1", 500_000_000, t, CostSource.COMPUTED),
    ]
    assert await store.write_batch(batch) is WriteResult.SUCCESS
    written: list[TraceEvent] = []
    s = sweep(store, "0", written)
    await s.tick(NOW)
    found = mine([e for e in written if isinstance(e, Alert)], ws)
    # The dear run's events are the seller agent's too, whose hour still ends $2.45364 up: no agent alert.
    assert set(found) == {"endpoint:ep-dear"}
    dear = found["endpoint:ep-dear"]
    assert (dear.severity, dear.data["margin_nanos"]) == ("critical", -400_000_000)
    assert dear.message.startswith("Endpoint ep-dear made a known margin of -$0.40 on $0.10 of revenue")
    await s.tick(NOW + timedelta(minutes=20))  # the same hour again: the alert is the same row
    rows = await WebhookStore(store).alerts(ws, kind="margin_loss")
    assert [r["id"] for r in rows] == [a.alert_id(ws, "margin_loss", dear.dedupe_key)]

"""A member's spend, on SQLite and PostgreSQL: `group_by=member` of the costs analytics and of the finance summary
folds the kept rollups' virtual keys into their owners at read time. Two members own three keys, a fourth key has
no owner and some calls carry no key: every figure is checked exactly against the per-key sums, over a window
read from hourly and daily rollups, bucketed by hour and by day, and giving a key away moves its history."""

from __future__ import annotations

import uuid
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import update

from agentledger.core.model import Attribution, RequestRecord, StepKind, StepRecord, StepStatus, TraceEvent
from agentledger.core.pricing import CostSource
from agentledger.core.usage import Usage
from agentledger.store import schema as t
from agentledger.store.base import CostQuery, FinanceQuery, WriteResult
from agentledger.store.members import MemberStore
from agentledger.store.sql import SQLStore

T0 = datetime(2026, 3, 1, 10, 5, tzinfo=UTC)
# From day 1's 09:00 to day 3's 05:00: day 2 is read from the daily rollup, the hours around it from the hourly.
SINCE, UNTIL = datetime(2026, 3, 1, 9, tzinfo=UTC), datetime(2026, 3, 3, 5, tzinfo=UTC)
OWNERS = {"k-ann-1": "m-ann", "k-ann-2": "m-ann", "k-bob": "m-bob", "k-free": None}
# (key, cost, when, ok): each a gateway call; plus a tool step outside the gateway on k-bob.
CALLS: list[tuple[str | None, int, datetime, bool]] = [
    ("k-ann-1", 1_000_000, T0, True),
    ("k-ann-1", 2_500_000, T0 + timedelta(days=1, hours=2), True),
    ("k-ann-2", 700_000, T0 + timedelta(days=1), False),
    ("k-ann-2", 300_000, T0 + timedelta(days=1, hours=15), True),  # day 3, 01:05
    ("k-bob", 4_000_000, T0, True),
    ("k-bob", 9_000_000_000_000_000, T0 + timedelta(days=1), True),  # past 2^53 in one group: stays exact
    ("k-free", 50_000, T0 + timedelta(hours=3), True),
    (None, 60_000, T0 + timedelta(days=1, hours=1), True),
]
TOOL = ("k-bob", 123_000, T0 + timedelta(hours=1))


def call(ws: str, n: int, key: str | None, cost: int, at: datetime, ok: bool) -> RequestRecord:
    return RequestRecord(
        request_id=f"q{n}",
        attribution=Attribution(workspace_id=ws, department_id="eng", virtual_key_id=key, agent_id="a"),
        endpoint="/v1/chat/completions",
        provider="openai",
        model="gpt-4o-mini",
        stream=False,
        status=StepStatus.OK if ok else StepStatus.ERROR,
        http_status=200 if ok else 502,
        started_at=at,
        ended_at=at,
        latency_ms=5.0,
        request_hash="h",
        usage=Usage(input_tokens=100, output_tokens=20),
        cost_nanos=cost,
        cost_source=CostSource.COMPUTED,
    )


async def seeded(store: SQLStore) -> str:
    ws = f"ws-{uuid.uuid4().hex[:10]}"
    await store.create_workspace(ws, ws, T0)
    await store.create_department(ws, "eng", "Engineering", T0)
    members = MemberStore(store)
    for member in ("m-ann", "m-bob"):
        await members.create(
            {
                "workspace_id": ws,
                "id": member,
                "email": f"{member}@example.com",
                "name": member.removeprefix("m-").title(),
                "department_id": "eng",
                "role": "viewer",
                "status": "active",
                "created_at": T0,
                "updated_at": T0,
            }
        )
    for key, owner in OWNERS.items():
        await store.create_virtual_key(
            {
                "workspace_id": ws,
                "id": key,
                "department_id": "eng",
                "name": key,
                "key_hash": uuid.uuid4().hex,
                "key_prefix": "vk_x",
                "allowed_models": [],
                "created_at": T0,
                "owner_member_id": owner,
            }
        )
    batch: list[TraceEvent] = [call(ws, n, *c) for n, c in enumerate(CALLS)]
    key, cost, at = TOOL
    a = Attribution(workspace_id=ws, department_id="eng", virtual_key_id=key, agent_id="a", run_id="r1")
    batch.append(StepRecord("s-tool", "r1", a, StepKind.TOOL_CALL, "search", StepStatus.OK, at, cost_nanos=cost))
    assert await store.write_batch(batch) is WriteResult.SUCCESS
    return ws


def folded(rows: list[dict[str, Any]], owners: dict[str, str | None], measure: str) -> dict[Any, int]:
    """Per-key rows (`key`, [`bucket`]) summed into their owners."""
    out: dict[Any, int] = defaultdict(int)
    for r in rows:
        owner = owners.get(r["key"]) if r["key"] is not None else None
        out[(owner, r.get("bucket"))] += int(r[measure])
    return dict(out)


def by_group(rows: list[dict[str, Any]], measure: str) -> dict[Any, int]:
    return {(r["key"], r.get("bucket")): int(r[measure]) for r in rows}


EXPECTED_COST = {
    "m-ann": 1_000_000 + 2_500_000 + 700_000 + 300_000,
    "m-bob": 4_000_000 + 9_000_000_000_000_000 + 123_000,
    None: 50_000 + 60_000,
}


async def test_costs_by_member_fold_the_keys(store: SQLStore) -> None:
    ws = await seeded(store)
    for interval in (None, "hour", "day"):
        per_key = await store.costs(ws, CostQuery("virtual_key", SINCE, UNTIL, interval))
        per_member = await store.costs(ws, CostQuery("member", SINCE, UNTIL, interval))
        for measure in ("cost_nanos", "events", "requests", "input_tokens", "output_tokens"):
            assert by_group(per_member, measure) == folded(per_key, OWNERS, measure), (interval, measure)
    rows = {r["key"]: r for r in await store.costs(ws, CostQuery("member", SINCE, UNTIL))}
    assert {k: r["cost_nanos"] for k, r in rows.items()} == EXPECTED_COST
    assert {k: r["events"] for k, r in rows.items()} == {"m-ann": 4, "m-bob": 3, None: 2}
    assert {k: r["requests"] for k, r in rows.items()} == {"m-ann": 4, "m-bob": 2, None: 2}
    assert rows["m-ann"]["member"] == {"id": "m-ann", "email": "m-ann@example.com", "name": "Ann"}
    assert rows["m-bob"]["member"] == {"id": "m-bob", "email": "m-bob@example.com", "name": "Bob"}
    assert rows[None]["member"] is None
    # Day buckets: day 2 from the daily rollup, days 1 and 3 from the hourly one.
    days = by_group(await store.costs(ws, CostQuery("member", SINCE, UNTIL, "day")), "cost_nanos")
    assert days == {
        ("m-ann", "2026-03-01"): 1_000_000,
        ("m-ann", "2026-03-02"): 2_500_000 + 700_000,
        ("m-ann", "2026-03-03"): 300_000,
        ("m-bob", "2026-03-01"): 4_000_000 + 123_000,
        ("m-bob", "2026-03-02"): 9_000_000_000_000_000,
        (None, "2026-03-01"): 50_000,
        (None, "2026-03-02"): 60_000,
    }


async def test_finance_summary_by_member_folds_the_keys(store: SQLStore) -> None:
    ws = await seeded(store)
    workspace = await store.finance_summary(ws, FinanceQuery("workspace", SINCE, UNTIL))
    for bucket in (None, "hour", "day"):
        found = await store.finance_summary(ws, FinanceQuery("member", SINCE, UNTIL, bucket))
        assert not found.more
        rows = {(r["key"], r.get("bucket")): r for r in found.rows}
        for measure in ("calls", "errors", "cost_nanos", "tool_spend_nanos"):
            per_member: dict[Any, int] = defaultdict(int)
            for (member, _), r in rows.items():
                per_member[member] += r[measure]
            assert sum(per_member.values()) == found.totals[measure] == workspace.totals[measure], (bucket, measure)
        assert found.totals["cost_nanos"] == sum(EXPECTED_COST.values())
    rows = {r["key"]: r for r in (await store.finance_summary(ws, FinanceQuery("member", SINCE, UNTIL))).rows}
    assert {k: r["cost_nanos"] for k, r in rows.items()} == EXPECTED_COST
    assert {k: (r["calls"], r["errors"]) for k, r in rows.items()} == {"m-ann": (4, 1), "m-bob": (3, 0), None: (2, 0)}
    assert rows["m-bob"]["tool_spend_nanos"] == 123_000
    assert rows["m-ann"]["member"]["email"] == "m-ann@example.com"
    assert rows[None]["member"] is None
    # With `limit` below the groups, the totals still count them all.
    limited = await store.finance_summary(ws, FinanceQuery("member", SINCE, UNTIL, limit=1))
    assert limited.more and [r["key"] for r in limited.rows] == ["m-bob"]
    assert limited.totals["cost_nanos"] == sum(EXPECTED_COST.values())


async def test_giving_a_key_away_moves_its_history(store: SQLStore) -> None:
    ws = await seeded(store)
    c = t.virtual_keys.c
    stmt = update(t.virtual_keys).where(c.workspace_id == ws, c.id == "k-free").values(owner_member_id="m-bob")
    await store._write(lambda conn: conn.execute(stmt))
    rows = {r["key"]: r["cost_nanos"] for r in await store.costs(ws, CostQuery("member", SINCE, UNTIL))}
    assert rows == {"m-ann": EXPECTED_COST["m-ann"], "m-bob": EXPECTED_COST["m-bob"] + 50_000, None: 60_000}

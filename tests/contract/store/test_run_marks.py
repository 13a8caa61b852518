"""Run marks: the runs list filtered by the decisions its checks had and the properties its rows carried, on both
stores, kept at write time (store/marks.py) and checked against the raw rows by `rollups verify`.

Exact lists in the runs list's order, pages by the cursor, replays that add nothing, steps that come before their
run, a retried request that takes back what only it said, and what retention and `rollups rebuild` do to marks.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from alembic import command
from sqlalchemy import delete, func, insert, select, update

from agentledger.core.marks import decision_label, mark_of, property_label
from agentledger.core.model import (
    Attribution,
    RequestRecord,
    RunStart,
    StepKind,
    StepRecord,
    StepStatus,
    TraceEvent,
)
from agentledger.core.retention import Retention
from agentledger.store import schema as t
from agentledger.store.base import RunFilter, WriteResult
from agentledger.store.migrate import alembic_config
from agentledger.store.retention import DELETED, RetentionStore
from agentledger.store.sql import SQLStore
from tests.contract.store.test_books import new_workspace
from tests.harness import fresh_pg_database, unlocked

T0 = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)


def who(ws: str, run: str | None, **properties: str) -> Attribution:
    return Attribution(workspace_id=ws, agent_id="a0", run_id=run, properties=properties)


def start(ws: str, run: str, at: datetime, **properties: str) -> RunStart:
    return RunStart(run_id=run, attribution=who(ws, run, **properties), started_at=at)


def check(ws: str, run: str, step_id: str, at: datetime, report: dict[str, Any], **properties: str) -> StepRecord:
    """A policy_check step with the governance report gateway/budgets.py writes."""
    ok = report.get("decision") == "allowed"
    status = StepStatus.OK if ok else StepStatus.ERROR
    a = who(ws, run, **properties)
    return StepRecord(step_id, run, a, StepKind.POLICY_CHECK, "policy check", status, at, attributes=report)


def tool(ws: str, run: str, step_id: str, at: datetime, **properties: str) -> StepRecord:
    return StepRecord(step_id, run, who(ws, run, **properties), StepKind.TOOL_CALL, "t", StepStatus.OK, at)


def request(ws: str, run: str | None, rid: str, at: datetime, *, ok: bool = True, **properties: str) -> RequestRecord:
    return RequestRecord(
        request_id=rid,
        attribution=who(ws, run, **properties),
        endpoint="/v1/chat/completions",
        provider="openai",
        model="gpt-4o-mini",
        stream=False,
        status=StepStatus.OK if ok else StepStatus.ERROR,
        http_status=200 if ok else 502,
        started_at=at,
        ended_at=at,
        latency_ms=1.0,
        request_hash="h",
    )


async def write(store: SQLStore, *batches: list[TraceEvent]) -> None:
    for batch in batches:
        assert await store.write_batch(batch) is WriteResult.SUCCESS


async def ids(store: SQLStore, ws: str, **flt: Any) -> list[str]:
    return [r["id"] for r in await store.list_runs(ws, RunFilter(**flt))]


def marks_of(store: SQLStore, ws: str) -> list[tuple[str, str, datetime]]:
    m = t.run_marks.c
    with store.engine.connect() as conn:
        rows = conn.execute(select(m.run_id, m.mark, m.started_at).where(m.workspace_id == ws).order_by(m.run_id))
        return sorted((r[0], r[1], r[2]) for r in rows)


def decision(word: str) -> str:
    return mark_of(decision_label(word))


def prop(name: str, value: str) -> str:
    return mark_of(property_label(name, value))


async def test_runs_are_listed_by_the_decisions_their_checks_had(store: SQLStore) -> None:
    ws = await new_workspace(store)
    approval = {"approval_id": "apr_1", "status": "approved", "decided_by": "ann", "waited_ms": 5}
    pending = {**approval, "status": "pending"}
    reports: dict[str, list[dict[str, Any]]] = {
        "r-allowed": [{"decision": "allowed", "decided_by": None}],
        "r-blocked": [{"decision": "blocked", "decided_by": {"kind": "budget", "id": "b1"}}],
        # A throttled try, then the retry that went through: the run had both.
        "r-throttled": [{"decision": "throttled"}, {"decision": "allowed"}],
        # Waiting for a human: escalated. Approved: allowed, and escalated all the same.
        "r-pending": [{"decision": "escalated", "policy": {"decision": "escalated", "approval": pending}}],
        "r-approved": [{"decision": "allowed", "policy": {"decision": "escalated", "approval": approval}}],
        # A monitor-mode policy's verdict is what it would have done, not a decision.
        "r-monitored": [{"decision": "allowed", "policy": {"decision": "allowed", "would": {"decision": "blocked"}}}],
        # Not a decision word, or not a report: no mark.
        "r-odd": [{"decision": "maybe"}, {"policy": "approval"}],
        "r-ungoverned": [],
    }
    for i, (run, checks) in enumerate(reports.items()):
        at = T0 + timedelta(minutes=i)
        events: list[TraceEvent] = [start(ws, run, at), tool(ws, run, f"{run}-tool", at)]
        events += [check(ws, run, f"{run}-pc{n}", at + timedelta(seconds=n), r) for n, r in enumerate(checks)]
        await write(store, events)
    # A model call whose attributes name a decision is not a check (the gateway's model_call step carries the
    # decision it was allowed under): only policy_check steps decide.
    a = who(ws, "r-ungoverned")
    call = StepRecord(
        "mc", "r-ungoverned", a, StepKind.MODEL_CALL, "m", StepStatus.OK, T0, attributes={"decision": "blocked"}
    )
    await write(store, [call])

    assert await ids(store, ws, decision="allowed") == ["r-monitored", "r-approved", "r-throttled", "r-allowed"]
    assert await ids(store, ws, decision="blocked") == ["r-blocked"]
    assert await ids(store, ws, decision="throttled") == ["r-throttled"]
    assert await ids(store, ws, decision="escalated") == ["r-approved", "r-pending"]
    # Combined with the other filters, each checked on the runs met.
    assert await ids(store, ws, decision="allowed", agent_id="a0", limit=2) == ["r-monitored", "r-approved"]
    assert await ids(store, ws, decision="allowed", agent_id="nobody") == []
    window = {"since": T0 + timedelta(minutes=2), "until": T0 + timedelta(minutes=5)}
    assert await ids(store, ws, decision="allowed", **window) == ["r-approved", "r-throttled"]
    # Each row of a listed run is the run as the unfiltered list shows it, totals included.
    unfiltered = {r["id"]: r for r in await store.list_runs(ws, RunFilter())}
    for row in await store.list_runs(ws, RunFilter(decision="escalated")):
        assert row == unfiltered[row["id"]]
    assert await store.verify_books(ws) == []


async def test_runs_are_listed_by_the_properties_their_requests_and_steps_carried(store: SQLStore) -> None:
    ws = await new_workspace(store)
    long_value = "v" * 1024
    await write(
        store,
        [start(ws, "r1", T0), request(ws, "r1", "q1", T0, customer="acme", tier="gold")],
        [start(ws, "r2", T0 + timedelta(minutes=1)), tool(ws, "r2", "s2", T0, customer="acme")],
        [start(ws, "r3", T0 + timedelta(minutes=2)), tool(ws, "r3", "s3", T0, customer="globex", note=long_value)],
        # A property named like a decision is a property.
        [start(ws, "r4", T0 + timedelta(minutes=3)), tool(ws, "r4", "s4", T0, decision="blocked")],
        # A request outside any run marks nothing; a run's RunStart properties are not a row's.
        [request(ws, None, "q0", T0, customer="acme"), start(ws, "r5", T0 + timedelta(minutes=4), customer="acme")],
    )
    assert await ids(store, ws, properties=(("customer", "acme"),)) == ["r2", "r1"]
    assert await ids(store, ws, properties=(("customer", "globex"),)) == ["r3"]
    assert await ids(store, ws, properties=(("customer", "acme"), ("tier", "gold"))) == ["r1"]
    assert await ids(store, ws, properties=(("customer", "acme"), ("customer", "globex"))) == []
    assert await ids(store, ws, properties=(("customer", "acme"), ("customer", "acme"))) == ["r2", "r1"]
    assert await ids(store, ws, properties=(("note", long_value),)) == ["r3"]
    assert await ids(store, ws, properties=(("decision", "blocked"),)) == ["r4"]
    assert await ids(store, ws, decision="blocked") == []
    assert await ids(store, ws, properties=(("customer", "ACME"),)) == []
    assert await ids(store, ws, properties=(("customer", "acme"),), decision="allowed") == []
    assert await store.verify_books(ws) == []


async def test_a_filtered_list_pages_by_the_cursor_in_the_lists_order(store: SQLStore) -> None:
    ws = await new_workspace(store)
    # 12 runs, three at each instant (ties go by id, descending); every other one blocked.
    for i in range(12):
        run, at = f"run-{i:02d}", T0 + timedelta(minutes=i // 3)
        report = {"decision": "blocked" if i % 2 else "allowed"}
        await write(store, [start(ws, run, at), check(ws, run, f"pc-{i}", at, report, team="a")])
    everything = await ids(store, ws, limit=100)
    blocked = [r for r in everything if int(r[-2:]) % 2]
    assert await ids(store, ws, decision="blocked", limit=100) == blocked
    for size in (1, 2, 4):
        pages: list[str] = []
        cursor = None
        while True:
            rows = await store.list_runs(ws, RunFilter(decision="blocked", limit=size, cursor=cursor))
            pages += [r["id"] for r in rows]
            if len(rows) < size:
                break
            cursor = (rows[-1]["started_at"], rows[-1]["id"])
        assert pages == blocked
    assert await ids(store, ws, properties=(("team", "a"),), limit=5, offset=5) == everything[5:10]


async def test_replays_and_resent_steps_add_no_mark(store: SQLStore) -> None:
    ws = await new_workspace(store)
    batch: list[TraceEvent] = [
        start(ws, "r1", T0),
        request(ws, "r1", "q1", T0, customer="acme"),
        check(ws, "r1", "pc1", T0, {"decision": "blocked"}, customer="acme"),
        tool(ws, "r1", "s1", T0, customer="acme"),
    ]
    for _ in range(3):
        await write(store, batch, batch[:1] + batch[2:])
    assert marks_of(store, ws) == sorted([("r1", prop("customer", "acme"), T0), ("r1", decision("blocked"), T0)])
    assert await store.verify_books(ws) == []


async def test_steps_before_their_run_are_listed_from_the_runs_start(store: SQLStore) -> None:
    ws = await new_workspace(store)
    later = T0 + timedelta(hours=2)
    await write(store, [tool(ws, "late", "s2", later, customer="acme")])
    await write(store, [tool(ws, "late", "s1", T0 + timedelta(hours=1), customer="acme")])
    # Not listed while its run is not stored; its mark holds the earliest of its rows' times meanwhile.
    assert await ids(store, ws, properties=(("customer", "acme"),)) == []
    assert marks_of(store, ws) == [("late", prop("customer", "acme"), T0 + timedelta(hours=1))]
    # The batch that creates the run settles its marks, and adds its own rows' (one the same as before).
    await write(store, [start(ws, "late", T0), tool(ws, "late", "s0", T0, customer="acme", tier="gold")])
    assert marks_of(store, ws) == sorted([("late", prop("customer", "acme"), T0), ("late", prop("tier", "gold"), T0)])
    # A run created alone settles them too.
    await write(store, [tool(ws, "alone", "s9", T0 + timedelta(hours=3), customer="acme")])
    await write(store, [start(ws, "alone", T0 - timedelta(hours=1))])
    assert [r["id"] for r in await store.list_runs(ws, RunFilter(properties=(("customer", "acme"),)))] == [
        "late",
        "alone",
    ]
    await write(store, [start(ws, "other", T0 + timedelta(minutes=30)), tool(ws, "other", "s3", T0, customer="acme")])
    rows = await store.list_runs(ws, RunFilter(properties=(("customer", "acme"),)))
    assert [(r["id"], r["started_at"]) for r in rows] == [
        ("other", T0 + timedelta(minutes=30)),
        ("late", T0),
        ("alone", T0 - timedelta(hours=1)),
    ]
    assert await store.verify_books(ws) == []


async def test_a_retried_request_takes_back_the_property_only_it_gave(store: SQLStore) -> None:
    ws = await new_workspace(store)
    await write(
        store,
        [start(ws, "r1", T0), request(ws, "r1", "q1", T0, ok=False, customer="acme", tier="gold")],
        [start(ws, "r2", T0), request(ws, "r2", "q2", T0, ok=False, customer="acme")],
        [tool(ws, "r2", "s2", T0, customer="acme")],
    )
    assert await ids(store, ws, properties=(("customer", "acme"),)) == ["r2", "r1"]
    # The retries (same x-request-id) carry another customer: r1's acme goes, r2 keeps it (its step carries it).
    await write(
        store,
        [start(ws, "r1", T0), request(ws, "r1", "q1", T0, customer="globex", tier="gold")],
        [start(ws, "r2", T0), request(ws, "r2", "q2", T0, customer="globex")],
    )
    assert await ids(store, ws, properties=(("customer", "acme"),)) == ["r2"]
    assert await ids(store, ws, properties=(("customer", "globex"),)) == ["r2", "r1"]
    assert await ids(store, ws, properties=(("tier", "gold"),)) == ["r1"]
    # A completed request is final: sending it again with other properties changes nothing.
    await write(store, [start(ws, "r1", T0), request(ws, "r1", "q1", T0, customer="initech")])
    assert await ids(store, ws, properties=(("customer", "initech"),)) == []
    assert await store.verify_books(ws) == []


async def test_verify_names_wrong_marks_and_rebuild_restores_them(store: SQLStore) -> None:
    ws = await new_workspace(store)
    await write(
        store,
        [start(ws, "r1", T0), check(ws, "r1", "pc1", T0, {"decision": "blocked"}, customer="acme")],
        [start(ws, "r2", T0 + timedelta(minutes=1)), tool(ws, "r2", "s2", T0, customer="acme")],
    )
    kept = marks_of(store, ws)
    m = t.run_marks.c

    def tamper(conn: Any) -> None:
        conn.execute(delete(t.run_marks).where(m.workspace_id == ws, m.run_id == "r1", m.mark == decision("blocked")))
        conn.execute(update(t.run_marks).where(m.workspace_id == ws, m.run_id == "r2").values(started_at=T0))
        conn.execute(insert(t.run_marks).values(workspace_id=ws, run_id="r2", mark=decision("allowed"), started_at=T0))

    await store._write(tamper)
    found = sorted(f"{x.table} {x.key[1]} {x.key[2]} {x.kept} {x.recomputed}" for x in await store.verify_books(ws))
    assert found == [
        f"marks r1 decision=blocked None [{T0!r}]",
        f"marks r2 {decision('allowed')} [{T0!r}] None",
        f"marks r2 property.customer=acme [{T0!r}] [{T0 + timedelta(minutes=1)!r}]",
    ]
    assert (await store.verify_books(ws))[0].describe() == (
        f"marks ('{ws}', 'r1', 'decision=blocked'): kept None, recomputed [{T0.isoformat()}]"
    )
    assert await ids(store, ws, decision="blocked") == []
    assert await store.rebuild_books(ws) > 0
    assert await store.verify_books(ws) == []
    assert marks_of(store, ws) == kept
    assert await ids(store, ws, decision="blocked") == ["r1"]
    assert await ids(store, ws, properties=(("customer", "acme"),)) == ["r2", "r1"]


async def test_retention_deletes_the_marks_of_the_runs_it_deletes(store: SQLStore) -> None:
    ws = await new_workspace(store)
    now = datetime(2026, 6, 30, 12, 0, tzinfo=UTC)
    old, cutoff = now - timedelta(days=40), now - timedelta(days=30)
    await write(
        store,
        # Old, all of it: goes, marks and all.
        [start(ws, "r-old", old), check(ws, "r-old", "pc-old", old, {"decision": "blocked"}, customer="acme")],
        # Old, but still going: its old check goes, the run and the marks that check gave it stay.
        [start(ws, "r-long", old), check(ws, "r-long", "pc-long", old, {"decision": "blocked"})],
        [tool(ws, "r-long", "s-long", now, customer="acme")],
        # Young, with a step back-dated before the cutoff: stays whole.
        [start(ws, "r-young", now), tool(ws, "r-young", "s-young", old, customer="acme")],
    )
    retention = RetentionStore(store)
    await retention.put(ws, Retention(traces_days=30), "test", now)
    await retention.advance(ws, "traces_horizon", cutoff)
    for kind in DELETED:
        cursor = None
        while True:
            batch = await unlocked(retention.delete_batch, kind, ws, cutoff, cursor, 100)
            if batch.cursor is None:
                break
            cursor = batch.cursor
    assert await ids(store, ws) == ["r-young", "r-long"]
    assert [r for r, _, _ in marks_of(store, ws)] == ["r-long", "r-long", "r-young"]
    assert await ids(store, ws, decision="blocked") == ["r-long"]
    assert await ids(store, ws, properties=(("customer", "acme"),)) == ["r-young", "r-long"]
    # r-long's blocked mark outlives the check that gave it, as its totals do: verify cannot check it, rebuild
    # keeps it.
    assert await store.verify_books(ws) == []
    assert await store.rebuild_books(ws) > 0
    assert await ids(store, ws, decision="blocked") == ["r-long"]
    assert await store.verify_books(ws) == []
    # A young run is still checked: a mark its rows do not give is named.
    m = t.run_marks.c
    stale = dict(workspace_id=ws, run_id="r-young", mark=decision("throttled"), started_at=now)
    await store._write(lambda conn: conn.execute(insert(t.run_marks).values(**stale)))
    assert [(x.table, x.key[1]) for x in await store.verify_books(ws)] == [("marks", "r-young")]
    await store._write(lambda conn: conn.execute(delete(t.run_marks).where(m.mark == decision("throttled"))))


@contextmanager
def fresh_database(backend: str, tmp_path: Any) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'fill.db'}"
    else:
        with fresh_pg_database() as url:
            yield url


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.pg)])
async def test_the_migration_fills_the_marks_of_the_runs_stored_before_it(backend: str, tmp_path: Any) -> None:
    with fresh_database(backend, tmp_path) as url:
        store = SQLStore(url)
        try:
            await store.migrate()
            ws = await new_workspace(store)
            await write(
                store,
                [start(ws, "r1", T0), check(ws, "r1", "pc1", T0, {"decision": "throttled"}, customer="acme")],
                [tool(ws, "r0", "s0", T0 + timedelta(hours=1), customer="acme")],  # its run never came
            )
            kept = marks_of(store, ws)
            command.downgrade(alembic_config(store.engine), "0014_sessions_seen")
            with store.engine.connect() as conn:
                assert conn.execute(select(func.count()).select_from(t.runs)).scalar() == 1
            await store.migrate()
            assert marks_of(store, ws) == kept
            assert await ids(store, ws, decision="throttled") == ["r1"]
            assert await store.verify_books(ws) == []
        finally:
            await store.aclose()

"""No read the API makes scans the trace tables: every SELECT is planned on indexes, with autovacuum off.

The store is filled through `write_batch` (two workspaces, tens of thousands of steps over 30 days) on this
machine's PostgreSQL, where autovacuum is off: the only statistics are those the store refreshes itself
(store.sql.SQLStore._analyze). Then every read of the query API and of the trace writer is run once, its SQL
captured as sent (SQLAlchemy's before_cursor_execute), and `EXPLAIN ANALYZE`d with the same parameters. A
sequential scan of steps or requests, or any scan that reads more than 1,000 rows to drop them (an index on
the workspace alone, filtered), fails the test with the statement and its plan.

SQLite is held to the same reads with `EXPLAIN QUERY PLAN`: no `SCAN` (a whole table, or a whole index) of a
trace or kept table. It has no statistics at all (no ANALYZE is ever run) and picks by index shape.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event

from agentledger.core.budgets import Decision
from agentledger.core.model import (
    Attribution,
    RequestRecord,
    RunStart,
    StepKind,
    StepRecord,
    StepStatus,
    TraceEvent,
)
from agentledger.core.policy import Mode, Verdict
from agentledger.store.base import FINANCE_GROUPS, GROUP_COLUMNS, CostQuery, FinanceQuery, RunFilter, WriteResult
from agentledger.store.policy_hits import HitFilter
from agentledger.store.sql import SQLStore
from tests.harness import fresh_pg_database

NOW = datetime(2026, 6, 30, 12, 0, tzinfo=UTC)
FILTERED_AT_MOST = 1000  # rows a scan may read and drop (the data holds 20,000 steps a workspace)
EVENTS = {"steps", "requests"}
SCANNED = {
    "steps",
    "requests",
    "runs",
    "run_totals",
    "session_paths",
    "rollup_hourly",
    "rollup_sessions",
    "rollup_properties",
    "policy_hits",
    "run_marks",
}


@pytest.fixture(scope="module")
def plan_db() -> Iterator[str]:
    with fresh_pg_database() as url:
        yield url


@pytest.fixture
async def filled_sqlite(tmp_path: Any) -> AsyncIterator[SQLStore]:
    store = SQLStore(f"sqlite:///{tmp_path / 'plans.db'}")
    await fill(store)
    yield store
    await store.aclose()


_WOULD = Verdict(Decision.BLOCKED, "pol-x", 1, "r1", "would block", Mode.MONITOR)
CHECKS = [  # what the gateway records: pol-x blocking a call, and (in monitor mode) a call it would have blocked
    {"decision": "blocked", "policy": Verdict(Decision.BLOCKED, "pol-x", 1, "r1", "blocks").as_record()},
    {"decision": "allowed", "policy": Verdict(reason="allowed", would=_WOULD).as_record()},
]


def batch(ws: str, run: int) -> list[TraceEvent]:
    a = Attribution(
        workspace_id=ws,
        department_id="d",
        virtual_key_id="vk",
        agent_id=f"agent-{run % 5}",
        run_id=f"run-{run}",
        session_id=f"sess-{run % 30}",
        session_path=f"/p{run % 3}",
        properties={"team": f"t{run % 4}"},
    )
    started = NOW - timedelta(days=run % 30, minutes=run)
    events: list[TraceEvent] = [RunStart(run_id=f"run-{run}", attribution=a, started_at=started, workflow="wf")]
    for i in range(100):
        events.append(
            StepRecord(f"st-{run}-{i}", f"run-{run}", a, StepKind.TOOL_CALL, "t", StepStatus.OK, started, cost_nanos=i)
        )
    for i in range(20):  # a policy's hits, of both modes (20 a run: 4,000 a workspace)
        pid = f"pc-{run}-{i}"
        check = StepKind.POLICY_CHECK
        events.append(
            StepRecord(pid, f"run-{run}", a, check, "policy check", StepStatus.OK, started, request_id=pid,
                       attributes=CHECKS[i % 2])
        )  # fmt: skip
    # Every run has a policy check; one in seven was blocked (the run marks behind decision=).
    decision = "blocked" if run % 7 == 0 else "allowed"
    events.append(
        StepRecord(
            f"pc-{run}",
            f"run-{run}",
            a,
            StepKind.POLICY_CHECK,
            "p",
            StepStatus.OK,
            started,
            attributes={"decision": decision},
        )
    )
    for i in range(10):
        events.append(
            RequestRecord(
                request_id=f"rq-{run}-{i}",
                attribution=a,
                endpoint="/v1/chat/completions",
                provider="openai",
                model="gpt-4o-mini",
                stream=False,
                status=StepStatus.OK,
                http_status=200,
                started_at=started,
                ended_at=started,
                latency_ms=1.0,
                request_hash="h",
                cost_nanos=5,
            )
        )
    return events


async def fill(store: SQLStore) -> None:
    await store.migrate()
    for ws in ("ws-a", "ws-b"):
        await store.create_workspace(ws, ws, NOW)
        for pol in ("pol-x", "pol-y"):
            row = {"workspace_id": ws, "id": pol, "name": pol, "scope": "workspace", "scope_value": None}
            await store.governance.create_policy({**row, "mode": "enforce", "body": {}, "created_at": NOW}, None)
        await store.declare_property(ws, "team", NOW)
        for run in range(200):
            assert await store.write_batch(batch(ws, run)) is WriteResult.SUCCESS


@pytest.fixture
async def filled(plan_db: str) -> AsyncIterator[SQLStore]:
    store = SQLStore(plan_db)
    await fill(store)
    yield store
    await store.aclose()


def nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from nodes(child)


async def captured_reads(store: SQLStore) -> list[tuple[str, Any]]:
    """Every read the API makes, as sent to the database."""
    seen: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        if statement.lstrip().upper().startswith(("SELECT", "WITH")):
            seen.append((statement, parameters))

    event.listen(store.engine, "before_cursor_execute", capture)
    try:
        ws, since, until = "ws-a", NOW - timedelta(days=7, minutes=30), NOW - timedelta(minutes=17)
        page = await store.list_runs(ws, RunFilter(limit=50))
        cursor = (page[-1]["started_at"], page[-1]["id"])
        for flt in (
            RunFilter(limit=50, cursor=cursor),
            RunFilter(agent_id="agent-1", limit=50),
            RunFilter(session_id="sess-3", limit=50),
            RunFilter(workflow="wf", limit=50),
            RunFilter(status="running", limit=50),
            RunFilter(since=since, until=until, limit=50),
        ):
            await store.list_runs(ws, flt)
        await store.get_run(ws, "run-7")
        await store.run_steps(ws, "run-7")
        await store.get_session(ws, "sess-3")
        await store.get_request(ws, "rq-7-1")
        await store.stored_response(ws, "rq-7-1")
        await store.step_exists(ws, ["st-7-1", "nope"])
        for group_by in (*[g for g in GROUP_COLUMNS if g != "run"], "property.team"):
            for interval in (None, "day"):
                await store.costs(ws, CostQuery(group_by=group_by, interval=interval))
                await store.costs(ws, CostQuery(group_by=group_by, since=since, until=until, interval=interval))
        await store.costs(ws, CostQuery(group_by="run", since=since, until=until))
        await store.costs(ws, CostQuery(group_by="property.env", since=since, until=until))
        # The finance summary reads kept rows only; limit 1 also sends its totals' own query.
        for group_by in (*FINANCE_GROUPS, "property.team"):
            for bucket in (None, "day"):
                await store.finance_summary(ws, FinanceQuery(group_by=group_by, bucket=bucket, limit=1))
                await store.finance_summary(
                    ws, FinanceQuery(group_by=group_by, since=since, until=until, bucket=bucket)
                )
        await store.list_runs(ws, RunFilter(endpoint_id="ep", limit=50))
        # A policy's hits (GET /api/policies/{id}/hits) and the hit counts of GET /api/policies.
        gov = store.governance
        hits = await gov.policy_hits(ws, "pol-x", HitFilter(limit=50))
        assert len(hits) == 50
        after = (hits[-1]["at"], hits[-1]["id"])
        for hit_filter in (
            HitFilter(limit=50, cursor=after),
            HitFilter(mode="monitor", limit=50, cursor=after),
            HitFilter(mode="enforce", since=since, until=until, limit=50),
            HitFilter(department_id="d", limit=50),
        ):
            await gov.policy_hits(ws, "pol-x", hit_filter)
        await gov.policy_versions(ws, "pol-x", limit=1)
        counted = await gov.policy_hit_counts(ws, [NOW - timedelta(hours=24), NOW - timedelta(days=7)])
        assert counted["pol-x"][(1, "monitor")] > 0 and counted["pol-y"] == dict.fromkeys(counted["pol-y"], 0)
        await gov.policy_hit_counts(ws, [NOW - timedelta(days=7)], department_id="d")
        # The decision and property filters read the run marks.
        blocked = await store.list_runs(ws, RunFilter(decision="blocked", limit=10))
        for flt in (
            RunFilter(decision="blocked", limit=10, cursor=(blocked[-1]["started_at"], blocked[-1]["id"])),
            RunFilter(decision="allowed", limit=50),
            RunFilter(properties=(("team", "t1"),), limit=50),
            RunFilter(decision="blocked", properties=(("team", "t1"),), limit=50),
            RunFilter(decision="allowed", agent_id="agent-1", status="running", limit=50),
            RunFilter(properties=(("team", "t2"),), since=since, until=until, limit=50),
        ):
            await store.list_runs(ws, flt)
        # The trace writer's reads: a replayed batch (everything exists) and a new one.
        assert await store.write_batch(batch(ws, 7)) is WriteResult.SUCCESS
        assert await store.write_batch(batch(ws, 500)) is WriteResult.SUCCESS
    finally:
        event.remove(store.engine, "before_cursor_execute", capture)
    return seen


def scanned(conn: Any, statement: str, parameters: Any) -> tuple[set[str], dict[str, Any]]:
    """The trace or kept tables the statement reads wholesale: a sequential scan, or an index scan that reads
    rows only to throw them away (an index on the workspace alone, filtered: a whole workspace read)."""
    raw = conn.exec_driver_sql("EXPLAIN (ANALYZE, FORMAT JSON) " + statement, parameters).scalar()
    plan = (raw if isinstance(raw, list) else json.loads(raw))[0]["Plan"]
    wasteful = set()
    for n in nodes(plan):
        if "Relation Name" not in n:
            continue
        loops = n.get("Actual Loops", 1)
        removed = n.get("Rows Removed by Filter", 0) * loops
        read = n.get("Actual Rows", 0) * loops + removed
        # A small table is read whole when that is cheaper (the runs and rollups of this data, with statistics);
        # the event tables never are.
        whole = n["Node Type"] == "Seq Scan" and (n["Relation Name"] in EVENTS or read > FILTERED_AT_MOST)
        if whole or removed > FILTERED_AT_MOST:
            wasteful.add(n["Relation Name"])
    return SCANNED & wasteful, plan


@pytest.mark.pg
async def test_no_read_scans_a_trace_or_kept_table(filled: SQLStore) -> None:
    reads = await captured_reads(filled)
    assert len(reads) > 40
    bad = []
    with filled.engine.connect() as conn:
        # Every connection plans with the values at hand (store.sql.PG_CONNECT_ARGS), never a cached generic plan.
        assert conn.exec_driver_sql("SHOW plan_cache_mode").scalar() == "force_custom_plan"
        # The check itself can fail: a filter no index serves is a sequential scan, and one the index serves only
        # in part reads the workspace's rows to drop them.
        assert scanned(conn, "SELECT count(*) FROM steps WHERE name = %(n)s", {"n": "t"})[0] == {"steps"}
        by_name = "SELECT count(*) FROM steps WHERE workspace_id = %(w)s AND started_at > %(t)s AND name = %(n)s"
        assert scanned(conn, by_name, {"w": "ws-a", "t": NOW - timedelta(days=40), "n": "x"})[0] == {"steps"}
        for statement, parameters in reads:
            tables, plan = scanned(conn, statement, parameters)
            if tables:
                bad.append(f"{statement}\n{parameters}\n{json.dumps(plan, indent=1)[:3000]}")
    assert not bad, "\n\n".join(bad)


async def test_no_read_scans_a_trace_or_kept_table_on_sqlite(filled_sqlite: SQLStore) -> None:
    reads = await captured_reads(filled_sqlite)
    assert len(reads) > 40
    bad = []
    with filled_sqlite.engine.connect() as conn:
        # The check itself can fail: a filter no index serves is a SCAN.
        assert sqlite_scans(conn, "SELECT count(*) FROM steps WHERE name = ?", ("t",)) == {"steps"}
        for statement, parameters in reads:
            tables = sqlite_scans(conn, statement, parameters)
            if tables:
                plan = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters).fetchall()
                bad.append(f"{statement}\n{parameters}\n" + "\n".join(str(r[-1]) for r in plan))
    assert not bad, "\n\n".join(bad)


def sqlite_scans(conn: Any, statement: str, parameters: Any) -> set[str]:
    rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters).fetchall()
    return {str(r[-1]).split()[1] for r in rows if str(r[-1]).startswith("SCAN ")} & SCANNED

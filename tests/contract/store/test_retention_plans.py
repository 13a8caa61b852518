"""The retention job's batches read what they change through indexes, never a whole table or workspace, on the filled
store of test_query_plans (two workspaces, 20,000 steps each over 30 days): every SELECT a sweep sends is captured as
sent and planned again (PostgreSQL: `EXPLAIN ANALYZE`, with autovacuum off; SQLite: `EXPLAIN QUERY PLAN`), and a
batch's SELECT reads no more than about its own rows."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import event

from agentledger.core.retention import Retention
from agentledger.store.retention import DELETED, NULLED, RetentionStore
from agentledger.store.sql import SQLStore
from tests.contract.store.test_query_plans import EVENTS, FILTERED_AT_MOST, NOW, fill, nodes, plan_db, sqlite_scans
from tests.harness import unlocked

__all__ = ["plan_db"]  # the fixture, shared with test_query_plans

BATCH = 500


@pytest.fixture
async def filled(plan_db: str) -> AsyncIterator[SQLStore]:
    store = SQLStore(plan_db)
    await fill(store)
    yield store
    await store.aclose()


@pytest.fixture
async def filled_sqlite(tmp_path: Any) -> AsyncIterator[SQLStore]:
    store = SQLStore(f"sqlite:///{tmp_path / 'plans.db'}")
    await fill(store)
    yield store
    await store.aclose()


async def sweep_reads(store: SQLStore) -> tuple[list[tuple[str, Any]], dict[str, int]]:
    """A sweep of ws-a (bodies of the last 20 days' rows before 10 days ago, then every row before 15 days ago), in
    batches of BATCH: the SELECTs it sent, and the rows it deleted or changed per table."""
    seen: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        if statement.lstrip().upper().startswith(("SELECT", "WITH")) and "pg_try_advisory" not in statement:
            seen.append((statement, parameters))

    retention = RetentionStore(store)
    await retention.put("ws-a", Retention(bodies_days=10, traces_days=15), "test", NOW)
    done: dict[str, int] = {}
    event.listen(store.engine, "before_cursor_execute", capture)
    try:
        for kind in NULLED:
            cursor = None
            while True:
                since, before = NOW - timedelta(days=20), NOW - timedelta(days=10)
                batch = await unlocked(retention.null_batch, kind, "ws-a", since, before, cursor, BATCH)
                cursor = batch.cursor
                if cursor is None:
                    break
        for kind in DELETED:
            cursor = None
            while True:
                batch = await unlocked(retention.delete_batch, kind, "ws-a", NOW - timedelta(days=15), cursor, BATCH)
                done[kind] = done.get(kind, 0) + batch.done
                cursor = batch.cursor
                if cursor is None:
                    break
    finally:
        event.remove(store.engine, "before_cursor_execute", capture)
    return seen, done


def wasteful(conn: Any, statement: str, parameters: Any) -> tuple[set[str], dict[str, Any]]:
    """test_query_plans' check, per probe: a batch asks about each of its rows once (at most BATCH probes), and a
    probe may read a table as small as this data's runs whole (the planner's cheaper choice there); a sequential scan
    of steps or requests, or a probe reading more than FILTERED_AT_MOST rows to drop them, fails."""
    raw = conn.exec_driver_sql("EXPLAIN (ANALYZE, FORMAT JSON) " + statement, parameters).scalar()
    plan = (raw if isinstance(raw, list) else json.loads(raw))[0]["Plan"]
    found = set()
    for n in nodes(plan):
        name = n.get("Relation Name")
        if name is None:
            continue
        if (n["Node Type"] == "Seq Scan" and name in EVENTS) or n.get("Rows Removed by Filter", 0) > FILTERED_AT_MOST:
            found.add(name)
    return found, plan


@pytest.mark.slow
@pytest.mark.pg
async def test_no_batch_of_the_retention_job_scans_a_table(filled: SQLStore) -> None:
    reads, done = await sweep_reads(filled)
    assert done["steps"] > 5 * BATCH and done["runs"] > 0 and done["sessions"] > 0 and done["policy_hits"] > BATCH
    bad = []
    with filled.engine.connect() as conn:
        # The check itself can fail.
        assert wasteful(conn, "SELECT count(*) FROM requests WHERE model = %(m)s", {"m": "x"})[0] == {"requests"}
        for statement, parameters in reads:
            tables, plan = wasteful(conn, statement, parameters)
            if tables:
                bad.append(f"{statement}\n{parameters}\n{json.dumps(plan, indent=1)[:3000]}")
    assert not bad, "\n\n".join(bad)


@pytest.mark.slow
async def test_no_batch_of_the_retention_job_scans_a_table_on_sqlite(filled_sqlite: SQLStore) -> None:
    reads, done = await sweep_reads(filled_sqlite)
    assert done["steps"] > 5 * BATCH and done["runs"] > 0 and done["policy_hits"] > BATCH
    bad = []
    with filled_sqlite.engine.connect() as conn:
        for statement, parameters in reads:
            if sqlite_scans(conn, statement, parameters):
                plan = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters).fetchall()
                bad.append(f"{statement}\n{parameters}\n" + "\n".join(str(r[-1]) for r in plan))
    assert not bad, "\n\n".join(bad)

"""Trace rows written through the driver's executemany (store/bulk.py) equal rows SQLAlchemy Core writes.

Reads go through SQLAlchemy, so the bulk path must store exactly what SQLAlchemy would: the same datetime
text on SQLite, JSON that decodes to the same values, booleans, bytes and big integers intact. Each event is
written twice into two workspaces, once per path, and every column is compared.
"""

from __future__ import annotations

import pickle
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import delete, insert, literal_column, select
from sqlalchemy.exc import IntegrityError

from agentledger.core.budgets import Action, Budget, Decision, Figures, Period, PolicyReport, Scope, flat
from agentledger.core.model import (
    Attribution,
    LedgerEntries,
    LedgerEntry,
    Payment,
    PaymentDirection,
    PaymentProtocol,
    PaymentStatus,
    RequestRecord,
    RunStart,
    StepKind,
    StepRecord,
    StepStatus,
)
from agentledger.core.pricing import CostSource
from agentledger.core.usage import Usage
from agentledger.store import schema as t
from agentledger.store.bulk import BulkStatement, sqlite_datetime
from agentledger.store.sql import SQLStore, _request_values, _run_values, _step_values

T0 = datetime(2025, 3, 1, 12, 0, 0, 5, tzinfo=timezone(timedelta(hours=2)))
BIG = 2**62 + 1


def events(ws: str) -> tuple[RunStart, RequestRecord, StepRecord, StepRecord]:
    a = Attribution(
        workspace_id=ws,
        department_id="dep",
        virtual_key_id="vk",
        run_id="run-1",
        session_id="s-1",
        session_path="/a/b",
        properties={"team": "ünïcode", "n": "1"},
    )
    run = RunStart(
        run_id="run-1",
        attribution=a,
        started_at=T0,
        workflow="wf",
        metadata={"k": [1, 2, {"x": None}]},
        endpoint_id="ep",
    )
    request = RequestRecord(
        request_id="req-1",
        attribution=a,
        endpoint="/chat/completions",
        provider="openai",
        model="gpt-4o-mini",
        stream=True,
        status=StepStatus.OK,
        http_status=200,
        started_at=T0,
        ended_at=T0 + timedelta(milliseconds=1),
        latency_ms=1.25,
        request_hash="h" * 64,
        usage=Usage(input_tokens=BIG, output_tokens=7, reasoning_tokens=3),
        cost_nanos=BIG,
        cost_source=CostSource.COMPUTED,
        response_body=b"\x00data: [DONE]\n\n",
        response_content_type="text/event-stream",
    )
    step = StepRecord(
        step_id="step-1",
        run_id="run-1",
        attribution=a,
        kind=StepKind.TOOL_CALL,
        name="search",
        status=StepStatus.ERROR,
        started_at=datetime(1970, 1, 1, tzinfo=UTC),
        ended_at=None,
        input="a JSON string, not an object",
        output=None,
        attributes={"nested": {"list": [True, 1.5, "é"]}},
        error="boom",
    )
    # A payment: its JSON and the books' columns, and a negative cost (an outbound payment refunded).
    back = Payment(
        PaymentDirection.OUTBOUND, PaymentStatus.REFUNDED, 10**15, PaymentProtocol.X402, asset_amount=str(BIG)
    )
    paid = StepRecord("step-2", "run-1", a, StepKind.PAYMENT, "refund", StepStatus.OK, T0, payment=back)
    return run, request, step, paid


def rows(store: SQLStore, ws: str) -> dict[str, list[dict[str, Any]]]:
    out = {}
    with store.engine.connect() as conn:
        for table in (t.runs, t.requests, t.steps, t.sessions):
            found = conn.execute(select(table).where(table.c.workspace_id == ws)).mappings().all()
            out[table.name] = [{k: v for k, v in r.items() if k not in ("workspace_id", "seq")} for r in found]
    return out


async def test_bulk_rows_read_back_as_sqlalchemy_rows(store: SQLStore) -> None:
    bulk_ws, core_ws = (f"ws-{uuid.uuid4().hex[:10]}" for _ in range(2))
    await store.write_batch(list(events(bulk_ws)))
    run, request, step, paid = events(core_ws)
    with store.engine.begin() as conn:
        conn.execute(insert(t.runs), [_run_values(run)])
        conn.execute(insert(t.requests), [_request_values(request)])
        conn.execute(insert(t.steps), [_step_values(step), _step_values(paid)])
        first = dict(workspace_id=core_ws, id="s-1", name=None, first_seen_at=step.started_at, last_seen_at=T0)
        conn.execute(insert(t.sessions), [first])
    assert rows(store, bulk_ws) == rows(store, core_ws)
    written = rows(store, bulk_ws)
    assert written["requests"][0]["cost_nanos"] == BIG and written["requests"][0]["stream"] is True
    assert written["steps"][0]["input"] == "a JSON string, not an object"
    assert written["runs"][0]["started_at"] == T0 and written["runs"][0]["started_at"].tzinfo is not None
    refund = next(r for r in written["steps"] if r["kind"] == "payment")
    assert (refund["cost_nanos"], refund["payment_out_nanos"], refund["payment"]["asset_amount"]) == (
        -(10**15),
        -(10**15),
        str(BIG),
    )
    assert written["runs"][0]["endpoint_id"] == "ep"


def ledger_rows(store: SQLStore, ws: str) -> list[dict[str, Any]]:
    with store.engine.connect() as conn:
        c = t.budget_ledger.c
        found = conn.execute(select(t.budget_ledger).where(c.workspace_id == ws).order_by(c.id)).mappings().all()
        return [{k: v for k, v in r.items() if k != "workspace_id"} for r in found]


async def test_ledger_rows_read_back_as_sqlalchemy_rows(store: SQLStore) -> None:
    """A call's entries (LedgerEntries, expanded by the writer) and a plain LedgerEntry read back as
    the entries SQLAlchemy writes; a replayed batch adds no row."""
    bulk_ws, core_ws = (f"ws-{uuid.uuid4().hex[:10]}" for _ in range(2))

    def entries(ws: str) -> list[LedgerEntries | LedgerEntry]:
        settled = LedgerEntries(
            ws, "settle", -BIG, BIG, T0, "rsv_1", (("b1", "b|w|b1|0"), ("b2", "b|w|b2|run:é")), "led_1s", "req-1"
        )
        spend = LedgerEntry(ws, "led_x", "b1", "b|w|b1|0", "spend", 0, 7, T0, step_id="s", run_id="r", note="é")
        return [settled, spend]

    await store.write_batch(entries(bulk_ws))
    await store.write_batch(entries(bulk_ws))
    with store.engine.begin() as conn:
        for e in entries(core_ws):
            for entry in e.entries() if isinstance(e, LedgerEntries) else [e]:
                conn.execute(
                    insert(t.budget_ledger),
                    [
                        {
                            "workspace_id": entry.workspace_id,
                            "id": entry.entry_id,
                            "budget_id": entry.budget_id,
                            "counter_key": entry.counter_key,
                            "kind": entry.kind,
                            "reserved_delta": entry.reserved_delta,
                            "spent_delta": entry.spent_delta,
                            "reservation_id": entry.reservation_id,
                            "request_id": entry.request_id,
                            "step_id": entry.step_id,
                            "run_id": entry.run_id,
                            "note": entry.note,
                            "at": entry.at,
                        }
                    ],
                )
    written = ledger_rows(store, bulk_ws)
    assert written == ledger_rows(store, core_ws)
    assert [r["id"] for r in written] == ["led_1s0", "led_1s1", "led_x"]
    assert written[0]["at"] == T0 and written[0]["reserved_delta"] == -BIG


async def test_a_request_record_carries_its_reservations_close_written_once(store: SQLStore) -> None:
    """A model call's close travels in its request record's report (core.budgets.PolicyReport) and the writer writes
    it as the gate's LedgerEntries would be, each row once (the batch replayed from the journal): after its reserve
    was written, the reservation back and the cost spent; when the reserve never was, the cost alone, and for a
    release nothing at all."""
    ws = f"ws-{uuid.uuid4().hex[:10]}"
    run, request, _, _ = events(ws)
    b1 = Budget(ws, "b1", Scope.WORKSPACE, None, 10**9, Period.TOTAL, T0, Action.BLOCK_REQUESTS)
    b2 = Budget(ws, "b2", Scope.DEPARTMENT, "dep", 10**9, Period.DAY, T0)
    figures = (Figures(b1, "b|w|b1|total", BIG, 0), Figures(b2, "b|w|b2|0", BIG, 0))
    at = T0 + timedelta(seconds=1)
    written = PolicyReport(Decision.ALLOWED, None, *flat(figures), (), "rsv_abc", 100, None, None, at, "settle", 7)
    netted = replace(written, reservation_id="rsv_def", reserve_written=False)
    released = replace(written, reservation_id="rsv_ghi", reserve_written=False, closed="release", actual=0)
    counters = (("b1", "b|w|b1|total"), ("b2", "b|w|b2|0"))
    early = LedgerEntries.of_reservation(ws, "reserve", 100, 0, T0, "rsv_abc", counters, "req-1", "run-1")
    await store.write_batch([early])
    reports = [written, netted, released]  # three calls of one session: small numbers, its totals stay in range
    batch = [run, *(replace(request, request_id=f"req-{i}", governance=r, usage=None) for i, r in enumerate(reports))]
    await store.write_batch(batch)
    await store.write_batch(pickle.loads(pickle.dumps(batch)))  # as the journal replays it
    found = ledger_rows(store, ws)
    rows = [(r["id"], r["budget_id"], r["kind"], r["reserved_delta"], r["spent_delta"], r["request_id"]) for r in found]
    assert rows == [
        ("led_abcr0", "b1", "reserve", 100, 0, "req-1"),
        ("led_abcr1", "b2", "reserve", 100, 0, "req-1"),
        ("led_abcs0", "b1", "settle", -100, 7, "req-0"),
        ("led_abcs1", "b2", "settle", -100, 7, "req-0"),
        ("led_defs0", "b1", "settle", 0, 7, "req-1"),
        ("led_defs1", "b2", "settle", 0, 7, "req-1"),
    ]
    for r in found:
        assert (r["run_id"], r["step_id"]) == ("run-1", None) and r["at"] == (T0 if r["kind"] == "reserve" else at)
    # Without `closed` a report carries nothing (a refused call's, a check's).
    assert replace(written, closed=None).ledger("req-1", "run-1") == []


async def test_a_constraint_violation_is_sqlalchemys_integrity_error(store: SQLStore) -> None:
    """The pipeline tells a poison event (raised) from an outage (FAILURE) by SQLAlchemy's classes."""
    run, request, step, _ = events(f"ws-{uuid.uuid4().hex[:10]}")
    bad = StepRecord(**{**{f: getattr(step, f) for f in step.__dataclass_fields__}, "name": None})  # type: ignore[arg-type]
    with pytest.raises(IntegrityError):
        await store.write_batch([run, bad])


def test_sqlite_datetime_text_is_sqlalchemys() -> None:
    assert sqlite_datetime(T0) == "2025-03-01 10:00:00.000005"
    assert sqlite_datetime(datetime(33, 1, 2, 3, 4, 5, tzinfo=UTC)) == "0033-01-02 03:04:05.000000"


async def test_ledger_totals_are_exact_past_a_bigint(store: SQLStore) -> None:
    """A counter's ledger sums past 2^63 (10,000 entries at the per-event bound): exact on both stores (SQLite's SUM
    would raise "integer overflow", and the totals are read at start to rebuild the counters)."""
    ws = f"ws-{uuid.uuid4().hex[:10]}"
    bound = 10**15
    key = f"b|{ws}|big|0"
    entries: list[LedgerEntry] = [
        LedgerEntry(ws, f"led_{i}", "big", key, "spend", -bound if i % 3 == 0 else bound, bound, T0)
        for i in range(10_000)
    ]
    entries.append(LedgerEntry(ws, "led_neg", "big", key, "adjust", -7, -(2**40) - 5, T0))
    try:
        for i in range(0, len(entries), 2_000):
            await store.write_batch(entries[i : i + 2_000])
        spent = sum(e.spent_delta for e in entries)
        reserved = sum(e.reserved_delta for e in entries)
        assert spent > 2**63
        assert (await store.budgets.totals([key]))[key] == (spent, reserved)
    finally:
        # The database is the session's: a gateway started on it later loads every counter from the ledger, and
        # refuses one past the 64-bit range (core.budgets), so these rows must not outlive the test.
        with store.engine.begin() as conn:
            conn.execute(delete(t.budget_ledger).where(t.budget_ledger.c.workspace_id == ws))


def test_a_statement_of_one_column_binds_it_as_a_row_of_one(store: SQLStore) -> None:
    """`itemgetter` of one key returns the bare value: a one-column statement must still bind a one-value row, on
    the executemany path and the single-row one."""
    constants = {"name": literal_column("'one column'"), "created_at": literal_column("CURRENT_TIMESTAMP")}
    insert_one = store._insert(t.workspaces).values(constants)
    stmt = insert_one.on_conflict_do_nothing(index_elements=["id"]).returning(t.workspaces.c.id)
    bulk = BulkStatement(stmt, t.workspaces, ["id"], store.engine.dialect)
    ws = f"ws-{uuid.uuid4().hex[:8]}"
    with store.engine.begin() as conn:
        if store.is_sqlite:
            bulk.run(conn, [{"id": ws}])
            assert bulk.first(conn, {"id": ws}) is None  # there already: nothing returned
        else:
            assert bulk.first(conn, {"id": ws}) == (ws,)
        assert conn.execute(select(t.workspaces.c.id).where(t.workspaces.c.id == ws)).scalar_one() == ws

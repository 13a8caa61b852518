"""The Store contract, run against SQLite and PostgreSQL through the one `SQLStore`.

Each test works in its own fresh workspace, so the tests share one database per backend; that sharing is
itself a check that no query crosses a workspace.
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from agentledger.core.errors import Conflict
from agentledger.core.model import (
    AdminPrincipal,
    Attribution,
    Principal,
    RequestRecord,
    Role,
    RunEnd,
    RunStart,
    RunStatus,
    StepKind,
    StepRecord,
    StepStatus,
    TraceEvent,
)
from agentledger.core.pricing import CostSource, Price
from agentledger.core.usage import Usage
from agentledger.store import schema as t
from agentledger.store.base import CostQuery, RunFilter, WriteResult
from agentledger.store.migrate import alembic_config
from agentledger.store.sql import SQLStore

T0 = datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
BIG = 2**62 + 1  # exact as an integer, not as a float64; far past 32 bits


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def new_workspace(store: SQLStore, department: str = "dep") -> str:
    ws = uid("ws")
    await store.create_workspace(ws, "Test", T0)
    await store.create_department(ws, department, "Department", T0)
    return ws


@pytest.fixture
async def ws(store: SQLStore) -> str:
    return await new_workspace(store)


def attribution(ws: str, **kw: Any) -> Attribution:
    return Attribution(workspace_id=ws, department_id="dep", **kw)


def request_record(ws: str, request_id: str = "req-1", **kw: Any) -> RequestRecord:
    values: dict[str, Any] = dict(
        request_id=request_id,
        attribution=attribution(ws, run_id="run-1", session_id="sess-1", session_path="/plan"),
        endpoint="chat.completions",
        provider="openai",
        model="gpt-4o-mini",
        stream=False,
        status=StepStatus.OK,
        http_status=200,
        started_at=T0,
        ended_at=T0 + timedelta(milliseconds=250),
        latency_ms=250.0,
        request_hash="h" * 64,
        usage=Usage(input_tokens=100, cached_input_tokens=20, output_tokens=50, reasoning_tokens=10),
        cost_nanos=1234,
        cost_source=CostSource.COMPUTED,
        response_body=b'{"ok": true}',
        response_content_type="application/json",
    )
    values.update(kw)
    return RequestRecord(**values)


def step(ws: str, step_id: str = "step-1", run_id: str = "run-1", **kw: Any) -> StepRecord:
    values: dict[str, Any] = dict(
        step_id=step_id,
        run_id=run_id,
        attribution=attribution(ws, run_id=run_id, session_id="sess-1", session_path="/plan/search"),
        kind=StepKind.TOOL_CALL,
        name="search",
        status=StepStatus.OK,
        started_at=T0,
        cost_nanos=10,
        usage=Usage(input_tokens=3, output_tokens=4),
        attributes={"k": "v"},
        input={"q": "x"},
        output=[1, 2, 3],
    )
    values.update(kw)
    return StepRecord(**values)


def run_start(ws: str, run_id: str = "run-1", **kw: Any) -> RunStart:
    values: dict[str, Any] = dict(
        run_id=run_id,
        attribution=attribution(ws, run_id=run_id, session_id="sess-1", session_name="Session one"),
        started_at=T0,
        workflow="wf",
        name="first",
        metadata={"a": 1},
    )
    values.update(kw)
    return RunStart(**values)


async def write(store: SQLStore, *events: TraceEvent) -> None:
    assert await store.write_batch(list(events)) is WriteResult.SUCCESS


def count(store: SQLStore, table: Any, ws: str) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table).where(table.c.workspace_id == ws)).scalar_one())


def assert_utc(value: Any) -> None:
    assert isinstance(value, datetime)
    assert value.tzinfo is not None and value.utcoffset() == timedelta(0), value


# -- migrations -------------------------------------------------------------------------------------------


async def test_migrate_is_idempotent(store: SQLStore, db_url: str) -> None:
    await store.migrate()
    await store.migrate()
    again = SQLStore(db_url)
    try:
        await again.migrate()
    finally:
        await again.aclose()
    head = ScriptDirectory.from_config(alembic_config(store.engine)).get_current_head()
    with store.engine.connect() as conn:
        assert MigrationContext.configure(conn).get_current_revision() == head


async def test_migrations_produce_exactly_the_schema_metadata(store: SQLStore) -> None:
    with store.engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": True})
        diffs = compare_metadata(ctx, t.metadata)
    assert diffs == []


# -- governance -------------------------------------------------------------------------------------------


async def test_workspace_department_and_agent_round_trip(store: SQLStore) -> None:
    ws = uid("ws")
    await store.create_workspace(ws, "Acme", T0)
    assert [(w["id"], w["name"]) for w in await store.list_workspaces(ws)] == [(ws, "Acme")]
    assert_utc((await store.list_workspaces(ws))[0]["created_at"])

    await store.create_department(ws, "eng", "Engineering", T0)
    await store.create_department(ws, "ops", "Operations", T0 + timedelta(seconds=1))
    assert [d["id"] for d in await store.list_departments(ws)] == ["eng", "ops"]

    await store.create_agent(ws, "planner", "eng", "Planner", "ai", T0)
    await store.create_agent(ws, "flow", "ops", "Flow", "workflow", T0 + timedelta(seconds=1))
    agents = await store.list_agents(ws)
    assert [(a["id"], a["department_id"], a["kind"]) for a in agents] == [
        ("planner", "eng", "ai"),
        ("flow", "ops", "workflow"),
    ]
    agent = await store.get_agent(ws, "planner")
    assert agent is not None and agent["name"] == "Planner"
    assert await store.get_agent(ws, "nobody") is None


async def test_duplicates_and_dangling_references_raise_conflict(store: SQLStore, ws: str) -> None:
    with pytest.raises(Conflict):
        await store.create_workspace(ws, "Again", T0)
    with pytest.raises(Conflict):
        await store.create_department(ws, "dep", "Other name", T0)
    with pytest.raises(Conflict):  # department names are unique within a workspace
        await store.create_department(ws, "dep2", "Department", T0)
    with pytest.raises(Conflict):  # no such department
        await store.create_agent(ws, "a", "missing", "A", "ai", T0)
    with pytest.raises(Conflict):  # no such workspace
        await store.create_department(uid("ws"), "dep", "Department", T0)
    await store.create_agent(ws, "a", "dep", "A", "ai", T0)
    with pytest.raises(Conflict):
        await store.create_agent(ws, "a", "dep", "A", "ai", T0)

    key = vk_row(ws, "vk1", "hash-" + uid("h"))
    await store.create_virtual_key(key)
    with pytest.raises(Conflict):  # same id
        await store.create_virtual_key({**key, "key_hash": uid("other")})
    other_ws = await new_workspace(store)
    with pytest.raises(Conflict):  # key hashes are unique across workspaces
        await store.create_virtual_key(vk_row(other_ws, "vk1", key["key_hash"]))

    token = admin_row(ws, "tok1", uid("th"))
    await store.create_admin_token(token)
    with pytest.raises(Conflict):
        await store.create_admin_token({**token, "id": "tok2"})

    pk = provider_row(ws, "pk1", 0)
    await store.create_provider_key(pk)
    with pytest.raises(Conflict):
        await store.create_provider_key(pk)

    price = price_row(ws, "p1", "gpt-x", None)
    await store.add_price_override(price)
    with pytest.raises(Conflict):
        await store.add_price_override(price)


def vk_row(ws: str, key_id: str, key_hash: str, **kw: Any) -> dict[str, Any]:
    row: dict[str, Any] = dict(
        workspace_id=ws,
        id=key_id,
        department_id="dep",
        agent_id=None,
        name="key",
        key_hash=key_hash,
        key_prefix="vk-abcdefg",
        allowed_models=["gpt-*"],
        created_at=T0,
    )
    return {**row, **kw}


def admin_row(ws: str, token_id: str, token_hash: str, role: Role = Role.ADMIN) -> dict[str, Any]:
    return dict(workspace_id=ws, id=token_id, name="t", role=role.value, token_hash=token_hash, created_at=T0)


def provider_row(ws: str, key_id: str, priority: int, **kw: Any) -> dict[str, Any]:
    row: dict[str, Any] = dict(
        workspace_id=ws,
        id=key_id,
        name=key_id,
        provider="openai",
        kind="openai",
        base_url="http://127.0.0.1:9/v1",
        api_key_encrypted=f"enc:{key_id}",
        models=["gpt-*"],
        priority=priority,
        created_at=T0,
    )
    return {**row, **kw}


def price_row(ws: str, price_id: str, model: str, effective_from: datetime | None, **kw: Any) -> dict[str, Any]:
    row: dict[str, Any] = dict(
        workspace_id=ws,
        id=price_id,
        model=model,
        input_mtok="0.15",
        output_mtok="0.6",
        cached_input_mtok=None,
        cache_write_mtok=None,
        effective_from=effective_from,
        created_at=T0,
    )
    return {**row, **kw}


async def test_virtual_key_principal_and_revocation(store: SQLStore, ws: str) -> None:
    await store.create_agent(ws, "planner", "dep", "Planner", "ai", T0)
    key_hash = uid("hash")
    await store.create_virtual_key(vk_row(ws, "vk1", key_hash, agent_id="planner", allowed_models=["gpt-*", "o3"]))
    assert await store.principal_for_key(key_hash) == Principal(
        workspace_id=ws, department_id="dep", virtual_key_id="vk1", agent_id="planner", allowed_models=("gpt-*", "o3")
    )
    listed = await store.list_virtual_keys(ws)
    assert [k["id"] for k in listed] == ["vk1"]
    assert "key_hash" not in listed[0]

    other_ws = await new_workspace(store)
    assert await store.revoke_virtual_key(other_ws, "vk1", T0) is None  # another workspace cannot revoke it
    assert await store.principal_for_key(key_hash) is not None

    assert await store.revoke_virtual_key(ws, "vk1", T0 + timedelta(hours=1)) == key_hash
    assert await store.principal_for_key(key_hash) is None
    assert_utc((await store.list_virtual_keys(ws))[0]["revoked_at"])
    assert await store.revoke_virtual_key(ws, "unknown", T0) is None
    assert await store.principal_for_key("no-such-hash") is None


async def test_provider_routes_are_ordered_by_priority_and_skip_revoked(store: SQLStore, ws: str) -> None:
    await store.create_provider_key(provider_row(ws, "low", -5))
    await store.create_provider_key(provider_row(ws, "mid", 0, models=["*"], api_key_encrypted=None, base_url=None))
    await store.create_provider_key(provider_row(ws, "high", 10, created_at=T0 + timedelta(seconds=1)))
    await store.create_provider_key(provider_row(ws, "high-later", 10, created_at=T0 + timedelta(seconds=2)))

    routes = await store.provider_routes(ws, lambda enc: enc.replace("enc:", "plain:"))
    assert [r.id for r in routes] == ["high", "high-later", "mid", "low"]
    high = routes[0]
    assert (high.workspace_id, high.api_key, high.models, high.priority) == (ws, "plain:high", ("gpt-*",), 10)
    assert routes[2].api_key is None and routes[2].base_url is None

    listed = await store.list_provider_keys(ws)
    assert {k["id"] for k in listed} == {"low", "mid", "high", "high-later"}
    assert all("api_key_encrypted" not in k for k in listed)

    assert await store.revoke_provider_key(ws, "high", T0) is True
    assert await store.revoke_provider_key(ws, "high", T0) is False  # already revoked
    assert await store.revoke_provider_key(await new_workspace(store), "mid", T0) is False
    assert [r.id for r in await store.provider_routes(ws, str)] == ["high-later", "mid", "low"]


async def test_admin_tokens(store: SQLStore, ws: str) -> None:
    token_hash = uid("th")
    await store.create_admin_token(admin_row(ws, "tok1", token_hash, Role.VIEWER))
    assert await store.admin_for_token(token_hash) == AdminPrincipal(workspace_id=ws, token_id="tok1", role=Role.VIEWER)
    assert await store.admin_for_token("missing") is None


async def test_price_overrides_round_trip_as_decimal(store: SQLStore, ws: str) -> None:
    later = T0 + timedelta(days=30)
    await store.add_price_override(price_row(ws, "p1", "gpt-x", None))
    await store.add_price_override(
        price_row(
            ws,
            "p2",
            "gpt-x",
            later,
            input_mtok="0.000000001",
            output_mtok="12345678.123456789",
            cached_input_mtok="0.075",
            cache_write_mtok="0",
        )
    )
    await store.add_price_override(price_row(ws, "p3", "claude-y", None))
    await store.add_price_override(price_row(await new_workspace(store), "p1", "gpt-x", None, input_mtok="99"))

    prices = await store.price_overrides(ws)
    assert set(prices) == {"gpt-x", "claude-y"}
    by_from = {p.effective_from: p for p in prices["gpt-x"]}
    assert by_from[None] == Price(Decimal("0.15"), Decimal("0.6"), None, None, None, origin="workspace_override")
    dated = by_from[later]
    assert dated.input_mtok == Decimal("0.000000001") and dated.input_mtok.as_tuple().exponent == -9
    assert dated.output_mtok == Decimal("12345678.123456789")
    assert dated.cached_input_mtok == Decimal("0.075")
    assert dated.cache_write_mtok == Decimal("0")  # zero is a price, not "no price"
    assert_utc(dated.effective_from)
    assert [r["model"] for r in await store.list_price_overrides(ws)] == ["claude-y", "gpt-x", "gpt-x"]


# -- trace writes -----------------------------------------------------------------------------------------


async def test_write_batch_is_idempotent(store: SQLStore, ws: str) -> None:
    batch: list[TraceEvent] = [run_start(ws), request_record(ws), step(ws), step(ws, "step-2", parent_id="step-1")]
    await write(store, *batch)
    await write(store, *batch)
    await write(store, *batch, *batch)  # and twice within one batch
    assert count(store, t.runs, ws) == 1
    assert count(store, t.requests, ws) == 1
    assert count(store, t.steps, ws) == 2
    assert count(store, t.sessions, ws) == 1
    run = await store.get_run(ws, "run-1")
    assert run is not None and run["steps"] == 2 and run["cost_nanos"] == 20


async def test_a_later_run_start_never_overwrites_the_run(store: SQLStore, ws: str) -> None:
    await write(store, run_start(ws))
    await write(
        store,
        run_start(
            ws,
            started_at=T0 + timedelta(hours=1),
            workflow="other",
            name="second",
            metadata={"b": 2},
            attribution=attribution(ws, agent_id="someone", session_id="sess-2"),
        ),
    )
    run = await store.get_run(ws, "run-1")
    assert run is not None
    assert (run["workflow"], run["name"], run["metadata"], run["agent_id"], run["session_id"]) == (
        "wf",
        "first",
        {"a": 1},
        None,
        "sess-1",
    )
    assert run["started_at"] == T0 and run["status"] == "running"


async def test_failed_request_is_replaced_by_ok_but_ok_is_final(store: SQLStore, ws: str) -> None:
    failed = request_record(
        ws,
        status=StepStatus.ERROR,
        http_status=502,
        error_code="upstream_unavailable",
        error_message="refused",
        response_body=None,
        usage=None,
        cost_nanos=0,
    )
    await write(store, failed)
    assert await store.stored_response(ws, "req-1") is None  # a failure is never replayed
    row = await store.get_request(ws, "req-1")
    assert row is not None and row["status"] == "error" and row["error_code"] == "upstream_unavailable"

    ok = request_record(ws, attempt=2)
    await write(store, ok)
    row = await store.get_request(ws, "req-1")
    assert row is not None
    assert (row["status"], row["http_status"], row["attempts"], row["error_code"], row["cost_nanos"]) == (
        "ok",
        200,
        2,
        None,
        1234,
    )
    assert "response_body" not in row and "request_hash" not in row

    # Neither a later failure nor a different success under the same id changes a completed request.
    await write(store, replace(failed, attempt=3), replace(ok, cost_nanos=999, response_body=b"other"))
    stored = await store.stored_response(ws, "req-1")
    assert stored is not None
    assert (stored.body, stored.http_status, stored.cost_nanos, stored.run_id) == (b'{"ok": true}', 200, 1234, "run-1")
    assert stored.content_type == "application/json" and stored.request_hash == "h" * 64
    row = await store.get_request(ws, "req-1")
    assert row is not None and row["attempts"] == 2 and row["status"] == "ok"
    assert count(store, t.requests, ws) == 1


async def test_run_end(store: SQLStore, ws: str) -> None:
    await write(store, run_start(ws), step(ws, status=StepStatus.ERROR, attempt=2))
    ended = T0 + timedelta(seconds=90)
    await write(store, RunEnd(ws, "run-1", RunStatus.FAILED, ended, error="boom", output={"partial": [1, None]}))
    run = await store.get_run(ws, "run-1")
    assert run is not None
    assert (run["status"], run["error"], run["output"]) == ("failed", "boom", {"partial": [1, None]})
    assert run["ended_at"] == ended
    assert (run["errors"], run["retries"]) == (1, 1)
    # A RunEnd for another workspace's run id leaves this run alone.
    other = await new_workspace(store)
    await write(store, RunEnd(other, "run-1", RunStatus.SUCCEEDED, ended + timedelta(seconds=1)))
    again = await store.get_run(ws, "run-1")
    assert again is not None and again["status"] == "failed"


async def test_steps_and_session_read_back(store: SQLStore, ws: str) -> None:
    await write(
        store,
        run_start(ws),
        request_record(ws),
        step(ws, "model-step", kind=StepKind.MODEL_CALL, request_id="req-1", latency_ms=250.0, cost_nanos=1234),
        step(ws, "tool-step", parent_id="model-step", started_at=T0 + timedelta(seconds=1)),
    )
    steps = await store.run_steps(ws, "run-1")
    assert [s["id"] for s in steps] == ["model-step", "tool-step"]
    tool = steps[1]
    assert (tool["parent_id"], tool["input"], tool["output"], tool["attributes"]) == (
        "model-step",
        {"q": "x"},
        [1, 2, 3],
        {"k": "v"},
    )
    assert await store.step_exists(ws, ["tool-step", "nope"]) == {"tool-step"}
    assert await store.step_exists(ws, []) == set()

    session = await store.get_session(ws, "sess-1")
    assert session is not None
    assert session["name"] == "Session one"
    assert [r["id"] for r in session["runs"]] == ["run-1"]
    # The model step mirrors its request, so only the request and the tool step count.
    assert [(p["path"], p["count"], p["cost_nanos"]) for p in session["paths"]] == [
        ("/plan", 1, 1234),
        ("/plan/search", 1, 10),
    ]
    assert_utc(session["first_seen_at"])
    assert session["last_seen_at"] == T0 + timedelta(seconds=1)


async def test_list_runs_filters(store: SQLStore, ws: str) -> None:
    for i in range(5):
        await write(
            store,
            run_start(
                ws,
                f"run-{i}",
                started_at=T0 + timedelta(minutes=i),
                workflow="even" if i % 2 == 0 else "odd",
                attribution=attribution(ws, agent_id=f"agent-{i % 2}", session_id=None),
            ),
        )
    await write(store, RunEnd(ws, "run-4", RunStatus.SUCCEEDED, T0 + timedelta(minutes=10)))

    def ids(rows: list[dict[str, Any]]) -> list[str]:
        return [r["id"] for r in rows]

    assert ids(await store.list_runs(ws, RunFilter())) == ["run-4", "run-3", "run-2", "run-1", "run-0"]
    assert ids(await store.list_runs(ws, RunFilter(workflow="odd"))) == ["run-3", "run-1"]
    assert ids(await store.list_runs(ws, RunFilter(agent_id="agent-0"))) == ["run-4", "run-2", "run-0"]
    assert ids(await store.list_runs(ws, RunFilter(status="succeeded"))) == ["run-4"]
    window = RunFilter(since=T0 + timedelta(minutes=1), until=T0 + timedelta(minutes=3))
    assert ids(await store.list_runs(ws, window)) == ["run-2", "run-1"]
    # The same instant written in another offset selects the same rows.
    plus2 = timezone(timedelta(hours=2))
    window = RunFilter(
        since=(T0 + timedelta(minutes=1)).astimezone(plus2), until=(T0 + timedelta(minutes=3)).astimezone(plus2)
    )
    assert ids(await store.list_runs(ws, window)) == ["run-2", "run-1"]
    assert ids(await store.list_runs(ws, RunFilter(limit=2, offset=1))) == ["run-3", "run-2"]


# -- atomicity and poison batches -------------------------------------------------------------------------


async def assert_nothing_written(store: SQLStore, ws: str) -> None:
    for table in (t.runs, t.requests, t.steps, t.sessions):
        assert count(store, table, ws) == 0, table.name
    assert await store.get_run(ws, "run-1") is None
    assert await store.get_request(ws, "req-1") is None
    assert await store.get_session(ws, "sess-1") is None


async def test_a_batch_with_a_bad_last_event_writes_nothing(store: SQLStore, ws: str) -> None:
    bad = step(ws, "bad", name=None)  # NOT NULL violation on both backends
    batch: list[TraceEvent] = [run_start(ws), request_record(ws), step(ws), bad]
    # A bad event is not a retryable fault: write_batch raises rather than asking for a retry forever.
    with pytest.raises(SQLAlchemyError):
        await store.write_batch(batch)
    await assert_nothing_written(store, ws)
    # The store is still usable afterwards and the good events go through on their own.
    await write(store, *batch[:-1])
    assert count(store, t.steps, ws) == 1


async def test_a_value_postgres_cannot_hold_rolls_back_the_batch(store: SQLStore, ws: str) -> None:
    if store.is_sqlite:
        pytest.skip("SQLite does not enforce VARCHAR lengths")
    batch: list[TraceEvent] = [run_start(ws), request_record(ws), step(ws), step(ws, "long", name="x" * 257)]
    with pytest.raises(SQLAlchemyError):
        await store.write_batch(batch)
    await assert_nothing_written(store, ws)


async def test_an_unserializable_attribute_rolls_back_the_batch(store: SQLStore, ws: str) -> None:
    batch: list[TraceEvent] = [run_start(ws), step(ws), step(ws, "odd", attributes={"x": object()})]
    with pytest.raises((SQLAlchemyError, TypeError)):  # SQLite's driver wraps it, psycopg's does not
        await store.write_batch(batch)
    await assert_nothing_written(store, ws)


# -- tenant isolation -------------------------------------------------------------------------------------


async def test_no_query_crosses_workspaces(store: SQLStore) -> None:
    """Two workspaces use the very same run, request, step and session ids; each sees only its own rows."""
    a, b = await new_workspace(store), await new_workspace(store)
    for ws, cost, workflow in ((a, 100, "wf-a"), (b, 7, "wf-b")):
        await write(
            store,
            run_start(ws, workflow=workflow, name=f"name-{ws}"),
            request_record(
                ws,
                cost_nanos=cost,
                response_body=ws.encode(),
                attribution=attribution(
                    ws, run_id="run-1", session_id="sess-1", session_path=f"/{ws}", properties={"team": ws}
                ),
            ),
            step(ws, "step-1", cost_nanos=cost),
        )
    c_only = await new_workspace(store)
    await write(store, run_start(c_only, "run-c-only"), request_record(c_only, "req-c-only"))

    for ws, cost, workflow in ((a, 100, "wf-a"), (b, 7, "wf-b")):
        runs = await store.list_runs(ws, RunFilter())
        assert [(r["id"], r["name"], r["cost_nanos"], r["steps"]) for r in runs] == [("run-1", f"name-{ws}", cost, 1)]
        run = await store.get_run(ws, "run-1")
        assert run is not None and run["workflow"] == workflow and run["cost_nanos"] == cost
        steps = await store.run_steps(ws, "run-1")
        assert [(s["workspace_id"], s["cost_nanos"]) for s in steps] == [(ws, cost)]
        req = await store.get_request(ws, "req-1")
        assert req is not None and req["workspace_id"] == ws and req["cost_nanos"] == cost
        stored = await store.stored_response(ws, "req-1")
        assert stored is not None and stored.body == ws.encode()
        session = await store.get_session(ws, "sess-1")
        assert session is not None
        assert [r["id"] for r in session["runs"]] == ["run-1"]
        assert sorted((p["path"], p["cost_nanos"]) for p in session["paths"]) == [
            ("/plan/search", cost),
            (f"/{ws}", cost),
        ]
        for group_by, key in (("workspace", ws), ("workflow", workflow), ("run", "run-1")):
            rows = await store.costs(ws, CostQuery(group_by=group_by))
            assert [(r["key"], r["cost_nanos"], r["requests"]) for r in rows] == [(key, cost * 2, 1)], group_by
        rows = await store.costs(ws, CostQuery(group_by="property.team"))
        assert {r["key"]: (r["cost_nanos"], r["requests"]) for r in rows} == {ws: (cost, 1), None: (cost, 0)}
        assert await store.step_exists(ws, ["step-1"]) == {"step-1"}

    assert await store.get_run(a, "run-c-only") is None
    assert await store.get_request(a, "req-c-only") is None
    assert await store.stored_response(a, "req-c-only") is None
    assert [w["id"] for w in await store.list_workspaces(a)] == [a]
    assert await store.get_session(uid("ws"), "sess-1") is None


# -- types ------------------------------------------------------------------------------------------------


async def test_timestamps_come_back_as_aware_utc(store: SQLStore, ws: str) -> None:
    plus2 = timezone(timedelta(hours=2))
    minus5 = timezone(timedelta(hours=-5))
    started = datetime(2025, 6, 1, 14, 30, 0, 654321, tzinfo=plus2)  # 12:30:00.654321Z
    ended = datetime(2025, 6, 1, 7, 31, 0, 1, tzinfo=minus5)  # 12:31:00.000001Z
    await write(
        store,
        run_start(ws, started_at=started),
        request_record(ws, started_at=started, ended_at=ended),
        step(ws, started_at=started, ended_at=ended),
        RunEnd(ws, "run-1", RunStatus.SUCCEEDED, ended),
    )
    run = await store.get_run(ws, "run-1")
    assert run is not None
    for value in (run["started_at"], run["ended_at"]):
        assert_utc(value)
    assert run["started_at"] == started and run["ended_at"] == ended
    assert run["started_at"].isoformat() == "2025-06-01T12:30:00.654321+00:00"
    req = await store.get_request(ws, "req-1")
    assert req is not None and (req["started_at"], req["ended_at"]) == (started, ended)
    assert_utc(req["started_at"])
    (s,) = await store.run_steps(ws, "run-1")
    assert (s["started_at"], s["ended_at"]) == (started, ended)
    assert_utc(s["ended_at"])
    session = await store.get_session(ws, "sess-1")
    assert session is not None and session["first_seen_at"] == started
    assert_utc(session["first_seen_at"])
    await store.create_agent(ws, "agent", "dep", "Agent", "ai", started)
    agent = await store.get_agent(ws, "agent")
    assert agent is not None and agent["created_at"] == started
    assert_utc(agent["created_at"])


async def test_money_and_token_columns_hold_exact_64_bit_integers(store: SQLStore, ws: str) -> None:
    usage = Usage(input_tokens=BIG, cached_input_tokens=2**40, cache_write_tokens=2**33, output_tokens=2**50)
    await write(
        store,
        run_start(ws),
        request_record(ws, usage=usage, cost_nanos=BIG),
        step(ws, "tool", cost_nanos=2**31 + 7, usage=Usage(input_tokens=2**40, output_tokens=2**33)),
    )
    req = await store.get_request(ws, "req-1")
    assert req is not None
    assert (req["cost_nanos"], req["input_tokens"], req["output_tokens"]) == (BIG, BIG, 2**50)
    assert isinstance(req["cost_nanos"], int)
    stored = await store.stored_response(ws, "req-1")
    assert stored is not None and stored.cost_nanos == BIG
    run = await store.get_run(ws, "run-1")
    assert run is not None
    assert int(run["cost_nanos"]) == run["cost_nanos"] == 2**31 + 7
    assert int(run["input_tokens"]) == run["input_tokens"] == 2**40
    (row,) = await store.costs(ws, CostQuery(group_by="workspace"))
    # The tool step did not come through the gateway, so the request and the step both count.
    assert int(row["cost_nanos"]) == row["cost_nanos"] == BIG + 2**31 + 7
    assert int(row["input_tokens"]) == row["input_tokens"] == BIG + 2**40

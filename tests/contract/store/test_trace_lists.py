"""The sessions and requests lists (GET /api/sessions, GET /api/requests) on both stores: exact rows, newest first
by their keyset (ties by id, descending), pages that follow the cursor without a gap or a repeat, the requests
list's filters, and nothing of another workspace."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from agentledger.core.model import Attribution, RequestRecord, RunStart, StepKind, StepRecord, StepStatus, TraceEvent
from agentledger.core.pricing import CostSource
from agentledger.core.usage import Usage
from agentledger.store.base import RequestFilter, SessionFilter, WriteResult
from agentledger.store.sql import SQLStore

T0 = datetime(2025, 7, 1, 8, 0, tzinfo=UTC)


async def new_workspace(store: SQLStore) -> str:
    ws = f"ws-{uuid.uuid4().hex[:10]}"
    await store.create_workspace(ws, ws, T0)
    return ws


async def write(store: SQLStore, *events: TraceEvent) -> None:
    assert await store.write_batch(list(events)) is WriteResult.SUCCESS


def request(ws: str, rid: str, at: datetime, **kw: Any) -> RequestRecord:
    session = kw.pop("session", None)
    values: dict[str, Any] = dict(
        request_id=rid,
        attribution=Attribution(workspace_id=ws, department_id="d", session_id=session, session_path="/p"),
        endpoint="/v1/chat/completions",
        provider="openai",
        model="gpt-4o-mini",
        stream=False,
        status=StepStatus.OK,
        http_status=200,
        started_at=at,
        ended_at=at + timedelta(milliseconds=120),
        latency_ms=120.0,
        request_hash="h" * 64,
        usage=Usage(input_tokens=10, output_tokens=5),
        cost_nanos=100,
        cost_source=CostSource.COMPUTED,
        response_body=b'{"ok":1}',
        response_content_type="application/json",
    )
    values.update(kw)
    return RequestRecord(**values)


async def all_pages(fetch: Any, size: int, at: str) -> list[str]:
    """Every row id, page by page, each page continued from the last row of the one before."""
    seen: list[str] = []
    cursor = None
    while True:
        rows = await fetch(size, cursor)
        seen += [r["id"] for r in rows]
        if len(rows) < size:
            return seen
        cursor = (rows[-1][at], rows[-1]["id"])


async def test_sessions_are_listed_most_recently_active_first_with_runs_and_paths(store: SQLStore) -> None:
    ws, other = await new_workspace(store), await new_workspace(store)
    named = Attribution(workspace_id=ws, session_id="s-a", session_name="Trip", session_path="/plan")
    await write(
        store,
        RunStart(run_id="r1", attribution=named, started_at=T0),
        RunStart(run_id="r2", attribution=named, started_at=T0 + timedelta(minutes=1)),
        request(ws, "q1", T0, session="s-a"),
        StepRecord("st1", "r1", named, StepKind.TOOL_CALL, "t", StepStatus.OK, T0 + timedelta(minutes=9), cost_nanos=7),
    )
    # s-b and s-c were last seen at the same instant: the id breaks the tie, descending.
    await write(store, request(ws, "q2", T0 + timedelta(minutes=5), session="s-b"))
    await write(store, request(ws, "q3", T0 + timedelta(minutes=2), session="s-c"))
    await write(store, request(ws, "q4", T0 + timedelta(minutes=5), session="s-c"))
    await write(store, request(ws, "q5", T0 + timedelta(minutes=1), session="s-d"))
    await write(store, request(other, "q6", T0 + timedelta(hours=1), session="s-z"))

    rows = await store.list_sessions(ws, SessionFilter())
    shown = [
        (
            r["id"],
            r["name"],
            r["first_seen_at"],
            r["last_seen_at"],
            r["run_count"],
            [(p["path"], p["count"], p["cost_nanos"]) for p in r["paths"]],
        )
        for r in rows
    ]
    m = timedelta(minutes=1)
    assert shown == [
        ("s-a", "Trip", T0, T0 + 9 * m, 2, [("/p", 1, 100), ("/plan", 1, 7)]),
        ("s-c", None, T0 + 2 * m, T0 + 5 * m, 0, [("/p", 2, 200)]),
        ("s-b", None, T0 + 5 * m, T0 + 5 * m, 0, [("/p", 1, 100)]),
        ("s-d", None, T0 + m, T0 + m, 0, [("/p", 1, 100)]),
    ]
    assert all(r["workspace_id"] == ws for r in rows)

    async def fetch(size: int, cursor: Any) -> list[dict[str, Any]]:
        return await store.list_sessions(ws, SessionFilter(limit=size, cursor=cursor))

    for size in (1, 2, 3):
        assert await all_pages(fetch, size, "last_seen_at") == ["s-a", "s-c", "s-b", "s-d"]
    assert await store.list_sessions(ws, SessionFilter(cursor=(T0 + m, "s-d"))) == []
    assert [r["id"] for r in await store.list_sessions(other, SessionFilter())] == ["s-z"]


async def test_requests_are_listed_newest_first_and_filtered(store: SQLStore) -> None:
    ws, other = await new_workspace(store), await new_workspace(store)
    m = timedelta(minutes=1)
    governed = {"decision": "throttled", "decided_by": {"kind": "rate_limit", "id": "rl"}}
    await write(
        store,
        request(ws, "q-a", T0),
        request(ws, "q-b", T0 + m, model="gpt-4o", policy_decision="allowed", governance={"decision": "allowed"}),
        request(ws, "q-c", T0 + m, provider="anthropic", model="claude-haiku-4-5"),
        request(
            ws,
            "q-d",
            T0 + 2 * m,
            status=StepStatus.ERROR,
            http_status=429,
            error_code="rate_limited",
            error_message="slow down",
            policy_decision="throttled",
            governance=governed,
            usage=None,
            cost_nanos=0,
            cost_source=None,
            response_body=None,
        ),
        request(ws, "q-e", T0 + 3 * m, policy_decision="blocked", status=StepStatus.ERROR, http_status=403),
    )
    await write(store, request(other, "q-x", T0 + 2 * m))

    async def ids(**flt: Any) -> list[str]:
        return [r["id"] for r in await store.list_requests(ws, RequestFilter(**flt))]

    assert await ids() == ["q-e", "q-d", "q-c", "q-b", "q-a"]
    assert await ids(model="gpt-4o-mini") == ["q-e", "q-d", "q-a"]
    assert await ids(provider="anthropic") == ["q-c"]
    assert await ids(status="error") == ["q-e", "q-d"]
    assert await ids(status="ok") == ["q-c", "q-b", "q-a"]
    assert await ids(decision="throttled") == ["q-d"]
    assert await ids(decision="allowed") == ["q-b"]
    assert await ids(decision="escalated") == []
    assert await ids(since=T0 + m, until=T0 + 3 * m) == ["q-d", "q-c", "q-b"]  # from inclusive, to exclusive
    assert await ids(model="gpt-4o-mini", status="error", decision="blocked") == ["q-e"]
    assert await ids(model="nope") == []

    (row,) = await store.list_requests(ws, RequestFilter(decision="throttled"))
    assert "response_body" not in row and "request_hash" not in row
    assert {k: row[k] for k in ("id", "workspace_id", "model", "provider", "status", "http_status")} == {
        "id": "q-d",
        "workspace_id": ws,
        "model": "gpt-4o-mini",
        "provider": "openai",
        "status": "error",
        "http_status": 429,
    }
    assert (row["error_code"], row["error_message"], row["policy_decision"], row["governance"]) == (
        "rate_limited",
        "slow down",
        "throttled",
        governed,
    )
    assert (row["started_at"], row["ended_at"], row["cost_nanos"], row["input_tokens"]) == (
        T0 + 2 * m,
        T0 + 2 * m + timedelta(milliseconds=120),
        0,
        0,
    )

    async def fetch(size: int, cursor: Any) -> list[dict[str, Any]]:
        return await store.list_requests(ws, RequestFilter(limit=size, cursor=cursor))

    for size in (1, 2, 4):
        assert await all_pages(fetch, size, "started_at") == ["q-e", "q-d", "q-c", "q-b", "q-a"]

    async def fetch_ok(size: int, cursor: Any) -> list[dict[str, Any]]:
        return await store.list_requests(ws, RequestFilter(status="ok", limit=size, cursor=cursor))

    assert await all_pages(fetch_ok, 1, "started_at") == ["q-c", "q-b", "q-a"]
    assert [r["id"] for r in await store.list_requests(other, RequestFilter())] == ["q-x"]

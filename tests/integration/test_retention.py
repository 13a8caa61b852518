"""Retention against a real gateway (SQLite and PostgreSQL): the settings (`/api/retention`), the job deleting old
rows while calls keep coming, bodies nulled with rows and rollups kept, and `rollups verify` / `rebuild` after
pruning.

Old rows are seeded 60 days back: requests through a store's write_batch (as the gateway writes them, so the books
count them), steps through the step API with their own `started_at`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from cryptography.fernet import Fernet

from agentledger.core.budgets import Decision
from agentledger.core.model import Attribution, Role, RunStart, StepKind, StepRecord, StepStatus, TraceEvent
from agentledger.core.policy import Mode, Verdict
from agentledger.governance import Governance
from agentledger.secrets_box import SecretBox
from agentledger.testing import ServerThread
from tests.harness import HTTP, Harness, running_gateway
from tests.integration.retention_support import count, flush, old_request, rebuild, rows, side_store, verify, write

NOW = datetime.now(UTC)
OLD = (NOW - timedelta(days=60)).replace(minute=10, second=0, microsecond=0)
OLD_DAY = OLD.replace(hour=0, minute=0)
HELLO = [{"role": "user", "content": "hello there world"}]
STEP_NANOS = 1000  # "cost_usd": "0.000001"


@pytest.fixture
def pruning(db_url: str, tmp_path: Path, upstream: ServerThread) -> Iterator[Harness]:
    """A gateway whose retention job sweeps five times a second, 25 rows a batch: many short batches."""
    fake = upstream.config.app.state.fake
    fake.received.clear()
    fake.script.clear()
    with running_gateway(db_url, tmp_path, upstream, retention_interval=0.2, retention_batch=25) as harness:
        yield harness


def iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def steps(gw: Harness, run_id: str, items: list[dict[str, Any]], headers: dict[str, str] | None = None) -> None:
    resp = gw.v1("POST", f"/v1/runs/{run_id}/steps", json=items, headers=headers or {})
    assert resp.status_code == 201, resp.text


def old_steps(n: int, prefix: str, at: datetime) -> list[dict[str, Any]]:
    return [
        {
            "id": f"{prefix}-{i}",
            "name": "lookup",
            "kind": "tool_call",
            "started_at": iso(at + timedelta(seconds=i)),
            "cost_usd": "0.000001",
            "input": {"q": i},
            "output": {"a": i},
        }
        for i in range(n)
    ]


def window(gw: Harness, group_by: str = "workspace") -> dict[Any, tuple[int, int]]:
    """The rollups of the old day: (cost, requests) per key."""
    data = gw.get(
        "/api/analytics/costs", group_by=group_by, **{"from": iso(OLD_DAY), "to": iso(OLD_DAY + timedelta(days=1))}
    )["data"]
    return {r["key"]: (int(r["cost_nanos"]), int(r["requests"])) for r in data}


def put(gw: Harness, **days: int | None) -> httpx.Response:
    return gw.api("PUT", "/api/retention", json=days)


def wait_for_sweep(gw: Harness, after: datetime, timeout: float = 60.0) -> dict[str, Any]:
    """The retention state once a sweep that started after `after` has ended."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = gw.get("/api/retention")["state"]
        if state["swept_at"] is not None and datetime.fromisoformat(state["swept_at"]) > after:
            return dict(state)
        time.sleep(0.05)
    raise AssertionError("the retention job did not sweep in time")


# -- the settings ----------------------------------------------------------------------------------------------------
def test_settings_default_to_forever_and_are_checked(gw: Harness) -> None:
    got = gw.get("/api/retention")
    assert {k: got[k] for k in ("bodies_days", "traces_days", "audit_days", "updated_at")} == dict.fromkeys(
        ("bodies_days", "traces_days", "audit_days", "updated_at")
    )
    assert got["state"] == {"traces_horizon": None, "bodies_horizon": None, "swept_at": None}

    refused = [
        ({"traces_days": 30, "audit_days": 7}, "audit_days", "'audit_days' (7) is shorter than 'traces_days' (30)"),
        ({"audit_days": 365}, "audit_days", "'audit_days' (365) is shorter than 'traces_days' (null: kept forever)"),
        ({"bodies_days": 0}, "bodies_days", "'bodies_days' must be null (keep forever) or whole days from 1 to 36500"),
        ({"traces_days": 36501}, "traces_days", "'traces_days' must be null"),
        ({"traces_days": "30"}, "traces_days", "'traces_days' must be null"),
        ({"traces_days": True}, "traces_days", "'traces_days' must be null"),
        ({"traces_days": 1.5}, "traces_days", "'traces_days' must be null"),
        ({"body_days": 3}, "body_days", "Unknown field 'body_days'"),
    ]
    for body, param, message in refused:
        resp = gw.api("PUT", "/api/retention", json=body)
        assert resp.status_code == 400, (body, resp.text)
        error = resp.json()["error"]
        assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", "invalid_request", param)
        assert error["message"].startswith(message), error["message"]
    assert gw.api("PUT", "/api/retention", content=b"[1]").status_code == 400

    resp = put(gw, bodies_days=7, traces_days=30, audit_days=30)
    assert resp.status_code == 200, resp.text
    assert {k: resp.json()[k] for k in ("bodies_days", "traces_days", "audit_days")} == {
        "bodies_days": 7,
        "traces_days": 30,
        "audit_days": 30,
    }
    assert resp.json()["updated_by"] is not None and gw.get("/api/retention")["traces_days"] == 30
    # PUT replaces the whole setting: what is left out is kept forever again.
    assert put(gw, bodies_days=14).json()["traces_days"] is None
    # A viewer reads, and may not write.
    with side_store(gw) as store:
        token = asyncio.run(
            Governance(store, SecretBox(Fernet.generate_key())).create_admin_token(gw.workspace, "v", Role.VIEWER)
        )
    headers = {"authorization": f"Bearer {token}"}
    assert HTTP.get(gw.url + "/api/retention", headers=headers).status_code == 200
    denied = HTTP.put(gw.url + "/api/retention", json={"traces_days": 1}, headers=headers)
    assert denied.status_code == 403 and gw.get("/api/retention")["bodies_days"] == 14


# -- bodies ----------------------------------------------------------------------------------------------------------
def test_bodies_retention_nulls_bodies_keeps_rows_and_rollups_and_refuses_their_replays(pruning: Harness) -> None:
    gw = pruning
    chat = orjson.dumps({"model": "gpt-4o-mini", "messages": HELLO})
    seeded = [old_request(gw, f"old-{i}", OLD + timedelta(seconds=i), cost=1000) for i in range(40)]
    seeded.append(old_request(gw, "old-replay", OLD, body=chat, response=b'{"kept": true}', cost=2000))
    with side_store(gw) as store:
        write(store, seeded)
    steps(gw, "run-bodies", old_steps(30, "b", OLD))
    ended = gw.v1("POST", "/v1/runs/run-bodies/end", json={"output": {"final": "report"}})
    assert ended.status_code == 200
    # A recent call and step: their bodies stay.
    recent = gw.v1("POST", "/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": HELLO})
    assert recent.status_code == 200
    steps(gw, "run-recent", [{"id": "r-1", "name": "now", "input": {"x": 1}, "output": {"y": 2}}])
    flush(gw)
    books = window(gw), window(gw, "run"), gw.get("/api/runs/run-bodies")["totals"]

    asked = datetime.now(UTC)
    assert put(gw, bodies_days=7).status_code == 200
    state = wait_for_sweep(gw, asked)
    assert state["traces_horizon"] is None and state["bodies_horizon"] is not None

    old = {"at": datetime.now(UTC) - timedelta(days=7)}
    assert count(gw, "requests") == 42 and count(gw, "steps") == 31 and count(gw, "runs") == 2
    assert count(gw, "requests", "response_body IS NOT NULL AND started_at < :at", **old) == 0
    assert count(gw, "requests", "response_body IS NOT NULL") == 1
    assert count(gw, "steps", "(input IS NOT NULL OR output IS NOT NULL) AND started_at < :at", **old) == 0
    assert [s["input"] for s in gw.get("/api/runs/run-recent")["steps"]] == [{"x": 1}]
    run = gw.get("/api/runs/run-bodies")
    assert run["output"] is None and {(s["input"], s["output"]) for s in run["steps"]} == {(None, None)}
    assert (window(gw), window(gw, "run"), run["totals"]) == books
    assert window(gw)[gw.workspace] == (40 * 1000 + 2000 + 30 * STEP_NANOS, 41)

    # The replay's body is gone: refused, nothing forwarded, nothing charged. (Not asked before the sweep: the node
    # would answer it from its memory of recent completions, docs/retention.md.)
    headers = {"authorization": f"Bearer {gw.vk}", "x-request-id": "old-replay", "content-type": "application/json"}
    received = len(gw.fake.received)
    after = HTTP.post(gw.url + "/v1/chat/completions", content=chat, headers=headers)
    assert after.status_code == 410 and after.json()["error"]["code"] == "replay_unavailable"
    assert len(gw.fake.received) == received
    with side_store(gw) as store:
        assert verify(store, gw.workspace) == []


# -- trace rows, under load ------------------------------------------------------------------------------------------
async def _load(gw: Harness, least: int, concurrency: int, on_started: Any) -> list[tuple[int, int, float]]:
    """Chat calls (every third streamed, half in runs and a session), `concurrency` at a time, until at least `least`
    are answered and a sweep that began after `on_started` (run in a thread once a few calls are answered) has ended:
    the whole sweep runs while calls come in."""
    out: list[tuple[int, int, float]] = []  # (call number, status, seconds)
    swept = asyncio.Event()
    asked: list[datetime] = []

    async def watch(client: httpx.AsyncClient) -> None:
        while len(out) < 20:
            await asyncio.sleep(0.01)
        asked.append(datetime.now(UTC))
        await asyncio.to_thread(on_started)
        while not swept.is_set():
            state = (
                await client.get(gw.url + "/api/retention", headers={"authorization": f"Bearer {gw.admin}"})
            ).json()
            done = state["state"]["swept_at"]
            if done is not None and datetime.fromisoformat(done) > asked[0]:
                swept.set()
            await asyncio.sleep(0.02)

    async def worker(client: httpx.AsyncClient, first: int) -> None:
        i = first
        while len(out) < least or not swept.is_set():
            headers = {"authorization": f"Bearer {gw.vk}", "x-request-id": f"load-{i}"}
            if i % 2:
                headers |= {"alephant-run-id": f"run-load-{i % 4}", "alephant-session-id": "sess-new"}
            body = {"model": "gpt-4o-mini", "messages": HELLO, "stream": i % 3 == 0}
            t0 = time.perf_counter()
            resp = await client.post(gw.url + "/v1/chat/completions", json=body, headers=headers)
            out.append((i, resp.status_code, time.perf_counter() - t0))
            i += concurrency

    async with httpx.AsyncClient(timeout=30, trust_env=False) as client:
        await asyncio.wait_for(
            asyncio.gather(watch(client), *(worker(client, n) for n in range(concurrency))), timeout=120
        )
    return out


@pytest.mark.slow
def test_the_job_deletes_old_rows_in_batches_while_calls_go_on_and_the_books_survive(pruning: Harness) -> None:
    gw = pruning
    # Old requests, half in a session that ends then; an old run; a run that began then and goes on; a run begun now
    # that a client back-dated a step of.
    seeded = [
        old_request(gw, f"old-{i}", OLD + timedelta(seconds=i), session_id="sess-old" if i % 2 else None)
        for i in range(300)
    ]
    with side_store(gw) as store:
        write(store, seeded)
    steps(gw, "run-old", old_steps(40, "o", OLD))
    steps(gw, "run-long", old_steps(1, "l-old", OLD))
    steps(gw, "run-long", [{"id": "l-new", "name": "later", "cost_usd": "0.000001"}])
    young = {"alephant-run-id": "run-young", "x-request-id": "young-call"}
    call = gw.v1("POST", "/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": HELLO}, headers=young)
    assert call.status_code == 200
    steps(gw, "run-young", old_steps(1, "y-old", OLD))
    assert gw.api("POST", "/api/runs/run-old/cancel").status_code == 200
    flush(gw)
    with side_store(gw) as store:
        assert verify(store, gw.workspace) == []
    books = window(gw), window(gw, "session"), gw.get("/api/runs/run-long")["totals"]
    assert books[0][gw.workspace] == (300 * 1000 + 42 * STEP_NANOS, 300)
    assert books[1]["sess-old"] == (150 * 1000, 150)

    asked: list[datetime] = []

    def set_retention() -> None:
        asked.append(datetime.now(UTC))
        assert put(gw, bodies_days=7, traces_days=30, audit_days=30).status_code == 200

    answers = asyncio.run(_load(gw, 240, 8, set_retention))
    calls = len(answers)
    assert sorted({status for _, status, _ in answers}) == [200] and calls >= 240
    slowest = max(seconds for _, _, seconds in answers)
    assert slowest < 2.0, slowest
    state = wait_for_sweep(gw, asked[0])
    cutoff = datetime.fromisoformat(state["traces_horizon"])
    assert cutoff == (datetime.now(UTC) - timedelta(days=30)).replace(hour=0, minute=0, second=0, microsecond=0)

    flush(gw)  # the load's last records may still be on their way from the journal to the tables counted here
    # Nothing recent is gone; everything old is, but what belongs to a run (session) that started after the cutoff.
    assert count(gw, "requests") == calls + 1 and count(gw, "requests", "id LIKE 'load-%'") == calls
    assert count(gw, "requests", "response_body IS NULL") == 0
    assert count(gw, "steps", "run_id = 'run-old'") == 0 and count(gw, "runs", "id = 'run-old'") == 0
    assert count(gw, "run_totals", "run_id = 'run-old'") == 0 and count(gw, "run_controls", "run_id = 'run-old'") == 0
    assert [s["id"] for s in gw.get("/api/runs/run-long")["steps"]] == ["l-new"]
    assert count(gw, "steps", "run_id = 'run-young'") == 2
    assert count(gw, "sessions", "id = 'sess-old'") == 0 and count(gw, "session_paths", "session_id = 'sess-old'") == 0
    assert count(gw, "sessions", "id = 'sess-new'") == 1
    assert count(gw, "steps", "run_id LIKE 'run-load-%'") == sum(i % 2 for i, _, _ in answers)

    # The books kept what the rows said: the old day's rollups and a run's totals over its deleted steps.
    assert (window(gw), window(gw, "session"), gw.get("/api/runs/run-long")["totals"]) == books
    with side_store(gw) as store:
        assert verify(store, gw.workspace) == []
        assert rebuild(store, gw.workspace) > 0
        assert verify(store, gw.workspace) == []
    assert (window(gw), window(gw, "session"), gw.get("/api/runs/run-long")["totals"]) == books
    # The recent books still check: a load call's run adds up to its rows.
    rows_cost = rows(gw, "SELECT sum(cost_nanos) FROM steps WHERE workspace_id = :ws AND run_id = 'run-load-1'")
    assert gw.get("/api/runs/run-load-1")["totals"]["cost_nanos"] == rows_cost[0][0] > 0


def test_verify_still_catches_a_wrong_kept_row_after_pruning(pruning: Harness) -> None:
    gw = pruning
    with side_store(gw) as store:
        write(store, [old_request(gw, f"old-{i}", OLD) for i in range(5)])
    assert gw.v1("POST", "/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": HELLO}).status_code == 200
    asked = datetime.now(UTC)
    assert put(gw, traces_days=30).status_code == 200
    wait_for_sweep(gw, asked)
    assert count(gw, "requests") == 1
    # A kept row of today, tampered with, is still found; one of the pruned day is no longer comparable.
    now_hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    with side_store(gw) as store:
        assert verify(store, gw.workspace) == []
        with store.engine.begin() as conn:
            conn.exec_driver_sql(
                f"UPDATE rollup_hourly SET requests = requests + 1 WHERE workspace_id = '{gw.workspace}'"
            )
        found = verify(store, gw.workspace)
        assert {(m.table, m.key[1].replace(tzinfo=UTC)) for m in found} == {("hourly", now_hour)}


def test_policy_hits_are_pruned_with_the_rows_they_were_read_from(pruning: Harness) -> None:
    gw = pruning
    trial = {"name": "trial", "rules": [{"id": "r1", "action": "block", "when": {}}]}
    made = gw.api("POST", "/api/policies", json={**trial, "scope": "workspace", "mode": "monitor"})
    assert made.status_code == 201, made.text
    pid = made.json()["id"]
    would = Verdict(Decision.BLOCKED, pid, 1, "r1", "would block", Mode.MONITOR)
    report = {"decision": "allowed", "decided_by": None, "policy": Verdict(reason="allowed", would=would).as_record()}

    def check(step_id: str, run_id: str, request_id: str, at: datetime) -> StepRecord:
        a = Attribution(workspace_id=gw.workspace, department_id=gw.department, run_id=run_id)
        return StepRecord(
            step_id, run_id, a, StepKind.POLICY_CHECK, "policy check", StepStatus.OK, at, request_id=request_id,
            attributes=report,
        )  # fmt: skip

    young_run = datetime.now(UTC)
    seeded: list[TraceEvent] = [
        replace(old_request(gw, "hit-lone", OLD), governance=report),  # outside a run: its request row
        RunStart("run-hits-old", Attribution(workspace_id=gw.workspace, run_id="run-hits-old"), OLD),
        check("pc-old", "run-hits-old", "hit-old", OLD),
        # An old check in a run that began after the cutoff: kept with its run, and its hit with it.
        RunStart("run-hits-young", Attribution(workspace_id=gw.workspace, run_id="run-hits-young"), young_run),
        check("pc-young", "run-hits-young", "hit-young", OLD),
    ]
    with side_store(gw) as store:
        write(store, seeded)
    headers = {"x-request-id": "hit-now", "content-type": "application/json"}
    now = gw.v1("POST", "/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": HELLO}, headers=headers)
    assert now.status_code == 200, now.text
    listed = {h["request_id"]: h for h in gw.get(f"/api/policies/{pid}/hits")["data"]}
    assert sorted(listed) == ["hit-lone", "hit-now", "hit-old", "hit-young"]
    assert (listed["hit-old"]["step_id"], listed["hit-lone"]["step_id"]) == ("pc-old", None)

    asked = datetime.now(UTC)
    assert put(gw, traces_days=30).status_code == 200
    wait_for_sweep(gw, asked)
    assert [h["request_id"] for h in gw.get(f"/api/policies/{pid}/hits")["data"]] == ["hit-now", "hit-young"]
    assert count(gw, "policy_hits") == 2
    # Each hit left is read off a row that is left, and no row left lost its hit.
    assert count(gw, "steps", "id IN ('pc-old', 'pc-young')") == 1 and count(gw, "requests", "id = 'hit-lone'") == 0

"""The budget counters are what the ledger says, even after `kill -9` under load (docs/budgets.md, "The ledger").

A gateway process with a budget (in-process counters, SQLite) serves sixteen clients and is killed with SIGKILL
mid-load. A new process on the same database closes every reservation the dead one left open (charged at its
estimate, then corrected to the call's recorded cost) and rebuilds its counters from the ledger. Then: nothing
is reserved any more, the counters equal the ledger's sums, every acknowledged call's cost is in the spent
figure, and the spent figure is the recorded cost of the calls plus the estimates of calls never recorded.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from agentledger.config import Settings
from agentledger.testing.server import free_port
from tests.e2e.test_crash import _start, kill_under_load
from tests.harness import HTTP, provision

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_counters_rebuilt_after_kill_9_equal_the_ledger(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    db_url = f"sqlite:///{tmp_path / 'crash.db'}"
    settings = Settings(data_dir=str(data_dir), db_url=db_url)
    ids = provision(settings, "http://127.0.0.1:9")
    engine = create_engine(settings.database_url)
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE provider_keys SET kind = 'mock', priority = 100 WHERE workspace_id = :ws"),
            {"ws": ids["workspace"]},
        )
    log = tmp_path / "gateway.log"
    port = free_port()
    proc = _start(data_dir, db_url, port, "strict", log)
    url = f"http://127.0.0.1:{port}"
    auth = {"authorization": f"Bearer {ids['admin']}"}
    budget = {"id": "big", "scope": "workspace", "limit_usd": "1000", "period": "total", "action": "block_requests"}
    assert HTTP.post(url + "/api/budgets", headers=auth, json=budget).status_code == 201
    acked, _ = kill_under_load(proc, url, ids["vk"])

    port = free_port()
    proc = _start(data_dir, db_url, port, "strict", log)
    url = f"http://127.0.0.1:{port}"
    try:
        status = HTTP.get(url + "/api/budgets/big", headers=auth).json()["status"]
    finally:
        proc.terminate()
        proc.wait(30)
    with engine.connect() as conn:
        spent, reserved = conn.execute(
            text("SELECT sum(spent_delta), sum(reserved_delta) FROM budget_ledger WHERE workspace_id = :ws"),
            {"ws": ids["workspace"]},
        ).one()
        recorded = dict(
            conn.execute(
                text("SELECT id, cost_nanos FROM requests WHERE workspace_id = :ws AND status = 'ok'"),
                {"ws": ids["workspace"]},
            ).all()
        )
        closed = conn.execute(
            text("SELECT count(*) FROM budget_ledger WHERE workspace_id = :ws AND kind = 'expire'"),
            {"ws": ids["workspace"]},
        ).scalar()
    engine.dispose()
    assert int(reserved) == 0 and status["reserved_usd"] == "0.000000000"
    assert int(Decimal(status["spent_usd"]) * 10**9) == int(spent)
    assert all(rid in recorded for rid in acked)  # strict mode: every acknowledged call is on the books
    # Every recorded call's cost is spent; only calls the dead process never recorded add their estimates.
    assert int(spent) >= sum(recorded.values())
    print(f"{len(acked)} acknowledged, {closed} reservations closed at restart")

"""`agentledger rollups verify|rebuild` as a user runs them: a real subprocess against SQLite and PostgreSQL.

Kept totals that agree with the raw rows verify (exit 0); a kept row edited in the database behind the
gateway's back is named and fails the check (exit 1); `rebuild` restores it.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import create_engine, update

from agentledger.core.model import Attribution, RunStart, StepKind, StepRecord, StepStatus
from agentledger.store import schema as t
from agentledger.store.base import WriteResult
from agentledger.store.sql import SQLStore

pytestmark = pytest.mark.e2e
T0 = datetime(2026, 5, 1, 9, 30, tzinfo=UTC)


def cli(db_url: str, tmp_path: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTLEDGER_")}
    return subprocess.run(
        [sys.executable, "-m", "agentledger", "--data-dir", str(tmp_path), "--db", db_url, *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


async def seed(db_url: str, ws: str) -> None:
    store = SQLStore(db_url)
    await store.migrate()
    try:
        a = Attribution(workspace_id=ws, run_id="run-1", agent_id="closer", session_id="s-1")
        steps = [
            StepRecord(f"st-{i}", "run-1", a, StepKind.TOOL_CALL, "t", StepStatus.OK, T0, cost_nanos=1_000)
            for i in range(3)
        ]
        batch = [RunStart(run_id="run-1", attribution=a, started_at=T0), *steps]
        assert await store.write_batch(batch) is WriteResult.SUCCESS
    finally:
        await store.aclose()


def test_verify_names_a_tampered_row_and_rebuild_restores_it(db_url: str, tmp_path: Path) -> None:
    ws = f"ws-{uuid.uuid4().hex[:8]}"
    asyncio.run(seed(db_url, ws))

    ok = cli(db_url, tmp_path, "rollups", "verify", "--workspace", ws)
    assert (ok.returncode, ok.stdout) == (0, "rollups verified: every kept total equals its recomputation\n"), ok

    engine = create_engine(db_url)
    with engine.begin() as conn:
        c = t.run_totals.c
        conn.execute(update(t.run_totals).where(c.workspace_id == ws, c.run_id == "run-1").values(steps=99))
    engine.dispose()

    bad = cli(db_url, tmp_path, "rollups", "verify", "--workspace", ws, "--json")
    assert bad.returncode == 1, bad
    assert json.loads(bad.stdout) == {
        "ok": False,
        "mismatches": [f"runs ({ws!r}, 'run-1'): steps kept 99, recomputed 3"],
    }

    rebuilt = cli(db_url, tmp_path, "rollups", "rebuild", "--workspace", ws)
    assert rebuilt.returncode == 0 and rebuilt.stdout.startswith("rollups rebuilt: "), rebuilt
    again = cli(db_url, tmp_path, "rollups", "verify", "--workspace", ws)
    assert again.returncode == 0, again

"""What the audit log costs (docs/audit.md, docs/benchmark.md "The audit log"):

* an admin write (`POST /api/departments`, sequential, a real server on loopback), with its audit event and without
  (the trail's commit swapped for a no-op), interleaved request by request so the machine's load falls on both;
* the trace writer's CPU for a batch of 500 policy_check steps with none, one or all 500 refused (each refused one
  an audit event chained in the batch's transaction), SQLite in the process.

    python benchmarks/audit.py [sqlite|postgres]
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from agentledger.app import create_app
from agentledger.config import Settings
from agentledger.core.model import Attribution, RunStart, StepKind, StepRecord, StepStatus, TraceEvent
from agentledger.governance import Governance
from agentledger.secrets_box import SecretBox
from agentledger.store.sql import SQLStore
from agentledger.testing import ServerThread

sys.path.insert(0, str(Path(__file__).parent))
from _procs import create_pg_database, drop_pg_database  # noqa: E402


async def _workspace(url: str, data: Path) -> str:
    store = SQLStore(url)
    await store.migrate()
    try:
        gov = Governance(store, SecretBox.from_setting(None, data / "secret.key"))
        _, token = await gov.create_workspace("bench", workspace_id=f"ws-{uuid.uuid4().hex[:8]}")
        return token
    finally:
        await store.aclose()


def admin_writes(url: str, data: Path, n: int = 300) -> None:
    cfg = Settings(data_dir=str(data), db_url=url, bootstrap=False)
    token = asyncio.run(_workspace(url, data))
    app = create_app(cfg)
    trail = app.state.components.audit
    real = trail.commit

    async def nothing(events: Sequence[TraceEvent]) -> None:
        return None

    times: dict[str, list[float]] = {"with its audit event": [], "without": []}
    with ServerThread(app) as server, httpx.Client(timeout=30, trust_env=False) as http:
        headers = {"authorization": f"Bearer {token}"}
        for i in range(2 * n + 40):
            label = "with its audit event" if i % 2 == 0 else "without"
            trail.commit = real if i % 2 == 0 else nothing
            t = time.perf_counter()
            resp = http.post(server.url + "/api/departments", json={"name": uuid.uuid4().hex}, headers=headers)
            if i >= 40:  # warmed up
                times[label].append((time.perf_counter() - t) * 1000)
            assert resp.status_code == 201, resp.text
    for label, ms in times.items():
        print(f"  admin write, {label:20s} p50 {statistics.median(ms):5.2f} ms  mean {statistics.mean(ms):5.2f} ms")


def _batch(ws: str, refused: int, size: int = 500) -> list[TraceEvent]:
    run = uuid.uuid4().hex
    a = Attribution(workspace_id=ws, department_id="dep", run_id=run)
    now = datetime.now(UTC)
    out: list[TraceEvent] = [RunStart(run_id=run, attribution=a, started_at=now)]
    for i in range(size):
        decision = "blocked" if i < refused else "allowed"
        report: dict[str, Any] = {
            "decision": decision,
            "decided_by": {"kind": "policy", "id": "pol", "version": 1, "rule": "r1"},
            "policy": {"decision": decision, "policy_id": "pol", "changes": {}},
        }
        out.append(
            StepRecord(
                step_id=uuid.uuid4().hex,
                run_id=run,
                attribution=a,
                kind=StepKind.POLICY_CHECK,
                name="policy check",
                status=StepStatus.ERROR,
                started_at=now,
                ended_at=now,
                request_id=uuid.uuid4().hex,
                attributes=report,
            )
        )
    return out


async def batches(url: str, rounds: int = 30) -> None:
    store = SQLStore(url)
    await store.migrate()
    ws = f"ws-{uuid.uuid4().hex[:8]}"
    await store.create_workspace(ws, "bench", datetime.now(UTC))
    await store.create_department(ws, "dep", "dep", datetime.now(UTC))
    cpu: dict[int, list[float]] = {0: [], 1: [], 500: []}
    wall: dict[int, list[float]] = {0: [], 1: [], 500: []}
    try:
        for _ in range(rounds):
            for refused in cpu:  # interleaved, as above
                batch = _batch(ws, refused)
                c, w = time.process_time(), time.perf_counter()
                store._write_trace(batch)  # the writer thread's work, on this thread
                cpu[refused].append((time.process_time() - c) * 1000)
                wall[refused].append((time.perf_counter() - w) * 1000)
    finally:
        await store.aclose()
    for refused in cpu:
        c, w = statistics.median(cpu[refused]), statistics.median(wall[refused])
        print(f"  batch of 500 policy_check steps, {refused:3d} refused: CPU p50 {c:5.2f} ms, wall p50 {w:5.2f} ms")


def main() -> None:
    which = sys.argv[1] if len(sys.argv) > 1 else "sqlite"
    with tempfile.TemporaryDirectory() as tmp:
        if which == "sqlite":
            url = f"sqlite:///{tmp}/bench.db"
            print("sqlite (synchronous=FULL)")
            admin_writes(url, Path(tmp))
            asyncio.run(batches(url))
            return
        name, url = create_pg_database()
        try:
            print("postgres (loopback; CPU is the client's)")
            admin_writes(url, Path(tmp))
            asyncio.run(batches(url))
        finally:
            drop_pg_database(name)


if __name__ == "__main__":
    main()

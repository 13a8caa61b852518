"""CPU per event of the trace writer with the books (store.sql.SQLStore.write_batch → core.books → store.books).

    python benchmarks/books_write.py [--db sqlite|postgres] [--rounds 5] [--calls 2000] [--steps 20000]

Two shapes, written straight to a store in this process (no HTTP), each timed as the CPU of this process
(SQLite runs in it; with --db postgres the server's CPU is not counted) and as wall time:

  * gateway calls: batches of 20 calls, each a RunStart (a new run every 5 calls, with a workflow), a request
    row and its model_call step, the shape the gateway's trace pipeline writes;
  * step batches: 1000 steps of one run, mixed kinds (tool and API calls with reported costs, model calls,
    a few payment steps with their Payment), as the step API writes them.

Plus the pure fold (core.books.Books over the same rows, no SQL). Best of --rounds, each round on fresh ids:
compare runs made back to back (before and after a change); a busy machine inflates every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from agentledger.core.model import (
    Attribution,
    Payment,
    PaymentDirection,
    PaymentStatus,
    RequestRecord,
    RunStart,
    StepKind,
    StepRecord,
    StepStatus,
    TraceEvent,
)
from agentledger.core.pricing import CostSource
from agentledger.core.usage import Usage
from agentledger.store.sql import SQLStore

PG_ADMIN_URL = os.environ.get("AGENTLEDGER_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
T0 = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)


def call_batches(ws: str, tag: str, calls: int, per_batch: int = 20) -> list[list[TraceEvent]]:
    batches: list[list[TraceEvent]] = []
    batch: list[TraceEvent] = []
    for i in range(calls):
        run = f"{tag}-r{i // 5}"
        a = Attribution(
            workspace_id=ws,
            department_id="d0",
            virtual_key_id="vk",
            agent_id=f"a{i % 3}",
            run_id=run,
            session_id=f"{tag}-s{i // 50}",
            session_path="/plan/search",
            properties={"team": "x"},
        )
        at = T0 + timedelta(seconds=i)
        usage = Usage(input_tokens=1200, output_tokens=300)
        status = StepStatus.OK if i % 17 else StepStatus.ERROR
        cost_source = CostSource.COMPUTED if i % 31 else CostSource.ESTIMATED
        batch.append(RunStart(run_id=run, attribution=a, started_at=at, workflow="wf"))
        batch.append(
            RequestRecord(
                request_id=f"{tag}-q{i}",
                attribution=a,
                endpoint="/v1/chat/completions",
                provider="openai",
                model="gpt-4o-mini",
                stream=False,
                status=status,
                http_status=200 if status is StepStatus.OK else 502,
                started_at=at,
                ended_at=at,
                latency_ms=120.0,
                request_hash="h",
                usage=usage,
                cost_nanos=360_000,
                cost_source=cost_source,
            )
        )
        batch.append(
            StepRecord(
                f"{tag}-c{i}",
                run,
                a,
                StepKind.MODEL_CALL,
                "chat",
                status,
                at,
                request_id=f"{tag}-q{i}",
                model="gpt-4o-mini",
                provider="openai",
                usage=usage,
                cost_nanos=360_000,
                cost_source=cost_source,
                latency_ms=120.0,
            )
        )
        if len(batch) >= 3 * per_batch:
            batches.append(batch)
            batch = []
    if batch:
        batches.append(batch)
    return batches


def step_batches(ws: str, tag: str, steps: int, per_batch: int = 1000) -> list[list[TraceEvent]]:
    batches: list[list[TraceEvent]] = []
    for b in range(0, steps, per_batch):
        run = f"{tag}-run{b}"
        a = Attribution(ws, department_id="d0", agent_id="a0", run_id=run, properties={"team": "y"})
        batch: list[TraceEvent] = [RunStart(run_id=run, attribution=a, started_at=T0, workflow="wf")]
        for i in range(min(per_batch, steps - b)):
            at = T0 + timedelta(seconds=i)
            kind = (StepKind.TOOL_CALL, StepKind.API_CALL, StepKind.MODEL_CALL, StepKind.WORKFLOW_STEP)[i % 4]
            payment = None
            cost = 25_000 if kind is not StepKind.WORKFLOW_STEP else 0
            if i % 100 == 99:
                kind = StepKind.PAYMENT
                payment = Payment(PaymentDirection.INBOUND, PaymentStatus.SETTLED, 10_000_000, fee_nanos=300_000)
                cost = 300_000
            batch.append(
                StepRecord(
                    f"{tag}-st{b + i}",
                    run,
                    a,
                    kind,
                    "s",
                    StepStatus.OK if i % 23 else StepStatus.ERROR,
                    at,
                    usage=Usage(input_tokens=500, output_tokens=80) if kind is StepKind.MODEL_CALL else None,
                    cost_nanos=cost,
                    cost_source=CostSource.REPORTED if cost else None,
                    latency_ms=12.0,
                    input={"q": "hotels"},
                    attributes={"v": 1},
                    payment=payment,
                )
            )
        batches.append(batch)
    return batches


def pure_fold(batches: list[list[TraceEvent]]) -> float:
    """CPU seconds of folding the rows the store would fold (core.books.Books) for these batches."""
    from agentledger.core.books import Books
    from agentledger.store.sql import _request_values, _step_values

    rows: list[tuple[str, dict[str, Any]]] = []
    for batch in batches:
        for ev in batch:
            if isinstance(ev, RequestRecord):
                rows.append(("request", _request_values(ev)))
            elif isinstance(ev, StepRecord):
                rows.append(("step", _step_values(ev)))
    indexed = frozenset({"team"})
    started = time.process_time()
    books = Books()
    for what, row in rows:
        if what == "request":
            books.request(row, "wf", indexed)
        else:
            books.step(row, "wf", indexed)
    books.tables()
    return time.process_time() - started


async def write_all(store: SQLStore, batches: list[list[TraceEvent]]) -> tuple[float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    for batch in batches:
        await store.write_batch(batch)
    return time.process_time() - cpu, time.perf_counter() - wall


async def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--calls", type=int, default=2000)
    p.add_argument("--steps", type=int, default=20000)
    args = p.parse_args(argv)
    tmp = tempfile.TemporaryDirectory()
    url = f"sqlite:///{tmp.name}/bench.db"
    pg_name = None
    if args.db == "postgres":
        from sqlalchemy import create_engine, text

        pg_name = f"books_bench_{uuid.uuid4().hex[:8]}"
        admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f"CREATE DATABASE {pg_name}"))
        admin.dispose()
        url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{pg_name}"
    store = SQLStore(url)
    await store.migrate()
    ws = "bench"
    await store.create_workspace(ws, ws, T0)
    await store.declare_property(ws, "team", T0)
    results: dict[str, list[tuple[float, float]]] = {"calls": [], "steps": [], "fold_calls": [], "fold_steps": []}
    try:
        for r in range(args.rounds):
            calls = call_batches(ws, f"c{r}", args.calls)
            steps = step_batches(ws, f"s{r}", args.steps)
            results["fold_calls"].append((pure_fold(calls), 0.0))
            results["fold_steps"].append((pure_fold(steps), 0.0))
            results["calls"].append(await write_all(store, calls))
            results["steps"].append(await write_all(store, steps))
        bad = await store.verify_books(ws)
        if bad:
            print(f"books do not verify: {bad[:3]}", file=sys.stderr)
            return 1
    finally:
        await store.aclose()
        if pg_name is not None:
            from sqlalchemy import create_engine, text

            admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.execute(text(f"DROP DATABASE {pg_name} WITH (FORCE)"))
            admin.dispose()
        tmp.cleanup()
    per = {"calls": args.calls, "steps": args.steps, "fold_calls": args.calls, "fold_steps": args.steps}
    print(f"{args.db}, best of {args.rounds} rounds (µs per call or step)")
    for name, runs in results.items():
        cpu = min(c for c, _ in runs) / per[name] * 1e6
        wall = min(w for _, w in runs) / per[name] * 1e6
        print(f"  {name:<11} cpu {cpu:8.2f}" + (f"   wall {wall:8.2f}" if wall else ""))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

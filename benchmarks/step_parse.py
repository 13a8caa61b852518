"""CPU per step of the step API (issue 6: at most 30 µs of gateway CPU per step, at least 20,000 steps/s).

    python benchmarks/step_parse.py            parse only: ingest.step_parse.BatchParser over 1000-step batches,
                                               in this process (best and median of --repeats rounds)
    python benchmarks/step_parse.py --http     through a gateway started as users start it (`python -m
                                               agentledger serve`, SQLite, strict durability): sequential
                                               POST /v1/runs (new ids, then the same ids again) in runs/s and
                                               gateway CPU per call, then sequential 1000-step batches to new
                                               runs in steps/s and gateway CPU per step (read from /proc)
    options: --batches N  --runs N  --repeats N  --db sqlite|postgres  --durability strict|batched  --profile

The batch is a plausible agent trace: a workflow step with 999 children, each with timestamps, a small input,
output and attributes; every fourth is a model call priced from the catalog; a third carry a session path.
Everything stays on 127.0.0.1. Parse-only CPU is this process's; --http reads the gateway's from /proc, split into
its event loop (HTTP, parsing, validation) and the store's threads. A busy machine inflates both: compare runs
made back to back, e.g. before and after a change.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson

BATCH = 1000
PG_ADMIN_URL = os.environ.get("AGENTLEDGER_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


def make_batch(run: str, n: int = BATCH) -> list[dict[str, Any]]:
    steps: list[dict[str, Any]] = []
    for i in range(n):
        step: dict[str, Any] = {
            "id": f"{run}-s{i}",
            "kind": "tool_call",
            "name": "web_search",
            "started_at": f"2025-05-01T12:{i // 60 % 60:02d}:{i % 60:02d}Z",
            "ended_at": f"2025-05-01T12:{i // 60 % 60:02d}:{i % 60:02d}.250Z",
            "input": {"query": "hotels in Lisbon", "limit": 10},
            "output": {"hits": 3, "first": "Hotel Avenida"},
            "attributes": {"tool_version": "1.2"},
        }
        if i == 0:
            step.update(kind="workflow_step", name="plan")
        else:
            step["parent_id"] = f"{run}-s0"
        if i % 4 == 1:
            step.update(kind="model_call", name="summarize", model="gpt-4o-mini", provider="openai")
            step["usage"] = {"input_tokens": 1000 + i, "cached_input_tokens": 200, "output_tokens": 150}
        if i % 3 == 2:
            step["session_path"] = "/plan/search"
        steps.append(step)
    return steps


def parse_only(args: argparse.Namespace) -> None:
    from agentledger.core.model import Attribution
    from agentledger.ingest.step_parse import BatchParser, refuse_parent_cycles

    attribution = Attribution(workspace_id="ws", department_id="dep", virtual_key_id="vk", run_id="run-1")
    body = orjson.dumps({"steps": make_batch("run-1")})

    def one_batch() -> None:
        items = orjson.loads(body)["steps"]
        refuse_parent_cycles(BatchParser("run-1", attribution, {}, datetime.now(UTC)).parse(items))

    for _ in range(3):
        one_batch()
    rounds = []
    for _ in range(args.repeats):
        t0 = time.process_time()
        for _ in range(args.batches):
            one_batch()
        rounds.append((time.process_time() - t0) / (args.batches * BATCH) * 1e6)
    print(
        f"parse (orjson.loads + BatchParser + cycle check): best {min(rounds):.1f} µs/step, "
        f"median {statistics.median(rounds):.1f} µs/step over {args.repeats} rounds of {args.batches} batches"
    )
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(args.batches):
            one_batch()
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)


def through_http(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp, pg_database(args.db == "postgres") as db_url:
        with gateway(Path(tmp), db_url, args.durability) as (url, pid, vk):
            headers = {"authorization": f"Bearer {vk}", "content-type": "application/json"}
            with httpx.Client(timeout=60, trust_env=False, headers=headers) as client:
                runs(client, url, pid, args)
                steps(client, url, pid, args)


@contextmanager
def gateway(work: Path, db_url: str | None, durability: str) -> Iterator[tuple[str, int, str]]:
    """`python -m agentledger ... serve` as users start it; yields its URL, pid and the bootstrap virtual key."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "agentledger", "--data-dir", str(work / "data"), "--set", "log_level=warning"]
    cmd += ["--set", f"durability={durability}", *(["--db", db_url] if db_url else []), "serve", "--port", str(port)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTLEDGER_")}
    log = work / "gateway.log"
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the gateway did not start:\n{log.read_text()[-4000:]}")
            try:
                httpx.get(url + "/healthz", timeout=1, trust_env=False)
                break
            except httpx.HTTPError:
                time.sleep(0.05)
        vk = re.search(r"virtual key\s+(\S+)", log.read_text())
        if vk is None:
            raise RuntimeError(f"no virtual key in the gateway's output:\n{log.read_text()[-4000:]}")
        yield url, proc.pid, vk.group(1)
    finally:
        proc.send_signal(signal.SIGINT)  # graceful: the pipeline drains
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextmanager
def pg_database(wanted: bool) -> Iterator[str | None]:
    if not wanted:
        yield None
        return
    import psycopg

    name = f"agentledger_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1) + f"/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def cpu_seconds(pid: int, tid: int | None = None) -> float:
    """User + system CPU of a process, all its threads, or of one thread (Linux /proc)."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    with open(path) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def runs(client: httpx.Client, url: str, pid: int, args: argparse.Namespace) -> None:
    for i in range(50):
        client.post(url + "/v1/runs", json={"run_id": f"warm-{i}"})
    bodies = [orjson.dumps({"run_id": f"r-{uuid.uuid4().hex[:12]}"}) for _ in range(args.runs)]
    for label, created in (("new ids", True), ("same ids again", False)):
        cpu0, t0 = cpu_seconds(pid), time.perf_counter()
        for body in bodies:
            resp = client.post(url + "/v1/runs", content=body)
            if resp.status_code not in (200, 201) or resp.json()["created"] is not created:
                raise RuntimeError(f"POST /v1/runs: {resp.status_code} {resp.text}")
        wall, cpu = time.perf_counter() - t0, cpu_seconds(pid) - cpu0
        print(f"POST /v1/runs, {label}: {args.runs / wall:.0f} runs/s, gateway CPU {cpu / args.runs * 1e6:.0f} µs/call")


def steps(client: httpx.Client, url: str, pid: int, args: argparse.Namespace) -> None:
    """The gateway's CPU is split into its main thread (the event loop: HTTP, parsing, validation) and the rest
    (the store's writer and reader threads), the main thread's id being the process id."""
    bodies = [orjson.dumps({"steps": make_batch(f"b{b}")}) for b in range(args.batches + 3)]
    for b in range(3):  # warm-up: the price catalog, statement caches
        client.post(url + f"/v1/runs/warm-{b}/steps", content=bodies[args.batches + b])
    cpu0, loop0, t0 = cpu_seconds(pid), cpu_seconds(pid, pid), time.perf_counter()
    for b in range(args.batches):
        resp = client.post(url + f"/v1/runs/batch-{b}/steps", content=bodies[b])
        if resp.status_code != 201:
            raise RuntimeError(f"POST steps: {resp.status_code} {resp.text[:500]}")
    wall, cpu, loop = time.perf_counter() - t0, cpu_seconds(pid) - cpu0, cpu_seconds(pid, pid) - loop0
    n = args.batches * BATCH
    print(
        f"steps, batches of {BATCH}, one at a time: {n / wall:.0f} steps/s, gateway CPU {cpu / n * 1e6:.1f} µs/step "
        f"(event loop {loop / n * 1e6:.1f}, store threads {(cpu - loop) / n * 1e6:.1f})"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--http", action="store_true", help="through a gateway process instead of parse only")
    p.add_argument("--batches", type=int, default=20, help="1000-step batches per round (20)")
    p.add_argument("--runs", type=int, default=500, help="POST /v1/runs calls per phase with --http (500)")
    p.add_argument("--repeats", type=int, default=7, help="parse-only rounds (7)")
    p.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    p.add_argument("--durability", choices=["strict", "batched"], default="strict")
    p.add_argument("--profile", action="store_true", help="parse only: cProfile one more round")
    args = p.parse_args(argv)
    if args.http:
        through_http(args)
    else:
        parse_only(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The gateway's added latency, measured against calling the upstream directly, in one run.

    python benchmarks/overhead.py [--requests N] [--concurrency 1,16] [--stream | --no-stream]
                                  [--db sqlite|postgres] [--client aiohttp|httpx] [--tracking]
                                  [--json PATH] [--py-spy PROFILE.json]
    (or scripts/bench with the same arguments; --help lists the rest)

Three processes on 127.0.0.1, nothing else is contacted:
  * the fake OpenAI upstream (`agentledger.testing.fake_upstream_app`) under uvicorn (uvloop + httptools);
  * the gateway, started the way users start it (`python -m agentledger ... serve`, uvloop + httptools,
    tracing on: every call goes through the batching pipeline into SQLite, or PostgreSQL with --db postgres),
    with a provider key pointing at the fake upstream added through the admin API;
  * this process, the load generator: one shared HTTP client posting the same small chat completion body.
For each (mode, concurrency) cell both targets are warmed up, then measured in alternating rounds
(direct, gateway, gateway, direct, ...) so drift on the machine hits both alike. The same client measures
both targets, so its own cost is in both figures and cancels out of the difference. At the end the
gateway's own analytics must count every request sent through it (and, with --tracking, every run its
model calls), or the run fails. CPU used by other processes during the measurement is reported, since a
busy machine skews everything. The figures and how to read them: docs/benchmark.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from _procs import (
    bootstrap_keys,
    clean_env,
    cpu_seconds,
    create_pg_database,
    drop_pg_database,
    free_port,
    machine,
    machine_busy_seconds,
    pct,
    start_gateway,
    stop,
    wait_http,
)

MODEL = "gpt-4o-mini"
PROMPT = "Say hello to the benchmark in one short sentence."

UPSTREAM_CODE = """
import collections, sys, uvicorn
from agentledger.testing import FakeUpstream, fake_upstream_app
# A bounded log of received requests: the fake keeps every one, which would grow for the whole run.
state = FakeUpstream(received=collections.deque(maxlen=100))
uvicorn.run(fake_upstream_app(state), host="127.0.0.1", port=int(sys.argv[1]), loop="uvloop", http="httptools",
            log_level="warning", access_log=False)
"""


# -- processes --------------------------------------------------------------------------------------------
OUR_PIDS: list[int] = []  # the upstream, the gateway, a profiler: CPU that is part of the measurement


def foreign_busy() -> float | None:
    """Busy CPU seconds of everything on the machine except this benchmark's processes."""
    busy = machine_busy_seconds()
    ours = [cpu_seconds(pid) for pid in OUR_PIDS]
    if busy is None or any(c is None for c in ours):
        return None
    own = os.times()
    return busy - sum(c for c in ours if c is not None) - own.user - own.system


@dataclass
class Stack:
    upstream_url: str
    gateway_url: str
    vk: str
    admin: str
    upstream: subprocess.Popen[bytes]
    gateway: subprocess.Popen[bytes]


def start_stack(workdir: Path, db_url: str | None, durability: str = "strict") -> Stack:
    env = clean_env()
    up_port, gw_port = free_port(), free_port()
    up_log, gw_log = workdir / "upstream.log", workdir / "gateway.log"
    upstream = subprocess.Popen(
        [sys.executable, "-c", UPSTREAM_CODE, str(up_port)],
        stdout=up_log.open("wb"),
        stderr=subprocess.STDOUT,
        env=env,
    )
    gateway = start_gateway(workdir / "data", gw_log, gw_port, db_url, durability, env)
    try:
        up_url, gw_url = f"http://127.0.0.1:{up_port}", f"http://127.0.0.1:{gw_port}"
        wait_http(up_url + "/", upstream, up_log)
        wait_http(gw_url + "/healthz", gateway, gw_log)
        vk, admin = bootstrap_keys(gw_log)
        resp = httpx.post(
            gw_url + "/api/provider-keys",
            headers={"authorization": f"Bearer {admin}"},
            json={
                "name": "fake",
                "kind": "openai",
                "provider": "openai",
                "base_url": up_url + "/v1",
                "api_key": "sk-bench-upstream",
                "models": ["gpt-*"],
                "priority": 10,
            },
            timeout=30,
            trust_env=False,
        )
        if resp.status_code != 201:
            raise RuntimeError(f"adding the provider key failed: {resp.status_code} {resp.text}")
    except BaseException:
        stop(gateway)
        stop(upstream)
        raise
    return Stack(up_url, gw_url, vk, admin, upstream, gateway)


# -- the client -------------------------------------------------------------------------------------------
class Client:
    """One shared HTTP client; `call` returns (ok, total seconds, seconds to the first body byte)."""

    def __init__(self, kind: str, max_connections: int) -> None:
        self.kind = kind
        self.max_connections = max_connections
        self._session: Any = None

    async def __aenter__(self) -> Client:
        if self.kind == "aiohttp":
            import aiohttp

            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.max_connections, limit_per_host=self.max_connections),
                timeout=aiohttp.ClientTimeout(total=30),
                skip_auto_headers=["User-Agent"],
            )
        else:
            limits = httpx.Limits(max_connections=self.max_connections, max_keepalive_connections=self.max_connections)
            self._session = httpx.AsyncClient(limits=limits, timeout=30, trust_env=False)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.kind == "aiohttp":
            await self._session.close()
        else:
            await self._session.aclose()

    async def call(self, url: str, headers: dict[str, str], body: bytes, stream: bool) -> tuple[bool, float, float]:
        t0 = time.perf_counter()
        first = 0.0
        last = b""
        if self.kind == "aiohttp":
            async with self._session.post(url, data=body, headers=headers) as resp:
                ok = resp.status == 200
                if stream:
                    async for chunk in resp.content.iter_any():
                        if not first:
                            first = time.perf_counter()
                        last = chunk
                else:
                    await resp.read()
        elif stream:
            async with self._session.stream("POST", url, content=body, headers=headers) as resp:
                ok = resp.status_code == 200
                async for chunk in resp.aiter_raw():
                    if not first:
                        first = time.perf_counter()
                    last = chunk
        else:
            resp = await self._session.post(url, content=body, headers=headers)
            ok = resp.status_code == 200
        end = time.perf_counter()
        if stream and not last.endswith(b"data: [DONE]\n\n"):
            ok = False
        return ok, end - t0, (first or end) - t0


# -- load ---------------------------------------------------------------------------------------------------
@dataclass
class Target:
    name: str
    url: str
    headers: dict[str, str]
    pid: int
    latencies: list[float] = field(default_factory=list)
    ttfb: list[float] = field(default_factory=list)
    wall: float = 0.0
    errors: int = 0
    sent: int = 0
    cpu: float = 0.0  # server process CPU seconds during the measured rounds
    foreign: float = 0.0  # CPU seconds other processes on the machine used during the measured rounds
    client_cpu: float = 0.0  # this process's CPU seconds during the measured rounds

    def reset(self) -> None:
        self.latencies, self.ttfb = [], []
        self.wall = self.cpu = self.client_cpu = self.foreign = 0.0
        self.errors = 0


async def burst(client: Client, target: Target, body: bytes, stream: bool, n: int, conc: int, deadline: float) -> int:
    """Send n requests with `conc` in flight; stop early (between requests) once `deadline` passes."""
    remaining = n
    done = 0

    async def worker() -> None:
        nonlocal remaining, done
        while remaining > 0 and time.monotonic() < deadline:
            remaining -= 1
            target.sent += 1
            try:
                ok, total, first = await client.call(target.url, target.headers, body, stream)
            except Exception:
                target.errors += 1
                continue
            done += 1
            if not ok:
                target.errors += 1
            target.latencies.append(total)
            target.ttfb.append(first)

    await asyncio.gather(*(worker() for _ in range(min(conc, n))))
    return done


async def measured_round(
    client: Client, target: Target, body: bytes, stream: bool, n: int, conc: int, deadline: float
) -> None:
    cpu0, ccpu0, t0, other0 = cpu_seconds(target.pid), time.process_time(), time.perf_counter(), foreign_busy()
    await burst(client, target, body, stream, n, conc, deadline)
    target.wall += time.perf_counter() - t0
    target.client_cpu += time.process_time() - ccpu0
    cpu1, other1 = cpu_seconds(target.pid), foreign_busy()
    if cpu0 is not None and cpu1 is not None:
        target.cpu += cpu1 - cpu0
    if other0 is not None and other1 is not None:
        target.foreign += max(other1 - other0, 0.0)


def summary(t: Target) -> dict[str, Any]:
    lat = sorted(t.latencies)
    n = len(lat)
    return {
        "requests": n,
        "errors": t.errors,
        "p50_ms": pct(lat, 50),
        "p90_ms": pct(lat, 90),
        "p99_ms": pct(lat, 99),
        "mean_ms": 1000 * sum(lat) / n if n else math.nan,
        "ttfb_p50_ms": pct(sorted(t.ttfb), 50),
        "throughput_rps": n / t.wall if t.wall else math.nan,
        "server_cpu_ms_per_req": 1000 * t.cpu / n if n else math.nan,
        "client_cpu_ms_per_req": 1000 * t.client_cpu / n if n else math.nan,
        "other_load_cores": t.foreign / t.wall if t.wall else math.nan,
    }


async def run_cell(
    client: Client, direct: Target, gateway: Target, stream: bool, conc: int, args: argparse.Namespace
) -> dict[str, Any]:
    payload: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}]}
    if stream:
        payload["stream"] = True
        if args.include_usage:
            payload["stream_options"] = {"include_usage": True}
    body = json.dumps(payload, separators=(",", ":")).encode()
    deadline = time.monotonic() + args.cell_timeout
    for t in (direct, gateway):
        t.reset()
        await burst(client, t, body, stream, args.warmup, conc, deadline)
        t.reset()
    rounds = max(1, min(args.rounds, args.requests))
    per_round = math.ceil(args.requests / rounds)
    for i in range(rounds):
        if time.monotonic() >= deadline:
            break
        order = (direct, gateway) if i % 2 == 0 else (gateway, direct)
        for t in order:
            await measured_round(client, t, body, stream, per_round, conc, deadline)
    d, g = summary(direct), summary(gateway)
    return {
        "mode": "stream" if stream else "plain",
        "concurrency": conc,
        "timed_out": time.monotonic() >= deadline,
        "direct": d,
        "gateway": g,
        "added_p50_ms": g["p50_ms"] - d["p50_ms"],
        "added_p99_ms": g["p99_ms"] - d["p99_ms"],
        "ratio_p50": g["p50_ms"] / d["p50_ms"],
        "ratio_p99": g["p99_ms"] / d["p99_ms"],
    }


def admin_get(stack: Stack, path: str, **params: str) -> Any:
    resp = httpx.get(
        stack.gateway_url + path,
        params=params,
        headers={"authorization": f"Bearer {stack.admin}"},
        timeout=120,
        trust_env=False,
    )
    resp.raise_for_status()
    return resp.json()


def recorded_requests(stack: Stack) -> int:
    """What the gateway's own books say: every request of the workspace (reads flush the pipeline first)."""
    rows = admin_get(stack, "/api/analytics/costs", group_by="workspace")["data"]
    return sum(int(row.get("requests", 0)) for row in rows)


def recorded_model_calls(stack: Stack, cells: list[dict[str, Any]]) -> dict[str, tuple[int, int]]:
    """With --tracking: each cell's run must hold one model call per request sent in that cell."""
    out = {}
    for c in cells:
        run_id = f"bench-{c['mode']}-{c['concurrency']}"
        out[run_id] = (c["gateway_sent"], int(admin_get(stack, f"/api/runs/{run_id}")["totals"]["model_calls"]))
    return out


# -- report -------------------------------------------------------------------------------------------------
def markdown(cells: list[dict[str, Any]]) -> str:
    head = (
        "| mode | conc | n | direct p50 / p90 / p99 ms | gateway p50 / p90 / p99 ms | added p50 ms | added p99 ms "
        "| ratio p50 | gateway p99/p50 | direct req/s | gateway req/s | gateway CPU ms/req |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for c in cells:
        d, g = c["direct"], c["gateway"]
        lines.append(
            f"| {c['mode']} | {c['concurrency']} | {g['requests']} "
            f"| {d['p50_ms']:.2f} / {d['p90_ms']:.2f} / {d['p99_ms']:.2f} "
            f"| {g['p50_ms']:.2f} / {g['p90_ms']:.2f} / {g['p99_ms']:.2f} "
            f"| {c['added_p50_ms']:+.2f} | {c['added_p99_ms']:+.2f} | {c['ratio_p50']:.2f} "
            f"| {g['p99_ms'] / g['p50_ms']:.1f} "
            f"| {d['throughput_rps']:.0f} | {g['throughput_rps']:.0f} | {g['server_cpu_ms_per_req']:.2f} |"
        )
    return "\n".join(lines)


# -- main ---------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--requests", type=int, default=2000, help="measured requests per target per cell (2000)")
    p.add_argument("--concurrency", default="1,16", help="comma-separated in-flight request counts (1,16)")
    modes = p.add_mutually_exclusive_group()
    modes.add_argument("--stream", dest="modes", action="store_const", const=["stream"], help="streamed only")
    modes.add_argument("--no-stream", dest="modes", action="store_const", const=["plain"], help="non-streamed only")
    p.set_defaults(modes=["plain", "stream"])
    p.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite", help="the gateway's store (sqlite)")
    p.add_argument(
        "--durability", choices=["strict", "batched"], default="strict", help="the gateway's durability (strict)"
    )
    p.add_argument("--client", choices=["aiohttp", "httpx"], default=None, help="load client (aiohttp if installed)")
    p.add_argument("--warmup", type=int, default=200, help="unmeasured requests per target per cell (200)")
    p.add_argument("--rounds", type=int, default=10, help="alternating rounds per cell (10)")
    p.add_argument("--cell-timeout", type=float, default=120.0, help="hard time cap per cell, seconds (120)")
    p.add_argument(
        "--no-include-usage",
        dest="include_usage",
        action="store_false",
        help="streamed bodies without stream_options.include_usage (the gateway then rewrites the body)",
    )
    p.add_argument(
        "--tracking",
        action="store_true",
        help="send run and session headers too (the gateway then also records a run, a step and a session)",
    )
    p.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    p.add_argument("--py-spy", type=Path, default=None, help="record the gateway with py-spy (speedscope) here")
    p.add_argument("--py-spy-rate", type=int, default=250, help="py-spy samples per second (250)")
    args = p.parse_args(argv)
    args.concurrency = [int(c) for c in str(args.concurrency).split(",") if c.strip()]
    if args.requests < 1 or not args.concurrency or min(args.concurrency) < 1:
        p.error("--requests and every --concurrency must be positive")
    if args.client is None:
        try:
            import aiohttp  # noqa: F401

            args.client = "aiohttp"
        except ImportError:
            args.client = "httpx"
    return args


async def drive(stack: Stack, args: argparse.Namespace) -> tuple[list[dict[str, Any]], int]:
    """Every cell; returns them with the number of requests sent through the gateway (warm-ups included)."""
    direct = Target("direct", stack.upstream_url + "/v1/chat/completions", {}, stack.upstream.pid)
    gateway = Target("gateway", stack.gateway_url + "/v1/chat/completions", {}, stack.gateway.pid)
    # Same header set and sizes both ways; only the key differs.
    direct.headers = {"content-type": "application/json", "authorization": "Bearer " + "sk-x" * (len(stack.vk) // 4)}
    gateway.headers = {"content-type": "application/json", "authorization": f"Bearer {stack.vk}"}
    cells = []
    async with Client(args.client, max(args.concurrency) * 2) as client:
        for mode in args.modes:
            for conc in args.concurrency:
                if args.tracking:  # one run and session per cell, as an agent would send them
                    tracking = {
                        "alephant-run-id": f"bench-{mode}-{conc}",
                        "alephant-session-id": "bench",
                        "alephant-session-path": f"/{mode}/c{conc}",
                    }
                    direct.headers.update(tracking)
                    gateway.headers.update(tracking)
                before = gateway.sent
                cell = await run_cell(client, direct, gateway, mode == "stream", conc, args)
                cell["gateway_sent"] = gateway.sent - before
                cells.append(cell)
                g, d = cell["gateway"], cell["direct"]
                print(
                    f"  {mode:6} c={conc:<3} direct p50 {d['p50_ms']:.2f} ms, gateway p50 {g['p50_ms']:.2f} ms "
                    f"(+{cell['added_p50_ms']:.2f}), p99 {g['p99_ms']:.2f} ms (x{g['p99_ms'] / g['p50_ms']:.1f}), "
                    f"CPU {g['server_cpu_ms_per_req']:.3f} ms/req, "
                    f"{d['throughput_rps']:.0f} vs {g['throughput_rps']:.0f} req/s; "
                    f"other load {max(d['other_load_cores'], g['other_load_cores']):.2f} cores"
                    + (" [TIME CAP HIT]" if cell["timed_out"] else ""),
                    file=sys.stderr,
                    flush=True,
                )
    return cells, gateway.sent


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="agentledger-bench-"))
    pg_name = None
    spy = None
    stack = None
    try:
        db_url = None
        if args.db == "postgres":
            pg_name, db_url = create_pg_database()
        print(f"starting upstream and gateway ({args.db}) in {workdir}", file=sys.stderr, flush=True)
        stack = start_stack(workdir, db_url, args.durability)
        OUR_PIDS[:] = [stack.upstream.pid, stack.gateway.pid]
        if args.py_spy:
            exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
            spy = subprocess.Popen(
                [exe, "record", "--pid", str(stack.gateway.pid), "--rate", str(args.py_spy_rate), "--nonblocking"]
                + ["--format", "speedscope", "-o", str(args.py_spy)],
                stdout=subprocess.DEVNULL,
                stderr=(workdir / "py-spy.log").open("wb"),
            )
            OUR_PIDS.append(spy.pid)
        results, sent = asyncio.run(drive(stack, args))
        recorded = recorded_requests(stack)
        runs = recorded_model_calls(stack, results) if args.tracking else {}
    finally:
        if spy is not None:
            stop(spy)
        if stack is not None:
            stop(stack.gateway)
            stop(stack.upstream)
        if pg_name:
            drop_pg_database(pg_name)
        shutil.rmtree(workdir, ignore_errors=True)

    report = {
        "machine": machine(),
        "config": {
            "requests": args.requests,
            "warmup": args.warmup,
            "rounds": args.rounds,
            "concurrency": args.concurrency,
            "modes": args.modes,
            "db": args.db,
            "durability": args.durability,
            "client": args.client,
            "stream_include_usage": args.include_usage,
            "tracking_headers": args.tracking,
        },
        "cells": results,
        "tracing": {
            "sent_through_gateway": sent,
            "recorded_by_gateway": recorded,
            "runs": {k: {"sent": a, "model_calls": b} for k, (a, b) in runs.items()},
            "ok": sent == recorded and all(a == b for a, b in runs.values()),
        },
    }
    m = report["machine"]
    print(
        f"\n{m['cpu']}, {m['cores']} cores, Python {m['python']}; client {args.client}; store {args.db}, "
        f"durability {args.durability}; "
        f"{args.requests} requests per target per cell after {args.warmup} warm-up\n"
    )
    print(markdown(results))
    errors = sum(c["direct"]["errors"] + c["gateway"]["errors"] for c in results)
    ok = report["tracing"]["ok"]
    verdict = "OK" if ok else "MISMATCH"
    print(f"\ntracing: {sent} requests sent through the gateway, {recorded} recorded ({verdict}); errors: {errors}")
    for run_id, (a, b) in runs.items():
        print(f"  run {run_id}: {a} requests sent, {b} model calls recorded")
    other = max(max(c["direct"]["other_load_cores"], c["gateway"]["other_load_cores"]) for c in results)
    if other > 0.2:
        print(f"warning: other processes used up to {other:.2f} cores during the measurement; figures are noisy")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return 0 if ok and errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

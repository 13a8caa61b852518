"""The gateway's added latency, measured against calling the upstream directly, in one run.

    python benchmarks/overhead.py [--api chat,messages,translated] [--requests N] [--concurrency 1,16]
                                  [--stream | --no-stream] [--db sqlite|postgres] [--client aiohttp|httpx]
                                  [--tracking] [--governed] [--redis redis://127.0.0.1:6379/N] [--workers N]
                                  [--json PATH] [--py-spy PROFILE.json]
    (or scripts/bench with the same arguments; --help lists the rest)

Three processes on 127.0.0.1, nothing else is contacted:
  * the fake upstream (`agentledger.testing.fake_upstream_app`: OpenAI and Anthropic routes) under uvicorn
    (uvloop + httptools);
  * the gateway, started the way users start it (`python -m agentledger ... serve`, uvloop + httptools,
    tracing on: every call goes through the batching pipeline into SQLite, or PostgreSQL with --db postgres),
    with a provider key pointing at the fake upstream added through the admin API (an `anthropic`-kind one
    too with --api messages or translated);
  * this process, the load generator: one shared HTTP client posting the same small body.
The wire format (--api):
  chat        a chat completion (gpt-4o-mini, openai key): gateway and fake `/v1/chat/completions` (default);
  messages    an Anthropic Messages call (claude-haiku-4-5, anthropic key): gateway and fake `/v1/messages`;
  translated  a chat completion for the Claude model at the gateway, which only the anthropic key serves, so
              the gateway sends it as Messages and translates the answer back; direct: the fake's
              `/v1/messages` with the Messages body the gateway sends it (checked at startup).
Several, comma-separated, are measured in one run (one gateway with both keys), their rounds interleaved.
For each (mode, concurrency) cell both targets are warmed up, then measured in alternating rounds
(direct, gateway, gateway, direct, ...; with several formats, each round visits every format, starting
with the next one each time) so drift on the machine hits both alike. The same client measures
both targets, so its own cost is in both figures and cancels out of the difference. At the end the
gateway's own analytics must count every request sent through it (with --api messages or translated, every
one a priced call of the Claude model; with --tracking, every run its model calls), or the run fails. CPU
used by other processes during the measurement is reported, since a busy machine skews everything.
Budgets and rate limits (--governed): the same gateway also serves a second workspace whose key's calls are
under 3 budgets (workspace, department, virtual_key) and a workspace rate limit, all far too large to refuse;
each format gets a second pair (direct, gateway with that key) whose rounds interleave with the plain key's,
and the difference (added p50/p99, gateway CPU per request) is reported. At the end each budget's spent must
equal the cost recorded for that key's calls, with nothing reserved. --redis URL starts the gateway with shared
Redis counters (that database is flushed before and after), --workers N with N worker processes (their CPU is
summed; needs --db postgres and --redis). With PostgreSQL or Redis their servers' CPU per request is reported
too (processes found by name). The figures and how to read them: docs/benchmark.md.
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
    CLK_TCK,
    agentledger_cli,
    bootstrap_keys,
    clean_env,
    cpu_seconds,
    create_pg_database,
    descendants,
    drop_pg_database,
    free_port,
    machine,
    machine_busy_seconds,
    pct,
    start_gateway,
    stop,
    threads_cpu,
    tree_cpu_seconds,
    wait_http,
)

MODEL = "gpt-4o-mini"
CLAUDE_MODEL = "claude-haiku-4-5"  # priced by genai-prices under "anthropic" (checked at startup)
MAX_TOKENS = 256
PROMPT = "Say hello to the benchmark in one short sentence."
APIS = ("chat", "messages", "translated")
ANTHROPIC_VERSION = "2023-06-01"

# What a complete stream's last frame starts with: chat's `[DONE]`, Messages' `message_stop` event.
CHAT_END = b"data: [DONE]"
MESSAGES_END = b"event: message_stop\n"

PREFLIGHT_CODE = """
import json, sys
from agentledger.formats.registry import bridge
from agentledger.prices.catalog import catalog_knows
model, chat, messages = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
if not catalog_knows(model, "anthropic"):
    sys.exit(f"genai-prices does not price {model!r} for anthropic")
sent = bridge("chat", "anthropic").request(chat)
if sent != messages:
    sys.exit(f"the gateway would send {sent!r}, not the direct body {messages!r}")
"""

UPSTREAM_CODE = """
import collections, sys, uvicorn
from agentledger.testing import FakeUpstream, fake_upstream_app
# A bounded log of received requests: the fake keeps every one, which would grow for the whole run.
state = FakeUpstream(received=collections.deque(maxlen=100))
uvicorn.run(fake_upstream_app(state), host="127.0.0.1", port=int(sys.argv[1]), loop="uvloop", http="httptools",
            log_level="warning", access_log=False)
"""


# -- processes --------------------------------------------------------------------------------------------
OUR_PIDS: list[int] = []  # the upstream, the gateway (and its workers), a profiler: part of the measurement
# With PostgreSQL or Redis: their server processes' CPU is part of the measurement too (counted per request,
# not as other load). Found by name, so a test suite using the same servers meanwhile would be counted as ours.
SERVICES: tuple[str, ...] = ()


def services_cpu() -> float:
    """CPU seconds of the live processes named in SERVICES (redis-server, postgres), from /proc."""
    if not SERVICES:
        return 0.0
    total = 0.0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                head, tail = f.read().rsplit(")", 1)
        except OSError:
            continue
        if head.split("(", 1)[1].startswith(SERVICES):
            fields = tail.split()
            total += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return total


def foreign_busy() -> float | None:
    """Busy CPU seconds of everything on the machine except this benchmark's processes and its services."""
    busy = machine_busy_seconds()
    ours = [cpu_seconds(pid) for pid in OUR_PIDS]
    if busy is None or any(c is None for c in ours):
        return None
    own = os.times()
    return busy - sum(c for c in ours if c is not None) - own.user - own.system - services_cpu()


@dataclass
class Bench:
    """A workspace the load is sent in: its admin token and its virtual key."""

    workspace_id: str
    admin: str
    vk: str
    vk_id: str | None = None
    budget_ids: list[str] = field(default_factory=list)
    rate_limit_ids: list[str] = field(default_factory=list)


@dataclass
class Stack:
    upstream_url: str
    gateway_url: str
    vk: str
    admin: str
    upstream: subprocess.Popen[bytes]
    gateway: subprocess.Popen[bytes]
    data_dir: Path | None = None
    db_url: str | None = None
    gateway_pids: list[int] = field(default_factory=list)  # the gateway and its worker processes
    governed: Bench | None = None  # --governed: the second workspace, its key under budgets and a rate limit
    floor: subprocess.Popen[bytes] | None = None  # --floor: the bare pass-through (benchmarks/floor.py)
    floor_url: str | None = None


def admin_post(gw_url: str, admin: str, path: str, body: dict[str, Any]) -> Any:
    resp = httpx.post(
        gw_url + path, headers={"authorization": f"Bearer {admin}"}, json=body, timeout=30, trust_env=False
    )
    if resp.status_code != 201:
        raise RuntimeError(f"POST {path} {body!r} failed: {resp.status_code} {resp.text}")
    return resp.json()


def add_provider_key(gw_url: str, admin: str, key: dict[str, Any]) -> None:
    admin_post(gw_url, admin, "/api/provider-keys", key)


def add_provider_keys(up_url: str, gw_url: str, admin: str, anthropic: bool) -> None:
    add_provider_key(
        gw_url,
        admin,
        {
            "name": "fake",
            "kind": "openai",
            "provider": "openai",
            "base_url": up_url + "/v1",
            "api_key": "sk-bench-upstream",
            "models": ["gpt-*"],
            "priority": 10,
        },
    )
    if anthropic:  # Claude models: only this key serves them, so chat requests for them are translated
        add_provider_key(
            gw_url,
            admin,
            {
                "name": "bench-anthropic",
                "kind": "anthropic",
                "provider": "anthropic",
                "base_url": up_url + "/v1",
                "api_key": "sk-ant-bench-upstream",
                "models": ["claude-*"],
                "priority": 10,
            },
        )


GOVERNED_WS = "bench-governed"
HUGE_USD = "1000000"  # $1M per 30 days: each call reserves ~$0.0025 at most, so no budget ever refuses
HUGE_RPM = 10_000_000  # requests a minute (the most the API takes): never refuses here


def bench_policies(rules: int, key_id: str) -> list[dict[str, Any]]:
    """--policies N: N rules over the 4 policy scopes (2/5, 3/10, 1/5, 1/10 of them: workspace, department,
    agent, virtual key), with settings at each scope, none ever refusing the benchmark's call. The rules mix
    model globs, kinds, tool names, output caps, cost, hours, IP ranges, headers, properties and run conditions
    with every action; the call matches two (an alert, raised once an hour, and a redaction of e-mail
    addresses, of which its text has none), so each call is evaluated in full and its messages scanned."""
    scopes = (
        (
            "workspace",
            None,
            0.4,
            {"models_allow": ["gpt-4o*", "claude-*"], "max_tokens": 100_000, "ip_allow": ["127.0.0.0/8", "::1/128"]},
        ),
        ("department", "bench-dept", 0.3, {"providers_deny": ["legacy-*"], "max_run_steps": 100_000}),
        ("agent", "bench-agent", 0.2, {"loop_repeats": 1000}),
        ("virtual_key", key_id, 0.1, {"max_run_cost_usd": "1000"}),
    )
    shapes: list[dict[str, Any]] = [
        {"when": {"models": ["claude-x-*", "o1*"], "max_tokens_over": 16000}, "action": "block"},
        {"when": {"kinds": ["tool_call"], "names": ["shell*", "rm*"]}, "action": "escalate"},
        {"when": {"cost_over_usd": "5.00"}, "action": "escalate"},
        {"when": {"ip_not_in": ["10.0.0.0/8"], "kinds": ["payment"]}, "action": "block"},
        {"when": {"properties": {"customer": "acme*"}}, "action": "throttle", "throttle_rpm": 10},
        {"when": {"run_steps_over": 5000}, "action": "block"},
        {"when": {"prompt_ids_not": ["summarize"], "models_not": ["gpt-*", "claude-*"]}, "action": "alert"},
        {"when": {"missing_headers": ["x-never-sent"], "models": ["o3*"]}, "action": "block"},
    ]
    out: list[dict[str, Any]] = []
    n = 0
    for i, (scope, value, share, settings) in enumerate(scopes):
        count = rules - n if i == len(scopes) - 1 else round(rules * share)
        body: list[dict[str, Any]] = [{"id": f"r{n + j}", **shapes[(n + j) % len(shapes)]} for j in range(count)]
        if scope == "workspace" and body:
            body[0] = {"id": "r0", "when": {"kinds": ["model_call"]}, "action": "alert"}
            if len(body) > 1:
                body[1] = {"id": "r1", "when": {}, "action": "redact", "redact": ["email"]}
        n += count
        policy: dict[str, Any] = {"name": f"bench {scope}", "scope": scope, "settings": settings, "rules": body}
        if value is not None:
            policy["scope_value"] = value
        out.append(policy)
    return out


def setup_governed(
    stack: Stack, env: dict[str, str], anthropic: bool, budgets: bool = True, policies: int = 0
) -> Bench:
    """--governed: a second workspace shaped like the bootstrap one (a department, an agent, the demo mock key,
    a virtual key bound to the agent), whose key's calls are under 3 budgets (workspace, department,
    virtual_key; block_requests, $1M per 30 days) and a workspace rate limit, none of which ever refuses.
    --policies N: under N policy rules (`bench_policies`) too, or (without --governed) under them alone."""
    assert stack.data_dir is not None
    out = agentledger_cli(
        stack.data_dir, stack.db_url, ["workspaces", "create", "Bench governed", "--id", GOVERNED_WS], env
    )
    admin = json.loads(out)["owner_token"]
    gw = stack.gateway_url
    admin_post(gw, admin, "/api/departments", {"id": "bench-dept", "name": "Bench"})
    admin_post(gw, admin, "/api/agents", {"id": "bench-agent", "department_id": "bench-dept", "name": "Bench agent"})
    add_provider_key(gw, admin, {"name": "mock", "kind": "mock", "provider": "mock", "models": ["*"], "priority": -100})
    add_provider_keys(stack.upstream_url, gw, admin, anthropic)
    key = admin_post(gw, admin, "/api/virtual-keys", {"name": "bench-governed", "agent_id": "bench-agent"})
    bench = Bench(GOVERNED_WS, admin, key["key"], key["id"])
    for policy in bench_policies(policies, key["id"]) if policies else ():
        admin_post(gw, admin, "/api/policies", policy)
    if not budgets:
        return bench
    common = {"limit_usd": HUGE_USD, "period": "30d", "action": "block_requests"}
    for ident, scope in (
        ("bench-ws", {"scope": "workspace"}),
        ("bench-dept", {"scope": "department", "scope_value": "bench-dept"}),
        ("bench-vk", {"scope": "virtual_key", "scope_value": key["id"]}),
    ):
        bench.budget_ids.append(admin_post(gw, admin, "/api/budgets", {"id": ident, **scope, **common})["id"])
    rl = {"id": "bench-rpm", "scope": "workspace", "requests_per_minute": HUGE_RPM}
    bench.rate_limit_ids.append(admin_post(gw, admin, "/api/rate-limits", rl)["id"])
    return bench


def start_stack(
    workdir: Path,
    db_url: str | None,
    durability: str = "strict",
    anthropic: bool = False,
    settings: dict[str, str] | None = None,
    governed: bool = False,
    budgets: bool = True,
    policies: int = 0,
    floor: bool = False,
) -> Stack:
    env = clean_env()
    up_port, gw_port = free_port(), free_port()
    up_log, gw_log = workdir / "upstream.log", workdir / "gateway.log"
    upstream = subprocess.Popen(
        [sys.executable, "-c", UPSTREAM_CODE, str(up_port)],
        stdout=up_log.open("wb"),
        stderr=subprocess.STDOUT,
        env=env,
    )
    gateway = start_gateway(workdir / "data", gw_log, gw_port, db_url, durability, env, settings)
    try:
        up_url, gw_url = f"http://127.0.0.1:{up_port}", f"http://127.0.0.1:{gw_port}"
        wait_http(up_url + "/", upstream, up_log)
        wait_http(gw_url + "/healthz", gateway, gw_log)
        vk, admin = bootstrap_keys(gw_log)
        add_provider_keys(up_url, gw_url, admin, anthropic)
        stack = Stack(up_url, gw_url, vk, admin, upstream, gateway, workdir / "data", db_url)
        if governed:
            stack.governed = setup_governed(stack, env, anthropic, budgets, policies)
        if floor:
            floor_port, floor_log = free_port(), workdir / "floor.log"
            stack.floor = subprocess.Popen(
                [sys.executable, str(Path(__file__).with_name("floor.py")), str(floor_port), up_url],
                stdout=floor_log.open("wb"),
                stderr=subprocess.STDOUT,
                env=env,
            )
            stack.floor_url = f"http://127.0.0.1:{floor_port}"
            wait_http(stack.floor_url + "/", stack.floor, floor_log)
        workers = int((settings or {}).get("workers", 1))
        deadline = time.monotonic() + 60
        while True:  # with workers: every worker process is up (each answers; the CPU of all is counted)
            stack.gateway_pids = [gateway.pid, *descendants(gateway.pid)]
            if workers <= 1 or len(stack.gateway_pids) > workers or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    except BaseException:
        stop(gateway)
        stop(upstream)
        if "stack" in locals():
            stop(stack.floor)
        raise
    return stack


def stop_stack(stack: Stack) -> None:
    stop(stack.gateway)
    stop(stack.floor)
    stop(stack.upstream)


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

    async def call(
        self, url: str, headers: dict[str, str], body: bytes, stream: bool, end: bytes = CHAT_END
    ) -> tuple[bool, float, float]:
        """`end`: what a complete stream's last frame starts with (CHAT_END or MESSAGES_END)."""
        t0 = time.perf_counter()
        first = 0.0
        prev = last = b""
        if self.kind == "aiohttp":
            async with self._session.post(url, data=body, headers=headers) as resp:
                ok = resp.status == 200
                if stream:
                    async for chunk in resp.content.iter_any():
                        if not first:
                            first = time.perf_counter()
                        prev, last = last, chunk
                else:
                    await resp.read()
        elif stream:
            async with self._session.stream("POST", url, content=body, headers=headers) as resp:
                ok = resp.status_code == 200
                async for chunk in resp.aiter_raw():
                    if not first:
                        first = time.perf_counter()
                    prev, last = last, chunk
        else:
            resp = await self._session.post(url, content=body, headers=headers)
            ok = resp.status_code == 200
        t1 = time.perf_counter()
        if stream and not stream_complete(prev[-512:] + last, end):
            ok = False
        return ok, t1 - t0, (first or t1) - t0


def stream_complete(tail: bytes, end: bytes) -> bool:
    """The stream's last frame (blank-line separated) starts with `end` and is terminated."""
    if not tail.endswith(b"\n\n"):
        return False
    return tail[:-2].rsplit(b"\n\n", 1)[-1].lstrip(b"\r\n").startswith(end)


# -- load ---------------------------------------------------------------------------------------------------
@dataclass
class Target:
    name: str
    url: str
    headers: dict[str, str]
    pid: int
    fmt: str = "chat"  # the wire format it is sent: "chat" or "messages"
    pids: list[int] = field(default_factory=list)  # processes whose CPU is counted (default: [pid])
    metrics_url: str | None = None  # the gateway's /metrics (one process only): trace events and writes per call
    latencies: list[float] = field(default_factory=list)
    ttfb: list[float] = field(default_factory=list)
    wall: float = 0.0
    errors: int = 0
    sent: int = 0
    cpu: float = 0.0  # server process CPU seconds during the measured rounds
    loop_cpu: float = 0.0  # of which its main thread (the event loop), for a one-process gateway
    threads: dict[str, float] = field(default_factory=dict)  # the same CPU by thread name, one-process gateway
    services: float = 0.0  # PostgreSQL and Redis server CPU seconds during the measured rounds
    events: int = 0  # trace events the gateway emitted during the measured rounds (with metrics_url)
    batches: int = 0  # store writes (transactions) it made meanwhile
    foreign: float = 0.0  # CPU seconds other processes on the machine used during the measured rounds
    client_cpu: float = 0.0  # this process's CPU seconds during the measured rounds
    round_p50s: list[float] = field(default_factory=list)  # each measured round's own p50, ms

    def reset(self) -> None:
        self.latencies, self.ttfb, self.round_p50s = [], [], []
        self.wall = self.cpu = self.client_cpu = self.foreign = self.services = self.loop_cpu = 0.0
        self.events = self.batches = 0
        self.errors = 0
        self.threads = {}


async def burst(client: Client, target: Target, body: bytes, stream: bool, n: int, conc: int, deadline: float) -> int:
    """Send n requests with `conc` in flight; stop early (between requests) once `deadline` passes."""
    remaining = n
    done = 0
    end = MESSAGES_END if target.fmt == "messages" else CHAT_END

    async def worker() -> None:
        nonlocal remaining, done
        while remaining > 0 and time.monotonic() < deadline:
            remaining -= 1
            target.sent += 1
            try:
                ok, total, first = await client.call(target.url, target.headers, body, stream, end)
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


def pipeline_counts(url: str) -> tuple[int, int]:
    """(trace events emitted, batches written) from the gateway's /metrics."""
    text = httpx.get(url, timeout=10, trust_env=False).text
    found = dict(line.split(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
    return int(found["agentledger_trace_events_emitted_total"]), int(found["agentledger_trace_batches_total"])


async def measured_round(
    client: Client, target: Target, body: bytes, stream: bool, n: int, conc: int, deadline: float
) -> None:
    if target.metrics_url:
        await asyncio.sleep(0.05)  # the last round's writes land first
        ev0, b0 = pipeline_counts(target.metrics_url)
    pids = target.pids or [target.pid]
    svc0, other0 = services_cpu(), foreign_busy()
    loop0 = cpu_seconds(pids[0], pids[0]) if len(pids) == 1 else None
    threads0 = threads_cpu(pids[0]) if len(pids) == 1 else {}
    cpu0, ccpu0, t0 = tree_cpu_seconds(pids), time.process_time(), time.perf_counter()
    start = len(target.latencies)
    await burst(client, target, body, stream, n, conc, deadline)
    target.wall += time.perf_counter() - t0
    target.round_p50s.append(pct(sorted(target.latencies[start:]), 50))
    target.client_cpu += time.process_time() - ccpu0
    cpu1, svc1, other1 = tree_cpu_seconds(pids), services_cpu(), foreign_busy()
    loop1 = cpu_seconds(pids[0], pids[0]) if len(pids) == 1 else None
    for name, seconds in (threads_cpu(pids[0]) if len(pids) == 1 else {}).items():
        target.threads[name] = target.threads.get(name, 0.0) + seconds - threads0.get(name, 0.0)
    if cpu0 is not None and cpu1 is not None:
        target.cpu += cpu1 - cpu0
    if loop0 is not None and loop1 is not None:
        target.loop_cpu += loop1 - loop0
    target.services += max(svc1 - svc0, 0.0)
    if target.metrics_url:
        await asyncio.sleep(0.05)
        ev1, b1 = pipeline_counts(target.metrics_url)
        target.events += ev1 - ev0
        target.batches += b1 - b0
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
        "services_cpu_ms_per_req": 1000 * t.services / n if n else math.nan,
        "loop_cpu_ms_per_req": 1000 * t.loop_cpu / n if n else math.nan,
        "thread_cpu_ms_per_req": {name: 1000 * sec / n for name, sec in sorted(t.threads.items())} if n else {},
        "trace_events_per_req": t.events / n if n and t.metrics_url else None,
        "store_writes_per_req": t.batches / n if n and t.metrics_url else None,
        "client_cpu_ms_per_req": 1000 * t.client_cpu / n if n else math.nan,
        "other_load_cores": t.foreign / t.wall if t.wall else math.nan,
        "round_p50_ms": list(t.round_p50s),
    }


def payload(api: str, fmt: str, stream: bool, include_usage: bool = True) -> dict[str, Any]:
    """The body a target of format `fmt` is sent in an --api run (the same request both ways)."""
    messages = [{"role": "user", "content": PROMPT}]
    if fmt == "messages":
        body: dict[str, Any] = {"model": CLAUDE_MODEL, "messages": messages, "max_tokens": MAX_TOKENS}
        if stream:
            body["stream"] = True
        return body
    body = {"model": MODEL, "messages": messages}
    if api == "translated":
        body = {"model": CLAUDE_MODEL, "messages": messages, "max_tokens": MAX_TOKENS}
    if stream:
        body["stream"] = True
        if include_usage:
            body["stream_options"] = {"include_usage": True}
    return body


def encode(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


@dataclass
class Pair:
    """One wire format's two targets: the fake upstream called directly and the gateway (with --governed,
    each format has two pairs: the gateway called with the plain key, and with the governed one)."""

    api: str
    direct: Target
    gateway: Target
    governed: bool = False
    floor: bool = False  # --floor: the "gateway" is the bare pass-through (benchmarks/floor.py)

    @property
    def label(self) -> str:
        return f"{self.api}+floor" if self.floor else f"{self.api}+governed" if self.governed else self.api


async def run_cell(
    client: Client, pairs: list[Pair], stream: bool, conc: int, args: argparse.Namespace
) -> list[dict[str, Any]]:
    """One (mode, concurrency) cell for every --api at once: the formats' rounds interleave, so drift on the
    machine hits them alike too (a run of one format alone is the plain direct/gateway alternation)."""
    bodies = {
        id(t): encode(payload(p.api, t.fmt, stream, args.include_usage)) for p in pairs for t in (p.direct, p.gateway)
    }
    deadline = time.monotonic() + args.cell_timeout * len(pairs)
    for p in pairs:
        for t in (p.direct, p.gateway):
            t.reset()
            await burst(client, t, bodies[id(t)], stream, args.warmup, conc, deadline)
            t.reset()
    rounds = max(1, min(args.rounds, args.requests))
    per_round = math.ceil(args.requests / rounds)
    for i in range(rounds):
        if time.monotonic() >= deadline:
            break
        for p in pairs[i % len(pairs) :] + pairs[: i % len(pairs)]:
            order = (p.direct, p.gateway) if i % 2 == 0 else (p.gateway, p.direct)
            for t in order:
                await measured_round(client, t, bodies[id(t)], stream, per_round, conc, deadline)
    cells = []
    for p in pairs:
        d, g = summary(p.direct), summary(p.gateway)
        cells.append(
            {
                "api": p.api,
                "governed": p.governed,
                "floor": p.floor,
                "label": p.label,
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
        )
    return cells


def admin_get(stack: Stack, path: str, token: str | None = None, **params: str) -> Any:
    resp = httpx.get(
        stack.gateway_url + path,
        params=params,
        headers={"authorization": f"Bearer {token or stack.admin}"},
        timeout=120,
        trust_env=False,
    )
    resp.raise_for_status()
    return resp.json()


def admins(stack: Stack) -> list[str]:
    """The admin token of each workspace the load went to."""
    return [stack.admin] + ([stack.governed.admin] if stack.governed else [])


def recorded_requests(stack: Stack) -> int:
    """What the gateway's own books say: every request of the workspaces (reads flush the pipeline first)."""
    total = 0
    for token in admins(stack):
        rows = admin_get(stack, "/api/analytics/costs", token, group_by="workspace")["data"]
        total += sum(int(row.get("requests", 0)) for row in rows)
    return total


def priced_claude_calls(stack: Stack) -> tuple[int, int]:
    """(requests, cost in nanodollars) the gateway recorded for the Claude model (--api messages/translated)."""
    requests = cost = 0
    for token in admins(stack):
        rows = admin_get(stack, "/api/analytics/costs", token, group_by="model")["data"]
        row: dict[str, Any] = next((r for r in rows if r.get("key") == CLAUDE_MODEL), {})
        requests, cost = requests + int(row.get("requests", 0)), cost + int(row.get("cost_nanos", 0))
    return requests, cost


def recorded_model_calls(stack: Stack, cells: list[dict[str, Any]]) -> dict[str, tuple[int, int]]:
    """With --tracking: each cell's run must hold one model call per request sent in that cell."""
    out = {}
    for c in cells:
        rid = run_id(c["api"], c["mode"], c["concurrency"])
        token = stack.governed.admin if c.get("governed") and stack.governed else stack.admin
        got = int(admin_get(stack, f"/api/runs/{rid}", token)["totals"]["model_calls"])
        out[c["label"] + ":" + rid] = (c["gateway_sent"], got)
    return out


def usd_nanos(text: str) -> int:
    whole, _, frac = text.partition(".")
    sign = -1 if whole.startswith("-") else 1
    return sign * (abs(int(whole or "0")) * 10**9 + int((frac + "0" * 9)[:9]))


def governed_books(stack: Stack, sent: int, wait: float = 30.0) -> dict[str, Any]:
    """--governed: each budget's spent (its status, from the counters) must equal the cost the gateway recorded
    for the governed key's calls, and nothing may stay reserved (counters are settled in the background: the
    check waits up to `wait` seconds for the last settles)."""
    bench = stack.governed
    assert bench is not None
    rows = admin_get(stack, "/api/analytics/costs", bench.admin, group_by="virtual_key")["data"]
    row: dict[str, Any] = next((r for r in rows if r.get("key") == bench.vk_id), {})
    requests, cost = int(row.get("requests", 0)), int(row.get("cost_nanos", 0))
    deadline = time.monotonic() + wait
    while True:
        budgets = {}
        for ident in bench.budget_ids:
            status = admin_get(stack, f"/api/budgets/{ident}", bench.admin).get("status") or {}
            budgets[ident] = {
                "spent_nanos": usd_nanos(status.get("spent_usd", "-1")),
                "reserved_nanos": usd_nanos(status.get("reserved_usd", "-1")),
            }
        settled = all(b["reserved_nanos"] == 0 and b["spent_nanos"] == cost for b in budgets.values())
        if settled or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    return {
        "virtual_key": bench.vk_id,
        "sent": sent,
        "requests": requests,
        "cost_nanos": cost,
        "budgets": budgets,
        "ok": requests == sent and cost > 0 and settled,
    }


# -- report -------------------------------------------------------------------------------------------------
def markdown(cells: list[dict[str, Any]], with_api: bool = False, services: bool = False) -> str:
    head = (
        ("| api " if with_api else "")
        + (
            "| mode | conc | n | direct p50 / p90 / p99 ms | gateway p50 / p90 / p99 ms | added p50 ms | added p99 ms "
            "| ratio p50 | gateway p99/p50 | direct req/s | gateway req/s | gateway CPU ms/req |"
        )
        + (" PostgreSQL + Redis CPU ms/req |" if services else "")
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for c in cells:
        d, g = c["direct"], c["gateway"]
        lines.append(
            (f"| {c.get('label', c['api'])} " if with_api else "")
            + f"| {c['mode']} | {c['concurrency']} | {g['requests']} "
            f"| {d['p50_ms']:.2f} / {d['p90_ms']:.2f} / {d['p99_ms']:.2f} "
            f"| {g['p50_ms']:.2f} / {g['p90_ms']:.2f} / {g['p99_ms']:.2f} "
            f"| {c['added_p50_ms']:+.2f} | {c['added_p99_ms']:+.2f} | {c['ratio_p50']:.2f} "
            f"| {g['p99_ms'] / g['p50_ms']:.1f} "
            f"| {d['throughput_rps']:.0f} | {g['throughput_rps']:.0f} | {g['server_cpu_ms_per_req']:.2f} |"
            + (f" {g['services_cpu_ms_per_req']:.2f} |" if services else "")
        )
    return "\n".join(lines)


def governed_deltas(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """--governed: each governed cell against the plain key's cell of the same format, mode and concurrency."""
    plain = {(c["api"], c["mode"], c["concurrency"]): c for c in cells if not c.get("governed") and not c.get("floor")}
    out = []
    for c in cells:
        base = plain.get((c["api"], c["mode"], c["concurrency"]))
        if not c.get("governed") or base is None:
            continue
        g, b = c["gateway"], base["gateway"]
        by_round = paired_rounds(c, base)
        out.append(
            {
                "api": c["api"],
                "mode": c["mode"],
                "concurrency": c["concurrency"],
                "none_added_p50_ms": base["added_p50_ms"],
                "governed_added_p50_ms": c["added_p50_ms"],
                "delta_p50_ms": c["added_p50_ms"] - base["added_p50_ms"],
                "delta_p50_by_round_ms": by_round,
                "none_added_p99_ms": base["added_p99_ms"],
                "governed_added_p99_ms": c["added_p99_ms"],
                "delta_p99_ms": c["added_p99_ms"] - base["added_p99_ms"],
                "none_cpu_ms_per_req": b["server_cpu_ms_per_req"],
                "governed_cpu_ms_per_req": g["server_cpu_ms_per_req"],
                "delta_cpu_ms_per_req": g["server_cpu_ms_per_req"] - b["server_cpu_ms_per_req"],
                "delta_loop_cpu_ms_per_req": g["loop_cpu_ms_per_req"] - b["loop_cpu_ms_per_req"],
                "delta_thread_cpu_ms_per_req": {
                    name: g["thread_cpu_ms_per_req"].get(name, 0.0) - b["thread_cpu_ms_per_req"].get(name, 0.0)
                    for name in sorted(set(g["thread_cpu_ms_per_req"]) | set(b["thread_cpu_ms_per_req"]))
                },
                "none_services_cpu_ms_per_req": b["services_cpu_ms_per_req"],
                "governed_services_cpu_ms_per_req": g["services_cpu_ms_per_req"],
                "none_rps": b["throughput_rps"],
                "governed_rps": g["throughput_rps"],
                "none_events_per_req": b["trace_events_per_req"],
                "governed_events_per_req": g["trace_events_per_req"],
                "none_writes_per_req": b["store_writes_per_req"],
                "governed_writes_per_req": g["store_writes_per_req"],
            }
        )
    return out


def paired_rounds(cell: dict[str, Any], base: dict[str, Any]) -> list[float]:
    """Round by round, the cell's added p50 minus the base cell's in the same round: the two were measured within
    seconds of each other, so what the machine does from one minute to the next (this VM's other tenants) falls out
    of each difference; their spread shows how much of a run's Δ p50 is the machine's."""
    rounds = zip(cell["gateway"]["round_p50_ms"], cell["direct"]["round_p50_ms"], strict=False)
    others = zip(base["gateway"]["round_p50_ms"], base["direct"]["round_p50_ms"], strict=False)
    return [(g - d) - (bg - bd) for (g, d), (bg, bd) in zip(rounds, others, strict=False)]


def spread(values: list[float]) -> str:
    """`median [first quartile, third quartile]` of a few numbers, ms."""
    if not values:
        return "–"
    v = sorted(values)
    q = [v[min(len(v) - 1, round((len(v) - 1) * f))] for f in (0.25, 0.5, 0.75)]
    return f"{q[1]:+.3f} [{q[0]:+.3f}, {q[2]:+.3f}]"


# The floor the speed targets were written against (the developers' guide): a bare pass-through on this stack, CPU
# a call.
TARGETS_FLOOR_MS = {"plain": 0.11, "stream": 0.15}


def floor_rows(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """--floor: per mode and concurrency, the bare pass-through's figures and the gateway's against them: its CPU a
    call as a multiple of the floor's (the target: within 1.7x with governance on), this machine's floor against the
    one the targets were written on, and the governed key's added CPU and p50 scaled to that machine."""
    floors = {(c["mode"], c["concurrency"]): c for c in cells if c.get("floor")}
    out = []
    for c in cells:
        f = floors.get((c["mode"], c["concurrency"]))
        if f is None or c.get("floor") or c["api"] != "chat":
            continue
        floor_cpu = f["gateway"]["server_cpu_ms_per_req"]
        factor = floor_cpu / TARGETS_FLOOR_MS[c["mode"]]
        out.append(
            {
                "label": c.get("label", c["api"]),
                "mode": c["mode"],
                "concurrency": c["concurrency"],
                "floor_added_p50_ms": f["added_p50_ms"],
                "floor_cpu_ms_per_req": floor_cpu,
                "machine_factor": factor,
                "cpu_ms_per_req": c["gateway"]["server_cpu_ms_per_req"],
                "cpu_vs_floor": c["gateway"]["server_cpu_ms_per_req"] / floor_cpu,
                "added_p50_ms": c["added_p50_ms"],
            }
        )
    return out


def floor_markdown(rows: list[dict[str, Any]], deltas: list[dict[str, Any]]) -> str:
    lines = [
        "| target | mode | conc | floor added p50 ms | floor CPU ms/req | this machine / the targets' | gateway CPU "
        "ms/req | **CPU / floor** |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['label']} | {r['mode']} | {r['concurrency']} | {r['floor_added_p50_ms']:+.2f} "
            f"| {r['floor_cpu_ms_per_req']:.3f} | {r['machine_factor']:.1f}x | {r['cpu_ms_per_req']:.3f} "
            f"| **{r['cpu_vs_floor']:.2f}x** |"
        )
    factors = {(r["mode"], r["concurrency"]): r["machine_factor"] for r in rows}
    for d in deltas:
        factor = factors.get((d["mode"], d["concurrency"]))
        if factor is not None and d["api"] == "chat":
            rounds = sorted(d["delta_p50_by_round_ms"])
            by_round = rounds[len(rounds) // 2] if rounds else math.nan
            lines.append(
                f"\n{d['mode']} c={d['concurrency']}: governed Δ p50 {d['delta_p50_ms']:+.3f} ms (round by round "
                f"{by_round:+.3f}), Δ CPU {d['delta_cpu_ms_per_req']:+.3f} ms/req; on the targets' machine "
                f"({factor:.1f}x this floor's speed) about {d['delta_p50_ms'] / factor:+.3f} "
                f"({by_round / factor:+.3f}) / {d['delta_cpu_ms_per_req'] / factor:+.3f}"
            )
    return "\n".join(lines)


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def governed_markdown(deltas: list[dict[str, Any]], with_api: bool = False, services: bool = False) -> str:
    head = (
        ("| api " if with_api else "")
        + (
            "| mode | conc | added p50 ms none / governed | **Δ p50 ms** | added p99 ms none / governed | Δ p99 ms "
            "| gateway CPU ms/req none / governed | **Δ CPU ms/req** | of which event loop | req/s none / governed "
            "| trace events per call none / governed | store writes per call none / governed |"
        )
        + (" PostgreSQL + Redis CPU ms/req none / governed |" if services else "")
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for d in deltas:
        lines.append(
            (f"| {d['api']} " if with_api else "") + f"| {d['mode']} | {d['concurrency']} "
            f"| {d['none_added_p50_ms']:+.2f} / {d['governed_added_p50_ms']:+.2f} | **{d['delta_p50_ms']:+.2f}** "
            f"| {d['none_added_p99_ms']:+.2f} / {d['governed_added_p99_ms']:+.2f} | {d['delta_p99_ms']:+.2f} "
            f"| {d['none_cpu_ms_per_req']:.2f} / {d['governed_cpu_ms_per_req']:.2f} "
            f"| **{d['delta_cpu_ms_per_req']:+.2f}** | {d['delta_loop_cpu_ms_per_req']:+.2f} "
            f"| {d['none_rps']:.0f} / {d['governed_rps']:.0f} "
            f"| {_num(d['none_events_per_req'])} / {_num(d['governed_events_per_req'])} "
            f"| {_num(d['none_writes_per_req'])} / {_num(d['governed_writes_per_req'])} |"
            + (
                f" {d['none_services_cpu_ms_per_req']:.2f} / {d['governed_services_cpu_ms_per_req']:.2f} |"
                if services
                else ""
            )
        )
    return "\n".join(lines)


# -- main ---------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--api",
        default="chat",
        help="wire format: chat (chat completions), messages (Anthropic Messages), translated (a chat request\n"
        "the gateway serves from an anthropic key as Messages; direct: the fake's /v1/messages); several,\n"
        "comma-separated, are measured in one run with their rounds interleaved (chat)",
    )
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
    p.add_argument("--no-journal", action="store_true", help="strict on SQLite without the trace journal")
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
    p.add_argument(
        "--governed",
        action="store_true",
        help="also send the load with a second workspace's key whose calls are under 3 budgets (workspace,\n"
        "department, virtual_key) and a workspace rate limit, none ever refusing; its rounds interleave with\n"
        "the plain key's, and the difference is reported. At the end each budget's spent must equal the cost\n"
        "recorded for that key's calls, with nothing left reserved",
    )
    p.add_argument(
        "--policies",
        type=int,
        default=0,
        metavar="N",
        help="put the second workspace's key under N policy rules across the 4 scopes, none refusing (with\n"
        "--governed: besides its budgets and rate limit; without: instead of them)",
    )
    p.add_argument(
        "--redis",
        default=None,
        metavar="URL",
        help="start the gateway with redis_url=URL (shared counters); the URL must name a database number\n"
        "other than 0 (redis://127.0.0.1:6379/12), which is FLUSHED before and after the run",
    )
    p.add_argument(
        "--workers", type=int, default=1, help="start the gateway with workers=N (needs --db postgres and --redis)"
    )
    p.add_argument(
        "--floor",
        action="store_true",
        help="also measure a bare pass-through on the same stack (benchmarks/floor.py: uvicorn + aiohttp, no\n"
        "parsing, no records) beside the gateway, chat format; its rounds interleave with the others', and the\n"
        "gateway's CPU is reported against it (the speed targets were set against this floor elsewhere)",
    )
    p.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    p.add_argument("--py-spy", type=Path, default=None, help="record the gateway with py-spy (speedscope) here")
    p.add_argument("--py-spy-rate", type=int, default=250, help="py-spy samples per second (250)")
    args = p.parse_args(argv)
    args.concurrency = [int(c) for c in str(args.concurrency).split(",") if c.strip()]
    args.api = list(dict.fromkeys(a.strip() for a in str(args.api).split(",") if a.strip()))
    if not args.api or any(a not in APIS for a in args.api):
        p.error(f"--api takes one or more of {', '.join(APIS)}, comma-separated")
    if args.requests < 1 or not args.concurrency or min(args.concurrency) < 1:
        p.error("--requests and every --concurrency must be positive")
    if args.workers < 1:
        p.error("--workers must be positive")
    if args.policies < 0 or args.policies > 200:
        p.error("--policies takes 0 to 200 rules")
    args.budgets = args.governed  # --policies alone: the second key is under the policies only
    args.governed = args.governed or args.policies > 0
    if args.workers > 1 and (args.db != "postgres" or not args.redis):
        p.error("--workers > 1 needs --db postgres and --redis (each worker is a replica)")
    if args.redis is not None:
        db = args.redis.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
        if not args.redis.startswith("redis://127.0.0.1:") or not db.isdigit() or int(db) == 0:
            p.error("--redis must be redis://127.0.0.1:PORT/N with a database number N > 0 (it is flushed)")
    if args.client is None:
        try:
            import aiohttp  # noqa: F401

            args.client = "aiohttp"
        except ImportError:
            args.client = "httpx"
    return args


def auth_headers(fmt: str, key: str) -> dict[str, str]:
    if fmt == "messages":  # as Anthropic's SDK sends them
        return {"content-type": "application/json", "x-api-key": key, "anthropic-version": ANTHROPIC_VERSION}
    return {"content-type": "application/json", "authorization": f"Bearer {key}"}


def preflight(apis: list[str]) -> None:
    """The Claude model is priced, and the direct body is what the gateway sends the provider (translated)."""
    if apis == ["chat"]:
        return
    chat = payload("translated", "chat", True)
    messages = payload("translated", "messages", True)
    out = subprocess.run(
        [sys.executable, "-c", PREFLIGHT_CODE, CLAUDE_MODEL, json.dumps(chat), json.dumps(messages)],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    if out.returncode != 0:
        raise RuntimeError(f"preflight failed: {out.stderr.strip()[-2000:]}")


def run_id(api: str, mode: str, conc: int) -> str:
    return f"bench-{mode}-{conc}" if api == "chat" else f"bench-{api}-{mode}-{conc}"


def floor_pair(stack: Stack) -> Pair:
    """The chat format through the bare pass-through, as the plain key's pair is through the gateway."""
    assert stack.floor is not None and stack.floor_url is not None
    pair = make_pair(stack, "chat")
    pair.gateway = Target("floor", stack.floor_url + "/v1/chat/completions", pair.direct.headers, stack.floor.pid)
    pair.floor = True
    return pair


def make_pair(stack: Stack, api: str, governed: bool = False) -> Pair:
    direct_fmt = "chat" if api == "chat" else "messages"
    gateway_fmt = "messages" if api == "messages" else "chat"
    paths = {"chat": "/v1/chat/completions", "messages": "/v1/messages"}
    direct = Target("direct", stack.upstream_url + paths[direct_fmt], {}, stack.upstream.pid, direct_fmt)
    gateway = Target("gateway", stack.gateway_url + paths[gateway_fmt], {}, stack.gateway.pid, gateway_fmt)
    gateway.pids = list(stack.gateway_pids)
    if len(stack.gateway_pids) == 1:  # with workers, /metrics answers for whichever worker takes the call
        gateway.metrics_url = stack.gateway_url + "/metrics"
    vk = stack.governed.vk if governed and stack.governed else stack.vk
    # Same header set and sizes both ways for the same format; only the key differs (both keys are as long).
    direct.headers = auth_headers(direct_fmt, "sk-x" * (len(vk) // 4))
    gateway.headers = auth_headers(gateway_fmt, vk)
    return Pair(api, direct, gateway, governed)


async def drive(stack: Stack, args: argparse.Namespace) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Every cell; returns them with the number of requests sent through the gateway per --api (warm-ups
    included)."""
    pairs = [make_pair(stack, api, governed) for api in args.api for governed in (False, True)[: 1 + args.governed]]
    if args.floor:
        pairs.append(floor_pair(stack))
    cells = []
    async with Client(args.client, max(args.concurrency) * 2) as client:
        for mode in args.modes:
            for conc in args.concurrency:
                before = {}
                for p in pairs:
                    if args.tracking and not p.floor:  # one run and session per cell, as an agent would send them
                        tracking = {
                            "alephant-run-id": run_id(p.api, mode, conc),
                            "alephant-session-id": "bench",
                            "alephant-session-path": f"/{mode}/c{conc}",
                        }
                        p.direct.headers.update(tracking)
                        p.gateway.headers.update(tracking)
                    before[p.label] = p.gateway.sent
                for p, cell in zip(pairs, await run_cell(client, pairs, mode == "stream", conc, args), strict=True):
                    cell["gateway_sent"] = p.gateway.sent - before[p.label]
                    cells.append(cell)
                    g, d = cell["gateway"], cell["direct"]
                    print(
                        f"  {p.label} {mode:6} c={conc:<3} "
                        f"direct p50 {d['p50_ms']:.2f} ms, gateway p50 {g['p50_ms']:.2f} ms "
                        f"(+{cell['added_p50_ms']:.2f}), p99 {g['p99_ms']:.2f} ms "
                        f"(x{g['p99_ms'] / g['p50_ms']:.1f}), CPU {g['server_cpu_ms_per_req']:.3f} ms/req"
                        + (f" (+{g['services_cpu_ms_per_req']:.3f} PG/Redis), " if SERVICES else ", ")
                        + f"{d['throughput_rps']:.0f} vs {g['throughput_rps']:.0f} req/s; "
                        f"other load {max(d['other_load_cores'], g['other_load_cores']):.2f} cores"
                        + (" [TIME CAP HIT]" if cell["timed_out"] else ""),
                        file=sys.stderr,
                        flush=True,
                    )
    return cells, {p.label: p.gateway.sent for p in pairs if not p.floor}


def flush_redis(url: str) -> None:
    """Empty the benchmark's own Redis database (parse_args checked the URL names one, not 0)."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()


def main(argv: list[str] | None = None) -> int:
    global SERVICES
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="agentledger-bench-"))
    pg_name = None
    spy = None
    stack = None
    books = None
    settings: dict[str, str] = {}
    if args.no_journal:
        settings["trace_journal"] = "false"
    if args.redis:
        settings["redis_url"] = args.redis
    if args.workers > 1:
        settings["workers"] = str(args.workers)
    SERVICES = (("postgres",) if args.db == "postgres" else ()) + (("redis-server",) if args.redis else ())
    try:
        db_url = None
        if args.db == "postgres":
            pg_name, db_url = create_pg_database()
        if args.redis:
            flush_redis(args.redis)
        preflight(args.api)
        apis = ",".join(args.api)
        print(
            f"starting upstream and gateway ({args.db}, --api {apis}"
            + (f", redis {args.redis}" if args.redis else "")
            + (f", workers {args.workers}" if args.workers > 1 else "")
            + (", --governed" if args.governed else "")
            + f") in {workdir}",
            file=sys.stderr,
            flush=True,
        )
        stack = start_stack(
            workdir,
            db_url,
            args.durability,
            anthropic=args.api != ["chat"],
            settings=settings,
            governed=args.governed,
            budgets=args.budgets,
            policies=args.policies,
            floor=args.floor,
        )
        OUR_PIDS[:] = [stack.upstream.pid, *stack.gateway_pids] + ([stack.floor.pid] if stack.floor else [])
        if args.workers > 1:
            print(f"gateway processes (CPU summed): {stack.gateway_pids}", file=sys.stderr, flush=True)
        if args.py_spy:
            exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
            spy = subprocess.Popen(
                [exe, "record", "--pid", str(stack.gateway.pid), "--rate", str(args.py_spy_rate), "--nonblocking"]
                + (["--subprocesses"] if args.workers > 1 else [])
                + ["--format", "speedscope", "-o", str(args.py_spy)],
                stdout=subprocess.DEVNULL,
                stderr=(workdir / "py-spy.log").open("wb"),
            )
            OUR_PIDS.append(spy.pid)
        results, sent_by_api = asyncio.run(drive(stack, args))
        sent = sum(sent_by_api.values())
        claude_sent = sum(n for label, n in sent_by_api.items() if label.split("+")[0] != "chat")
        recorded = recorded_requests(stack)
        claude = priced_claude_calls(stack) if claude_sent else None
        runs = recorded_model_calls(stack, results) if args.tracking else {}
        if args.governed and args.budgets:
            books = governed_books(stack, sum(n for label, n in sent_by_api.items() if label.endswith("+governed")))
    finally:
        if spy is not None:
            stop(spy)
        if stack is not None:
            stop_stack(stack)
        if pg_name:
            drop_pg_database(pg_name)
        if args.redis:
            flush_redis(args.redis)
        shutil.rmtree(workdir, ignore_errors=True)

    # --api messages/translated: every request of theirs was a Claude call, and each was priced.
    claude_ok = claude is None or (claude[0] == claude_sent and claude[1] > 0)
    claude_report = None
    if claude is not None:
        claude_report = {"model": CLAUDE_MODEL, "sent": claude_sent, "requests": claude[0], "cost_nanos": claude[1]}
    report: dict[str, Any] = {
        "machine": machine(),
        "config": {
            "api": args.api,
            "requests": args.requests,
            "warmup": args.warmup,
            "rounds": args.rounds,
            "concurrency": args.concurrency,
            "modes": args.modes,
            "db": args.db,
            "durability": args.durability,
            "trace_journal": not args.no_journal,
            "client": args.client,
            "stream_include_usage": args.include_usage,
            "tracking_headers": args.tracking,
            "governed": args.governed,
            "floor": args.floor,
            "redis": args.redis,
            "workers": args.workers,
        },
        "cells": results,
        "tracing": {
            "sent_through_gateway": sent,
            "sent_by_api": sent_by_api,
            "recorded_by_gateway": recorded,
            "runs": {k: {"sent": a, "model_calls": b} for k, (a, b) in runs.items()},
            "claude": claude_report,
            "budgets": books,
            "ok": sent == recorded
            and claude_ok
            and all(a == b for a, b in runs.values())
            and (books is None or books["ok"]),
        },
    }
    m = report["machine"]
    print(
        f"\n{m['cpu']}, {m['cores']} cores, Python {m['python']}; --api {','.join(args.api)}; client {args.client}; "
        f"store {args.db}, "
        + (f"redis {args.redis}, " if args.redis else "")
        + (f"workers {args.workers}, " if args.workers > 1 else "")
        + f"durability {args.durability}; "
        f"{args.requests} requests per target per cell after {args.warmup} warm-up\n"
    )
    services = bool(SERVICES)
    print(markdown(results, with_api=args.api != ["chat"] or args.governed, services=services))
    if args.governed:
        deltas = governed_deltas(results)
        report["governed_vs_none"] = deltas
        print("\ngoverned (3 budgets + a rate limit) against none, same gateway, interleaved rounds:\n")
        print(governed_markdown(deltas, with_api=args.api != ["chat"], services=services))
        for d in deltas:
            if d["delta_thread_cpu_ms_per_req"]:
                split = ", ".join(
                    f"{k} {v:+.3f}" for k, v in d["delta_thread_cpu_ms_per_req"].items() if abs(v) >= 0.0005
                )
                print(f"  Δ CPU ms/req by thread, {d['mode']} c={d['concurrency']}: {split}")
            print(
                f"  Δ p50 ms round by round (same-round pairs), {d['mode']} c={d['concurrency']}: median and "
                f"quartiles {spread(d['delta_p50_by_round_ms'])} over {len(d['delta_p50_by_round_ms'])} rounds"
            )
    if args.floor:
        rows = floor_rows(results)
        report["floor"] = rows
        print(
            "\nagainst the floor (a bare pass-through on this stack, benchmarks/floor.py; the targets' machine: "
            f"{TARGETS_FLOOR_MS['plain']} ms CPU a plain call, {TARGETS_FLOOR_MS['stream']} streamed):\n"
        )
        print(floor_markdown(rows, report.get("governed_vs_none", [])))
    errors = sum(c["direct"]["errors"] + c["gateway"]["errors"] for c in results)
    ok = report["tracing"]["ok"]
    verdict = "OK" if sent == recorded else "MISMATCH"
    print(f"\ntracing: {sent} requests sent through the gateway, {recorded} recorded ({verdict}); errors: {errors}")
    if books is not None:
        print(
            f"  budgets: the governed key sent {books['sent']}, {books['requests']} recorded costing "
            f"{books['cost_nanos']} nano-USD; "
            + ", ".join(
                f"{k} spent {b['spent_nanos']} reserved {b['reserved_nanos']}" for k, b in books["budgets"].items()
            )
            + (" (OK)" if books["ok"] else " (MISMATCH)")
        )
    if claude is not None:
        print(
            f"  {CLAUDE_MODEL}: {claude_sent} requests sent, {claude[0]} recorded, "
            f"cost ${claude[1] / 1e9:.6f} (must be > 0)"
        )
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

"""The scale benchmark (issue 6): N steps loaded through the real step API, then the query API measured.

    python benchmarks/scale.py [--steps N] [--db sqlite|postgres] [--durability strict|batched]
                               [--clients 4] [--batch 1000] [--repeat 20] [--seed 6]
                               [--under-load [--under-load-steps 50000] [--readers 4]]
                               [--keep DIR] [--json PATH]
    python benchmarks/scale.py --skip-load --data-dir DIR [--db-url URL] [...]   (queries on a kept dataset)

Two processes on 127.0.0.1, nothing else is contacted (besides PostgreSQL with --db postgres):
  * the gateway, started the way users start it (`python -m agentledger ... serve`), on SQLite in a temporary
    data directory, or on a fresh PostgreSQL database (dropped at the end) with --db postgres;
  * this process: it creates two departments, five agents and a virtual key per department through the admin
    API, then loads the dataset with `--clients` concurrent HTTP clients through `POST /v1/runs/{id}/steps`.

The dataset has the shape of issue 6's (1M steps = 9,100 runs, 1,000 sessions, 5 agents, 30 days), scaled to
--steps: runs of ~110 steps (phases of workflow steps, model calls priced from the catalog, tool and API calls
with reported costs, errors and retries, nested by parent_id, session paths, attributes, a `team` property),
generated run by run from a seeded RNG, so the loader holds one run at a time and the data is the same
whatever the concurrency. A run's steps are posted in batches of up to --batch (one run per request: the
endpoint is per run), carrying the run's attribution (`{"run": {...}, "steps": [...]}` and the tracking
headers) where the gateway accepts that; else each run is created first with `POST /v1/runs` (detected once,
at the start, with a probe run). Each run is then ended with `POST /v1/runs/{id}/end` (--no-end: not).

Before loading, `team` is declared an indexed property (`POST /api/analytics/properties`) where the gateway
has that API, as a user grouping by it would.

Reported: ingest steps/s (wall), CPU per step of the gateway process, of PostgreSQL (its backends for this
database and its writer processes, from /proc) and of this loader, and the CPU other processes used meanwhile
(a busy machine skews everything); then p50/p95 of the query set, each query --repeat times after --warmup.
Every answer must be 200, and what they say is checked: the sums by agent, by property.team and by model per
day equal the workspace total (the same window), the workspace holds every step sent, the sample run every
step posted for it, the sample session its runs and their steps, the cursor page the runs after the first.
--under-load: the ingest rate of --under-load-steps alone, then again while --readers clients loop the
costs-by-model-per-day query and the runs list, and one more reads a single run (issue 6's target: reads slow
ingest by at most 20%).

--keep DIR keeps the dataset (the gateway's data dir; with --db postgres the database too) with a manifest
(scale-manifest.json: the plan, the admin token and virtual keys, in clear: a local benchmark's); then
--skip-load --data-dir DIR reruns the queries (and --under-load) on it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urlencode

import orjson
from _procs import (
    PG_ADMIN_URL,
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

T = TypeVar("T")

# -- the dataset ------------------------------------------------------------------------------------------
STEPS_PER_RUN = 110  # issue 6: 1M steps = 9,100 runs
STEPS_PER_SESSION = 1000  # 1M steps = 1,000 sessions
DAYS = 30.0
PHASE_STEPS = 22  # a workflow step opens a phase every this many steps
MAX_BATCH = 1000  # the step API's limit per request
MANIFEST = "scale-manifest.json"
PROBE_RUN, PROBE_SESSION = "scale-probe-run", "scale-probe"  # the probe run of `probe`
PROBE_WORKFLOW = PROBE_PROPERTY = "scale-probe"

DEPARTMENTS = (("scale-ops", "Operations"), ("scale-growth", "Growth"))


@dataclass(frozen=True)
class Agent:
    id: str
    department: str
    kind: str
    team: str
    workflow: str
    weight: int


AGENTS = (
    Agent("scale-planner", "scale-ops", "ai", "search", "trip-planner", 3),
    Agent("scale-researcher", "scale-ops", "ai", "search", "deep-research", 2),
    Agent("scale-billing", "scale-growth", "workflow", "billing", "invoice-run", 2),
    Agent("scale-support", "scale-growth", "ai", "support", "ticket-triage", 2),
    Agent("scale-ops-runner", "scale-ops", "workflow", "support", "nightly-ops", 1),
)
AGENT_POOL = tuple(a for a in AGENTS for _ in range(a.weight))
TEAMS = sorted({a.team for a in AGENTS})
# (model, provider, weight): names the built-in catalog (genai-prices) prices.
MODELS = (
    ("gpt-4o-mini", "openai", 5),
    ("gpt-4o", "openai", 2),
    ("gpt-4.1-mini", "openai", 1),
    ("claude-3-5-sonnet-20241022", "anthropic", 2),
    ("claude-3-5-haiku-20241022", "anthropic", 1),
)
MODEL_POOL = tuple((m, p) for m, p, w in MODELS for _ in range(w))
TOOLS = ("web_search", "read_file", "sql_query", "vector_lookup", "send_email", "calculator")
APIS = ("stripe.charges", "crm.lookup", "maps.route", "weather.get")
PATHS = ("/plan", "/plan/search", "/act", "/act/billing", "/review")


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class Run:
    index: int
    run_id: str
    agent: Agent
    session: int
    session_id: str
    started: float  # epoch seconds
    steps: int

    @property
    def workflow(self) -> str:
        return self.agent.workflow

    @property
    def name(self) -> str:
        return f"{self.agent.workflow} #{self.index}"


class Plan:
    """`steps` steps in runs of ~110 over `days` days ending at `end`; every run derives from (seed, prefix, i)."""

    def __init__(self, prefix: str, steps: int, seed: int, end: float, days: float = DAYS) -> None:
        self.prefix, self.steps, self.seed, self.end, self.days = prefix, steps, seed, end, days
        self.runs = min(steps, max(1, round(steps / STEPS_PER_RUN)))
        self.sessions = min(self.runs, max(1, round(steps / STEPS_PER_SESSION)))
        self.start = end - days * 86400

    def rng(self, what: str, i: int) -> random.Random:
        return random.Random(f"{self.seed}:{self.prefix}:{what}:{i}")

    def size(self, i: int) -> int:
        """Steps of run i: the mean, give or take up to a third, in pairs (+j, -j) so they add up exactly."""
        base, extra = divmod(self.steps, self.runs)
        n = base + (1 if i < extra else 0)
        pair = i // 2
        if 2 * pair + 1 < self.runs:
            j = self.rng("size", pair).randint(0, base // 3)
            n += j if i % 2 == 0 else -j
        return n

    def session_id(self, k: int) -> str:
        return f"{self.prefix}-s{k:06d}"

    def run(self, i: int) -> Run:
        rng = self.rng("run", i)
        agent = rng.choice(AGENT_POOL)
        session = i * self.sessions // self.runs  # consecutive runs share a session: a session spans ~45 min
        slot = (self.end - self.start) / self.runs
        started = self.start + (i + 0.9 * rng.random()) * slot
        return Run(i, f"{self.prefix}-r{i:07d}", agent, session, self.session_id(session), started, self.size(i))

    def session_runs(self, k: int) -> list[int]:
        """The indexes of session k's runs."""
        return [i for i in range(self.runs) if i * self.sessions // self.runs == k]

    def run_near(self, steps: int) -> Run:
        """A run from the middle of the dataset whose size is nearest `steps`."""
        mid = self.runs // 2
        return min((self.run(i) for i in range(mid, min(self.runs, mid + 64))), key=lambda r: abs(r.steps - steps))

    def run_steps(self, run: Run) -> list[dict[str, Any]]:
        """The run's steps, in order: phases (workflow steps) holding model calls holding tool and API calls."""
        rng = self.rng("steps", run.index)
        rand, randint, choice = rng.random, rng.randint, rng.choice
        out: list[dict[str, Any]] = []
        t = run.started
        phase = model = None
        path = PATHS[0]
        n = run.steps
        while len(out) < n:
            j = len(out)
            step: dict[str, Any]
            if j % PHASE_STEPS == 0:
                path = PATHS[(j // PHASE_STEPS) % len(PATHS)]
                step = {"kind": "workflow_step", "name": path.rsplit("/", 1)[1]}
                if rand() < 0.3:
                    step["branch"] = "approved" if rand() < 0.8 else "escalated"
                latency = randint(5, 50)
            else:
                r = rand()
                if r < 0.45:
                    m, p = choice(MODEL_POOL)
                    inp = randint(200, 12_000)
                    usage = {"input_tokens": inp, "output_tokens": randint(20, 1500)}
                    if rand() < 0.3:
                        usage["cached_input_tokens"] = inp // 2
                    step = {"kind": "model_call", "name": "chat", "model": m, "provider": p, "usage": usage}
                    step["parent_id"] = phase
                    latency = randint(300, 6000)
                elif r < 0.8:
                    step = {"kind": "tool_call", "name": choice(TOOLS), "cost_usd": f"{randint(1, 20_000) / 1e6:.6f}"}
                    step["parent_id"] = model or phase
                    step["input"] = {"q": f"term-{randint(1, 999)}"}
                    latency = randint(20, 800)
                else:
                    step = {"kind": "api_call", "name": choice(APIS), "cost_usd": f"{randint(100, 50_000) / 1e6:.6f}"}
                    step["parent_id"] = model or phase
                    latency = randint(50, 1500)
            step["id"] = f"{run.run_id}.{j}"
            step["started_at"] = iso(t)
            step["latency_ms"] = latency
            step["session_path"] = path
            step["attributes"] = {"seq": j, "env": "prod"}
            out.append(step)
            t += latency / 1000 + rand() * 0.5
            if step["kind"] == "workflow_step":
                phase, model = step["id"], None
            elif step["kind"] == "model_call":
                model = step["id"]
            if step["kind"] != "workflow_step" and len(out) < n and rand() < 0.03:  # failed, then retried once
                step["status"], step["error"] = "error", "upstream timeout"
                retry = {k: v for k, v in step.items() if k not in ("status", "error")}
                retry["id"], retry["attempt"], retry["started_at"] = f"{run.run_id}.{j + 1}", 2, iso(t)
                retry["attributes"] = {"seq": j + 1, "env": "prod"}
                out.append(retry)
                t += latency / 1000
                if step["kind"] == "model_call":
                    model = retry["id"]
        return out

    def describe(self) -> dict[str, Any]:
        return {"prefix": self.prefix, "steps": self.steps, "runs": self.runs, "sessions": self.sessions}


def run_ended(run: Run, steps: list[dict[str, Any]]) -> float:
    last = steps[-1]
    return datetime.fromisoformat(last["started_at"]).timestamp() + last["latency_ms"] / 1000


# -- HTTP -----------------------------------------------------------------------------------------------------
class GatewayDied(RuntimeError):
    pass


class HttpError(RuntimeError):
    pass


class Http:
    """One shared async client (aiohttp, or httpx): `request` returns (status, body bytes, seconds)."""

    def __init__(self, base_url: str, kind: str, connections: int, timeout: float) -> None:
        self.base_url, self.kind, self.connections, self.timeout = base_url, kind, connections, timeout
        self._session: Any = None
        self._errors: tuple[type[BaseException], ...] = ()  # the client's transport errors

    async def __aenter__(self) -> Http:
        if self.kind == "aiohttp":
            import aiohttp

            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.connections, limit_per_host=self.connections),
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            )
            self._errors = (aiohttp.ClientError,)
        else:
            import httpx

            limits = httpx.Limits(max_connections=self.connections, max_keepalive_connections=self.connections)
            self._session = httpx.AsyncClient(limits=limits, timeout=self.timeout, trust_env=False)
            self._errors = (httpx.TransportError,)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.kind == "aiohttp":
            await self._session.close()
        else:
            await self._session.aclose()

    async def request(
        self, method: str, path: str, headers: dict[str, str], body: bytes | None = None
    ) -> tuple[int, bytes, float]:
        url = self.base_url + path
        t0 = time.perf_counter()
        try:
            if self.kind == "aiohttp":
                async with self._session.request(method, url, data=body, headers=headers) as resp:
                    status, data = resp.status, await resp.read()
            else:
                resp = await self._session.request(method, url, content=body, headers=headers)
                status, data = resp.status_code, resp.content
        except TimeoutError:
            raise HttpError(f"{method} {path}: no answer within {self.timeout:.0f} s (--timeout)") from None
        except self._errors as exc:  # refused, reset, or (httpx) timed out
            raise HttpError(f"{method} {path}: {type(exc).__name__}: {exc}") from None
        return status, data, time.perf_counter() - t0

    async def expect(
        self, method: str, path: str, headers: dict[str, str], body: Any = None, ok: tuple[int, ...] = (200, 201)
    ) -> tuple[Any, float]:
        """The parsed answer, or HttpError naming the call and the gateway's answer."""
        raw = body if body is None or isinstance(body, bytes) else orjson.dumps(body)
        status, data, seconds = await self.request(method, path, headers, raw)
        if status not in ok:
            raise HttpError(f"{method} {path}: {status} {data[:2000].decode(errors='replace')}")
        return orjson.loads(data) if data else None, seconds


async def guarded(proc: subprocess.Popen[bytes], log: Path, work: Awaitable[T]) -> T:
    """Runs `work`, aborting it with GatewayDied as soon as the gateway process exits (also when `work` failed
    first, on the connection the dying gateway dropped)."""
    task = asyncio.ensure_future(work)
    while True:
        done, _ = await asyncio.wait({task}, timeout=0.5)
        if done:
            if task.exception() is not None and _exited(proc):
                raise _died(proc, log) from task.exception()
            return task.result()
        if proc.poll() is not None:
            task.cancel()
            with suppress(BaseException):  # the gateway's exit is the error to report
                await task
            raise _died(proc, log)


def _exited(proc: subprocess.Popen[bytes]) -> bool:
    try:
        proc.wait(2)
    except subprocess.TimeoutExpired:
        return False
    return True


def _died(proc: subprocess.Popen[bytes], log: Path) -> GatewayDied:
    tail = log.read_text(errors="replace")[-4000:]
    return GatewayDied(f"the gateway exited with status {proc.returncode} during the benchmark:\n{tail}")


# -- CPU -----------------------------------------------------------------------------------------------------
class PgCpu:
    """CPU of the PostgreSQL processes serving the benchmark's database (its backends, autovacuum workers on
    it) and of the server's writers (WAL writer, checkpointer, background writer), read from /proc. Sampled
    now and then, so a backend that exits is counted up to its last sample. None where /proc does not show
    them (a server on another machine)."""

    AUX = ("walwriter", "checkpointer", "background writer")

    def __init__(self, db_name: str) -> None:
        import psycopg

        self.db_name = db_name
        self.conn = psycopg.connect(PG_ADMIN_URL, autocommit=True)
        self.first: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self.started = False

    def _pids(self) -> list[int]:
        rows = self.conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE (datname = %s OR backend_type = ANY(%s)) "
            "AND pid <> pg_backend_pid()",
            (self.db_name, list(self.AUX)),
        ).fetchall()
        return [int(r[0]) for r in rows]

    def sample(self) -> None:
        try:
            pids = self._pids()
        except Exception:
            return
        for pid in pids:
            c = cpu_seconds(pid)
            if c is None:
                continue
            if pid not in self.first:
                self.first[pid] = c if not self.started else 0.0  # a process new in the window: all its CPU
            self.last[pid] = c

    def begin(self) -> None:
        self.first, self.last, self.started = {}, {}, False
        self.sample()
        self.started = True

    def seconds(self) -> float | None:
        self.sample()
        if not self.last:
            return None
        return sum(self.last[p] - self.first[p] for p in self.last)

    def close(self) -> None:
        self.conn.close()


@dataclass
class Meter:
    """CPU of the gateway, PostgreSQL, this process and the rest of the machine over a window."""

    gateway_pid: int
    pg: PgCpu | None
    wall: float = 0.0
    gateway: float | None = None
    db: float | None = None
    loader: float = 0.0
    other: float | None = None
    _t: tuple[Any, ...] = ()

    def begin(self) -> None:
        if self.pg is not None:
            self.pg.begin()
        self._t = (time.perf_counter(), cpu_seconds(self.gateway_pid), time.process_time(), machine_busy_seconds())

    def end(self) -> None:
        t0, gw0, me0, busy0 = self._t
        self.wall = time.perf_counter() - t0
        gw1, me1, busy1 = cpu_seconds(self.gateway_pid), time.process_time(), machine_busy_seconds()
        self.gateway = gw1 - gw0 if gw0 is not None and gw1 is not None else None
        self.loader = me1 - me0
        self.db = self.pg.seconds() if self.pg is not None else None
        if busy0 is not None and busy1 is not None and self.gateway is not None:
            self.other = max(0.0, busy1 - busy0 - self.gateway - self.loader - (self.db or 0.0)) / self.wall


# -- setup ---------------------------------------------------------------------------------------------------
@dataclass
class Ctx:
    http: Http
    admin: dict[str, str]  # headers with the admin token
    keys: dict[str, str]  # department → virtual key
    batch_run: bool = False  # the step batch carries its run's attribution ({"run": ...} and headers)
    step_properties: bool = False  # alephant-property-* on the steps POST is stored
    end_runs: bool = True
    batch: int = MAX_BATCH


async def setup(http: Http, admin_token: str) -> dict[str, str]:
    """Departments, agents and one virtual key per department (not bound to an agent: its runs name theirs)."""
    admin = {"authorization": f"Bearer {admin_token}"}
    for dep_id, name in DEPARTMENTS:
        await http.expect("POST", "/api/departments", admin, {"id": dep_id, "name": name})
    for a in AGENTS:
        body = {"id": a.id, "name": a.id.removeprefix("scale-"), "department_id": a.department, "kind": a.kind}
        await http.expect("POST", "/api/agents", admin, body)
    keys = {}
    for dep_id, _ in DEPARTMENTS:
        key, _ = await http.expect(
            "POST", "/api/virtual-keys", admin, {"name": f"scale {dep_id}", "department_id": dep_id}
        )
        keys[dep_id] = key["key"]
    return keys


def step_headers(ctx: Ctx, agent: Agent, session_id: str, session_name: str, team: str) -> dict[str, str]:
    return {
        "authorization": f"Bearer {ctx.keys[agent.department]}",
        "content-type": "application/json",
        "alephant-agent-id": agent.id,
        "alephant-session-id": session_id,
        "alephant-session-name": session_name,
        "alephant-session-path": PATHS[0],
        "alephant-property-team": team,
    }


async def probe(ctx: Ctx) -> dict[str, Any]:
    """Does a step batch carry its run's attribution on this gateway? One probe run with one step finds out:
    a 400 naming `run`, or a run stored without the agent, session and workflow sent, means no, and runs are
    then created with POST /v1/runs first. Also: are alephant-property-* headers on the steps POST stored?"""
    agent = AGENTS[0]
    headers = step_headers(ctx, agent, PROBE_SESSION, "scale probe", "probe")
    del headers["alephant-property-team"]  # the probe step has no team: the loaded steps' teams are all there is
    headers[f"alephant-property-{PROBE_PROPERTY}"] = "yes"
    run = {"agent_id": agent.id, "session_id": PROBE_SESSION, "workflow": PROBE_WORKFLOW, "name": "probe"}
    step = {"id": f"{PROBE_RUN}.0", "kind": "workflow_step", "name": "probe", "started_at": iso(time.time())}
    path = f"/v1/runs/{PROBE_RUN}/steps"
    status, data, _ = await ctx.http.request("POST", path, headers, orjson.dumps({"run": run, "steps": [step]}))
    note = ""
    if status == 201:
        stored, _ = await ctx.http.expect("GET", f"/api/runs/{PROBE_RUN}", ctx.admin)
        got = {k: stored.get(k) for k in ("agent_id", "session_id", "workflow")}
        ctx.batch_run = got == {k: run[k] for k in got}
        if not ctx.batch_run:
            note = f"the `run` member was accepted but not applied (run stored with {got})"
    elif status == 400 and _names_run(data):
        note = f"the `run` member was refused: {data[:300].decode(errors='replace')}"
        await ctx.http.expect("POST", "/v1/runs", headers, {"run_id": PROBE_RUN, **run})
        await ctx.http.expect("POST", path, headers, {"steps": [step]})
    else:
        raise HttpError(f"POST {path} (probe): {status} {data[:2000].decode(errors='replace')}")
    rows, _ = await ctx.http.expect("GET", f"/api/analytics/costs?group_by=property.{PROBE_PROPERTY}", ctx.admin)
    ctx.step_properties = any(r.get("key") == "yes" for r in rows["data"])
    # Declare `team` an indexed property where the gateway has that (rolled up as it is written), as a user
    # who groups by it would; elsewhere group_by=property.team is computed from the events.
    status, data, _ = await ctx.http.request(
        "POST", "/api/analytics/properties", {**ctx.admin, "content-type": "application/json"}, b'{"name":"team"}'
    )
    indexed = status in (200, 201)
    if not indexed and status not in (404, 405):
        raise HttpError(f"POST /api/analytics/properties: {status} {data[:2000].decode(errors='replace')}")
    return {
        "batch_carries_run": ctx.batch_run,
        "step_headers_properties": ctx.step_properties,
        "team_property_indexed": indexed,
        "note": note,
        "probe_steps": 1,
    }


def _names_run(data: bytes) -> bool:
    try:
        err = orjson.loads(data)["error"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return False
    return str(err.get("param") or "").split(".")[0] == "run" or "'run'" in str(err.get("message", ""))


# -- load ------------------------------------------------------------------------------------------------------
@dataclass
class LoadStats:
    steps: int = 0
    runs: int = 0
    requests: int = 0
    post_seconds: list[float] = field(default_factory=list)  # per steps POST, for the latency of a batch


async def post_run(ctx: Ctx, plan: Plan, i: int, stats: LoadStats) -> None:
    run = plan.run(i)
    steps = plan.run_steps(run)
    team = run.agent.team
    headers = step_headers(ctx, run.agent, run.session_id, f"session {run.session}", team)
    meta = {"agent_id": run.agent.id, "session_id": run.session_id, "workflow": run.workflow, "name": run.name}
    if not ctx.batch_run:
        body = {"run_id": run.run_id, **meta, "session_name": f"session {run.session}", "started_at": iso(run.started)}
        await ctx.http.expect("POST", "/v1/runs", headers, body, ok=(201,))
        stats.requests += 1
    path = f"/v1/runs/{run.run_id}/steps"
    for b in range(0, len(steps), ctx.batch):
        chunk = steps[b : b + ctx.batch]
        doc: dict[str, Any] = {"steps": chunk}
        if ctx.batch_run and b == 0:
            doc = {"run": meta, "steps": chunk}
        status, data, seconds = await ctx.http.request("POST", path, headers, orjson.dumps(doc))
        if status != 201:
            raise HttpError(f"POST {path}: {status} {data[:2000].decode(errors='replace')}")
        stats.post_seconds.append(seconds)
        stats.requests += 1
        stats.steps += len(chunk)
    if ctx.end_runs:
        failed = steps[-1].get("status") == "error" or plan.rng("end", i).random() < 0.04
        end = {"status": "failed" if failed else "succeeded", "ended_at": iso(run_ended(run, steps))}
        await ctx.http.expect("POST", f"/v1/runs/{run.run_id}/end", headers, end, ok=(200,))
        stats.requests += 1
    stats.runs += 1


async def load(ctx: Ctx, plan: Plan, clients: int, meter: Meter, label: str) -> dict[str, Any]:
    stats = LoadStats()
    runs = iter(range(plan.runs))  # shared by the workers: next() is synchronous, so each run is taken once

    async def worker() -> None:
        for i in runs:
            await post_run(ctx, plan, i, stats)

    async def progress() -> None:
        t0 = time.perf_counter()
        while True:
            await asyncio.sleep(5)
            if meter.pg is not None:
                meter.pg.sample()
            dt = time.perf_counter() - t0
            rate = stats.steps / dt
            eta = (plan.steps - stats.steps) / rate if rate else math.inf
            print(
                f"  {label}: {stats.steps:,}/{plan.steps:,} steps, {stats.runs:,} runs, {rate:,.0f} steps/s, "
                f"~{eta:,.0f} s to go",
                file=sys.stderr,
                flush=True,
            )

    meter.begin()
    ticker = asyncio.create_task(progress())
    try:
        await asyncio.gather(*(worker() for _ in range(max(1, min(clients, plan.runs)))))
    finally:
        ticker.cancel()
    meter.end()
    return ingest_summary(label, stats, meter)


def ingest_summary(label: str, stats: LoadStats, m: Meter) -> dict[str, Any]:
    n = stats.steps

    def per_step(seconds: float | None) -> float | None:
        return 1e6 * seconds / n if seconds is not None and n else None

    lat = sorted(stats.post_seconds)
    return {
        "phase": label,
        "steps": n,
        "runs": stats.runs,
        "requests": stats.requests,
        "wall_s": m.wall,
        "steps_per_s": n / m.wall if m.wall else math.nan,
        "gateway_cpu_us_per_step": per_step(m.gateway),
        "gateway_cores": m.gateway / m.wall if m.gateway is not None and m.wall else None,
        "db_cpu_us_per_step": per_step(m.db),
        "loader_cpu_us_per_step": per_step(m.loader),
        "loader_cores": m.loader / m.wall if m.wall else None,
        "other_load_cores": m.other,
        "batch_post_p50_ms": pct(lat, 50),
        "batch_post_p95_ms": pct(lat, 95),
    }


# -- queries ---------------------------------------------------------------------------------------------------
def qs(path: str, **params: str) -> str:
    return f"{path}?{urlencode(params)}" if params else path


async def measure(ctx: Ctx, name: str, path: str, repeat: int, warmup: int) -> dict[str, Any]:
    body: Any = None
    for _ in range(warmup):
        await ctx.http.expect("GET", path, ctx.admin, ok=(200,))
    lat = []
    size = 0
    for _ in range(repeat):
        status, data, seconds = await ctx.http.request("GET", path, ctx.admin)
        if status != 200:
            raise HttpError(f"GET {path}: {status} {data[:2000].decode(errors='replace')}")
        lat.append(seconds)
        size = len(data)
        body = data
    lat.sort()
    print(f"  {name}: p50 {pct(lat, 50):,.1f} ms, p95 {pct(lat, 95):,.1f} ms", file=sys.stderr, flush=True)
    return {
        "query": name,
        "path": path,
        "p50_ms": pct(lat, 50),
        "p95_ms": pct(lat, 95),
        "max_ms": 1000 * lat[-1],
        "bytes": size,
        "body": orjson.loads(body),
    }


def load_window(plan: Plan) -> dict[str, str]:
    """30 days ending at the load's "now" (the dataset ends an hour before it), for the time-bucketed query."""
    return {"from": iso(plan.end + 3600 - DAYS * 86400), "to": iso(plan.end + 3600)}


def cost_total(rows: list[dict[str, Any]], key: str = "cost_nanos") -> int:
    return sum(int(r.get(key) or 0) for r in rows)


async def query_set(
    ctx: Ctx, man: dict[str, Any], repeat: int, warmup: int
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The query set of issue 6, measured; then the sanity checks on what it answered."""
    plan = plan_of(man)
    agent = min(AGENTS, key=lambda a: a.weight)  # the rarest agent: the filter has most runs to pass over
    session = plan.sessions // 2
    session_runs = plan.session_runs(session)
    sample = plan.run_near(100)
    window = load_window(plan)
    costs = "/api/analytics/costs"
    queries: dict[str, tuple[str, str]] = {  # key: (label, path)
        "runs": ("runs, first page", qs("/api/runs", limit="50")),
        "agent_runs": (f"runs of one agent ({agent.id})", qs("/api/runs", limit="50", agent=agent.id)),
    }
    first, _ = await ctx.http.expect("GET", queries["runs"][1], ctx.admin, ok=(200,))
    notes = []
    cursor = first.get("next_cursor")
    if cursor:
        queries["page2"] = ("runs, second page (cursor)", qs("/api/runs", limit="50", cursor=str(cursor)))
    else:
        notes.append("runs by cursor: skipped, /api/runs has no next_cursor (no keyset pagination on this server)")
    queries |= {
        "session": (f"session ({len(session_runs)} runs)", f"/api/sessions/{quote(plan.session_id(session))}"),
        "by_agent": ("costs by agent", qs(costs, group_by="agent")),
        "by_model_day": ("costs by model per day, 30 days", qs(costs, group_by="model", interval="day", **window)),
        "by_team": ("costs by property.team", qs(costs, group_by="property.team")),
        "run": (f"one run ({sample.steps} steps)", f"/api/runs/{quote(sample.run_id)}"),
        "workspace": ("costs, workspace total", qs(costs, group_by="workspace")),
    }
    results = []
    body: dict[str, Any] = {}
    for key, (label, path) in queries.items():
        r = await measure(ctx, label, path, repeat, warmup)
        body[key] = r.pop("body")
        results.append(r)
    windowed, _ = await ctx.http.expect("GET", qs(costs, group_by="workspace", **window), ctx.admin, ok=(200,))

    checks: dict[str, tuple[Any, Any]] = {}
    ws, agents, days = body["workspace"]["data"], body["by_agent"]["data"], body["by_model_day"]["data"]
    checks["costs by agent = workspace total"] = (cost_total(agents), cost_total(ws))
    checks["events by agent = workspace events"] = (cost_total(agents, "events"), cost_total(ws, "events"))
    checks["workspace events = steps sent"] = (cost_total(ws, "events"), man["total_steps"])
    checks["costs by model per day = workspace total, same window"] = (
        (cost_total(days), cost_total(days, "events")),
        (cost_total(windowed["data"]), cost_total(windowed["data"], "events")),
    )
    run = body["run"]
    checks[f"run {sample.run_id}: totals.steps = steps posted"] = (int(run["totals"]["steps"]), sample.steps)
    sess = body["session"]
    checks[f"session {plan.session_id(session)}: runs"] = (len(sess["runs"]), len(session_runs))
    if "events" in sess.get("totals", {}):
        want = sum(plan.size(i) for i in session_runs)
        checks[f"session {plan.session_id(session)}: events = steps of its runs"] = (sess["totals"]["events"], want)
    if "page2" in body:  # the page after the first: the next runs, newest first, none of the first page's
        page1, page2 = body["runs"]["data"], body["page2"]["data"]
        last = datetime.fromisoformat(page1[-1]["started_at"])
        checks["cursor page: the next runs, none repeated, none newer"] = (
            (
                len(page2),
                sorted({r["id"] for r in page1} & {r["id"] for r in page2}),
                all(datetime.fromisoformat(r["started_at"]) <= last for r in page2),
            ),
            (min(50, man["total_runs"] - 50), [], True),
        )
    teams = body["by_team"]["data"]
    # Every group_by partitions the events (those without the property under a null key), as by agent.
    checks["costs by property.team (no team: a null key) = workspace total"] = (
        (cost_total(teams), cost_total(teams, "events")),
        (cost_total(ws), cost_total(ws, "events")),
    )
    team_keys = sorted(str(r["key"]) for r in teams)
    if man["probe"]["step_headers_properties"]:
        checks["property.team keys"] = (sorted(str(r["key"]) for r in teams if r["key"] is not None), TEAMS)
    else:
        notes.append(f"costs by property.team: keys {team_keys} (properties on the steps POST are not stored here)")
    notes.append(f"costs by model per day: {len(days)} rows")
    return results, {"checks": {k: {"got": a, "want": b, "ok": a == b} for k, (a, b) in checks.items()}, "notes": notes}


# -- reads under load --------------------------------------------------------------------------------------------
async def under_load(ctx: Ctx, man: dict[str, Any], args: argparse.Namespace, meter: Meter) -> dict[str, Any]:
    end = time.time() - 600
    n = man["under_load_rounds"] = man.get("under_load_rounds", 0) + 1  # new run ids on a kept dataset's rerun
    alone_plan = Plan(f"ul{n}a", args.under_load_steps, args.seed + 1, end, days=1)
    loaded_plan = Plan(f"ul{n}b", args.under_load_steps, args.seed + 2, end, days=1)
    main_plan = plan_of(man)
    sample = main_plan.run_near(100)
    reads = [
        (
            "costs by model per day",
            qs("/api/analytics/costs", group_by="model", interval="day", **load_window(main_plan)),
        ),
        ("runs, first page", qs("/api/runs", limit="50")),
    ]
    print(f"under load: {args.under_load_steps:,} steps alone", file=sys.stderr, flush=True)
    alone = await load(ctx, alone_plan, args.clients, meter, "alone")
    man["total_steps"] += alone["steps"]
    man["total_runs"] += alone["runs"]
    latencies: dict[str, list[float]] = {name: [] for name, _ in reads}
    latencies["one run"] = []

    async def reader(k: int) -> None:
        n = k
        while True:
            name, path = reads[n % len(reads)]
            _, seconds = await ctx.http.expect("GET", path, ctx.admin, ok=(200,))
            latencies[name].append(seconds)
            n += 1

    async def single_run() -> None:
        while True:
            _, seconds = await ctx.http.expect("GET", f"/api/runs/{quote(sample.run_id)}", ctx.admin, ok=(200,))
            latencies["one run"].append(seconds)
            await asyncio.sleep(0.1)

    print(f"under load: {args.under_load_steps:,} steps with {args.readers} readers", file=sys.stderr, flush=True)
    tasks = [asyncio.create_task(reader(k)) for k in range(args.readers)] + [asyncio.create_task(single_run())]
    try:
        loaded = await load(ctx, loaded_plan, args.clients, meter, f"with {args.readers} readers")
    finally:
        for t in tasks:
            t.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError):
            raise r
    man["total_steps"] += loaded["steps"]
    man["total_runs"] += loaded["runs"]
    slowdown = 100 * (1 - loaded["steps_per_s"] / alone["steps_per_s"])
    reads_out = {
        name: {"count": len(v), "p50_ms": pct(sorted(v), 50), "p95_ms": pct(sorted(v), 95)}
        for name, v in latencies.items()
    }
    return {
        "steps": args.under_load_steps,
        "readers": args.readers,
        "alone": alone,
        "loaded": loaded,
        "slowdown_pct": slowdown,
        "target_pct": 20,
        "ok": slowdown <= 20,
        "reads": reads_out,
    }


# -- report ------------------------------------------------------------------------------------------------------
def fmt(v: Any, spec: str = ",.0f") -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def ingest_table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| phase | steps | runs | requests | wall s | steps/s | gateway CPU µs/step (cores) | DB CPU µs/step "
        "| loader CPU µs/step (cores) | batch POST p50 / p95 ms | other load, cores |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        lines.append(
            f"| {r['phase']} | {r['steps']:,} | {r['runs']:,} | {r['requests']:,} | {r['wall_s']:,.1f} "
            f"| {fmt(r['steps_per_s'])} | {fmt(r['gateway_cpu_us_per_step'])} ({fmt(r['gateway_cores'], '.2f')}) "
            f"| {fmt(r['db_cpu_us_per_step'])} | {fmt(r['loader_cpu_us_per_step'])} ({fmt(r['loader_cores'], '.2f')}) "
            f"| {fmt(r['batch_post_p50_ms'], ',.1f')} / {fmt(r['batch_post_p95_ms'], ',.1f')} "
            f"| {fmt(r['other_load_cores'], '.2f')} |"
        )
    return "\n".join(lines)


def query_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| query | p50 ms | p95 ms | max ms | response bytes |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['query']} (`{r['path'].split('?')[0]}`) | {r['p50_ms']:,.1f} | {r['p95_ms']:,.1f} "
            f"| {r['max_ms']:,.1f} | {r['bytes']:,} |"
        )
    return "\n".join(lines)


def under_load_table(u: dict[str, Any]) -> str:
    lines = [
        "| ingest | steps | wall s | steps/s | gateway CPU µs/step, reads included (cores) "
        "| DB CPU µs/step, reads included | loader cores | batch POST p50 ms | other load, cores |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key in ("alone", "loaded"):
        r = u[key]
        lines.append(
            f"| {r['phase']} | {r['steps']:,} | {r['wall_s']:,.1f} | {fmt(r['steps_per_s'])} "
            f"| {fmt(r['gateway_cpu_us_per_step'])} ({fmt(r['gateway_cores'], '.2f')}) "
            f"| {fmt(r['db_cpu_us_per_step'])} | {fmt(r['loader_cores'], '.2f')} "
            f"| {fmt(r['batch_post_p50_ms'], ',.1f')} | {fmt(r['other_load_cores'], '.2f')} |"
        )
    verdict = "OK" if u["ok"] else "OVER TARGET"
    lines.append(f"\nslowdown under {u['readers']} readers: {u['slowdown_pct']:.1f}% (target ≤ 20%: {verdict})")
    lines.append("\n| read during the loaded phase | count | p50 ms | p95 ms |\n|---|---|---|---|")
    for name, r in u["reads"].items():
        lines.append(f"| {name} | {r['count']} | {fmt(r['p50_ms'], ',.1f')} | {fmt(r['p95_ms'], ',.1f')} |")
    return "\n".join(lines)


# -- main ------------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--steps", type=int, default=100_000, help="steps to load (100000; the docs use 1M, 10M on PG)")
    p.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite", help="the gateway's store (sqlite)")
    p.add_argument(
        "--durability", choices=["strict", "batched"], default="strict", help="the gateway's durability (strict)"
    )
    p.add_argument("--clients", type=int, default=4, help="concurrent loading clients (4)")
    p.add_argument("--batch", type=int, default=MAX_BATCH, help=f"steps per POST at most (≤ {MAX_BATCH}; {MAX_BATCH})")
    p.add_argument("--seed", type=int, default=6, help="the dataset's RNG seed (6)")
    p.add_argument("--no-end", dest="end_runs", action="store_false", help="leave the runs running (no /end call)")
    p.add_argument("--repeat", type=int, default=20, help="measured repetitions per query (20)")
    p.add_argument("--warmup", type=int, default=1, help="unmeasured repetitions per query first (1)")
    p.add_argument("--under-load", action="store_true", help="also measure ingest alone and under readers")
    p.add_argument("--under-load-steps", type=int, default=50_000, help="steps per under-load phase (50000)")
    p.add_argument("--readers", type=int, default=4, help="reading clients in the under-load phase (4)")
    p.add_argument("--client", choices=["aiohttp", "httpx"], default="aiohttp", help="HTTP client (aiohttp)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds any one HTTP call may take (300)")
    p.add_argument("--keep", type=Path, default=None, help="keep the dataset: the gateway's data dir (and manifest)")
    p.add_argument("--skip-load", action="store_true", help="no load: rerun the queries on a kept dataset")
    p.add_argument("--data-dir", type=Path, default=None, help="with --skip-load: the kept data dir (--keep DIR)")
    p.add_argument("--db-url", default=None, help="with --skip-load: the database URL, if not the manifest's")
    p.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    args = p.parse_args(argv)
    if not 1 <= args.batch <= MAX_BATCH:
        p.error(f"--batch must be from 1 to {MAX_BATCH}")
    if args.steps < 1 or args.clients < 1 or args.repeat < 1 or args.under_load_steps < 1 or args.readers < 0:
        p.error("--steps, --clients, --repeat, --under-load-steps must be positive")
    if args.skip_load and args.data_dir is None:
        p.error("--skip-load needs --data-dir (the directory given to --keep)")
    if args.keep is not None and args.keep.exists() and any(args.keep.iterdir()):
        p.error(f"--keep {args.keep}: the directory is not empty")
    return args


def plan_of(man: dict[str, Any]) -> Plan:
    return Plan("load", man["steps"], man["seed"], man["end"], man["days"])


async def drive(
    args: argparse.Namespace, gw_url: str, gateway: subprocess.Popen[bytes], man: dict[str, Any], pg: PgCpu | None
) -> dict[str, Any]:
    out: dict[str, Any] = {"ingest": []}
    meter = Meter(gateway.pid, pg)
    conns = args.clients + args.readers + 2
    async with Http(gw_url, args.client, conns, args.timeout) as http:
        ctx = Ctx(http, {"authorization": f"Bearer {man['admin']}"}, man.get("keys", {}), end_runs=args.end_runs)
        ctx.batch = args.batch
        if not args.skip_load:
            man["keys"] = ctx.keys = await setup(http, man["admin"])
            man["probe"] = await probe(ctx)
            man["total_steps"], man["total_runs"] = man["probe"]["probe_steps"], 1
            mode = "batch carries the run" if ctx.batch_run else "POST /v1/runs first, then the steps"
            print(f"loading {args.steps:,} steps ({mode}) with {args.clients} clients", file=sys.stderr, flush=True)
            r = await load(ctx, plan_of(man), args.clients, meter, "load")
            man["total_steps"] += r["steps"]
            man["total_runs"] += r["runs"]
            out["ingest"].append(r)
        else:
            ctx.batch_run = man["probe"]["batch_carries_run"]
            ctx.step_properties = man["probe"]["step_headers_properties"]
        print("queries", file=sys.stderr, flush=True)
        out["queries"], out["verification"] = await query_set(ctx, man, args.repeat, args.warmup)
        if args.under_load:
            out["under_load"] = await under_load(ctx, man, args, meter)
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="agentledger-scale-"))
    pg_name: str | None = None
    drop = False
    gateway = None
    pg = None
    log = workdir / "gateway.log"
    if args.skip_load:
        data_dir = args.data_dir
        man = json.loads((data_dir / MANIFEST).read_text())
        db_url = args.db_url or man.get("db_url")
        pg_name = man.get("pg_name")
    else:
        data_dir = args.keep if args.keep is not None else workdir / "data"
        man = {"steps": args.steps, "seed": args.seed, "end": time.time() - 3600, "days": DAYS, "db": args.db}
        db_url = None
    try:
        if not args.skip_load and args.db == "postgres":
            pg_name, db_url = create_pg_database()
            drop = args.keep is None
            man.update(db_url=db_url, pg_name=pg_name)
        store = "postgres" if db_url else "sqlite"
        print(f"starting the gateway ({store}, {args.durability}); data dir {data_dir}", file=sys.stderr, flush=True)
        port = free_port()
        gateway = start_gateway(data_dir, log, port, db_url, args.durability, clean_env())
        gw_url = f"http://127.0.0.1:{port}"
        wait_http(gw_url + "/healthz", gateway, log)
        if not args.skip_load:
            man["admin"] = bootstrap_keys(log)[1]
        if pg_name:
            try:
                pg = PgCpu(pg_name)
            except Exception as exc:  # the DB CPU is optional
                print(f"note: no PostgreSQL CPU figures ({exc})", file=sys.stderr)
        results = asyncio.run(guarded(gateway, log, drive(args, gw_url, gateway, man, pg)))
        if args.keep is not None or args.skip_load:
            (data_dir / MANIFEST).write_text(json.dumps(man, indent=2) + "\n")
    except RuntimeError as exc:  # GatewayDied, HttpError, a gateway that did not start
        print(f"\nerror: {exc}", file=sys.stderr)
        return 2
    finally:
        if pg is not None:
            pg.close()
        stop(gateway)
        if pg_name and drop:
            drop_pg_database(pg_name)
        shutil.rmtree(workdir, ignore_errors=True)

    plan = plan_of(man)
    report = {
        "machine": machine(),
        "config": {
            k: getattr(args, k)
            for k in ("steps", "db", "durability", "clients", "batch", "seed", "end_runs", "repeat", "client")
        },
        "dataset": {**plan.describe(), "agents": len(AGENTS), "days": man["days"], "total_steps": man["total_steps"]},
        "probe": man["probe"],
        **results,
    }
    if args.skip_load:
        report["config"]["db"] = "postgres" if db_url else "sqlite"
    m = report["machine"]
    mode = "the batch carries the run" if man["probe"]["batch_carries_run"] else "runs created with POST /v1/runs"
    print(
        f"\n{m['cpu']}, {m['cores']} cores, Python {m['python']}; store {report['config']['db']}, durability "
        f"{args.durability}; {plan.steps:,} steps, {plan.runs:,} runs, {plan.sessions:,} sessions, "
        f"{len(AGENTS)} agents, {man['days']:.0f} days; {args.clients} clients, batches ≤ {args.batch}; {mode}\n"
    )
    pr = man["probe"]
    print(
        f"probe: the steps POST {'stores' if pr['step_headers_properties'] else 'ignores'} alephant-property-* "
        f"headers; property `team` {'declared indexed' if pr.get('team_property_indexed') else 'not indexed'}"
        + (f"; {pr['note']}" if pr.get("note") else "")
        + "\n"
    )
    if results["ingest"]:
        print(ingest_table(results["ingest"]) + "\n")
    print(query_table(results["queries"]))
    ver = results["verification"]
    print()
    for name, c in ver["checks"].items():
        print(f"check {name}: {c['got']} vs {c['want']} {'OK' if c['ok'] else 'MISMATCH'}")
    for note in ver["notes"]:
        print(f"note: {note}")
    if "under_load" in results:
        print("\n" + under_load_table(results["under_load"]))
    if args.keep is not None:
        kept = f" (database {pg_name})" if pg_name else ""
        print(f"\nkept: {args.keep}{kept}; rerun the queries with --skip-load --data-dir {args.keep}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return 0 if all(c["ok"] for c in ver["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())

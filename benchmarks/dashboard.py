"""The dashboard at scale (issue 12): server time of its pages with 1M steps stored, and the heaviest page's weight.

    python benchmarks/dashboard.py [--db sqlite|postgres] [--steps 1000000] [--repeat 30] [--warmup 3]
                                   [--clients 4] [--days 30] [--json PATH]
    scripts/bench dashboard [...]

Fills a store with benchmarks/scale.py's filler (its dataset: runs of ~110 steps, realistic in shape, over 30
days, through the real step API of a gateway started as users start it, on 127.0.0.1), plus one run of 500
steps in the last day, and a blocked policy check in every 100th run; then signs in to the dashboard with the
admin token (POST /signin: the session cookie) and times, with keep-alive connections on loopback:

  * the pages: `/runs` (the first 50 runs, newest first; and filtered by decision=blocked, and by one value of the
    `team` property: the run marks), `/runs/{id}` of the 500-step run (its waterfall and
    every step's detail are in the page), `/costs` over 30 days by day (the table and the stacked chart's
    data: two reads of /api/analytics/costs), and the overview (`/`) when the gateway has one;
  * the /api reads beneath them, with the admin token as bearer.

A page's time includes its /api handlers (called in process through the router), its template, the session's
decryption and the guard's lookup; the client's own share on loopback is well under a millisecond. p50 and p95
of --repeat requests after --warmup. Page weight: each page's HTML plus the static assets it references
(the server does not compress; gzip level 6 figures show what a compressing proxy would send).

SQLite in a temporary data directory, or a fresh PostgreSQL database (dropped at the end) with --db postgres.
Not part of ./scripts/test: about 2-3 min to fill 1M steps on SQLite, 3-4 on PostgreSQL, then a minute of reads.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

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
from scale import TEAMS, Ctx, Http, Meter, PgCpu, Plan, guarded, iso, load, probe, setup, step_headers

BIG_RUN_STEPS = 500
BLOCKED_EVERY = 100  # one run in this many gets a blocked policy check: the runs the decision filter lists
TARGET_MS = 100.0
ASSET = re.compile(r'(?:src|href)="(/static/[^"]+)"')


def big_run_plan(seed: int, end: float) -> Plan:
    """One run of exactly BIG_RUN_STEPS steps in the last day (the filler's step mix, nesting and retries)."""
    plan = Plan("big", BIG_RUN_STEPS, seed + 500, end, days=1)
    plan.runs = plan.sessions = 1
    return plan


async def fill(args: argparse.Namespace, http: Http, admin: str, gateway_pid: int) -> dict[str, Any]:
    ctx = Ctx(http, {"authorization": f"Bearer {admin}"}, {})
    ctx.keys = await setup(http, admin)
    info = await probe(ctx)
    end = time.time() - 3600
    main_plan = Plan("load", args.steps - BIG_RUN_STEPS, args.seed, end, args.days)
    big = big_run_plan(args.seed, end)
    meter = Meter(gateway_pid, None)
    print(f"filling {main_plan.steps:,} steps in {main_plan.runs:,} runs over {args.days:g} days", file=sys.stderr)
    ingest = await load(ctx, main_plan, args.clients, meter, "fill")
    ingest_big = await load(ctx, big, 1, Meter(gateway_pid, None), "500-step run")
    blocked = await block_some(ctx, main_plan)
    return {
        "probe": info,
        "ingest": ingest,
        "steps": 1 + ingest["steps"] + ingest_big["steps"],
        "runs": 1 + ingest["runs"] + ingest_big["runs"],
        "big_run": big.run(0).run_id,
        "blocked_runs": blocked,
        "window_end": end + 3600,
    }


async def block_some(ctx: Ctx, plan: Plan) -> int:
    """A blocked policy check in every BLOCKED_EVERY-th run, spread over the days (the filler has none), for
    `decision=blocked` to list; the runs' `team` property is what `property.team` lists."""
    n = 0
    for i in range(0, plan.runs, BLOCKED_EVERY):
        run = plan.run(i)
        headers = step_headers(ctx, run.agent, run.session_id, f"session {run.session}", run.agent.team)
        check = {"decision": "blocked", "decided_by": {"kind": "policy", "id": "bench"}}
        step = {
            "id": f"{run.run_id}.check",
            "kind": "policy_check",
            "name": "policy check",
            "status": "error",
            "started_at": iso(run.started),
            "attributes": check,
        }
        await ctx.http.expect("POST", f"/v1/runs/{run.run_id}/steps", headers, {"steps": [step]}, ok=(201,))
        n += 1
    return n


@dataclass
class Cpu:
    """CPU the gateway (and PostgreSQL's processes for its database) spent over a window, per request; and the
    cores the rest of the machine kept busy meanwhile (a busy machine stretches wall times, not CPU)."""

    gateway_pid: int
    pg: PgCpu | None
    _t: tuple[Any, ...] = ()

    def begin(self) -> None:
        if self.pg is not None:
            self.pg.begin()
        self._t = (time.perf_counter(), cpu_seconds(self.gateway_pid), time.process_time(), machine_busy_seconds())

    def end(self, n: int) -> dict[str, float | None]:
        t0, gw0, me0, busy0 = self._t
        wall = time.perf_counter() - t0
        gw1, me1, busy1 = cpu_seconds(self.gateway_pid), time.process_time(), machine_busy_seconds()
        gw = gw1 - gw0 if gw0 is not None and gw1 is not None else None
        db = self.pg.seconds() if self.pg is not None else None
        other = None
        if busy0 is not None and busy1 is not None and gw is not None:
            other = max(0.0, busy1 - busy0 - gw - (me1 - me0) - (db or 0.0)) / wall
        return {
            "gateway_cpu_ms": None if gw is None else 1000 * gw / n,
            "db_cpu_ms": None if db is None else 1000 * db / n,
            "other_load_cores": other,
        }


async def timed(
    client: httpx.AsyncClient, path: str, headers: dict[str, str], repeat: int, warmup: int, cpu: Cpu
) -> dict[str, Any]:
    for _ in range(warmup):
        r = await client.get(path, headers=headers)
        if r.status_code != 200:
            raise RuntimeError(f"GET {path}: {r.status_code} {r.text[:1000]}")
    lat = []
    body = b""
    cpu.begin()
    for _ in range(repeat):
        t0 = time.perf_counter()
        r = await client.get(path, headers=headers)
        body = await r.aread()
        lat.append(time.perf_counter() - t0)
        if r.status_code != 200:
            raise RuntimeError(f"GET {path}: {r.status_code} {r.text[:1000]}")
    used = cpu.end(repeat)
    lat.sort()
    return {
        "path": path,
        "p50_ms": pct(lat, 50),
        "p95_ms": pct(lat, 95),
        "max_ms": 1000 * lat[-1],
        **used,
        "body": body,
    }


async def measure(args: argparse.Namespace, base: str, admin: str, filled: dict[str, Any], cpu: Cpu) -> dict[str, Any]:
    end = datetime.fromtimestamp(filled["window_end"], UTC).replace(minute=0, second=0, microsecond=0)
    window = {"from": (end - timedelta(days=30)).isoformat(), "to": (end + timedelta(hours=1)).isoformat()}
    big = quote(filled["big_run"], safe="")
    costs_q = {"group_by": "agent", **window}
    team = {"property": "team", "value": TEAMS[0]}
    pages = {
        "runs": ("Runs page", "/runs"),
        "runs_blocked": (f"Runs page, decision=blocked ({filled['blocked_runs']} runs)", "/runs?decision=blocked"),
        "runs_team": (f"Runs page, property team={TEAMS[0]}", "/runs?" + urlencode(team)),
        "run": (f"Run detail, {BIG_RUN_STEPS} steps", f"/runs/{big}"),
        "costs": ("Costs page, 30 days by day", "/costs?" + urlencode({**costs_q, "interval": "day"})),
    }
    apis = {
        "runs": ("GET /api/runs?limit=50", "/api/runs?limit=50"),
        "runs_blocked": ("GET /api/runs?limit=50&decision=blocked", "/api/runs?limit=50&decision=blocked"),
        "runs_team": (
            f"GET /api/runs?limit=50&property.team={TEAMS[0]}",
            "/api/runs?" + urlencode({"limit": 50, "property.team": TEAMS[0]}),
        ),
        "run": (f"GET /api/runs/{{id}} ({BIG_RUN_STEPS} steps)", f"/api/runs/{big}"),
        "costs_table": ("GET /api/analytics/costs, 30 days (table)", "/api/analytics/costs?" + urlencode(costs_q)),
        "costs_chart": (
            "GET /api/analytics/costs, 30 days by day (chart)",
            "/api/analytics/costs?" + urlencode({**costs_q, "interval": "day"}),
        ),
    }
    bearer = {"authorization": f"Bearer {admin}"}
    out: dict[str, Any] = {"pages": [], "api": [], "weight": []}
    limits = httpx.Limits(max_connections=2, max_keepalive_connections=2)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=120, trust_env=False) as client:
        r = await client.post("/signin", data={"token": admin, "next": "/runs"}, headers={"origin": base})
        if r.status_code != 303 or "agentledger_session" not in client.cookies:
            raise RuntimeError(f"sign-in refused: {r.status_code} {r.text[:500]}")
        overview = await client.get("/", follow_redirects=False)
        if overview.status_code == 200 and "text/html" in overview.headers.get("content-type", ""):
            pages["overview"] = ("Overview page", "/")
        for key, (label, path) in pages.items():
            res = await timed(client, path, {}, args.repeat, args.warmup, cpu)
            html = res.pop("body")
            print(f"  {label}: p50 {res['p50_ms']:.1f} ms, p95 {res['p95_ms']:.1f} ms", file=sys.stderr)
            out["pages"].append({"key": key, "what": label, **res, "html_bytes": len(html)})
            assets = sorted(set(ASSET.findall(html.decode())))
            asset_bytes = asset_gz = 0
            for a in assets:
                data = (await client.get(a)).content
                asset_bytes += len(data)
                asset_gz += len(gzip.compress(data, 6))
            out["weight"].append(
                {
                    "what": label,
                    "html_bytes": len(html),
                    "html_gzip": len(gzip.compress(html, 6)),
                    "assets": len(assets),
                    "asset_bytes": asset_bytes,
                    "asset_gzip": asset_gz,
                    "total_bytes": len(html) + asset_bytes,
                    "total_gzip": len(gzip.compress(html, 6)) + asset_gz,
                }
            )
            if key == "run":  # the waterfall holds every step
                bars = html.decode().count('class="wf-node"')
                out["run_bars"] = bars
        for key, (label, path) in apis.items():
            res = await timed(client, path, bearer, args.repeat, args.warmup, cpu)
            body = res.pop("body")
            print(f"  {label}: p50 {res['p50_ms']:.1f} ms, p95 {res['p95_ms']:.1f} ms", file=sys.stderr)
            out["api"].append({"key": key, "what": label, **res, "bytes": len(body)})
            if key == "run":
                out["run_steps"] = int(json.loads(body)["totals"]["steps"])
    return out


def _f(v: float | None, places: int = 1) -> str:
    return "–" if v is None else f"{v:.{places}f}"


def report(res: dict[str, Any]) -> str:
    m, cfg = res["machine"], res["config"]
    lines = [
        f"{m['cpu']}, {m['cores']} cores, Python {m['python']}; store {cfg['db']}; {res['filled']['steps']:,} steps "
        f"in {res['filled']['runs']:,} runs over {cfg['days']:g} days (+ one {BIG_RUN_STEPS}-step run); "
        f"fill {res['filled']['ingest']['wall_s']:.0f} s ({res['filled']['ingest']['steps_per_s']:,.0f} steps/s); "
        f"p50/p95 of {cfg['repeat']} after {cfg['warmup']} warm-up",
        "",
        "| page / read | p50 ms | p95 ms | max ms | gateway CPU ms | DB CPU ms | bytes | ≤ 100 ms p50 | other load |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["pages"]:
        ok = "yes" if r["p50_ms"] <= TARGET_MS else "**no**"
        lines.append(
            f"| {r['what']} (`{r['path'].split('?')[0]}`) | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {r['max_ms']:.1f} "
            f"| {_f(r['gateway_cpu_ms'])} | {_f(r['db_cpu_ms'])} | {r['html_bytes']:,} | {ok} "
            f"| {_f(r['other_load_cores'], 2)} |"
        )
    for r in res["api"]:
        lines.append(
            f"| {r['what']} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {r['max_ms']:.1f} | {_f(r['gateway_cpu_ms'])} "
            f"| {_f(r['db_cpu_ms'])} | {r['bytes']:,} | | {_f(r['other_load_cores'], 2)} |"
        )
    lines += [
        "",
        "| page weight | HTML bytes (gzip) | assets | asset bytes (gzip) | total bytes (gzip) |",
        "|---|---|---|---|---|",
    ]
    for w in res["weight"]:
        lines.append(
            f"| {w['what']} | {w['html_bytes']:,} ({w['html_gzip']:,}) | {w['assets']} "
            f"| {w['asset_bytes']:,} ({w['asset_gzip']:,}) | {w['total_bytes']:,} ({w['total_gzip']:,}) |"
        )
    lines.append(f"\nthe {BIG_RUN_STEPS}-step run: {res.get('run_steps')} steps by the API, {res.get('run_bars')} bars")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite", help="the gateway's store (sqlite)")
    p.add_argument("--steps", type=int, default=1_000_000, help="steps stored, the 500-step run included (1M)")
    p.add_argument("--days", type=float, default=30.0, help="days the runs spread over (30)")
    p.add_argument("--clients", type=int, default=4, help="concurrent filling clients (4)")
    p.add_argument("--seed", type=int, default=12, help="the dataset's RNG seed (12)")
    p.add_argument("--repeat", type=int, default=30, help="measured requests per page and read (30)")
    p.add_argument("--warmup", type=int, default=3, help="unmeasured requests first (3)")
    p.add_argument("--settle", type=float, default=10.0, help="seconds to wait after the fill (10)")
    p.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    args = p.parse_args(argv)
    if args.steps <= BIG_RUN_STEPS or args.repeat < 1:
        p.error(f"--steps must exceed {BIG_RUN_STEPS}, --repeat be positive")
    return args


async def drive(
    args: argparse.Namespace, base: str, gateway: subprocess.Popen[bytes], admin: str, pg_name: str | None
) -> dict[str, Any]:
    async with Http(base, "aiohttp", args.clients + 2, 300.0) as http:
        filled = await fill(args, http, admin, gateway.pid)
    if args.settle:
        print(f"letting the gateway settle for {args.settle:g} s", file=sys.stderr)
        await asyncio.sleep(args.settle)
    print("measuring the dashboard", file=sys.stderr)
    pg = PgCpu(pg_name) if pg_name else None
    try:
        return {"filled": filled, **(await measure(args, base, admin, filled, Cpu(gateway.pid, pg)))}
    finally:
        if pg is not None:
            pg.close()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="agentledger-dashboard-bench-"))
    log = workdir / "gateway.log"
    pg_name = db_url = None
    gateway = None
    try:
        if args.db == "postgres":
            pg_name, db_url = create_pg_database()
        port = free_port()
        gateway = start_gateway(workdir / "data", log, port, db_url, "strict", clean_env())
        base = f"http://127.0.0.1:{port}"
        wait_http(base + "/healthz", gateway, log)
        admin = bootstrap_keys(log)[1]
        results = asyncio.run(guarded(gateway, log, drive(args, base, gateway, admin, pg_name)))
    except RuntimeError as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        return 2
    finally:
        stop(gateway)
        if pg_name:
            drop_pg_database(pg_name)
        shutil.rmtree(workdir, ignore_errors=True)
    results = {"machine": machine(), "config": vars(args) | {"json": str(args.json)}, **results}
    print(report(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
    slow = [r["what"] for r in results["pages"] if r["p50_ms"] > TARGET_MS]
    if slow:
        print(f"over {TARGET_MS:.0f} ms p50: {', '.join(slow)}", file=sys.stderr)
    return 1 if slow else 0


if __name__ == "__main__":
    sys.exit(main())

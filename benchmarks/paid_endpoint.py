"""What a paid endpoint (POST /x402/{workspace}/{slug}) adds to calling its workflow directly, in one run.

    python benchmarks/paid_endpoint.py [--requests N] [--concurrency 1,16] [--db sqlite|postgres]
                                       [--durability strict|batched] [--facilitator instant|http] [--json PATH]
    (or `scripts/bench paid-endpoint` with the same arguments)

Processes on 127.0.0.1, nothing else is contacted:
  * the workflow: a pure-ASGI app under uvicorn (uvloop + httptools) answering `{"ok": true}` at once;
  * the gateway: with `--facilitator instant` (the default) the app `serve` runs, under uvicorn with uvloop and
    httptools, its facilitator replaced in-process by one answering "valid" and "settled" at once, so nothing of
    a facilitator is measured; with `--facilitator http`, `python -m agentledger ... serve` itself with
    `x402_facilitator` pointing at a stub of x402's HTTP facilitator API (`/verify`, `/settle`) answering at once
    and checking nothing: x402's HTTP facilitator client and the two loopback round trips are then in the
    figure, and the stub's round trip is measured alone too, so it can be taken out;
  * a workflow agent whose runtime is the workflow, and a paid endpoint for it ($0.001, a small input schema, no
    rate or concurrency limit), made through the admin API;
  * this process: one shared HTTP client. Each paid call carries a payment of its own (a proof is single-use):
    made up front, unsigned (no facilitator here looks), each with a fresh nonce, so the client's cost per call
    is a header, not a signature.
Per concurrency both targets are warmed up, then measured in alternating rounds (direct, gateway, gateway,
direct, ...). Everything the paid call does is in the gateway's figure: the body and schema checks, decoding and
matching the payment, the proof's claim (a store write), the run and its payment steps, the workflow call, the
settlement, the run's records (durable before the answer in strict mode). At the end the gateway's books must
show one settled sale per paid call sent, or the run fails. docs/benchmark.md has the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
from _procs import (
    bootstrap_keys,
    clean_env,
    cpu_seconds,
    create_pg_database,
    drop_pg_database,
    free_port,
    machine,
    pct,
    start_gateway,
    stop,
    wait_http,
)

WORKFLOW_CODE = """
import sys, uvicorn
BODY = b'{"ok":true}'
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": BODY})
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), loop="uvloop", http="httptools", log_level="warning",
            access_log=False)
"""

# The gateway as `serve` runs it (uvloop, httptools, the same app), with `--facilitator instant`: its facilitator
# replaced in-process by one that answers "valid" and "settled" at once, so no facilitator is measured at all.
GATEWAY_CODE = """
import asyncio, sys, uvicorn
from x402.schemas import SettleResponse, VerifyResponse
from agentledger.app import create_app
from agentledger.config import load_settings

class Instant:
    async def verify(self, payload, requirements):
        return VerifyResponse(is_valid=True, payer=payload.payload["authorization"]["from"])
    async def settle(self, payload, requirements):
        return SettleResponse(success=True, payer=payload.payload["authorization"]["from"],
                              transaction="0x" + "ab" * 32, network=requirements.network)
    async def aclose(self):
        pass

settings = load_settings()
app = create_app(settings)
app.state.paid.seller.facilitator = Instant()
async def boot():
    await app.state.components.store.migrate()
    b = await app.state.components.governance.bootstrap()
    print(f"virtual key {b.virtual_key}", flush=True)
    print(f"admin token {b.admin_token}", flush=True)
asyncio.run(boot())
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), loop="uvloop", http="httptools", log_level="warning",
            access_log=False, timeout_graceful_shutdown=30)
"""

FACILITATOR_CODE = """
import sys, orjson, uvicorn
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = b""
    while True:
        m = await receive()
        body += m.get("body", b"")
        if not m.get("more_body"):
            break
    req = orjson.loads(body)
    payer = req["paymentPayload"]["payload"]["authorization"]["from"]
    network = req["paymentRequirements"]["network"]
    if scope["path"].endswith("/verify"):
        out = {"isValid": True, "payer": payer}
    else:
        out = {"success": True, "payer": payer, "transaction": "0x" + "ab" * 32, "network": network}
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": orjson.dumps(out)})
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), loop="uvloop", http="httptools", log_level="warning",
            access_log=False)
"""

BODY = orjson.dumps({"text": "Summarize the quarterly report in one line.", "lang": "en"})
SCHEMA = {"type": "object", "properties": {"text": {"type": "string", "maxLength": 10000}}, "required": ["text"]}


def admin(url: str, token: str, method: str, path: str, body: dict[str, Any]) -> Any:
    resp = httpx.request(
        method, url + path, headers={"authorization": f"Bearer {token}"}, json=body, timeout=30, trust_env=False
    )
    if resp.status_code not in (200, 201):
        raise RuntimeError(f"{method} {path} failed: {resp.status_code} {resp.text}")
    return resp.json()


def payments(required_header: str, n: int) -> list[str]:
    """`n` PAYMENT-SIGNATURE headers for the offered requirements, each a proof of its own (unsigned: see above)."""
    offer = json.loads(base64.b64decode(required_header))
    accepted = offer["accepts"][0]
    payer = "0x" + os.urandom(20).hex()
    now = int(time.time())
    out = []
    for _ in range(n):
        payload = {
            "x402Version": 2,
            "accepted": accepted,
            "payload": {
                "signature": "0x" + "11" * 65,
                "authorization": {
                    "from": payer,
                    "to": accepted["payTo"],
                    "value": accepted["amount"],
                    "validAfter": str(now - 600),
                    "validBefore": str(now + accepted["maxTimeoutSeconds"]),
                    "nonce": "0x" + os.urandom(32).hex(),
                },
            },
        }
        out.append(base64.b64encode(orjson.dumps(payload)).decode())
    return out


class Load:
    def __init__(self, name: str, url: str, pid: int | None) -> None:
        self.name, self.url, self.pid = name, url, pid
        self.latencies: list[float] = []
        self.errors = 0
        self.cpu = 0.0
        self.wall = 0.0

    def reset(self) -> None:
        self.latencies, self.errors, self.cpu, self.wall = [], 0, 0.0, 0.0


async def burst(client: httpx.AsyncClient, load: Load, headers: list[dict[str, str]], body: bytes, conc: int) -> None:
    todo = list(headers)

    async def worker() -> None:
        while todo:
            h = todo.pop()
            t0 = time.perf_counter()
            try:
                resp = await client.post(load.url, content=body, headers=h)
                ok = resp.status_code == 200
            except httpx.HTTPError:
                ok = False
            load.latencies.append(time.perf_counter() - t0)
            load.errors += not ok

    await asyncio.gather(*(worker() for _ in range(conc)))


async def measured(
    client: httpx.AsyncClient, load: Load, headers: list[dict[str, str]], body: bytes, conc: int
) -> None:
    cpu0 = cpu_seconds(load.pid) if load.pid else None
    t0 = time.perf_counter()
    await burst(client, load, headers, body, conc)
    load.wall += time.perf_counter() - t0
    cpu1 = cpu_seconds(load.pid) if load.pid else None
    if cpu0 is not None and cpu1 is not None:
        load.cpu += cpu1 - cpu0


def stats(load: Load) -> dict[str, Any]:
    lat = sorted(load.latencies)
    n = len(lat)
    return {
        "requests": n,
        "errors": load.errors,
        "p50_ms": pct(lat, 50),
        "p90_ms": pct(lat, 90),
        "p99_ms": pct(lat, 99),
        "throughput_rps": n / load.wall if load.wall else None,
        "cpu_ms_per_req": 1000 * load.cpu / n if n and load.pid else None,
    }


async def drive(
    args: argparse.Namespace,
    gw_pid: int,
    paid_url: str,
    direct_url: str,
    facilitator_url: str,
    required: str,
) -> list[dict[str, Any]]:
    cells = []
    per_round = max(1, args.requests // args.rounds)
    plain = {"content-type": "application/json"}
    verify_body = orjson.dumps(
        {
            "x402Version": 2,
            "paymentPayload": json.loads(base64.b64decode(payments(required, 1)[0])),
            "paymentRequirements": json.loads(base64.b64decode(required))["accepts"][0],
        }
    )
    async with httpx.AsyncClient(
        timeout=30, trust_env=False, limits=httpx.Limits(max_connections=64, max_keepalive_connections=64)
    ) as client:
        for conc in args.concurrency:
            gateway, direct = Load("gateway", paid_url, gw_pid), Load("direct", direct_url, None)
            stub = Load("facilitator", facilitator_url + "/verify", None) if args.facilitator == "http" else None
            # Warm-up: connections, caches, the endpoint's lookup, the store's first writes.
            await burst(client, direct, [plain] * args.warmup, BODY, conc)
            paid = [{**plain, "PAYMENT-SIGNATURE": p} for p in payments(required, args.warmup)]
            await burst(client, gateway, paid, BODY, conc)
            if stub is not None:
                await burst(client, stub, [plain] * args.warmup, verify_body, conc)
                stub.reset()
            gateway.reset()
            direct.reset()
            for i in range(args.rounds):
                for load in (direct, gateway) if i % 2 == 0 else (gateway, direct):
                    if load is gateway:
                        paid = [{**plain, "PAYMENT-SIGNATURE": p} for p in payments(required, per_round)]
                        await measured(client, gateway, paid, BODY, conc)
                    else:
                        await measured(client, direct, [plain] * per_round, BODY, conc)
                if stub is not None:
                    await measured(client, stub, [plain] * per_round, verify_body, conc)
            g, d = stats(gateway), stats(direct)
            cell: dict[str, Any] = {
                "concurrency": conc,
                "gateway": g,
                "direct": d,
                "added_p50_ms": g["p50_ms"] - d["p50_ms"],
                "added_p99_ms": g["p99_ms"] - d["p99_ms"],
            }
            if stub is not None:
                f = stats(stub)
                cell["facilitator_round_trip"] = f
                # Verify and settle are two round trips to the stub: what is left is the endpoint's own.
                cell["added_p50_ms_less_facilitator"] = cell["added_p50_ms"] - 2 * f["p50_ms"]
            cells.append(cell)
            print(json.dumps(cell), file=sys.stderr, flush=True)
    return cells


def sold(gw_url: str, token: str, endpoint_id: str) -> int:
    """Settled sales of the endpoint in the books: its revenue over the price ($0.001)."""
    rows = admin(gw_url, token, "GET", "/api/finance/summary?group_by=endpoint&limit=1000", {})["data"]
    mine = [r for r in rows if r["key"] == endpoint_id]
    if not mine:
        return 0
    whole, frac = mine[0]["revenue_usd"].split(".")
    return (int(whole) * 10**9 + int(frac)) // 1_000_000


def markdown(cells: list[dict[str, Any]]) -> str:
    http = "facilitator_round_trip" in cells[0]
    extra = " facilitator RTT p50 ms | **added less 2×RTT** |" if http else ""
    lines = [
        "| conc | direct p50 ms | paid p50 ms | **added p50 ms** | added p99 ms |"
        + extra
        + " gateway CPU ms/call | paid calls/s |",
        "|---|---|---|---|---|" + ("---|---|" if http else "") + "---|---|",
    ]
    for c in cells:
        g, d = c["gateway"], c["direct"]
        row = (
            f"| {c['concurrency']} | {d['p50_ms']:.2f} | {g['p50_ms']:.2f} | **+{c['added_p50_ms']:.2f}** | "
            f"+{c['added_p99_ms']:.2f} |"
        )
        if http:
            f = c["facilitator_round_trip"]
            row += f" {f['p50_ms']:.2f} | **+{c['added_p50_ms_less_facilitator']:.2f}** |"
        lines.append(row + f" {g['cpu_ms_per_req']:.2f} | {g['throughput_rps']:.0f} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=2000, help="measured paid calls per concurrency (2000)")
    p.add_argument("--warmup", type=int, default=200, help="unmeasured calls per target first (200)")
    p.add_argument("--rounds", type=int, default=10, help="alternating rounds (10)")
    p.add_argument("--concurrency", default="1,16", help="comma-separated in-flight calls (1,16)")
    p.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    p.add_argument("--durability", choices=["strict", "batched"], default="strict")
    p.add_argument("--no-journal", action="store_true", help="strict on SQLite without the trace journal")
    p.add_argument(
        "--facilitator",
        choices=["instant", "http"],
        default="instant",
        help="instant: an in-process facilitator answering at once (nothing of a facilitator measured); http: "
        "x402's HTTP facilitator client to a stub on loopback (its round trips measured, and alone too)",
    )
    p.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    args = p.parse_args(argv)
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="agentledger-paid-bench-"))
    env = clean_env()
    procs: list[subprocess.Popen[bytes]] = []
    pg_name = None
    try:
        db_url = None
        if args.db == "postgres":
            pg_name, db_url = create_pg_database()
        wf_port, fac_port, gw_port = free_port(), free_port(), free_port()
        for code, port, name in ((WORKFLOW_CODE, wf_port, "workflow"), (FACILITATOR_CODE, fac_port, "facilitator")):
            log = workdir / f"{name}.log"
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-c", code, str(port)], stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env
                )
            )
        wf_url, fac_url = f"http://127.0.0.1:{wf_port}", f"http://127.0.0.1:{fac_port}/facilitator"
        gw_log = workdir / "gateway.log"
        if args.facilitator == "http":
            more = {"x402_facilitator": fac_url} | ({"trace_journal": "false"} if args.no_journal else {})
            gateway = start_gateway(workdir / "data", gw_log, gw_port, db_url, args.durability, env, more)
        else:
            settings = {"data_dir": str(workdir / "data"), "durability": args.durability, "log_level": "warning"}
            if args.no_journal:
                settings["trace_journal"] = "false"
            if db_url:
                settings["db_url"] = db_url
            gw_env = {**env, **{"AGENTLEDGER_" + k.upper(): v for k, v in settings.items()}}
            gateway = subprocess.Popen(
                [sys.executable, "-c", GATEWAY_CODE, str(gw_port)],
                stdout=gw_log.open("wb"),
                stderr=subprocess.STDOUT,
                env=gw_env,
            )
        procs.append(gateway)
        gw_url = f"http://127.0.0.1:{gw_port}"
        wait_http(gw_url + "/healthz", gateway, gw_log)
        wait_http(wf_url + "/", procs[0], workdir / "workflow.log")
        _, token = bootstrap_keys(gw_log)
        runtime = {"type": "webhook", "url": wf_url + "/hook", "auth_header": {"name": "X-Auth", "value": "bench"}}
        admin(
            gw_url,
            token,
            "POST",
            "/api/agents",
            {"id": "bench-flow", "department_id": "engineering", "kind": "workflow", "runtime": runtime},
        )
        endpoint = admin(
            gw_url,
            token,
            "POST",
            "/api/paid-endpoints",
            {
                "slug": "bench",
                "agent_id": "bench-flow",
                "price_usd": "0.001",
                "pay_to": "0x52908400098527886E0F7030069857D2E4169EE7",
                "input_schema": SCHEMA,
                "fee": {"percent": "2.5"},
                "timeout_s": 30,
                "max_timeout_s": 120,
            },
        )
        paid_url = gw_url + endpoint["url"]
        first = httpx.post(paid_url, content=BODY, headers={"content-type": "application/json"}, trust_env=False)
        assert first.status_code == 402, first.text
        print(
            f"gateway {gw_url} ({args.db}, {args.durability}, facilitator {args.facilitator}), workflow {wf_url}",
            file=sys.stderr,
            flush=True,
        )
        cells = asyncio.run(
            drive(args, gateway.pid, paid_url, wf_url + "/hook", fac_url, first.headers["PAYMENT-REQUIRED"])
        )
        sent = sum(c["gateway"]["requests"] for c in cells) + len(args.concurrency) * args.warmup
        errors = sum(c["gateway"]["errors"] for c in cells)
        time.sleep(0.5)
        books = sold(gw_url, token, endpoint["id"])
    finally:
        for proc in reversed(procs):
            stop(proc)
        if pg_name:
            drop_pg_database(pg_name)
        shutil.rmtree(workdir, ignore_errors=True)
    report = {
        "machine": machine(),
        "db": args.db,
        "durability": args.durability,
        "trace_journal": not args.no_journal,
        "cells": cells,
        "paid_calls_sent": sent,
        "errors": errors,
        "sales_in_books": books,
    }
    print(markdown(cells))
    print(f"\npaid calls sent {sent}, errors {errors}, sales in the books {books}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0 if errors == 0 and books == sent else 1


if __name__ == "__main__":
    sys.exit(main())

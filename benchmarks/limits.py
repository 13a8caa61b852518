"""The budget counters' cost on the hot path: `reserve` + `settle` latency and Redis throughput.

    python benchmarks/limits.py [--redis-url redis://127.0.0.1:6379/15] [--seconds 2] [--concurrency 64]
                                [--keys 3] [--loop uvloop|asyncio] [--json PATH]

Each reservation charges --keys budget counters (a call under workspace, department and agent budgets: 3),
all with limits far above what the run spends, so nothing is refused; each is settled right after. Reported:
  * in-process (`MemoryCounters`): p50/p99 of one `reserve` + `settle` pair, sequential;
  * Redis (`RedisCounters`, one client, one pipelined connection): p50/p99 of the pair, sequential (two round
    trips); then --concurrency tasks each looping reserve+settle for --seconds: reservations/s (each one
    also settled), the pair's p50 under that load, and the CPU per pair of the Redis server (INFO cpu) and
    of this client process (one event loop: with redis-py it is the client that saturates first).
Only 127.0.0.1 is contacted; the keys live under a fresh prefix, deleted at the end. A busy machine skews it:
compare runs made back to back.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import uuid
from pathlib import Path

import redis.asyncio as redis_async

from agentledger.limits import Charge, Counters, MemoryCounters, Refused
from agentledger.limits.redis import RedisCounters


def _percentile(samples: list[float], q: int) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[q - 1] if len(samples) > 1 else samples[0]


async def _pair(counters: Counters, rid: str, charges: list[Charge]) -> float:
    started = time.perf_counter()
    answer = await counters.reserve(rid, charges, 600)
    if isinstance(answer, Refused):
        raise SystemExit(f"refused: {answer}")
    await counters.settle(rid, 1)
    return time.perf_counter() - started


async def sequential(counters: Counters, charges: list[Charge], seconds: float, cap: int) -> list[float]:
    out: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline and len(out) < cap:
        out.append(await _pair(counters, uuid.uuid4().hex, charges))
    return out


async def concurrent(counters: Counters, charges: list[Charge], seconds: float, tasks: int) -> tuple[int, list[float]]:
    samples: list[float] = []
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        while time.perf_counter() < deadline:
            samples.append(await _pair(counters, uuid.uuid4().hex, charges))

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(tasks)))
    elapsed = time.perf_counter() - started
    return round(len(samples) / elapsed), samples


async def _redis_cpu(client: redis_async.Redis) -> float:
    info = await client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def main(args: argparse.Namespace) -> dict[str, object]:
    big = 10**18
    charges = [Charge(f"budget:{i}", big, 1_000) for i in range(args.keys)]
    report: dict[str, object] = {"keys_per_reservation": args.keys, "loop": args.loop}

    memory = MemoryCounters()
    await sequential(memory, charges, 0.2, 2_000)  # warm-up
    pairs = await sequential(memory, charges, min(args.seconds, 1.0), 200_000)
    report["memory_pair_p50_us"] = round(statistics.median(pairs) * 1e6, 2)
    report["memory_pair_p99_us"] = round(_percentile(pairs, 99) * 1e6, 2)
    report["memory_pairs"] = len(pairs)

    prefix = f"bench:{uuid.uuid4().hex}:"
    shared = RedisCounters(args.redis_url, prefix)
    try:
        await sequential(shared, charges, 0.2, 500)  # warm-up: connections, script load
        pairs = await sequential(shared, charges, args.seconds / 2, 50_000)
        report["redis_pair_p50_us"] = round(statistics.median(pairs) * 1e6, 1)
        report["redis_pair_p99_us"] = round(_percentile(pairs, 99) * 1e6, 1)
        report["redis_pairs_sequential"] = len(pairs)
        probe = redis_async.Redis.from_url(args.redis_url)
        server_cpu, client_cpu = await _redis_cpu(probe), time.process_time()
        rate, loaded = await concurrent(shared, charges, args.seconds, args.concurrency)
        server_cpu, client_cpu = await _redis_cpu(probe) - server_cpu, time.process_time() - client_cpu
        await probe.aclose()
        report["redis_concurrency"] = args.concurrency
        report["redis_reservations_per_s"] = rate
        report["redis_pair_p50_us_under_load"] = round(statistics.median(loaded) * 1e6, 1)
        report["redis_server_cpu_us_per_pair"] = round(server_cpu / len(loaded) * 1e6, 1)
        report["client_cpu_us_per_pair"] = round(client_cpu / len(loaded) * 1e6, 1)
        standing = await shared.standing([c.key for c in charges])
        expected = len(loaded) + report["redis_pairs_sequential"]  # type: ignore[operator]
        assert all(s.reserved == 0 for s in standing.values()), standing
        assert all(s.spent >= expected for s in standing.values()), (standing, expected)
    finally:
        await shared.aclose()
        client = redis_async.Redis.from_url(args.redis_url)
        keys = [key async for key in client.scan_iter(match=prefix + "*", count=1000)]
        for i in range(0, len(keys), 1000):
            await client.delete(*keys[i : i + 1000])
        await client.aclose()
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/15")
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--keys", type=int, default=3)
    parser.add_argument(
        "--loop", choices=["uvloop", "asyncio"], default="uvloop" if sys.platform != "win32" else "asyncio"
    )
    parser.add_argument("--json", type=Path)
    options = parser.parse_args()
    if options.loop == "uvloop":
        import uvloop

        result = uvloop.run(main(options))
    else:
        result = asyncio.run(main(options))
    for name, value in result.items():
        print(f"{name:32} {value}")
    if options.json:
        options.json.write_text(json.dumps(result, indent=2) + "\n")

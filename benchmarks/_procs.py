"""Helpers the benchmarks share: start the gateway as users do, read CPU from /proc, a fresh PostgreSQL database.

Imported by the scripts next to it (`python benchmarks/overhead.py` puts this directory on sys.path).
"""

from __future__ import annotations

import math
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

PG_ADMIN_URL = os.environ.get("AGENTLEDGER_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int, tid: int | None = None) -> float | None:
    """User + system CPU of a process (all its threads; or of its thread `tid` alone: `tid=pid` is the main
    thread, a gateway's event loop), from /proc; None where there is no /proc."""
    try:
        with open(f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def threads_cpu(pid: int) -> dict[str, float]:
    """User + system CPU seconds of a process's threads, summed by name (a pool's `store-writer_0`,
    `store-writer_1` count as `store-writer`); {} where there is no /proc."""
    out: dict[str, float] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                name = "event loop" if tid == str(pid) else re.sub(r"_\d+$", "", f.read().strip())
        except OSError:
            continue
        seconds = cpu_seconds(pid, int(tid))
        if seconds is not None:
            out[name] = out.get(name, 0.0) + seconds
    return out


def descendants(pid: int) -> list[int]:
    """The live processes under `pid` (children, theirs, ...), from /proc; [] where there is no /proc."""
    out: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{parent}/task/{tid}/children") as f:
                    kids = [int(k) for k in f.read().split()]
            except OSError:
                continue
            out += kids
            todo += kids
    return out


def tree_cpu_seconds(pids: list[int] | tuple[int, ...]) -> float | None:
    """The summed CPU of `pids` (a gateway and its worker processes); None if one cannot be read."""
    total = 0.0
    for pid in pids:
        c = cpu_seconds(pid)
        if c is None:
            return None
        total += c
    return total


def machine_busy_seconds() -> float | None:
    """CPU seconds all cores spent busy since boot (every process), from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:]]
    except OSError:
        return None
    return (sum(ticks) - ticks[3] - ticks[4]) / CLK_TCK  # all but idle and iowait


def clean_env() -> dict[str, str]:
    """The caller's environment without AGENTLEDGER_* settings: a run is defined by its arguments."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for name in [k for k in env if k.startswith("AGENTLEDGER_")]:
        del env[name]
    return env


def start_gateway(
    data_dir: Path,
    log: Path,
    port: int,
    db_url: str | None,
    durability: str,
    env: dict[str, str],
    settings: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """`python -m agentledger ... serve`, the way users start it; its output goes to `log`. `settings`: more
    `--set NAME=VALUE` (redis_url, workers)."""
    cmd = [sys.executable, "-m", "agentledger", "--data-dir", str(data_dir), "--set", "log_level=warning"]
    cmd += ["--set", f"durability={durability}"]
    for name, value in (settings or {}).items():
        cmd += ["--set", f"{name}={value}"]
    if db_url:
        cmd += ["--db", db_url]
    return subprocess.Popen(
        [*cmd, "serve", "--port", str(port)], stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env
    )


def agentledger_cli(data_dir: Path, db_url: str | None, args: list[str], env: dict[str, str]) -> str:
    """`python -m agentledger --data-dir ... [--db ...] <args>` against a gateway's store; its stdout."""
    cmd = [sys.executable, "-m", "agentledger", "--data-dir", str(data_dir), "--set", "log_level=warning"]
    if db_url:
        cmd += ["--db", db_url]
    out = subprocess.run([*cmd, *args], env=env, capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise RuntimeError(f"agentledger {' '.join(args)} failed: {out.stderr.strip()[-2000:]}")
    return out.stdout


def bootstrap_keys(log: Path) -> tuple[str, str]:
    """(virtual key, admin token) from the banner a gateway prints on its first start."""
    out = log.read_text()
    vk = re.search(r"virtual key\s+(\S+)", out)
    admin = re.search(r"admin token\s+(\S+)", out)
    if not vk or not admin:
        raise RuntimeError(f"could not read the bootstrap keys from the gateway output:\n{out[-4000:]}")
    return vk.group(1), admin.group(1)


def wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: process exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            httpx.get(url, timeout=1.0, trust_env=False)
            return
        except httpx.HTTPError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s:\n{log.read_text()[-4000:]}")


def stop(proc: subprocess.Popen[bytes] | None, timeout: float = 30.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)  # graceful: the gateway drains its trace pipeline on shutdown
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def create_pg_database() -> tuple[str, str]:
    """A fresh database on the test server: (its name, the gateway's SQLAlchemy URL for it)."""
    import psycopg

    name = f"agentledger_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    return name, f"{base}/{name}"


def drop_pg_database(name: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def pct(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated percentile of an ascending list of seconds, in milliseconds."""
    if not sorted_values:
        return math.nan
    k = (len(sorted_values) - 1) * q / 100
    lo, hi = math.floor(k), math.ceil(k)
    return 1000 * (sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo))


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }

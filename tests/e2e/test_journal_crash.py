"""Strict mode on SQLite answers from the trace journal: a call answered while the database could take nothing,
then `kill -9`, is on the books after the next start (pipeline/journal.py, docs/architecture.md "Durability"),
or after any offline command, which writes a stopped gateway's journal first.

The database's write lock is held by another connection, so the gateway's store writer waits and every answer
can only have been released on the journal's fdatasync; the gateway is then killed before the store ever
took a record. Each answered call must then be in the ledger exactly once.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

from agentledger.config import Settings
from agentledger.pipeline.journal import journal_dir, record_bytes
from agentledger.testing.server import free_port
from tests.e2e.test_crash import BODY, _start
from tests.harness import provision

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _answered_then_killed(tmp_path: Path) -> tuple[str, Path, dict[str, str], list[str], Engine, Path]:
    """A gateway that answers 12 calls while the database is locked, then `kill -9`: (db url, data dir, the
    workspace as a bind parameter, the answered ids, an engine, its log)."""
    db_url = f"sqlite:///{tmp_path / 'journal.db'}"
    data_dir = tmp_path / "data"
    ids = provision(Settings(data_dir=str(data_dir), db_url=db_url), "http://127.0.0.1:9")
    ws = {"ws": ids["workspace"]}
    engine = create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE provider_keys SET kind = 'mock', priority = 100 WHERE workspace_id = :ws"), ws)
    log = tmp_path / "gateway.log"
    port = free_port()
    proc = _start(data_dir, db_url, port, "strict", log)
    answered = []
    try:
        lock = sqlite3.connect(tmp_path / "journal.db", timeout=30, isolation_level=None)
        lock.execute("BEGIN IMMEDIATE")  # the store writer now waits for this connection
        headers = {"authorization": f"Bearer {ids['vk']}", "Alephant-Run-Id": f"run-{uuid.uuid4().hex[:8]}"}
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10, trust_env=False) as http:
            for i in range(12):
                rid = f"locked-{i}"
                body = {**BODY, "stream": i % 3 == 0}
                resp = http.post("/v1/chat/completions", json=body, headers={**headers, "x-request-id": rid})
                assert resp.status_code == 200, resp.text
                answered.append(rid)
        assert _on_the_books(engine, ws) == ([], 0)  # a reader is not blocked by the lock (WAL): none stored yet
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        lock.rollback()
        lock.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert _journal_bytes(db_url) > 0
    return db_url, data_dir, ws, answered, engine, log


def _on_the_books(engine: Engine, ws: dict[str, Any]) -> tuple[list[str], int]:
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT id FROM requests WHERE workspace_id = :ws AND id LIKE 'locked-%' AND status = 'ok'"), ws
        ).all()
        steps = conn.execute(
            text("SELECT count(*) FROM steps WHERE workspace_id = :ws AND request_id LIKE 'locked-%'"), ws
        ).scalar_one()
    return sorted(r[0] for r in rows), int(steps)


def _journal_bytes(db_url: str) -> int:
    journal = journal_dir(db_url)
    assert journal is not None
    return sum(record_bytes(p) for p in journal.glob("*.seg"))


def test_calls_answered_while_the_database_is_locked_survive_kill_9(tmp_path: Path) -> None:
    db_url, data_dir, ws, answered, engine, log = _answered_then_killed(tmp_path)
    proc = _start(data_dir, db_url, free_port(), "strict", log)  # ready only after the journal is written
    books = _on_the_books(engine, ws)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) in (0, -signal.SIGTERM), log.read_text()
    engine.dispose()
    assert books == (sorted(answered), len(answered))  # one model_call step each: nothing written twice
    assert _journal_bytes(db_url) == 0


def test_an_offline_command_writes_a_stopped_gateways_journal_first(tmp_path: Path) -> None:
    db_url, data_dir, ws, answered, engine, log = _answered_then_killed(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTLEDGER_")}
    cmd = [sys.executable, "-m", "agentledger", "--data-dir", str(data_dir), "--db", db_url, "rollups", "verify"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr  # the books it verified hold the journal's calls
    assert _on_the_books(engine, ws) == (sorted(answered), len(answered))
    assert _journal_bytes(db_url) == 0
    proc = _start(data_dir, db_url, free_port(), "strict", log)  # nothing left to write again
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) in (0, -signal.SIGTERM), log.read_text()
    assert _on_the_books(engine, ws) == (sorted(answered), len(answered))
    engine.dispose()

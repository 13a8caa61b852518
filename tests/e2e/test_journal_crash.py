"""Strict mode on SQLite answers from the trace journal: a call answered while the database could take nothing,
then `kill -9`, is on the books after the next start (pipeline/journal.py, docs/architecture.md "Durability").

The database's write lock is held by another connection, so the gateway's store writer waits and every answer
can only have been released on the journal's fdatasync; the gateway is then killed before the store ever
took a record. A new process on the same database writes the journal's batches before it serves, and each
answered call is in the ledger exactly once.
"""

from __future__ import annotations

import signal
import sqlite3
import uuid
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text

from agentledger.config import Settings
from agentledger.pipeline.journal import journal_dir
from agentledger.testing.server import free_port
from tests.e2e.test_crash import BODY, _start
from tests.harness import provision

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_calls_answered_while_the_database_is_locked_survive_kill_9(sqlite_url: str, tmp_path: Path) -> None:
    db = tmp_path / "journal.db"
    db_url = f"sqlite:///{db}"
    data_dir = tmp_path / "data"
    settings = Settings(data_dir=str(data_dir), db_url=db_url)
    ids = provision(settings, "http://127.0.0.1:9")
    ws = {"ws": ids["workspace"]}
    engine = create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE provider_keys SET kind = 'mock', priority = 100 WHERE workspace_id = :ws"), ws)
    log = tmp_path / "gateway.log"
    port = free_port()
    proc = _start(data_dir, db_url, port, "strict", log)
    try:
        lock = sqlite3.connect(db, timeout=30, isolation_level=None)
        lock.execute("BEGIN IMMEDIATE")  # the store writer now waits for this connection
        headers = {"authorization": f"Bearer {ids['vk']}", "Alephant-Run-Id": f"run-{uuid.uuid4().hex[:8]}"}
        answered = []
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10, trust_env=False) as http:
            for i in range(12):
                rid = f"locked-{i}"
                resp = http.post(
                    "/v1/chat/completions",
                    json={**BODY, "stream": i % 3 == 0},
                    headers={**headers, "x-request-id": rid},
                )
                assert resp.status_code == 200, resp.text
                answered.append(rid)
        with engine.connect() as conn:  # a reader is not blocked by the lock (WAL): the store has none of them
            assert conn.execute(text("SELECT count(*) FROM requests WHERE id LIKE 'locked-%'")).scalar_one() == 0
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        lock.rollback()
        lock.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    journal = journal_dir(db_url)
    assert journal is not None and sum(p.stat().st_size for p in journal.glob("*.seg")) > 0

    proc = _start(data_dir, db_url, free_port(), "strict", log)  # ready only after the journal is written
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT id, status FROM requests WHERE workspace_id = :ws AND id LIKE 'locked-%'"), ws
        ).all()
        steps = conn.execute(
            text("SELECT count(*) FROM steps WHERE workspace_id = :ws AND request_id LIKE 'locked-%'"), ws
        ).scalar_one()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) in (0, -signal.SIGTERM), log.read_text()
    engine.dispose()
    assert sorted(r[0] for r in rows if r[1] == "ok") == sorted(answered)
    assert steps == len(answered)  # one model_call step each: nothing written twice
    assert sum(p.stat().st_size for p in journal.glob("*.seg")) == 0

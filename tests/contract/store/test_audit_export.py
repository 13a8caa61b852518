"""An export of 100,000 audit events streams a page at a time: its peak memory (tracemalloc) stays a small fraction
of its size, and the export, read back line by line, verifies offline against the published key."""

from __future__ import annotations

import tracemalloc
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from agentledger.audit.chain import GENESIS, link, time_text
from agentledger.audit.checkpoints import load_public, sign
from agentledger.audit.export import read_jsonl, verify_export
from agentledger.audit_trail import AuditTrail
from agentledger.core.model import Actor, AuditRecord, TraceEvent
from agentledger.secrets_box import SecretBox
from agentledger.store import schema as t
from agentledger.store.audit import _row
from agentledger.store.sql import SQLStore

pytestmark = pytest.mark.slow
EVENTS = 100_000
T0 = datetime(2025, 3, 1, tzinfo=UTC)


async def _filled(store: SQLStore, trail: AuditTrail) -> str:
    """A chain of EVENTS events written straight in (the chain built here, the rows inserted by the driver's
    executemany), checkpointed every 10,000 as a running gateway would."""
    ws = f"ws-{uuid.uuid4().hex[:10]}"
    await store.create_workspace(ws, "Big", T0)
    key = await trail.signing_key(ws)
    actor = Actor("admin_token", "tok_1", "admin")
    prev, rows, checkpoints = GENESIS, [], []
    for seq in range(1, EVENTS + 1):
        at = T0 + timedelta(milliseconds=seq)
        after = {"name": f"department {seq}", "limit_usd": "25.000000000", "n": seq}
        record = AuditRecord(ws, f"aud-{seq}", at, actor, "department.create", "department", f"dep-{seq}", after=after)
        view = link(record, seq, prev)
        prev = view["hash"]
        rows.append(_row(view, at))
        if seq % 10_000 == 0:
            checkpoints.append(sign(key, ws, seq, prev, time_text(at)))
    with store.engine.begin() as conn:
        for i in range(0, len(rows), 20_000):
            store._bulk(conn, t.audit_events, store.audit._event_insert, rows[i : i + 20_000])
        conn.execute(t.audit_heads.insert().values(workspace_id=ws, seq=EVENTS, hash=prev, updated_at=T0))
    for cp in checkpoints:
        await store.audit.add_checkpoint(cp)
    return ws


async def test_an_export_of_100k_events_streams_in_bounded_memory_and_verifies(sqlite_url: str, tmp_path: Path) -> None:
    """SQLite only, for the suite's time (PostgreSQL's export is the same keyset read; tests/integration covers it)."""
    store = SQLStore(sqlite_url)
    await store.migrate()
    try:
        await _exported(store, tmp_path)
    finally:
        await store.aclose()


async def _exported(store: SQLStore, tmp_path: Path) -> None:
    async def commit(events: Sequence[TraceEvent]) -> None:
        raise AssertionError("nothing is recorded here")

    trail = AuditTrail(store, SecretBox(Fernet.generate_key()), commit)
    ws = await _filled(store, trail)
    public = await trail.public_key(ws)
    out = await trail.export(ws, "jsonl")
    path, size = tmp_path / "export.jsonl", 0
    tracemalloc.start()
    try:
        with path.open("wb") as f:
            async for chunk in out.body:
                size += len(chunk)
                f.write(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert size > 30_000_000, size  # the whole export: tens of megabytes
    assert peak < size / 6, (peak, size)  # read a page (1,000 events) at a time, never the whole set
    pinned = {public["key_id"]: load_public(public["public_key"])}
    with path.open("rb") as f:
        report = verify_export(read_jsonl(f), pinned)
    assert report.ok and report.events == EVENTS and report.checkpoints == 10 and report.unsigned == 0, report

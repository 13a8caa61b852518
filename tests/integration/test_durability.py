"""`durability=strict` (the default): a response is released only once its record is durable.

The books are read straight from the database, not through `/api` (whose reads flush the pipeline first and
would hide a record still queued). With `batched` and a long batching window the same reads find nothing
yet, which shows these checks can tell the two apart.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from agentledger.core.model import RequestRecord
from agentledger.pipeline.journal import journal_dir, read_segments
from agentledger.testing import ServerThread
from tests.harness import Harness, running_gateway

HELLO = [{"role": "user", "content": "hello"}]


def on_the_books(h: Harness, request_id: str) -> tuple[str, int] | None:
    engine = create_engine(h.settings.database_url)
    try:
        with engine.connect() as conn:
            row = conn.execute(
                text(
                    "SELECT r.status, (SELECT count(*) FROM steps s WHERE s.workspace_id = r.workspace_id"
                    " AND s.request_id = r.id) FROM requests r WHERE r.workspace_id = :ws AND r.id = :id"
                ),
                {"ws": h.workspace, "id": request_id},
            ).first()
    finally:
        engine.dispose()
    return (row[0], row[1]) if row else None


def calls(h: Harness) -> tuple[str, str, str]:
    """A plain call, a stream read to its end, and a refused call; returns their x-request-ids."""
    client = h.openai()
    plain, stream, refused = (f"dur-{uuid.uuid4().hex[:8]}" for _ in range(3))
    run = {"Alephant-Run-Id": f"run-{uuid.uuid4().hex[:8]}"}
    client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, extra_headers={**run, "x-request-id": plain})
    chunks = client.chat.completions.create(
        model="gpt-4o-mini", messages=HELLO, stream=True, extra_headers={**run, "x-request-id": stream}
    )
    assert list(chunks)
    resp = h.v1("POST", "/v1/chat/completions", json={"model": "gpt-4o-mini"}, headers={"x-request-id": refused})
    assert resp.status_code == 400
    return plain, stream, refused


@pytest.fixture
def direct(db_url: str, tmp_path: Path, upstream: ServerThread) -> Iterator[Harness]:
    """Strict mode answering on the store's own commit (PostgreSQL always; SQLite without its journal)."""
    with running_gateway(db_url, tmp_path, upstream, trace_journal=False) as h:
        yield h


def test_strict_every_answered_call_is_in_the_database_when_the_client_has_it(direct: Harness) -> None:
    assert direct.settings.durability == "strict"
    plain, stream, refused = calls(direct)
    assert on_the_books(direct, plain) == ("ok", 1)
    assert on_the_books(direct, stream) == ("ok", 1)
    assert on_the_books(direct, refused) == ("error", 0)


def in_the_journal(h: Harness, request_id: str) -> bool:
    directory = journal_dir(h.settings.database_url)
    assert directory is not None
    return any(
        isinstance(ev, RequestRecord) and ev.request_id == request_id
        for batch in read_segments(directory)
        for ev in batch
    )


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_strict_on_sqlite_every_answered_call_is_in_the_journal_or_the_database(gw: Harness) -> None:
    """The journal is read first: a record leaves it only after the database's durable commit holds it."""
    assert gw.settings.trace_journal
    plain, stream, refused = calls(gw)
    for request_id, books in ((plain, ("ok", 1)), (stream, ("ok", 1)), (refused, ("error", 0))):
        assert in_the_journal(gw, request_id) or on_the_books(gw, request_id) == books


@pytest.fixture
def batched(sqlite_url: str, tmp_path: Path, upstream: ServerThread) -> Iterator[Harness]:
    with running_gateway(sqlite_url, tmp_path, upstream, durability="batched", batch_interval_ms=2000.0) as h:
        yield h


def test_batched_answers_before_the_record_is_written(batched: Harness) -> None:
    plain, stream, refused = calls(batched)
    assert [on_the_books(batched, r) for r in (plain, stream, refused)] == [None, None, None]
    batched.get(f"/api/requests/{plain}")  # reads flush the pipeline
    assert on_the_books(batched, plain) == ("ok", 1)

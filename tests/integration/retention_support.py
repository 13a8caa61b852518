"""Helpers of the retention and privacy tests: the store's rows read as they are (not through the API), and old
trace rows written the way the gateway writes them (through a store's write_batch, so the books count them)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

from agentledger.core.model import Attribution, RequestRecord, StepStatus, TraceEvent
from agentledger.core.pricing import CostSource
from agentledger.core.usage import Usage
from agentledger.store.sql import SQLStore
from tests.harness import Harness

_ENGINES: dict[str, Engine] = {}


def engine(gw: Harness) -> Engine:
    url = gw.settings.database_url
    if url not in _ENGINES:
        _ENGINES[url] = create_engine(url, pool_size=1) if not url.startswith("sqlite") else create_engine(url)
    return _ENGINES[url]


def rows(gw: Harness, sql: str, **params: Any) -> list[Any]:
    with engine(gw).connect() as conn:
        return list(conn.execute(text(sql), {"ws": gw.workspace, **params}).all())


def count(gw: Harness, table: str, where: str = "true", **params: Any) -> int:
    found = rows(gw, f"SELECT count(*) FROM {table} WHERE workspace_id = :ws AND ({where})", **params)
    return int(found[0][0])


def flush(gw: Harness) -> None:
    """Reads of the query API flush the pipeline first: everything answered is in the store after this."""
    gw.get("/api/retention")
    gw.get("/api/runs", limit=1)


@contextmanager
def side_store(gw: Harness) -> Iterator[SQLStore]:
    """A second store over the gateway's database, for seeding and for `rollups verify` / `rebuild`."""
    store = SQLStore(gw.settings.database_url)
    try:
        yield store
    finally:
        _close(store)


def _close(store: SQLStore) -> None:
    async def run() -> None:
        await store.aclose()

    asyncio.run(run())


def write(store: SQLStore, events: list[TraceEvent]) -> None:
    async def run() -> None:
        await store.write_batch(events)

    asyncio.run(run())


def verify(store: SQLStore, workspace: str | None) -> list[Any]:
    async def run() -> list[Any]:
        return await store.verify_books(workspace)

    return asyncio.run(run())


def rebuild(store: SQLStore, workspace: str | None) -> int:
    async def run() -> int:
        return await store.rebuild_books(workspace)

    return asyncio.run(run())


def old_request(
    gw: Harness,
    request_id: str,
    at: datetime,
    *,
    body: bytes = b"{}",
    response: bytes | None = b'{"id": "old"}',
    cost: int = 1000,
    run_id: str | None = None,
    session_id: str | None = None,
) -> RequestRecord:
    """A completed chat call as the gateway records it, at `at`; its request hash is that of `body`."""
    attribution = Attribution(
        workspace_id=gw.workspace,
        department_id=gw.department,
        run_id=run_id,
        session_id=session_id,
        session_path="/old" if session_id else None,
    )
    return RequestRecord(
        request_id=request_id,
        attribution=attribution,
        endpoint="/chat/completions",
        provider="openai",
        model="gpt-4o-mini",
        stream=False,
        status=StepStatus.OK,
        http_status=200,
        started_at=at,
        ended_at=at,
        latency_ms=5.0,
        request_hash=hashlib.sha256(body).hexdigest(),
        usage=Usage(input_tokens=6, output_tokens=9),
        cost_nanos=cost,
        cost_source=CostSource.COMPUTED,
        response_body=response,
        response_content_type="application/json",
        provider_key="fake-openai",
    )

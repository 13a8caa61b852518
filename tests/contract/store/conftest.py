from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from agentledger.store.sql import SQLStore


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[SQLStore]:
    """A migrated store on each backend (SQLite and PostgreSQL), closed afterwards."""
    s = SQLStore(db_url)
    await s.migrate()
    yield s
    await s.aclose()

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from agentledger.store.sql import SQLStore
from tests.contract.conftest import migrated


@pytest.fixture
async def store(sqlite_url: str) -> AsyncIterator[SQLStore]:
    """A migrated SQLite store: the pipeline's tests need no second backend."""
    async for s in migrated(sqlite_url):
        yield s

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from agentledger.store.sql import SQLStore
from tests.contract.conftest import migrated


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[SQLStore]:
    """A migrated store on each backend (SQLite and PostgreSQL), closed afterwards."""
    async for s in migrated(db_url):
        yield s

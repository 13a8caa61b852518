from __future__ import annotations

from collections.abc import AsyncIterator

from agentledger.store.sql import SQLStore


async def migrated(url: str) -> AsyncIterator[SQLStore]:
    """A migrated store on `url`, closed afterwards: the contract suites' `store` fixtures."""
    s = SQLStore(url)
    await s.migrate()
    yield s
    await s.aclose()

"""Governance validates what the store would otherwise refuse later, on the trace-write path."""

from __future__ import annotations

from typing import Any, cast

import pytest

from agentledger.core.errors import InvalidRequest
from agentledger.governance import Governance
from agentledger.secrets_box import SecretBox
from agentledger.store.base import Store


class RecordingStore:
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    async def create_provider_key(self, row: dict[str, Any]) -> None:
        self.rows.append(row)


async def test_provider_names_fit_the_request_records() -> None:
    store = RecordingStore()
    gov = Governance(cast(Store, store), cast(SecretBox, None))
    await gov.create_provider_key("ws", {"kind": "mock", "provider": "p" * 64})
    assert store.rows[0]["provider"] == "p" * 64
    with pytest.raises(InvalidRequest) as info:
        await gov.create_provider_key("ws", {"kind": "mock", "provider": "p" * 65})
    assert info.value.param == "provider"
    assert len(store.rows) == 1


def test_over_long_base_url_is_a_clear_400() -> None:
    import asyncio

    from agentledger.core.errors import InvalidRequest
    from agentledger.governance import Governance

    gov = Governance(store=None, box=None)  # type: ignore[arg-type]  # refused before either is touched
    with pytest.raises(InvalidRequest) as err:
        asyncio.run(gov.create_provider_key("ws", {"base_url": "http://127.0.0.1/" + "a" * 1100}))
    assert err.value.param == "base_url" and err.value.status == 400

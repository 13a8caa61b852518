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

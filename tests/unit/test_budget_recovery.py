"""Counters loaded at start from the ledger's sums (gateway/budget_recovery.py): a sum past what a counter holds is
loaded at the bound, so one counter cannot stop the gateway from starting for every workspace."""

from __future__ import annotations

import pytest

from agentledger.gateway.budget_recovery import loadable
from agentledger.limits.base import MAX_COUNTER, Standing, check_counter
from agentledger.limits.memory import MemoryCounters


@pytest.mark.parametrize(
    ("spent", "reserved", "expected"),
    [
        (7, 3, Standing(7, 3)),
        (5, -2, Standing(5, 0)),  # a settle read before its reserve: never below 0
        (10**19, 0, Standing(MAX_COUNTER, 0)),
        (10**19, 10**15, Standing(MAX_COUNTER - 10**15, 10**15)),
        (-(10**19), 0, Standing(-MAX_COUNTER, 0)),
        (0, 10**19, Standing(0, MAX_COUNTER)),
    ],
)
def test_a_counter_is_loaded_within_what_counters_hold(spent: int, reserved: int, expected: Standing) -> None:
    got = loadable("b|ws|b1|0", spent, reserved)
    assert got == expected
    check_counter("b|ws|b1|0", got.spent, got.reserved)  # what every backend's load checks


async def test_the_in_process_counters_take_a_clamped_load() -> None:
    counters = MemoryCounters()
    await counters.load({"b|ws|b1|0": loadable("b|ws|b1|0", 10**19, 5)}, {})
    assert (await counters.standing(["b|ws|b1|0"]))["b|ws|b1|0"] == Standing(MAX_COUNTER - 5, 5)

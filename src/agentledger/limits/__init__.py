"""The counters behind budgets (reserve, settle), rate limits, concurrency slots and idempotency claims.

`base` is the seam (`Counters`) and its documentation; `memory.MemoryCounters` is the in-process backend,
`redis.RedisCounters` the shared one for several replicas (import it from `agentledger.limits.redis`).
"""

from agentledger.limits.base import (
    MAX_AMOUNT,
    MAX_COUNTER,
    Charge,
    Counters,
    CountersUnavailable,
    Hold,
    Rate,
    Refused,
    Standing,
)
from agentledger.limits.memory import MemoryCounters

__all__ = [
    "MAX_AMOUNT",
    "MAX_COUNTER",
    "Charge",
    "Counters",
    "CountersUnavailable",
    "Hold",
    "MemoryCounters",
    "Rate",
    "Refused",
    "Standing",
]

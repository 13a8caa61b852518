"""Identifier generation. Prefixed so an id says what it names in logs and URLs."""

from __future__ import annotations

import os
import time
from collections import deque

_POOL_BYTES = 4096  # random bytes drawn from the OS at once: 341 ids

# The operating system's CSPRNG bytes drawn a page at a time, each id's used once: one `getrandom` system call per
# few hundred ids, not one an id (a system call costs microseconds on some virtual machines, and every call through
# the gateway makes ids). Each is taken off the deque by one `popleft`, atomic under the interpreter lock, so no two
# threads ever take the same; a forked child starts empty, so it never repeats its parent's.
_pool: deque[str] = deque()
os.register_at_fork(after_in_child=_pool.clear)


def _random_hex() -> str:
    """96 random bits as 24 hex characters."""
    try:
        return _pool.popleft()
    except IndexError:
        fresh = os.urandom(_POOL_BYTES).hex()
        _pool.extend([fresh[i : i + 24] for i in range(24, len(fresh) - 23, 24)])
        return fresh[:24]


def new_id(prefix: str) -> str:
    """`prefix_` + 24 hex characters (96 random bits): URL-safe and unguessable."""
    return f"{prefix}_{_random_hex()}"


def ordered_id(prefix: str) -> str:
    """`prefix_` + the time in milliseconds (12 hex characters) + 24 random hex characters (96 bits, as `new_id`):
    unguessable as well, and an id made later sorts after (within a millisecond, at random). For ids a table keys
    rows by at a call's rate: each insert then lands at the end of the key's index, not on a random page of it.
    (A budget reservation's ledger rows, six a call under three budgets, dirtied one index page each: at 120k rows
    that was ~50 µs more of the writer's CPU a call than in id order, and a transaction's WAL pages with it.)"""
    return f"{prefix}_{time.time_ns() // 1_000_000:012x}{_random_hex()}"

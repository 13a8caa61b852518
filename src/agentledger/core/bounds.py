"""Every bound the API puts on a number or a JSON value, in one place (docs/api.md, "Bounds").

Why these values: a value the API accepts must fit its column on both stores, and no total of them may
overflow on either store (docs/architecture.md, "Bounds", has the arithmetic). Each bound is far above
anything real: the most expensive model today charges $600 per million output tokens, and the largest
context windows hold a few million tokens.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

MAX_TOKENS = 1_000_000_000  # per usage field of one event
MAX_EVENT_COST_USD = Decimal(1_000_000)  # one request or step; 10**15 nano-dollars
MAX_RATE_MTOK = Decimal(10_000)  # a price override, dollars per million tokens
MAX_RATE_DECIMALS = 9
MAX_ATTEMPT = 1000  # `attempt` is an INTEGER column
MAX_LATENCY_MS = 31_536_000_000  # one year: a step may wait days for a human, not longer
MIN_PRIORITY, MAX_PRIORITY = -1_000_000, 1_000_000  # provider-key priority, an INTEGER column
MAX_JSON_DEPTH = 32  # nesting of a stored JSON value (step input/output/attributes, run metadata/output)
MAX_JSON_BYTES = 1 << 20  # serialized size of one stored JSON value


def json_depth_exceeds(value: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """True when `value` nests arrays/objects more than `limit` deep ([] is 1, [[]] is 2, a scalar 0).

    Iterative, so a hostile value cannot exhaust the Python stack; it stops at the first level too deep.
    """
    stack: list[tuple[Iterator[Any], int]] = []
    if isinstance(value, dict | list):
        stack.append((iter(value.values() if isinstance(value, dict) else value), 1))
    if stack and limit < 1:
        return True
    while stack:
        children, depth = stack[-1]
        child = next(children, _END)
        if child is _END:
            stack.pop()
        elif isinstance(child, dict | list):
            if depth + 1 > limit:
                return True
            stack.append((iter(child.values() if isinstance(child, dict) else child), depth + 1))
    return False


_END = object()

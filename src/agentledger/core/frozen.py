"""`frozen`: an immutable record for the type checker, a plain slotted dataclass at run time.

A call through the gateway makes about fifteen records (its attribution, tracking, parsed body, hops, attempts,
outcome, request record, and under budgets its policy report), 130-odd fields in all. A `frozen=True` dataclass
sets each field in `__init__` through `object.__setattr__`, a call of its own: about six times as slow to build
as a plain slotted one (3.1 against 0.55 µs for 14 fields on the benchmark's machine), some 20 µs of every call's
CPU. These records are never changed once built, and mypy --strict (CI) refuses any assignment to their fields
(`dataclass_transform(frozen_default=True)`), so the run-time guard bought nothing the type check does not.

Equality and hashing stay those of a frozen dataclass: by fields (`unsafe_hash=True`: generated although the
class is not frozen at run time). A class that defines its own `__hash__` keeps `dataclass(frozen=True)`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar, dataclass_transform

T = TypeVar("T")


@dataclass_transform(frozen_default=True)
def frozen(cls: type[T]) -> type[T]:
    return dataclass(slots=True, unsafe_hash=True)(cls)

"""`MemoryCounters`: the in-process backend (the embedded default, one node).

Atomic without locks: the asyncio event loop runs one coroutine at a time and no method awaits before it
returns, so each operation runs whole. (Do not call it from other threads.)

Memory is bounded by what is live: reservations leave on settle or `expire`; a rate state is dropped once both
of its windows are past, slots and claims once expired (sweeps at most every `SWEEP_EVERY` seconds: of the
injected ``now`` for rates, of the clock for slots and claims; a time jumping back also sweeps). Budget
counters stay until `load` replaces them: one per budget window the gateway has charged.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from agentledger.limits.base import (
    ZERO,
    Charge,
    Rate,
    Refused,
    Standing,
    check_amount,
    check_counter,
    check_now,
    check_rates,
    check_reservation,
    check_seconds,
    check_units,
    merge_charges,
    window_estimate,
    window_wait,
)

SWEEP_EVERY = 60.0


@dataclass(slots=True)
class _Window:
    """A rate's two-bucket state: the index of the current aligned window and the two counts."""

    index: int
    current: int
    previous: int


class MemoryCounters:
    """In-process `Counters`. ``clock`` (epoch seconds) dates reservations, slots and claims."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._totals: dict[str, Standing] = {}
        self._reservations: dict[str, tuple[float, dict[str, int]]] = {}
        self._rates: dict[tuple[str, float], _Window] = {}
        self._slots: dict[str, dict[str, float]] = {}
        self._claims: dict[str, tuple[str, float]] = {}
        self._next_rate_sweep = self._next_hold_sweep = -math.inf

    # --- budgets ----------------------------------------------------------------------------------------

    async def reserve(
        self, reservation_id: str, charges: Sequence[Charge], ttl: float
    ) -> dict[str, Standing] | Refused:
        check_reservation(charges, ttl)
        return self._reserve(reservation_id, charges, ttl)

    def _reserve(self, reservation_id: str, charges: Sequence[Charge], ttl: float) -> dict[str, Standing] | Refused:
        if reservation_id in self._reservations:
            return {c.key: self._totals.get(c.key, ZERO) for c in charges}
        after: dict[str, Standing] = {}
        for charge in charges:
            now = self._totals.get(charge.key, ZERO)
            if charge.limit is not None and now.spent + now.reserved + charge.amount > charge.limit:
                return Refused(charge.key, now, charge.limit)
            after[charge.key] = Standing(now.spent, now.reserved + charge.amount)
            check_counter(charge.key, after[charge.key].spent, after[charge.key].reserved)
        self._totals.update(after)
        self._reservations[reservation_id] = (self._clock() + ttl, {c.key: c.amount for c in charges})
        return after

    async def settle(self, reservation_id: str, actual: int, *, lazy: bool = False) -> dict[str, Standing]:
        return self.settle_now(reservation_id, actual)

    def settle_now(self, reservation_id: str, actual: int) -> dict[str, Standing]:
        check_amount(actual, "actual", non_negative=True)
        found = self._reservations.get(reservation_id)
        if found is None:
            return {}
        after: dict[str, Standing] = {}
        for key, amount in found[1].items():
            now = self._totals.get(key, ZERO)
            after[key] = Standing(now.spent + actual, now.reserved - amount)
            check_counter(key, after[key].spent, after[key].reserved)
        del self._reservations[reservation_id]
        self._totals.update(after)
        return after

    async def add(self, charges: Sequence[Charge]) -> dict[str, Standing]:
        after: dict[str, Standing] = {}
        for key, amount in merge_charges(charges).items():
            now = self._totals.get(key, ZERO)
            after[key] = Standing(now.spent + amount, now.reserved)
            check_counter(key, after[key].spent, after[key].reserved)
        self._totals.update(after)
        return after

    async def standing(self, keys: Sequence[str]) -> dict[str, Standing]:
        return {key: self._totals.get(key, ZERO) for key in keys}

    async def expire(self, now: float) -> list[tuple[str, dict[str, int]]]:
        check_now(now)
        due = sorted((deadline, rid) for rid, (deadline, _) in self._reservations.items() if deadline <= now)
        out: list[tuple[str, dict[str, int]]] = []
        for _, rid in due:
            amounts = self._reservations.pop(rid)[1]
            for key, amount in amounts.items():
                was = self._totals.get(key, ZERO)
                self._totals[key] = Standing(was.spent + amount, was.reserved - amount)
            out.append((rid, dict(amounts)))
        return out

    async def load(
        self, totals: Mapping[str, Standing], reservations: Mapping[str, tuple[float, dict[str, int]]]
    ) -> None:
        for key, total in totals.items():
            _check_total(key, total)
        for _rid, (deadline, amounts) in reservations.items():
            check_now(deadline)
            for amount in amounts.values():
                check_amount(amount, "amount", non_negative=True)
        self._totals = {key: Standing(t.spent, t.reserved) for key, t in totals.items()}
        self._reservations = {rid: (float(d), dict(a)) for rid, (d, a) in reservations.items()}

    # --- rate limits --------------------------------------------------------------------------------------

    def _window(self, key: str, window: float, now: float) -> _Window:
        """The (key, window) state rolled to ``now`` (not stored: the caller stores it if it counts). The stored
        state itself when ``now`` is in its window (most hits: no object a call), so count only once admitted."""
        index = math.floor(now / window)
        state = self._rates.get((key, float(window)))
        if state is None or index > state.index + 1:
            return _Window(index, 0, 0)
        if index == state.index + 1:
            return _Window(index, 0, state.current)
        return state  # this window, or a clock behind it

    async def hit(self, rates: Sequence[Rate], now: float) -> float | None:
        return self._hit(rates, now)

    def _hit(self, rates: Sequence[Rate], now: float) -> float | None:
        check_now(now)
        check_rates(rates)
        self._sweep_rates(now)
        states = [self._window(r.key, r.window, now) for r in rates]
        wait: float | None = None
        for rate, state in zip(rates, states, strict=True):
            start = state.index * rate.window
            if window_estimate(state.previous, state.current, start, rate.window, now) + rate.cost > rate.limit:
                seconds = window_wait(state.previous, state.current, start, rate.window, rate.limit, rate.cost, now)
                wait = seconds if wait is None else max(wait, seconds)
        if wait is not None:
            return wait
        for rate, state in zip(rates, states, strict=True):
            state.current += rate.cost
            self._rates[(rate.key, float(rate.window))] = state
        return None

    async def hit_and_reserve(
        self, rates: Sequence[Rate], now: float, reservation_id: str, charges: Sequence[Charge], ttl: float
    ) -> tuple[float | None, dict[str, Standing] | Refused | None]:
        check_reservation(charges, ttl)  # before anything is counted: a bad reservation changes nothing
        wait = self._hit(rates, now)  # no await in between: one step
        if wait is not None:
            return wait, None
        return None, self._reserve(reservation_id, charges, ttl)  # checked above

    async def adjust_rate(self, key: str, window: float, delta: int, now: float) -> None:
        check_now(now)
        check_seconds(window, "window")
        check_units(delta, "delta")
        state = self._window(key, window, now)
        state.current += delta
        if state.current < 0:
            state.previous = max(state.previous + state.current, 0)
            state.current = 0
        self._rates[(key, float(window))] = state

    # --- concurrency slots and claims ------------------------------------------------------------------

    async def acquire(self, key: str, limit: int, holder: str, ttl: float) -> bool:
        check_seconds(ttl, "ttl")
        check_units(limit, "limit", non_negative=True)
        now = self._clock()
        self._sweep_holds(now)
        holders = {h: d for h, d in self._slots.get(key, {}).items() if d > now}
        if holder not in holders and len(holders) >= limit:
            self._store_slots(key, holders)
            return False
        holders[holder] = now + ttl
        self._slots[key] = holders
        return True

    async def release_slot(self, key: str, holder: str) -> None:
        holders = self._slots.get(key)
        if holders is not None:
            holders.pop(holder, None)
            self._store_slots(key, holders)

    def _store_slots(self, key: str, holders: dict[str, float]) -> None:
        if holders:
            self._slots[key] = holders
        else:
            self._slots.pop(key, None)

    async def claim(self, key: str, holder: str, ttl: float) -> str | None:
        check_seconds(ttl, "ttl")
        now = self._clock()
        self._sweep_holds(now)
        current = self._claims.get(key)
        if current is not None and current[1] > now and current[0] != holder:
            return current[0]
        self._claims[key] = (holder, now + ttl)
        return None

    async def release_claim(self, key: str, holder: str) -> None:
        current = self._claims.get(key)
        if current is not None and current[0] == holder:
            del self._claims[key]

    async def aclose(self) -> None:
        return None

    # --- housekeeping ----------------------------------------------------------------------------------

    def _sweep_rates(self, now: float) -> None:
        """Drop rate states whose two windows are past (at most every SWEEP_EVERY seconds of ``now``)."""
        if self._next_rate_sweep - SWEEP_EVERY <= now < self._next_rate_sweep:
            return
        self._next_rate_sweep = now + SWEEP_EVERY
        self._rates = {ident: s for ident, s in self._rates.items() if s.index + 1 >= math.floor(now / ident[1])}

    def _sweep_holds(self, clock: float) -> None:
        """Drop expired slots and claims (at most every SWEEP_EVERY seconds of the clock)."""
        if self._next_hold_sweep - SWEEP_EVERY <= clock < self._next_hold_sweep:
            return
        self._next_hold_sweep = clock + SWEEP_EVERY
        for key in list(self._slots):
            self._store_slots(key, {h: d for h, d in self._slots[key].items() if d > clock})
        self._claims = {key: c for key, c in self._claims.items() if c[1] > clock}


def _check_total(key: str, total: Standing) -> None:
    for value, what in ((total.spent, "spent"), (total.reserved, "reserved")):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{what} must be an int of nano-dollars, not {type(value).__name__}")
    if total.reserved < 0:
        raise ValueError(f"counter {key!r}: reserved {total.reserved} < 0")
    check_counter(key, total.spent, total.reserved)

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
    MAX_AMOUNT,
    MAX_COUNTER,
    ZERO,
    Charge,
    Hold,
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
    stored: bool = False  # this object is the one `_rates` holds


class MemoryCounters:
    """In-process `Counters`. ``clock`` (epoch seconds) dates reservations, slots and claims."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        # Each counter as a mutable [spent, reserved] pair, changed in place: a reservation against three budgets
        # makes no object a key (the gateway's reservations and settles of every call under budgets).
        self._totals: dict[str, list[int]] = {}
        # By reservation id: its deadline, its keys and the amount held on each (in the order they were given).
        self._reservations: dict[str, tuple[float, tuple[str, ...], tuple[int, ...]]] = {}
        self._rates: dict[tuple[str, float], _Window] = {}
        self._slots: dict[str, dict[str, float]] = {}
        self._claims: dict[str, tuple[str, float]] = {}
        self._next_rate_sweep = self._next_hold_sweep = -math.inf

    # --- budgets ----------------------------------------------------------------------------------------

    def _pair(self, key: str) -> list[int]:
        found = self._totals.get(key)
        if found is None:
            found = self._totals[key] = [0, 0]
        return found

    def _standing(self, key: str) -> Standing:
        found = self._totals.get(key)
        return ZERO if found is None else Standing(found[0], found[1])

    async def reserve(
        self, reservation_id: str, charges: Sequence[Charge], ttl: float
    ) -> dict[str, Standing] | Refused:
        check_reservation(charges, ttl)
        keys = tuple([c.key for c in charges])
        found = self._reserve(reservation_id, keys, tuple([c.limit for c in charges]), [c.amount for c in charges], ttl)
        if isinstance(found, Refused):
            return found
        return {k: Standing(found[2 * i], found[2 * i + 1]) for i, k in enumerate(keys)}

    def _reserve(
        self,
        reservation_id: str,
        keys: tuple[str, ...],
        limits: tuple[int | None, ...],
        amounts: Sequence[int],
        ttl: float,
    ) -> list[int] | Refused:
        """The reservation, checked; its keys' [spent, reserved] after, flat (or as they stand: already open)."""
        if reservation_id in self._reservations:
            return [n for k in keys for n in self._totals.get(k, (0, 0))]
        totals = self._totals
        pairs = [totals.get(k) or self._pair(k) for k in keys]
        for pair, limit, amount, key in zip(pairs, limits, amounts, keys, strict=True):
            held = pair[0] + pair[1] + amount
            if limit is not None and held > limit:
                return Refused(key, Standing(pair[0], pair[1]), limit)
            if held > MAX_COUNTER or pair[1] + amount > MAX_COUNTER:
                check_counter(key, pair[0], pair[1] + amount)  # raises: nothing changed yet
        after: list[int] = []
        for pair, amount in zip(pairs, amounts, strict=True):
            pair[1] += amount
            after += pair
        self._reservations[reservation_id] = (self._clock() + ttl, keys, tuple(amounts))
        return after

    def reserve_now(
        self, reservation_id: str, hold: Hold, amount: int, ttl: float, now: float
    ) -> tuple[float | None, list[int] | Refused | None]:
        # The path of every call under budgets, in one pass: one amount on each key reserved here rather than through
        # `_reserve` (per-key amounts), which answers what is not admitted; each check asked only when its common
        # case fails. A third of this method's time in the gateway, ~8 µs a call (docs/benchmark.md, 2026-11-27).
        if not (type(amount) is int and 0 <= amount <= MAX_AMOUNT):
            check_amount(amount, "amount", non_negative=True)
        if not (type(ttl) is float and 0 < ttl < math.inf):
            check_seconds(ttl, "ttl")
        if hold.rates:
            check_now(now)
            wait = self._count(hold.rates, now)  # (checked when the hold was made) nothing in between: one step
            if wait is not None:
                return wait, None
        keys, limits = hold.keys, hold.limits
        if reservation_id in self._reservations:
            return None, self._reserve(reservation_id, keys, limits, (amount,) * len(keys), ttl)
        totals = self._totals
        pairs = [totals.get(k) or self._pair(k) for k in keys]
        for i, pair in enumerate(pairs):
            limit, held = limits[i], pair[0] + pair[1] + amount
            if (limit is not None and held > limit) or held > MAX_COUNTER or pair[1] + amount > MAX_COUNTER:
                # refused, or out of range (raises): nothing changed yet
                return None, self._reserve(reservation_id, keys, limits, (amount,) * len(keys), ttl)
        after: list[int] = []
        for pair in pairs:
            pair[1] += amount
            after += pair
        self._reservations[reservation_id] = (self._clock() + ttl, keys, (amount,) * len(keys))
        return None, after

    async def settle(self, reservation_id: str, actual: int, *, lazy: bool = False) -> dict[str, Standing]:
        found = self._reservations.get(reservation_id)
        after = self.settle_now(reservation_id, actual)
        if found is None:
            return {}
        return {k: Standing(after[2 * i], after[2 * i + 1]) for i, k in enumerate(found[1])}

    def settle_now(self, reservation_id: str, actual: int) -> list[int]:
        check_amount(actual, "actual", non_negative=True)
        found = self._reservations.get(reservation_id)
        if found is None:
            return []
        _, keys, amounts = found
        pairs = [self._pair(k) for k in keys]
        for pair, amount, key in zip(pairs, amounts, keys, strict=True):
            if pair[0] + actual + pair[1] - amount > MAX_COUNTER or pair[0] + actual > MAX_COUNTER:
                check_counter(key, pair[0] + actual, pair[1] - amount)  # raises before anything changes
        del self._reservations[reservation_id]
        after: list[int] = []
        for pair, amount in zip(pairs, amounts, strict=True):
            pair[0] += actual
            pair[1] -= amount
            after += pair
        return after

    async def add(self, charges: Sequence[Charge]) -> dict[str, Standing]:
        merged = merge_charges(charges)
        for key, amount in merged.items():
            was = self._standing(key)
            check_counter(key, was.spent + amount, was.reserved)
        after: dict[str, Standing] = {}
        for key, amount in merged.items():
            pair = self._pair(key)
            pair[0] += amount
            after[key] = Standing(pair[0], pair[1])
        return after

    async def standing(self, keys: Sequence[str]) -> dict[str, Standing]:
        return {key: self._standing(key) for key in keys}

    async def expire(self, now: float) -> list[tuple[str, dict[str, int]]]:
        check_now(now)
        due = sorted((deadline, rid) for rid, (deadline, _, _) in self._reservations.items() if deadline <= now)
        out: list[tuple[str, dict[str, int]]] = []
        for _, rid in due:
            _, keys, amounts = self._reservations.pop(rid)
            for key, amount in zip(keys, amounts, strict=True):
                pair = self._pair(key)
                pair[0] += amount
                pair[1] -= amount
            out.append((rid, dict(zip(keys, amounts, strict=True))))
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
        self._totals = {key: [t.spent, t.reserved] for key, t in totals.items()}
        self._reservations = {rid: (float(d), tuple(a), tuple(a.values())) for rid, (d, a) in reservations.items()}

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
        return state  # this window, or a clock behind it (stored)

    async def hit(self, rates: Sequence[Rate], now: float) -> float | None:
        return self._hit(rates, now)

    def _hit(self, rates: Sequence[Rate], now: float) -> float | None:
        check_now(now)
        check_rates(rates)
        return self._count(rates, now)

    def _count(self, rates: Sequence[Rate], now: float) -> float | None:
        if not self._next_rate_sweep - SWEEP_EVERY <= now < self._next_rate_sweep:
            self._sweep_rates(now)
        # Most hits: each rate's stored window is the current one and has room: counted in place, no object made.
        stored, found = self._rates.get, []
        for r in rates:
            state = stored((r.key, r.window))
            if state is None or state.index != math.floor(now / r.window):
                break
            if window_estimate(state.previous, state.current, state.index * r.window, r.window, now) + r.cost > r.limit:
                break
            found.append(state)
        else:
            for r, state in zip(rates, found, strict=True):
                state.current += r.cost
            return None
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
            if state.stored:
                state.current += rate.cost
            else:  # (a window begun: stored from now on)
                state.current, state.stored = state.current + rate.cost, True
                self._rates[(rate.key, float(rate.window))] = state
        return None

    async def hit_and_reserve(
        self, rates: Sequence[Rate], now: float, reservation_id: str, charges: Sequence[Charge], ttl: float
    ) -> tuple[float | None, dict[str, Standing] | Refused | None]:
        check_reservation(charges, ttl)  # before anything is counted: a bad reservation changes nothing
        wait = self._hit(rates, now)  # no await in between: one step
        if wait is not None:
            return wait, None
        return None, await self.reserve(reservation_id, charges, ttl)  # (it awaits nothing: still one step)

    async def adjust_rate(self, key: str, window: float, delta: int, now: float) -> None:
        check_now(now)
        check_seconds(window, "window")
        check_units(delta, "delta")
        state = self._window(key, window, now)
        state.current += delta
        if state.current < 0:
            state.previous = max(state.previous + state.current, 0)
            state.current = 0
        state.stored = True
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
        """Drop rate states whose two windows are past (`_count` calls it at most every SWEEP_EVERY seconds of
        ``now``, or when ``now`` went back)."""
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

"""The counters seam: budgets by reservation, rate limits, concurrency slots and idempotency claims.

Two backends implement `Counters`: `MemoryCounters` (in-process, one node: the asyncio event loop is
single-threaded and no operation awaits inside, so each one is atomic) and `RedisCounters` (several
replicas: each operation is one Lua script, one round trip, atomic on the server). The contract suite in
tests/contract/limits runs the same tests against both.

Budgets: reserve, then settle
-----------------------------
A budget is a USD limit per scope and period window; its counter is a key the caller names (e.g.
``budget:<id>:<window start>``) holding two integers in nano-dollars: ``spent`` (booked) and ``reserved``
(held by calls in flight). Before forwarding a model call the gateway reserves the call's estimated maximum
cost against EVERY applicable budget in one all-or-none step; when the call ends it settles the actual cost,
which releases the rest of the hold. So concurrent calls cannot overspend: a reservation is admitted only if
``spent + reserved + amount <= limit`` for each limited key, and everything in flight is in ``reserved``.

    rid = "req_123"
    charges = [Charge("budget:ws:2025-06", limit=to_nanos(100), amount=est),
               Charge("budget:agent7:2025-06-14", limit=None, amount=est)]   # alert-only: counted, never refuses
    result = await counters.reserve(rid, charges, ttl=600)
    if isinstance(result, Refused):
        raise BudgetExceeded(result.key, ...)          # nothing was reserved anywhere
    try:
        answer = await forward(call)
    except BaseException:
        await counters.settle(rid, 0)                   # the call never cost anything: release the hold
        raise
    await counters.settle(rid, answer.cost_nanos)       # spent += actual, reserved -= est, on every key

* To cancel a reservation (the call never went out), settle it with ``actual=0``.
* A reservation whose ``ttl`` passes unsettled (its process died) is charged its estimate by `expire`, which
  the caller runs periodically (any one replica; every few seconds) and books in the ledger. Until `expire`
  runs, an overdue reservation still holds its amount (the safe side). A `settle` after the ttl but before
  `expire` settles normally; a `settle` after `expire` returns ``{}`` (the estimate was charged: book any
  difference with `add` if wanted).
* `reserve` and `settle` are idempotent by ``reservation_id``, so a caller may retry them after a timeout
  (`CountersUnavailable`): the outcome of the timed-out attempt is unknown, a retry makes it known. Do not
  reuse an id for another call: a `reserve` after its `settle` is a new reservation.
* `add` is NOT idempotent (it is a plain increment): a retry after `CountersUnavailable` may count twice.

Bounds (both backends, checked before anything changes)
-------------------------------------------------------
Every amount, limit and ``actual`` is an int with ``|value| <= MAX_AMOUNT`` (10**18 nano-dollars, a billion
dollars; reserve amounts, limits and ``actual`` are also ``>= 0``), else ValueError. Redis integers are 64-bit
signed, so every counter is kept within ``±MAX_COUNTER`` (2**63 - 1, about 9.2 billion dollars): an operation
after which a key's ``spent``, ``reserved`` or ``spent + reserved`` would leave that range raises ValueError
and changes nothing. (`expire` never can: it moves amounts from reserved to spent, the sum unchanged.) A
period's counter reaches it only by booking over nine billion dollars in one window.

Rate limits: the two-bucket sliding-window counter
--------------------------------------------------
`Rate(key, limit, window, cost)`: at most ``limit`` units (requests, or tokens) per ``window`` seconds. The
state per (key, window) is the count of the current aligned window ``[k·W, (k+1)·W)``, ``k = floor(now/W)``,
and of the one before. At ``now``, with ``f = (now - k·W) / W`` the fraction of the current window elapsed,
the estimate of the last W seconds is ``previous·(1 - f) + current`` (the previous window's hits taken as
evenly spread), and ``cost`` more is admitted iff ``estimate + cost <= limit``.

* Bound: ``current`` never passes ``limit`` through `hit`, so any ALIGNED window admits at most ``limit``; a
  window of W seconds starting anywhere admits at most ``limit + previous·f < 2·limit`` (the worst case is the
  previous window's hits bunched at its end); with hits evenly spread the estimate is exact. From a fresh
  state, exactly ``limit`` unit hits are admitted at any one instant.
* Retry-After: the estimate only falls as time passes, continuously (at a window boundary ``previous·0 +
  current`` becomes ``current·1 + 0``), so the earliest time ``t`` at which ``estimate(t) + cost <= limit``
  has a closed form, and `hit` returns ``t - now`` plus ``RETRY_PAD`` (10 µs, above the float rounding of
  epoch seconds): if no other hit lands meanwhile, a retry at ``now + retry_after`` is admitted, and one
  before ``t`` would not be (never early, at most 10 µs late; at least ``MIN_RETRY_AFTER``). When several
  rates refuse, the LARGEST of their waits is returned (the call can pass only when all admit). A ``cost >
  limit`` can never be admitted: the wait is ``math.inf`` (answer with an error that a retry cannot fix, not
  a Retry-After).
* `adjust_rate` corrects a token estimate by the actual (``delta`` may be negative): it is added to the
  current window; a negative remainder below zero comes off the previous window (floored at zero).
* Time: rates use the injected ``now`` (wall-clock epoch seconds; replicas' clocks should agree to within a
  small part of a window; a ``now`` before the stored window is taken as that window: no rolling back).
* Memory: a state whose windows are both past is dropped (Redis: a key TTL of two windows).

Concurrency slots and idempotency claims
----------------------------------------
`acquire(key, limit, holder, ttl)` takes one of ``limit`` slots for ``holder`` (re-acquiring a held slot
refreshes its ttl and succeeds); a slot not released within ``ttl`` seconds frees itself (a crashed holder).
`claim(key, holder, ttl)` takes an exclusive claim (e.g. an idempotency key being processed): ``None`` when
taken (or already this holder's: its ttl is refreshed), else the current holder. Both release calls only
release what that holder has. These use the backend's clock (in-process: the injected ``clock``; Redis: the
Redis server's clock, one clock for every replica).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from agentledger.core.errors import StoreUnavailable

MAX_AMOUNT = 10**18  # any one amount, limit or actual, in nano-dollars: a billion dollars
MAX_COUNTER = 2**63 - 1  # Redis integers are 64-bit signed: every spent, reserved and spent+reserved stays within ±this
MAX_RATE_UNITS = 2**53  # rate limits, costs and counts are exact in a double (Lua's only number type)
MIN_RETRY_AFTER = 0.001  # seconds: a refused rate never answers a wait of zero
RETRY_PAD = 1e-5  # seconds added to a computed wait: float rounding at epoch magnitudes is ~1e-6 s


class CountersUnavailable(StoreUnavailable):
    """The counters could not be reached or did not answer in time (Redis down, timeout, pool exhausted).

    A StoreUnavailable: wherever it is not handled, the client gets a 503 with Retry-After, never a 500.

    The outcome of the operation is unknown: `reserve`, `settle`, `claim` and `release_*` may be retried
    with the same arguments; `add`, `hit` and `adjust_rate` may have counted (a retry may count twice).
    """


@dataclass(frozen=True, slots=True)
class Charge:
    """``amount`` nano-dollars against the counter ``key``; ``limit`` None: counted, never refused."""

    key: str
    limit: int | None
    amount: int


@dataclass(frozen=True, slots=True)
class Standing:
    """A budget counter: ``spent`` (booked) and ``reserved`` (held by calls in flight), nano-dollars."""

    spent: int
    reserved: int


ZERO = Standing(0, 0)


@dataclass(frozen=True, slots=True)
class Hold:
    """The counters a reservation charges and their limits (None: counted, never refused), and the rates hit first
    in the same step, apart from its amount and time: checked once when made. A caller that reserves against the
    same counters call after call (the gateway, for one subject in one window) makes one and reserves any amount
    with it (`Counters.reserve_now`)."""

    keys: tuple[str, ...]
    limits: tuple[int | None, ...]
    rates: tuple[Rate, ...] = ()

    def __post_init__(self) -> None:
        if len(self.keys) != len(self.limits):
            raise ValueError(f"a hold names {len(self.keys)} keys and {len(self.limits)} limits")
        check_reservation(self.charges(0), 1.0)
        check_rates(self.rates)

    def charges(self, amount: int) -> list[Charge]:
        return [Charge(k, limit, amount) for k, limit in zip(self.keys, self.limits, strict=True)]


@dataclass(frozen=True, slots=True)
class Refused:
    """A reservation refused at ``key``: its ``standing`` (unchanged) plus the amount would exceed ``limit``."""

    key: str
    standing: Standing
    limit: int


@dataclass(frozen=True, slots=True)
class Rate:
    """At most ``limit`` units per ``window`` seconds on ``key``; this hit counts ``cost`` units."""

    key: str
    limit: int
    window: float
    cost: int = 1


@runtime_checkable
class Counters(Protocol):
    """The counters behind budgets, rate limits, concurrency slots and idempotency claims.

    Every method is atomic (all of it or none of it happens, and no other operation interleaves) and, on
    Redis, one round trip. Keys are the caller's strings, any text; the backends namespace them.
    Backends raise `CountersUnavailable` (never a driver's exception) when they cannot answer, and
    ValueError for arguments out of bounds (see the module docstring), before changing anything.
    """

    async def reserve(
        self, reservation_id: str, charges: Sequence[Charge], ttl: float
    ) -> dict[str, Standing] | Refused:
        """All or none: if every charge with a limit has ``spent + reserved + amount <= limit``, add each
        ``amount`` to its key's ``reserved``, remember the reservation ({key: amount}) until it is settled or
        `expire` finds it past ``clock() + ttl``, and return each key's standing after. Else change nothing
        and return `Refused` for the first failing key, in the order given.

        Idempotent: if ``reservation_id`` is already open, change nothing and return the current standings
        of the charges' keys. Amounts are >= 0; keys must be distinct (ValueError); ``ttl`` > 0.
        """
        ...

    async def settle(self, reservation_id: str, actual: int, *, lazy: bool = False) -> dict[str, Standing]:
        """For every key of the reservation: ``reserved -= its amount; spent += actual``; forget it; return
        the keys' standings after. Unknown (or already settled or expired) id: ``{}``, nothing changes, so a
        settle retried after a crash never counts twice. ``actual=0`` cancels a reservation.

        ``lazy``: nobody is waiting on it (a call's settle, in the background): a backend may hold it a few
        milliseconds to send it with its next operation (Redis: one system call and one read for both); until
        then the reservation still holds its amount (the safe side)."""
        ...

    def settle_now(self, reservation_id: str, actual: int) -> list[int] | None:
        """`settle` without waiting, where the backend can (in-process: nothing to wait for), its answer as one
        flat list: ``[spent, reserved]`` of each key after, in the order the reservation named them (`[]`: an
        unknown id); None where it cannot (Redis), and nothing changes: await `settle`. A caller then settles
        inline, not in a task of its own."""
        ...

    async def add(self, charges: Sequence[Charge]) -> dict[str, Standing]:
        """Spend after the fact (tool steps, adjustments): ``spent += amount`` for each charge (amount may be
        negative, a correction; a key given twice gets both), never refused (``limit`` is ignored). Returns
        the standings after. Not idempotent."""
        ...

    async def standing(self, keys: Sequence[str]) -> dict[str, Standing]:
        """The keys' standings; a key never charged is ``Standing(0, 0)``."""
        ...

    async def expire(self, now: float) -> list[tuple[str, dict[str, int]]]:
        """Reservations whose deadline is ``<= now`` (wall-clock epoch seconds): remove them and move their
        amounts from ``reserved`` to ``spent`` (a call that vanished is charged its estimate). Returns
        ``(reservation_id, {key: amount})`` for each, by deadline then id, for the caller's ledger."""
        ...

    async def load(
        self, totals: Mapping[str, Standing], reservations: Mapping[str, tuple[float, dict[str, int]]]
    ) -> None:
        """Replace every budget counter and open reservation with these (rebuilt from the ledger at start):
        ``totals`` per key (their ``reserved`` should include the open reservations' amounts; taken as given)
        and ``reservations`` as ``{id: (deadline epoch, {key: amount})}``. Rates, slots and claims are kept.

        On Redis the counters are shared and outlive a replica: load only when they are known lost (a fresh
        Redis), or a restarting replica wipes the others' reservations in flight."""
        ...

    async def hit(self, rates: Sequence[Rate], now: float) -> float | None:
        """All or none over the sliding-window counters (module docstring): if every rate admits its ``cost``
        more at ``now``, count them all and return None; else count nothing and return the seconds until all
        of the refused ones would admit (> 0; ``math.inf`` when a cost exceeds its limit). The (key, window)
        pairs must be distinct (ValueError)."""
        ...

    async def hit_and_reserve(
        self, rates: Sequence[Rate], now: float, reservation_id: str, charges: Sequence[Charge], ttl: float
    ) -> tuple[float | None, dict[str, Standing] | Refused | None]:
        """`hit`, then, if no rate refused, `reserve`, as one step (on Redis one round trip): a call's rate limits
        and its budgets before it is forwarded. ``(wait, None)`` when a rate refuses (nothing counted, nothing
        reserved); else ``(None, answer)``, the answer `reserve`'s (the rates counted either way, as `hit` then
        `reserve` would leave them)."""
        ...

    def reserve_now(
        self, reservation_id: str, hold: Hold, amount: int, ttl: float, now: float
    ) -> tuple[float | None, list[int] | Refused | None] | None:
        """`hit_and_reserve(hold.rates, now, reservation_id, hold.charges(amount), ttl)` without waiting, where the
        backend can (in-process), a reservation's standings as one flat list: ``[spent, reserved]`` of each of
        the hold's keys after, in order. None where it cannot (Redis), and nothing changes: await
        `hit_and_reserve`. (The gateway's path for every call under budgets: no object a key.)"""
        ...

    async def adjust_rate(self, key: str, window: float, delta: int, now: float) -> None:
        """Correct (key, window)'s count by ``delta`` (an estimate replaced by the actual; may be negative)."""
        ...

    async def acquire(self, key: str, limit: int, holder: str, ttl: float) -> bool:
        """Take one of ``limit`` concurrent slots on ``key`` for ``holder`` for at most ``ttl`` seconds;
        True if taken (or already held: its ttl is refreshed), False if all are held."""
        ...

    async def release_slot(self, key: str, holder: str) -> None:
        """Free ``holder``'s slot on ``key`` (nothing if it holds none)."""
        ...

    async def claim(self, key: str, holder: str, ttl: float) -> str | None:
        """Take the claim on ``key`` for ``ttl`` seconds if it is free, expired or already ``holder``'s
        (then None), else return the holder that has it."""
        ...

    async def release_claim(self, key: str, holder: str) -> None:
        """Drop the claim on ``key`` if ``holder`` has it (another holder's claim is left alone)."""
        ...

    async def aclose(self) -> None:
        """Release connections (Redis) or nothing (in-process)."""
        ...


# --- shared argument checks: both backends refuse the same inputs the same way ---------------------------


def check_amount(value: int, what: str, *, non_negative: bool = False) -> None:
    # (On every reservation and settle: the common case answers in one comparison chain.)
    if type(value) is int and (0 if non_negative else -MAX_AMOUNT) <= value <= MAX_AMOUNT:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int of nano-dollars, not {type(value).__name__}")
    if not -MAX_AMOUNT <= value <= MAX_AMOUNT or (non_negative and value < 0):
        low = 0 if non_negative else -MAX_AMOUNT
        raise ValueError(f"{what} {value} is outside {low}..{MAX_AMOUNT}")


def check_counter(key: str, spent: int, reserved: int) -> None:
    """A counter must stay representable as Redis 64-bit integers, its total too."""
    for value in (spent, reserved, spent + reserved):
        if not -MAX_COUNTER <= value <= MAX_COUNTER:
            raise ValueError(f"counter {key!r} would leave the 64-bit range (spent {spent}, reserved {reserved})")


def check_reservation(charges: Sequence[Charge], ttl: float) -> None:
    check_seconds(ttl, "ttl")
    seen: set[str] = set()
    for charge in charges:
        if charge.key in seen:
            raise ValueError(f"key {charge.key!r} is charged twice in one reservation")
        seen.add(charge.key)
        check_amount(charge.amount, "amount", non_negative=True)
        if charge.limit is not None:
            check_amount(charge.limit, "limit", non_negative=True)


def merge_charges(charges: Sequence[Charge]) -> dict[str, int]:
    """`add`'s charges as {key: total amount}, in first-seen order."""
    merged: dict[str, int] = {}
    for charge in charges:
        check_amount(charge.amount, "amount")
        merged[charge.key] = merged.get(charge.key, 0) + charge.amount
    return merged


def check_seconds(value: float, what: str) -> None:
    if type(value) is float and 0 < value < math.inf:  # (on every call's rates and reservation: the common case)
        return
    if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{what} must be a finite number of seconds > 0, not {value!r}")


def check_now(now: float) -> None:
    if type(now) is float and -math.inf < now < math.inf:  # (every call's rates: the common case)
        return
    if not isinstance(now, int | float) or not math.isfinite(now):
        raise ValueError(f"now must be a finite epoch in seconds, not {now!r}")


def check_rates(rates: Sequence[Rate]) -> None:
    for rate in rates:
        check_seconds(rate.window, "window")
        check_units(rate.limit, "limit", non_negative=True)
        check_units(rate.cost, "cost", non_negative=True)
    if len(rates) > 1 and len({(rate.key, float(rate.window)) for rate in rates}) < len(rates):
        raise ValueError(f"a rate is given twice: {[(r.key, r.window) for r in rates]}")


def check_units(value: int, what: str, *, non_negative: bool = False) -> None:
    if type(value) is int and (0 if non_negative else -MAX_RATE_UNITS) <= value <= MAX_RATE_UNITS:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    if not -MAX_RATE_UNITS <= value <= MAX_RATE_UNITS or (non_negative and value < 0):
        raise ValueError(f"{what} {value} is outside {0 if non_negative else -MAX_RATE_UNITS}..{MAX_RATE_UNITS}")


# --- the sliding-window counter, one formula for both backends (redis.py's Lua mirrors it operation for
# operation, so both compute the same doubles) --------------------------------------------------------------


def window_estimate(previous: float, current: float, start: float, window: float, now: float) -> float:
    """``previous·(1 - f) + current`` with f the elapsed fraction of the current window, clamped to [0, 1]."""
    elapsed = (now - start) / window
    elapsed = 0.0 if elapsed < 0 else 1.0 if elapsed > 1 else elapsed
    return previous * (1.0 - elapsed) + current


def window_wait(
    previous: float, current: float, start: float, window: float, limit: int, cost: int, now: float
) -> float:
    """Seconds from ``now`` until ``estimate + cost <= limit``, no other hit landing (>= MIN_RETRY_AFTER).

    In this window: ``previous·(1 - f) <= limit - cost - current`` from ``f = 1 - room/previous``. Else in the
    next one, where the previous count is ``current`` and the current is 0: ``f = 1 - (limit - cost)/current``.
    """
    if cost > limit:
        return math.inf
    room = limit - cost - current
    if room >= 0 and previous > 0:
        fraction = 1.0 - room / previous
        if fraction < 1.0:
            at = start + window * fraction
            return max(at - now + RETRY_PAD, MIN_RETRY_AFTER)
    nxt = start + window
    if current <= limit - cost:
        at = nxt
    else:
        at = nxt + window * (1.0 - (limit - cost) / current)
    return max(at - now + RETRY_PAD, MIN_RETRY_AFTER)

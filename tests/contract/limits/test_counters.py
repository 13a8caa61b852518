"""The counters contract (agentledger/limits): one suite, both backends.

Every test runs on `MemoryCounters` and on `RedisCounters` against the real Redis on 127.0.0.1:6379 (db 15,
a fresh key prefix per test, deleted after). The Redis cases skip, saying why, only when that Redis does not
answer (.ci/run starts it).
"""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest
import redis as redis_sync
import redis.asyncio as redis_async
from hypothesis import HealthCheck, given, settings, strategies as st

from agentledger.limits import MAX_AMOUNT, MAX_COUNTER, Counters, CountersUnavailable, MemoryCounters
from agentledger.limits.base import MIN_RETRY_AFTER, Charge, Hold, Rate, Refused, Standing
from agentledger.limits.redis import RedisCounters

REDIS_URL = "redis://127.0.0.1:6379/15"


def _redis_up() -> bool:
    try:
        client = redis_sync.Redis.from_url(REDIS_URL, socket_timeout=0.5, socket_connect_timeout=0.5)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except redis_sync.RedisError:
        return False


REDIS_UP = _redis_up()
needs_redis = pytest.mark.skipif(not REDIS_UP, reason="Redis does not answer on 127.0.0.1:6379 (.ci/run starts it)")
BACKENDS = ["memory", pytest.param("redis", marks=needs_redis)]


@dataclass
class Clock:
    """An injectable wall clock (epoch seconds) for reservation deadlines."""

    now: float = 1_750_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Backends:
    """Makes counters of one backend; the Redis ones share a prefix fresh for the test and are cleaned up."""

    kind: str
    prefix: str = field(default_factory=lambda: f"t:{uuid.uuid4().hex}:")
    made: list[Counters] = field(default_factory=list)

    def __call__(self, clock: Callable[[], float] | None = None, **options: float) -> Counters:
        kwargs = {} if clock is None else {"clock": clock}
        counters: Counters
        if self.kind == "memory":
            counters = MemoryCounters(**kwargs)
        else:
            # The suite's many concurrent operations open connections under whatever load CI has: the production
            # timeouts (0.5 s) are for a gateway's hot path, not for a busy test machine.
            slack = {"timeout": 10.0, "connect_timeout": 10.0, **options}
            counters = RedisCounters(REDIS_URL, self.prefix, **kwargs, **slack)  # type: ignore[arg-type]
        self.made.append(counters)
        return counters

    async def close(self) -> None:
        for counters in self.made:
            await counters.aclose()
        if self.kind == "redis":
            await drop_prefix(self.prefix)


async def drop_prefix(prefix: str) -> None:
    client = redis_async.Redis.from_url(REDIS_URL)
    try:
        keys = [key async for key in client.scan_iter(match=prefix + "*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.fixture(params=BACKENDS)
async def make(request: pytest.FixtureRequest) -> AsyncIterator[Backends]:
    backends = Backends(request.param)
    yield backends
    await backends.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def counters(make: Backends, clock: Clock) -> Counters:
    return make(clock)


def S(spent: int, reserved: int) -> Standing:  # noqa: N802 - reads like the dataclass
    return Standing(spent, reserved)


# --------------------------------------------------------------------------------------------------- budgets


async def test_both_backends_are_counters(counters: Counters) -> None:
    assert isinstance(counters, Counters)


async def test_reserve_then_settle_exact_standings(counters: Counters) -> None:
    charges = [Charge("ws", 1000, 300), Charge("agent", 500, 300), Charge("alert", None, 300)]
    assert await counters.reserve("r1", charges, 60) == {"ws": S(0, 300), "agent": S(0, 300), "alert": S(0, 300)}
    assert await counters.reserve("r2", [Charge("ws", 1000, 200)], 60) == {"ws": S(0, 500)}
    assert await counters.settle("r1", 120) == {"ws": S(120, 200), "agent": S(120, 0), "alert": S(120, 0)}
    assert await counters.settle("r2", 0) == {"ws": S(120, 0)}  # settling at 0 cancels
    assert await counters.standing(["ws", "agent", "alert", "never"]) == {
        "ws": S(120, 0),
        "agent": S(120, 0),
        "alert": S(120, 0),
        "never": S(0, 0),
    }


async def test_settle_may_exceed_the_estimate(counters: Counters) -> None:
    await counters.reserve("r", [Charge("k", 100, 100)], 60)
    assert await counters.settle("r", 170) == {"k": S(170, 0)}
    assert isinstance(await counters.reserve("r2", [Charge("k", 100, 0)], 60), Refused)  # overspent: even 0


async def test_a_reservation_up_to_the_limit_is_admitted_one_past_is_not(counters: Counters) -> None:
    assert await counters.reserve("a", [Charge("k", 100, 60)], 60) == {"k": S(0, 60)}
    assert await counters.reserve("b", [Charge("k", 100, 40)], 60) == {"k": S(0, 100)}
    assert await counters.reserve("c", [Charge("k", 100, 1)], 60) == Refused("k", S(0, 100), 100)
    assert await counters.reserve("d", [Charge("k", 100, 0)], 60) == {"k": S(0, 100)}


async def test_alert_only_budgets_are_counted_and_never_refuse(counters: Counters) -> None:
    assert await counters.reserve("r", [Charge("k", None, MAX_AMOUNT)], 60) == {"k": S(0, MAX_AMOUNT)}
    assert await counters.reserve("r2", [Charge("k", None, MAX_AMOUNT)], 60) == {"k": S(0, 2 * MAX_AMOUNT)}


async def test_all_or_none_one_key_over_changes_nothing(counters: Counters, clock: Clock) -> None:
    await counters.add([Charge("b", None, 90)])
    charges = [Charge("a", 1000, 20), Charge("b", 100, 20), Charge("c", None, 20)]
    assert await counters.reserve("r", charges, 60) == Refused("b", S(90, 0), 100)
    assert await counters.standing(["a", "b", "c"]) == {"a": S(0, 0), "b": S(90, 0), "c": S(0, 0)}
    assert await counters.settle("r", 5) == {}  # no reservation was kept
    assert await counters.expire(clock.now + 3600) == []
    # the first failing key in the order given is the one named
    await counters.add([Charge("a", None, 995)])
    assert await counters.reserve("r", charges, 60) == Refused("a", S(995, 0), 1000)
    assert await counters.reserve("r", list(reversed(charges)), 60) == Refused("b", S(90, 0), 100)


async def test_reserve_is_idempotent(counters: Counters) -> None:
    first = await counters.reserve("r", [Charge("a", 100, 30), Charge("b", None, 30)], 60)
    assert first == {"a": S(0, 30), "b": S(0, 30)}
    await counters.add([Charge("a", None, 5)])
    # the same id again (a retry after a timeout): the current standings, nothing reserved twice
    assert await counters.reserve("r", [Charge("a", 100, 30), Charge("b", None, 30)], 60) == {
        "a": S(5, 30),
        "b": S(0, 30),
    }
    # even with amounts that would now be refused
    assert await counters.reserve("r", [Charge("a", 100, 99)], 60) == {"a": S(5, 30)}
    assert await counters.settle("r", 10) == {"a": S(15, 0), "b": S(10, 0)}


async def test_settle_is_idempotent(counters: Counters) -> None:
    await counters.reserve("r", [Charge("a", 100, 30)], 60)
    assert await counters.settle("r", 25) == {"a": S(25, 0)}
    assert await counters.settle("r", 25) == {}
    assert await counters.settle("never", 25) == {}
    assert await counters.standing(["a"]) == {"a": S(25, 0)}


async def test_settle_now_is_settle_or_nothing(counters: Counters) -> None:
    """In-process: `settle` without waiting, the same answers. Redis: None, and nothing changes."""
    await counters.reserve("r", [Charge("a", 100, 30)], 60)
    answer = counters.settle_now("r", 25)
    if isinstance(counters, MemoryCounters):
        assert answer == [25, 0]  # [spent, reserved] of each key, flat
        assert counters.settle_now("r", 25) == [] and counters.settle_now("never", 1) == []
        with pytest.raises(ValueError):
            counters.settle_now("r", -1)
    else:
        assert answer is None
        assert await counters.standing(["a"]) == {"a": S(0, 30)}
        assert await counters.settle("r", 25) == {"a": S(25, 0)}
    assert await counters.standing(["a"]) == {"a": S(25, 0)}


async def test_add_spends_after_the_fact_never_refused(counters: Counters) -> None:
    await counters.reserve("r", [Charge("a", 100, 80)], 60)
    assert await counters.add([Charge("a", 100, 50), Charge("b", 1, 7)]) == {"a": S(50, 80), "b": S(7, 0)}
    assert await counters.add([Charge("a", None, -20), Charge("a", None, -40)]) == {"a": S(-10, 80)}
    assert await counters.add([]) == {}
    assert await counters.standing(["a", "b"]) == {"a": S(-10, 80), "b": S(7, 0)}


async def test_expire_charges_vanished_calls_their_estimate(counters: Counters, clock: Clock) -> None:
    t0 = clock.now
    await counters.reserve("late", [Charge("a", 1000, 50), Charge("b", None, 50)], 30)
    await counters.reserve("soon-b", [Charge("a", 1000, 7)], 10)
    await counters.reserve("soon-a", [Charge("b", 1000, 3)], 10)
    await counters.reserve("settled", [Charge("a", 1000, 100)], 10)
    await counters.settle("settled", 60)
    assert await counters.expire(t0 + 9.999) == []
    # deadline <= now; by deadline, then id
    assert await counters.expire(t0 + 10) == [("soon-a", {"b": 3}), ("soon-b", {"a": 7})]
    assert await counters.standing(["a", "b"]) == {"a": S(67, 50), "b": S(3, 50)}
    assert await counters.expire(t0 + 20) == []
    assert await counters.settle("soon-a", 1) == {}  # already charged by expire
    assert await counters.expire(t0 + 1e6) == [("late", {"a": 50, "b": 50})]
    assert await counters.standing(["a", "b"]) == {"a": S(117, 0), "b": S(53, 0)}


async def test_settle_after_the_ttl_but_before_expire_settles(counters: Counters, clock: Clock) -> None:
    await counters.reserve("r", [Charge("a", 1000, 50)], 10)
    clock.now += 3600
    assert await counters.settle("r", 20) == {"a": S(20, 0)}
    assert await counters.expire(clock.now) == []


async def test_hit_and_reserve_is_hit_then_reserve_in_one_step(counters: Counters, clock: Clock) -> None:
    rpm, tpm = Rate("rpm", 3, 60.0), Rate("tpm", 1000, 60.0, 400)
    # Both admit: counted and reserved.
    assert await counters.hit_and_reserve([rpm, tpm], clock.now, "r1", [Charge("b", 100, 60)], 60) == (
        None,
        {"b": S(0, 60)},
    )
    # The budget refuses: the rates were counted all the same (as `hit` then `reserve`), nothing reserved.
    wait, answer = await counters.hit_and_reserve([rpm, tpm], clock.now, "r2", [Charge("b", 100, 60)], 60)
    assert (wait, answer) == (None, Refused("b", S(0, 60), 100))
    # A rate refuses (tokens: 800 of 1000 used): nothing counted, nothing reserved, the wait said.
    wait, answer = await counters.hit_and_reserve([rpm, tpm], clock.now, "r3", [Charge("b", 100, 10)], 60)
    assert answer is None and wait is not None and wait >= MIN_RETRY_AFTER
    assert await counters.standing(["b"]) == {"b": S(0, 60)}
    assert await counters.settle("r3", 0) == {}
    assert await counters.hit([Rate("rpm", 3, 60.0)], clock.now) is None  # the third request of the minute
    # Without rates it is a reservation.
    assert await counters.hit_and_reserve([], clock.now, "r4", [Charge("b", 100, 40)], 60) == (None, {"b": S(0, 100)})


async def test_reserve_now_is_hit_and_reserve_or_nothing(counters: Counters, clock: Clock) -> None:
    """In-process: `hit_and_reserve` of the hold's rates and charges without waiting, the standings flat in the
    hold's order, then settled and expired as any reservation. Redis: None, and nothing is counted or reserved."""
    hold = Hold(("b", "a"), (100, None), (Rate("rpm", 2, 60.0),))
    answer = counters.reserve_now("r1", hold, 60, 60, clock.now)
    if not isinstance(counters, MemoryCounters):
        assert answer is None
        assert await counters.standing(["a", "b"]) == {"a": S(0, 0), "b": S(0, 0)}
        assert await counters.hit([Rate("rpm", 1, 60.0)], clock.now) is None  # nothing was counted
        return
    assert answer == (None, [0, 60, 0, 60])
    unrated = Hold(("b", "a"), (100, None))
    assert counters.reserve_now("r1", unrated, 60, 60, clock.now) == (None, [0, 60, 0, 60])  # already open
    # The limited key refuses: nothing reserved anywhere, the rate counted (as `hit` then `reserve`).
    assert counters.reserve_now("r2", hold, 41, 60, clock.now) == (None, Refused("b", S(0, 60), 100))
    assert await counters.standing(["a", "b"]) == {"a": S(0, 60), "b": S(0, 60)}
    wait, refused = counters.reserve_now("r3", hold, 1, 60, clock.now)  # the third request of the minute
    assert refused is None and wait is not None and wait >= MIN_RETRY_AFTER
    assert counters.settle_now("r1", 7) == [7, 0, 7, 0]
    assert counters.reserve_now("r4", unrated, 100 - 7, 10, clock.now) == (None, [7, 93, 7, 93])
    assert await counters.expire(clock.now + 10) == [("r4", {"b": 93, "a": 93})]
    assert await counters.standing(["a", "b"]) == {"a": S(100, 0), "b": S(100, 0)}
    for amount, ttl, now in (
        (-1, 60, clock.now),
        (MAX_AMOUNT + 1, 60, clock.now),
        (1, 0, clock.now),
        (1, 60, math.nan),
    ):
        with pytest.raises(ValueError):
            counters.reserve_now("r5", hold, amount, ttl, now)
    assert await counters.standing(["a", "b"]) == {"a": S(100, 0), "b": S(100, 0)}
    assert await counters.hit([Rate("rpm", 3, 60.0)], clock.now) is None  # the refusals above counted nothing
    # A reservation that would take a counter out of range raises, and changes nothing.
    await counters.load({"a": S(MAX_COUNTER - 10, 0)}, {})
    with pytest.raises(ValueError, match="64-bit range"):
        counters.reserve_now("r6", unrated, 11, 60.0, clock.now)
    assert await counters.standing(["a", "b"]) == {"a": S(MAX_COUNTER - 10, 0), "b": S(0, 0)}
    assert counters.settle_now("r6", 0) == []  # never opened
    assert counters.reserve_now("r7", unrated, 10, 60.0, clock.now) == (None, [0, 10, MAX_COUNTER - 10, 10])


@pytest.mark.parametrize(
    ("keys", "limits", "rates"),
    [
        (("a", "a"), (None, None), ()),
        (("a",), (-1,), ()),
        (("a",), (MAX_AMOUNT + 1,), ()),
        (("a", "b"), (None,), ()),
        (("a",), (None,), (Rate("r", 1, 0.0),)),
        (("a",), (None,), (Rate("r", 1, 60.0), Rate("r", 2, 60.0))),
    ],
)
def test_a_bad_hold_is_refused_when_made(
    keys: tuple[str, ...], limits: tuple[int | None, ...], rates: tuple[Rate, ...]
) -> None:
    with pytest.raises(ValueError):
        Hold(keys, limits, rates)


async def test_load_replaces_counters_and_reservations(make: Backends, clock: Clock) -> None:
    counters = make(clock)
    await counters.reserve("old", [Charge("gone", 100, 10), Charge("kept", 100, 10)], 10)
    await counters.add([Charge("gone", None, 5)])
    await counters.hit([Rate("rpm", 10, 60.0)], clock.now)
    await counters.load(
        {"kept": S(40, 15), "fresh": S(-3, 0), "big": S(MAX_COUNTER - 15, 15)},
        {"open1": (clock.now + 5, {"kept": 10, "big": 15}), "open2": (clock.now + 50, {"kept": 5})},
    )
    assert await counters.standing(["gone", "kept", "fresh", "big"]) == {
        "gone": S(0, 0),
        "kept": S(40, 15),
        "fresh": S(-3, 0),
        "big": S(MAX_COUNTER - 15, 15),
    }
    assert await counters.settle("old", 1) == {}
    assert await counters.settle("open2", 2) == {"kept": S(42, 10)}
    assert await counters.expire(clock.now + 5) == [("open1", {"kept": 10, "big": 15})]
    assert await counters.standing(["kept", "big"]) == {"kept": S(52, 0), "big": S(MAX_COUNTER, 0)}
    # rates are not budget counters: load keeps them
    for _ in range(9):
        assert await counters.hit([Rate("rpm", 10, 60.0)], clock.now) is None
    assert await counters.hit([Rate("rpm", 10, 60.0)], clock.now) is not None
    await counters.load({}, {})
    assert await counters.standing(["kept", "big"]) == {"kept": S(0, 0), "big": S(0, 0)}
    assert await counters.expire(math.ldexp(1, 40)) == []


async def test_amounts_up_to_the_bounds_are_exact(counters: Counters) -> None:
    big = MAX_AMOUNT - 1  # not a double: 10**18 - 1 rounds in a float
    assert float(big) != big
    assert await counters.reserve("r", [Charge("a", MAX_AMOUNT, big), Charge("b", None, big)], 60) == {
        "a": S(0, big),
        "b": S(0, big),
    }
    assert await counters.reserve("r2", [Charge("a", MAX_AMOUNT, 2)], 60) == Refused("a", S(0, big), MAX_AMOUNT)
    assert await counters.reserve("r2", [Charge("a", MAX_AMOUNT, 1)], 60) == {"a": S(0, MAX_AMOUNT)}
    assert await counters.settle("r", big - 2) == {"a": S(big - 2, 1), "b": S(big - 2, 0)}
    for _ in range(8):
        await counters.add([Charge("b", None, MAX_AMOUNT)])
    assert await counters.standing(["b"]) == {"b": S(9 * MAX_AMOUNT - 3, 0)}
    await counters.add([Charge("b", None, MAX_COUNTER - 9 * MAX_AMOUNT + 3)])
    assert await counters.standing(["b"]) == {"b": S(MAX_COUNTER, 0)}
    await counters.add([Charge("n", None, -MAX_AMOUNT + 1)])
    assert await counters.add([Charge("n", None, -123_456_789)]) == {"n": S(-MAX_AMOUNT - 123_456_788, 0)}


LANDMARKS = [0, 1, -1, 10**9 - 1, 10**9, 10**9 + 1, 2 * 10**9, 2**53 + 1, MAX_AMOUNT - 1, MAX_AMOUNT]
LANDMARKS += [-v for v in LANDMARKS[1:]]


async def test_landmark_values_round_trip_exactly(counters: Counters) -> None:
    """Around the Lua limbs' boundaries (10**9), past a double's exact range (2**53), both signs."""
    for i, value in enumerate(LANDMARKS):
        assert await counters.add([Charge(f"k{i}", None, value)]) == {f"k{i}": S(value, 0)}
        assert await counters.add([Charge(f"k{i}", None, -value), Charge(f"k{i}", None, -1)]) == {f"k{i}": S(-1, 0)}
        assert await counters.add([Charge(f"k{i}", None, value)]) == {f"k{i}": S(value - 1, 0)}
    assert await counters.reserve("r", [Charge("k2", None, 10**9)], 60) == {"k2": S(-2, 10**9)}
    assert await counters.settle("r", 10**9 + 1) == {"k2": S(10**9 - 1, 0)}


async def test_leaving_the_64_bit_range_is_refused_and_changes_nothing(counters: Counters) -> None:
    await counters.load({"top": S(MAX_COUNTER - 10, 0), "low": S(-MAX_COUNTER + 10, 0)}, {})
    with pytest.raises(ValueError):
        await counters.add([Charge("ok", None, 1), Charge("top", None, 11)])
    with pytest.raises(ValueError):
        await counters.reserve("r", [Charge("ok", None, 1), Charge("top", None, 11)], 60)
    with pytest.raises(ValueError):
        await counters.add([Charge("low", None, -11)])
    assert await counters.standing(["top", "low", "ok"]) == {
        "top": S(MAX_COUNTER - 10, 0),
        "low": S(-MAX_COUNTER + 10, 0),
        "ok": S(0, 0),
    }
    assert await counters.settle("r", 0) == {}
    assert await counters.reserve("r", [Charge("top", None, 10)], 60) == {"top": S(MAX_COUNTER - 10, 10)}
    with pytest.raises(ValueError):
        await counters.settle("r", 11)  # spent + reserved would pass the bound
    assert await counters.settle("r", 10) == {"top": S(MAX_COUNTER, 0)}


@pytest.mark.parametrize(
    "bad",
    [
        [Charge("a", 100, -1)],
        [Charge("a", -1, 1)],
        [Charge("a", None, MAX_AMOUNT + 1)],
        [Charge("a", MAX_AMOUNT + 1, 1)],
        [Charge("a", None, 1), Charge("a", None, 1)],
        [Charge("a", None, 1.5)],  # type: ignore[arg-type]
    ],
)
async def test_bad_reservations_are_refused_up_front(counters: Counters, bad: list[Charge]) -> None:
    with pytest.raises((ValueError, TypeError)):
        await counters.reserve("r", bad, 60)
    with pytest.raises(ValueError):
        await counters.reserve("r", [Charge("a", None, 1)], 0)
    with pytest.raises(ValueError):
        await counters.settle("r", -1)
    assert await counters.standing(["a"]) == {"a": S(0, 0)}


async def test_keys_and_ids_are_any_text(counters: Counters) -> None:
    odd = ["ключ:€", "a b\n", "{tag}", "c:x", "deadlines", "*", ""]
    assert await counters.reserve("id:€ ✓", [Charge(k, 10, 1) for k in odd], 60) == {k: S(0, 1) for k in odd}
    assert await counters.settle("id:€ ✓", 2) == {k: S(2, 0) for k in odd}


async def test_concurrent_reserves_never_overspend(make: Backends, clock: Clock) -> None:
    # Two "replicas" on Redis (separate clients and pools), one process in memory.
    replicas = [make(clock)] if make.kind == "memory" else [make(clock), make(clock)]
    charges = [Charge("ws", 100, 1), Charge("dept", 100, 1), Charge("agent", 100, 1)]

    async def one(i: int) -> tuple[str, dict[str, Standing] | Refused]:
        return f"r{i}", await replicas[i % len(replicas)].reserve(f"r{i}", charges, 60)

    results = await asyncio.gather(*(one(i) for i in range(500)))
    admitted = [rid for rid, answer in results if not isinstance(answer, Refused)]
    assert len(admitted) == 100
    refused = [a for _, a in results if isinstance(a, Refused)]
    assert len(refused) == 400
    assert set(refused) == {Refused("ws", S(0, 100), 100)}  # the keys move together: the first one refuses
    every = ["ws", "dept", "agent"]
    assert await replicas[0].standing(every) == dict.fromkeys(every, S(0, 100))
    settled = await asyncio.gather(*(replicas[i % len(replicas)].settle(rid, 1) for i, rid in enumerate(admitted)))
    assert all(s.keys() == set(every) for s in settled)
    assert await replicas[-1].standing(every) == dict.fromkeys(every, S(100, 0))
    assert await replicas[0].expire(clock.now + 3600) == []


async def test_concurrent_reserves_with_different_limits(make: Backends, clock: Clock) -> None:
    replicas = [make(clock)] if make.kind == "memory" else [make(clock), make(clock)]
    charges = [Charge("loose", 1000, 3), Charge("tight", 90, 3), Charge("alert", None, 3)]
    answers = await asyncio.gather(*(replicas[i % len(replicas)].reserve(f"r{i}", charges, 60) for i in range(200)))
    assert sum(not isinstance(a, Refused) for a in answers) == 30
    assert {a.key for a in answers if isinstance(a, Refused)} == {"tight"}
    assert await replicas[0].standing(["loose", "tight", "alert"]) == {
        "loose": S(0, 90),
        "tight": S(0, 90),
        "alert": S(0, 90),
    }


# ------------------------------------------------------------------------------------------------ rate limits

W = 60.0
START = 29_166_667 * W  # an aligned minute
T = START + 20.0  # a third of the way in


async def test_a_rate_admits_exactly_its_limit_at_once(counters: Counters) -> None:
    rate = Rate("rpm", 5, W)
    for _ in range(5):
        assert await counters.hit([rate], T) is None
    wait = await counters.hit([rate], T)
    # current 5, previous 0: the estimate falls to 4 only when the 5 hits are the previous window, 4/5 in
    assert wait == pytest.approx(START + W + W * (1 - 4 / 5) - T, abs=1e-4)
    assert await counters.hit([rate], T + wait - 0.01) is not None
    assert await counters.hit([rate], T + wait) is None
    assert await counters.hit([rate], T + wait) is not None


async def test_a_rate_slides_over_the_previous_window(counters: Counters) -> None:
    rate = Rate("rpm", 10, W)
    for _ in range(10):
        assert await counters.hit([rate], START + 59.0) is None
    # next window, 25% in: the previous 10 weigh 7.5, so 2 more fit (9.5), a third does not (10.5)
    at = START + W + 15.0
    assert await counters.hit([rate], at) is None
    assert await counters.hit([rate], at) is None
    wait = await counters.hit([rate], at)
    assert wait is not None
    # 10·(1 - f) + 2 + 1 <= 10  ⇔  f >= 0.3: 3 s on
    assert wait == pytest.approx(3.0, abs=1e-4)
    assert await counters.hit([rate], at + wait) is None
    # two windows on, everything is forgotten
    for _ in range(10):
        assert await counters.hit([rate], START + 3 * W) is None


async def test_retry_after_is_the_earliest_admission(counters: Counters) -> None:
    """Refused at random moments, the answer is when a retry is admitted: not 1 ms earlier (the bound)."""
    rate = Rate("tpm", 1000, W, cost=130)
    now = START + 5.0
    refusals = 0
    for step in range(200):
        now += (step * 7919 % 13) * 0.37
        wait = await counters.hit([rate], now)
        if wait is None:
            continue
        refusals += 1
        assert wait >= MIN_RETRY_AFTER
        if wait > 0.002:
            assert await counters.hit([rate], now + wait - 0.001) is not None
        assert await counters.hit([rate], now + wait) is None
        now += wait
    assert refusals > 20


async def test_rates_are_all_or_none(counters: Counters) -> None:
    per_minute, per_second = Rate("rpm", 3, W), Rate("rps", 100, 1.0)
    for _ in range(3):
        assert await counters.hit([per_second, per_minute], T) is None
    assert await counters.hit([per_second, per_minute], T) is not None
    # the refused hit counted nothing on the rate that had room: it still has 97
    for _ in range(97):
        assert await counters.hit([per_second], T) is None
    assert await counters.hit([per_second], T) is not None


async def test_retry_after_waits_for_every_refused_rate(counters: Counters) -> None:
    short, long = Rate("s", 1, 1.0), Rate("l", 1, W)
    assert await counters.hit([short, long], T) is None
    wait = await counters.hit([short, long], T)
    assert wait is not None and wait > 1.0  # the minute's wait, not the second's
    assert await counters.hit([short, long], T + wait) is None


async def test_a_cost_over_the_limit_is_never_admitted(counters: Counters) -> None:
    assert await counters.hit([Rate("tpm", 100, W, cost=101)], T) == math.inf
    assert await counters.hit([Rate("tpm", 100, W, cost=100)], T) is None
    assert await counters.hit([Rate("zero", 0, W, cost=0)], T) is None


async def test_adjust_rate_corrects_an_estimate(counters: Counters) -> None:
    rate = Rate("tpm", 1000, W, cost=600)
    assert await counters.hit([rate], T) is None
    await counters.adjust_rate("tpm", W, -500, T)  # the call used 100 tokens
    assert await counters.hit([rate], T) is None  # 700
    await counters.adjust_rate("tpm", W, 300, T)  # this one used 900: 1000
    assert await counters.hit([Rate("tpm", 1000, W, cost=1)], T) is not None
    # a correction below zero comes off the previous window
    assert await counters.hit([Rate("t2", 1000, W, cost=800)], START + 59.0) is None
    await counters.adjust_rate("t2", W, -900, START + W)
    assert await counters.hit([Rate("t2", 1000, W, cost=1000)], START + W) is None
    # the same key under another window is another rate
    assert await counters.hit([Rate("tpm", 1000, 3600.0, cost=1000)], T) is None


async def test_aligned_windows_never_pass_the_limit(counters: Counters) -> None:
    """The documented bound: at most `limit` in an aligned window, under 2·limit in any window."""
    rate = Rate("r", 20, 10.0)
    admitted: list[float] = []
    now = 1_000_000.0
    for step in range(600):
        now += (step * 31 % 7) * 0.05
        if await counters.hit([rate], now) is None:
            admitted.append(now)
    per_window: dict[int, int] = {}
    for t in admitted:
        per_window[math.floor(t / 10.0)] = per_window.get(math.floor(t / 10.0), 0) + 1
    assert max(per_window.values()) == 20
    assert len(per_window) >= 8
    assert max(sum(1 for s in admitted if t - 10.0 < s <= t) for t in admitted) < 40


@pytest.mark.parametrize("bad", [Rate("r", -1, W), Rate("r", 1, 0.0), Rate("r", 1, W, cost=-1)])
async def test_bad_rates_are_refused_up_front(counters: Counters, bad: Rate) -> None:
    with pytest.raises(ValueError):
        await counters.hit([bad], T)
    with pytest.raises(ValueError):
        await counters.hit([Rate("r", 1, W), Rate("r", 2, W)], T)
    with pytest.raises(ValueError):
        await counters.hit([Rate("r", 1, W)], math.nan)


# ------------------------------------------------------------------------------- concurrency slots and claims


async def test_concurrency_slots(make: Backends) -> None:
    counters = make()
    assert await counters.acquire("c", 2, "h1", 30)
    assert await counters.acquire("c", 2, "h2", 30)
    assert not await counters.acquire("c", 2, "h3", 30)
    assert await counters.acquire("c", 2, "h1", 30)  # held: refreshed
    await counters.release_slot("c", "h3")  # not a holder: nothing
    assert not await counters.acquire("c", 2, "h3", 30)
    await counters.release_slot("c", "h1")
    assert await counters.acquire("c", 2, "h3", 30)
    assert not await counters.acquire("other", 0, "h1", 30)
    assert await counters.acquire("other", 1, "h1", 30)


async def test_a_crashed_holder_frees_its_slot_after_ttl(make: Backends) -> None:
    counters = make()
    assert await counters.acquire("c", 1, "crashed", 0.15)
    assert not await counters.acquire("c", 1, "next", 30)
    await asyncio.sleep(0.25)
    assert await counters.acquire("c", 1, "next", 30)


async def test_concurrent_acquires_take_exactly_the_limit(make: Backends) -> None:
    replicas = [make()] if make.kind == "memory" else [make(), make()]
    taken = await asyncio.gather(*(replicas[i % len(replicas)].acquire("c", 7, f"h{i}", 30) for i in range(100)))
    assert sum(taken) == 7


async def test_claims(make: Backends) -> None:
    counters = make()
    assert await counters.claim("idem", "h1", 30) is None
    assert await counters.claim("idem", "h2", 30) == "h1"
    assert await counters.claim("idem", "h1", 30) is None  # already h1's
    await counters.release_claim("idem", "h2")  # not h2's: kept
    assert await counters.claim("idem", "h2", 30) == "h1"
    await counters.release_claim("idem", "h1")
    assert await counters.claim("idem", "h2", 30) is None
    assert await counters.claim("other", "h1", 30) is None


async def test_an_expired_claim_can_be_taken(make: Backends) -> None:
    counters = make()
    assert await counters.claim("idem", "h1", 0.15) is None
    assert await counters.claim("idem", "h2", 30) == "h1"
    await asyncio.sleep(0.25)
    assert await counters.claim("idem", "h2", 30) is None
    assert await counters.claim("idem", "h1", 30) == "h2"


async def test_concurrent_claims_have_one_winner(make: Backends) -> None:
    replicas = [make()] if make.kind == "memory" else [make(), make()]
    got = await asyncio.gather(*(replicas[i % len(replicas)].claim("k", f"h{i}", 30) for i in range(50)))
    winners = [f"h{i}" for i, holder in enumerate(got) if holder is None]
    assert len(winners) == 1
    assert {holder for holder in got if holder is not None} == set(winners)


# ------------------------------------------------------------------------------------------ Redis failures


async def _silent_server() -> tuple[asyncio.Server, int]:
    """A loopback listener that accepts and never answers: every Redis call on it times out."""

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


OPERATIONS: list[Callable[[Counters], Awaitable[object]]] = [
    lambda c: c.reserve("r", [Charge("a", 1, 1)], 1),
    lambda c: c.settle("r", 1),
    lambda c: c.add([Charge("a", None, 1)]),
    lambda c: c.standing(["a"]),
    lambda c: c.expire(1.0),
    lambda c: c.load({}, {}),
    lambda c: c.hit([Rate("r", 1, 1.0)], 1.0),
    lambda c: c.adjust_rate("r", 1.0, 1, 1.0),
    lambda c: c.acquire("s", 1, "h", 1),
    lambda c: c.release_slot("s", "h"),
    lambda c: c.claim("c", "h", 1),
    lambda c: c.release_claim("c", "h"),
]


async def test_redis_down_is_counters_unavailable() -> None:
    counters = RedisCounters(f"redis://127.0.0.1:{_free_port()}/15")
    try:
        for operation in OPERATIONS:
            with pytest.raises(CountersUnavailable) as caught:
                await operation(counters)
            assert isinstance(caught.value.__cause__, redis_sync.RedisError)
    finally:
        await counters.aclose()


async def test_redis_that_does_not_answer_times_out_as_counters_unavailable() -> None:
    server, port = await _silent_server()
    counters = RedisCounters(f"redis://127.0.0.1:{port}/15", timeout=0.2, connect_timeout=0.2)
    loop = asyncio.get_running_loop()
    try:
        for operation in OPERATIONS[:3]:
            started = loop.time()
            with pytest.raises(CountersUnavailable) as caught:
                await operation(counters)
            assert isinstance(caught.value.__cause__, redis_sync.RedisError)
            assert loop.time() - started < 1.0
    finally:
        await counters.aclose()
        server.close()
        await server.wait_closed()


# ------------------------------------------------------------------------------------------- property tests


class Model:
    """The plain-Python meaning of the budget operations, to compare both backends with."""

    def __init__(self) -> None:
        self.totals: dict[str, tuple[int, int]] = {}
        self.open: dict[str, tuple[float, dict[str, int]]] = {}

    def get(self, key: str) -> Standing:
        return Standing(*self.totals.get(key, (0, 0)))

    @staticmethod
    def fits(spent: int, reserved: int) -> bool:
        return all(abs(v) <= MAX_COUNTER for v in (spent, reserved, spent + reserved))

    def reserve(self, rid: str, charges: list[Charge], deadline: float) -> dict[str, Standing] | Refused | str:
        if rid in self.open:
            return {c.key: self.get(c.key) for c in charges}
        for c in charges:
            s = self.get(c.key)
            if c.limit is not None and s.spent + s.reserved + c.amount > c.limit:
                return Refused(c.key, s, c.limit)
            if not self.fits(s.spent, s.reserved + c.amount):
                return "ValueError"
        for c in charges:
            s = self.get(c.key)
            self.totals[c.key] = (s.spent, s.reserved + c.amount)
        self.open[rid] = (deadline, {c.key: c.amount for c in charges})
        return {c.key: self.get(c.key) for c in charges}

    def settle(self, rid: str, actual: int) -> dict[str, Standing] | str:
        if rid not in self.open:
            return {}
        amounts = self.open[rid][1]
        if not all(self.fits(self.get(k).spent + actual, self.get(k).reserved - a) for k, a in amounts.items()):
            return "ValueError"
        del self.open[rid]
        for k, a in amounts.items():
            s = self.get(k)
            self.totals[k] = (s.spent + actual, s.reserved - a)
        return {k: self.get(k) for k in amounts}

    def add(self, charges: list[Charge]) -> dict[str, Standing] | str:
        merged: dict[str, int] = {}
        for c in charges:
            merged[c.key] = merged.get(c.key, 0) + c.amount
        if not all(self.fits(self.get(k).spent + a, self.get(k).reserved) for k, a in merged.items()):
            return "ValueError"
        for k, a in merged.items():
            s = self.get(k)
            self.totals[k] = (s.spent + a, s.reserved)
        return {k: self.get(k) for k in merged}

    def expire(self, now: float) -> list[tuple[str, dict[str, int]]]:
        due = sorted((d, rid) for rid, (d, _) in self.open.items() if d <= now)
        out = []
        for _, rid in due:
            amounts = self.open.pop(rid)[1]
            for k, a in amounts.items():
                s = self.get(k)
                self.totals[k] = (s.spent + a, s.reserved - a)
            out.append((rid, amounts))
        return out


KEYS = ["k0", "k1", "ключ"]
amounts = st.one_of(
    st.integers(0, 1000), st.integers(MAX_AMOUNT - 10**6, MAX_AMOUNT), st.sampled_from([v for v in LANDMARKS if v >= 0])
)
limits = st.one_of(st.none(), st.integers(0, 3000), st.integers(MAX_AMOUNT // 2, MAX_AMOUNT))
charge_lists = st.lists(
    st.builds(Charge, st.sampled_from(KEYS), limits, amounts), max_size=3, unique_by=lambda c: c.key
)
operations = st.lists(
    st.one_of(
        st.tuples(st.just("reserve"), st.sampled_from("abcd"), charge_lists, st.integers(1, 30)),
        st.tuples(st.just("settle"), st.sampled_from("abcd"), amounts),
        st.tuples(
            st.just("add"),
            st.lists(
                st.builds(
                    Charge,
                    st.sampled_from(KEYS),
                    st.none(),
                    st.one_of(amounts, st.integers(-MAX_AMOUNT, 0), st.sampled_from(LANDMARKS)),
                ),
                max_size=4,
            ),
        ),
        st.tuples(st.just("tick"), st.integers(0, 20)),
    ),
    max_size=25,
)


async def _outcome(call: Awaitable[object]) -> object:
    try:
        return await call
    except ValueError:
        return "ValueError"


@pytest.mark.fuzz
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=operations)
async def test_random_operations_match_the_model(ops: list[tuple[object, ...]]) -> None:
    kinds = ["memory"] + (["redis"] if REDIS_UP else [])
    makers = [Backends(kind) for kind in kinds]
    clock = Clock()
    backends = [make(clock) for make in makers]
    model = Model()
    try:
        for op in ops:
            expected: object
            if op[0] == "reserve":
                _, rid, charges, ttl = op
                assert isinstance(rid, str) and isinstance(charges, list) and isinstance(ttl, int)
                expected = model.reserve(rid, charges, clock.now + ttl)
                got = [await _outcome(b.reserve(rid, charges, ttl)) for b in backends]
            elif op[0] == "settle":
                _, rid, actual = op
                assert isinstance(rid, str) and isinstance(actual, int)
                expected = model.settle(rid, actual)
                got = [await _outcome(b.settle(rid, actual)) for b in backends]
            elif op[0] == "add":
                charges = op[1]
                assert isinstance(charges, list)
                expected = model.add(charges)
                got = [await _outcome(b.add(charges)) for b in backends]
            else:
                step = op[1]
                assert isinstance(step, int)
                clock.now += step
                expected = model.expire(clock.now)
                got = [await b.expire(clock.now) for b in backends]
            assert got == [expected] * len(backends), op
        for b in backends:
            assert await b.standing(KEYS) == {k: model.get(k) for k in KEYS}
    finally:
        for make in makers:
            await make.close()


rate_operations = st.lists(
    st.tuples(
        st.sampled_from(["hit", "hit", "hit", "adjust"]),
        st.floats(0, 40, allow_nan=False),  # seconds on
        st.lists(st.tuples(st.sampled_from(["a", "b"]), st.sampled_from([1.0, 10.0, 7.5])), min_size=1, max_size=2),
        st.integers(1, 8),  # cost (hit) or |delta| (adjust)
        st.booleans(),  # adjust down
    ),
    max_size=40,
)


@pytest.mark.fuzz
@needs_redis
@settings(max_examples=40, deadline=None)
@given(ops=rate_operations)
async def test_rate_answers_are_the_same_on_both_backends(
    ops: list[tuple[str, float, list[tuple[str, float]], int, bool]],
) -> None:
    """The Lua scripts compute the same doubles as the Python: same admissions, same Retry-After."""
    makers = [Backends("memory"), Backends("redis")]
    memory, shared = (make() for make in makers)
    now = 1_750_000_003.25
    try:
        for kind, step, idents, units, down in ops:
            now += step
            if kind == "hit":
                rates = [Rate(key, 10, window, units) for key, window in dict(idents).items()]
                assert await memory.hit(rates, now) == await shared.hit(rates, now)
            else:
                key, window = idents[0]
                delta = -units if down else units
                await memory.adjust_rate(key, window, delta, now)
                await shared.adjust_rate(key, window, delta, now)
    finally:
        for make in makers:
            await make.close()

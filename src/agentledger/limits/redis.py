"""`RedisCounters`: the shared backend for several replicas or processes.

Each operation is one Lua script (run by EVALSHA; after a Redis restart's NOSCRIPT, by EVAL, which caches it
again), so it is one round trip and atomic: a reservation over several budget keys checks
them all and reserves on all of them, or on none, with no other client in between.

Exact money in Lua: Lua numbers are doubles, exact only to 2**53 nano-dollars (9 million dollars), and a
counter may reach 2**63 - 1. So the scripts never do money arithmetic in a double: amounts travel as decimal
strings, are split into two limbs (billions, units below a billion; each exact in a double) for sums and
comparisons, and are stored back as decimal strings that HGET returns unchanged.

Keys, with ``prefix`` (default ``al:``) before each; the caller's keys are any text:

    {prefix}c:{key}            hash  spent, reserved            a budget counter
    {prefix}keys               set   every counter key          so `load` can replace them all
    {prefix}r:{id}             hash  {key: amount}              an open reservation
    {prefix}deadlines          zset  id scored by deadline      open reservations, for `expire`
    {prefix}rl:{window}:{key}  hash  i (window index), c, p      a rate (TTL: two windows + a minute)
    {prefix}s:{key}            zset  holder scored by deadline  concurrency slots (TTL: the last deadline)
    {prefix}cl:{key}           string holder                    a claim (TTL: its ttl)

Not for Redis Cluster: `settle`, `expire` and `load` touch counters named inside the reservation, which the
client cannot declare as the script's keys beforehand, and the keys are not hash-tagged into one slot. One
Redis primary (with replicas / Sentinel for failover) serves every gateway replica.

Commands go over one connection, pipelined (limits/resp.py: no pool, no checkout; a replica's operations
queue on it in order, as Redis would run them anyway). Failures: a connection error, a timeout (``timeout`` for
a reply, ``connect_timeout``), or an error reply (READONLY after a failover, OOM, LOADING) raise
`CountersUnavailable` from the redis exception (a broken or timed-out connection fails every operation in
flight on it; the next one reconnects). Nothing is retried by the client, so no increment is sent twice; what
the caller may retry is in `CountersUnavailable`'s docstring.

Slots and claims expire on the Redis server's clock (one clock for all replicas); reservations' deadlines
are ``clock() + ttl`` on the replica that reserves, and `expire`/`hit` use the ``now`` they are given.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from redis.exceptions import RedisError, ResponseError

from agentledger.limits.base import (
    MIN_RETRY_AFTER,
    RETRY_PAD,
    Charge,
    CountersUnavailable,
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
)
from agentledger.limits.resp import Arg, RedisLink

EXPIRE_BATCH = 1000  # reservations one `expire` script removes; `expire` repeats until none is due

# Two-limb integer arithmetic on decimal strings (see the module docstring). A value is (h, l) with
# value = h * 1e9 + l and 0 <= l < 1e9 once normalized; |h| stays below 1e11, so every step is exact.
_LIMBS = """
local B = 1000000000
local function norm(h, l)
  local c = math.floor(l / B)
  return h + c, l - c * B
end
local function num(s)
  if not s or s == '' then return 0, 0 end
  local neg = string.sub(s, 1, 1) == '-'
  if neg then s = string.sub(s, 2) end
  local n = string.len(s)
  local h, l = 0, 0
  if n > 9 then
    h = tonumber(string.sub(s, 1, n - 9))
    l = tonumber(string.sub(s, n - 8))
  else
    l = tonumber(s)
  end
  if neg then return norm(-h, -l) end
  return h, l
end
local function plus(h1, l1, h2, l2) return norm(h1 + h2, l1 + l2) end
local function minus(h1, l1, h2, l2) return norm(h1 - h2, l1 - l2) end
local function gt(h1, l1, h2, l2) return h1 > h2 or (h1 == h2 and l1 > l2) end
local MAXH, MAXL = 9223372036, 854775807
local MINH, MINL = norm(-MAXH, -MAXL)
local function fits(h, l) return not gt(h, l, MAXH, MAXL) and not gt(MINH, MINL, h, l) end
local function str(h, l)
  if h == 0 then return string.format('%d', l) end
  if h > 0 then return string.format('%d%09d', h, l) end
  if l == 0 then return string.format('-%d000000000', -h) end
  h, l = -h - 1, B - l
  if h == 0 then return string.format('-%d', l) end
  return string.format('-%d%09d', h, l)
end
local function counter(key)
  local v = redis.call('HMGET', key, 'spent', 'reserved')
  local sh, sl = num(v[1])
  local rh, rl = num(v[2])
  return sh, sl, rh, rl
end
"""

# Replies are one space-separated string of numbers where they can be (one bulk string parses far faster
# than a list). Stored numbers are canonical decimal strings, so a value that did not change is returned as
# it was read. A counter hash that did not exist is added to the registry (`load` deletes what it lists).

# KEYS: deadlines, registry, reservation hash, counter hashes...
# ARGV: id, deadline, then (caller key, limit or '', amount) per counter.
# -> 'E|OK spent reserved ...' | 'R index spent reserved' | 'O index'
_RESERVE_BODY = """
local n = #KEYS - 3
local out = {}
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  out[1] = 'E'
  for i = 1, n do
    local v = redis.call('HMGET', KEYS[3 + i], 'spent', 'reserved')
    out[#out + 1] = v[1] or '0'
    out[#out + 1] = v[2] or '0'
  end
  return table.concat(out, ' ')
end
out[1] = 'OK'
local new, fields, fresh = {}, {}, {}
for i = 1, n do
  local a = 3 * i
  local v = redis.call('HMGET', KEYS[3 + i], 'spent', 'reserved')
  local sh, sl = num(v[1])
  local rh, rl = num(v[2])
  local ah, al = num(ARGV[a + 2])
  local th, tl = plus(sh, sl, rh, rl)
  th, tl = plus(th, tl, ah, al)
  if ARGV[a + 1] ~= '' then
    local lh, ll = num(ARGV[a + 1])
    if gt(th, tl, lh, ll) then return 'R ' .. i .. ' ' .. (v[1] or '0') .. ' ' .. (v[2] or '0') end
  end
  local nh, nl = plus(rh, rl, ah, al)
  if not (fits(nh, nl) and fits(th, tl)) then return 'O ' .. i end
  new[i] = str(nh, nl)
  out[#out + 1] = v[1] or '0'
  out[#out + 1] = new[i]
  fields[#fields + 1] = ARGV[a]
  fields[#fields + 1] = ARGV[a + 2]
  if not (v[1] or v[2]) then fresh[#fresh + 1] = ARGV[a] end
end
for i = 1, n do redis.call('HSET', KEYS[3 + i], 'reserved', new[i]) end
if n > 0 then redis.call('HSET', KEYS[3], unpack(fields)) end
if #fresh > 0 then redis.call('SADD', KEYS[2], unpack(fresh)) end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
return table.concat(out, ' ')
"""
_RESERVE = _LIMBS + _RESERVE_BODY

# KEYS: deadlines, reservation hash. ARGV: id, actual, counter prefix.
# -> {'NONE'} | {'O'} | {'OK', 'spent reserved ...', key, ...}
_SETTLE = (
    _LIMBS
    + """
local flat = redis.call('HGETALL', KEYS[2])
if #flat == 0 and not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return {'NONE'} end
local ah, al = num(ARGV[2])
local new = {}
for i = 1, #flat, 2 do
  local sh, sl, rh, rl = counter(ARGV[3] .. flat[i])
  local mh, ml = num(flat[i + 1])
  sh, sl = plus(sh, sl, ah, al)
  rh, rl = minus(rh, rl, mh, ml)
  local th, tl = plus(sh, sl, rh, rl)
  if not (fits(sh, sl) and fits(rh, rl) and fits(th, tl)) then return {'O'} end
  new[#new + 1] = {flat[i], str(sh, sl), str(rh, rl)}
end
local out, nums = {'OK', ''}, {}
for _, e in ipairs(new) do
  redis.call('HSET', ARGV[3] .. e[1], 'spent', e[2], 'reserved', e[3])
  out[#out + 1] = e[1]
  nums[#nums + 1] = e[2]
  nums[#nums + 1] = e[3]
end
out[2] = table.concat(nums, ' ')
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[1], ARGV[1])
return out
"""
)

# KEYS: registry, counter hashes... ARGV: (caller key, amount) per counter.
# -> 'OK spent reserved ...' | 'O index'
_ADD = (
    _LIMBS
    + """
local new, fresh, out = {}, {}, {'OK'}
for i = 2, #KEYS do
  local v = redis.call('HMGET', KEYS[i], 'spent', 'reserved')
  local sh, sl = num(v[1])
  local rh, rl = num(v[2])
  local ah, al = num(ARGV[2 * (i - 1)])
  sh, sl = plus(sh, sl, ah, al)
  local th, tl = plus(sh, sl, rh, rl)
  if not (fits(sh, sl) and fits(th, tl)) then return 'O ' .. (i - 1) end
  new[i] = str(sh, sl)
  out[#out + 1] = new[i]
  out[#out + 1] = v[2] or '0'
  if not (v[1] or v[2]) then fresh[#fresh + 1] = ARGV[2 * (i - 1) - 1] end
end
for i = 2, #KEYS do redis.call('HSET', KEYS[i], 'spent', new[i]) end
if #fresh > 0 then redis.call('SADD', KEYS[1], unpack(fresh)) end
return table.concat(out, ' ')
"""
)

# KEYS: counter hashes. -> 'spent reserved ...'
_STANDING = """
local out = {}
for i = 1, #KEYS do
  local v = redis.call('HMGET', KEYS[i], 'spent', 'reserved')
  out[#out + 1] = v[1] or '0'
  out[#out + 1] = v[2] or '0'
end
return table.concat(out, ' ')
"""

# KEYS: deadlines. ARGV: now, batch, reservation prefix, counter prefix.
# -> {{id, key, amount, ...}, ...} by deadline then id
_EXPIRE = (
    _LIMBS
    + """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for _, id in ipairs(ids) do
  local rk = ARGV[3] .. id
  local flat = redis.call('HGETALL', rk)
  local entry = {id}
  for i = 1, #flat, 2 do
    local ck = ARGV[4] .. flat[i]
    local sh, sl, rh, rl = counter(ck)
    local mh, ml = num(flat[i + 1])
    sh, sl = plus(sh, sl, mh, ml)
    rh, rl = minus(rh, rl, mh, ml)
    redis.call('HSET', ck, 'spent', str(sh, sl), 'reserved', str(rh, rl))
    entry[#entry + 1] = flat[i]
    entry[#entry + 1] = flat[i + 1]
  end
  redis.call('DEL', rk)
  redis.call('ZREM', KEYS[1], id)
  out[#out + 1] = entry
end
return out
"""
)

# KEYS: deadlines, registry. ARGV: counter prefix, reservation prefix, n totals,
# (key, spent, reserved)..., n reservations, (id, deadline, m, (key, amount) x m)...
_LOAD = """
for _, key in ipairs(redis.call('SMEMBERS', KEYS[2])) do redis.call('DEL', ARGV[1] .. key) end
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do redis.call('DEL', ARGV[2] .. id) end
redis.call('DEL', KEYS[1], KEYS[2])
local a = 4
for _ = 1, tonumber(ARGV[3]) do
  redis.call('HSET', ARGV[1] .. ARGV[a], 'spent', ARGV[a + 1], 'reserved', ARGV[a + 2])
  redis.call('SADD', KEYS[2], ARGV[a])
  a = a + 3
end
local nres = tonumber(ARGV[a])
a = a + 1
for _ = 1, nres do
  local id, m = ARGV[a], tonumber(ARGV[a + 2])
  redis.call('ZADD', KEYS[1], ARGV[a + 1], id)
  a = a + 3
  for _ = 1, m do
    redis.call('HSET', ARGV[2] .. id, ARGV[a], ARGV[a + 1])
    redis.call('SADD', KEYS[2], ARGV[a])
    a = a + 2
  end
end
return 'OK'
"""

# The sliding-window counter, as base.window_estimate / window_wait and MemoryCounters (same doubles).
_WINDOWS = """
local function fmt(x) return string.format('%.17g', x) end
local function roll(key, w, now)
  local index = math.floor(now / w)
  local v = redis.call('HMGET', key, 'i', 'c', 'p')
  if not v[1] then return index, 0, 0 end
  local si, c, p = tonumber(v[1]), tonumber(v[2]), tonumber(v[3])
  if index > si + 1 then return index, 0, 0 end
  if index == si + 1 then return index, 0, c end
  return si, c, p
end
local function estimate(p, c, start, w, now)
  local f = (now - start) / w
  if f < 0 then f = 0.0 elseif f > 1 then f = 1.0 end
  return p * (1.0 - f) + c
end
local function wait(p, c, start, w, limit, cost, now)
  if cost > limit then return math.huge end
  local room = limit - cost - c
  if room >= 0 and p > 0 then
    local f = 1.0 - room / p
    if f < 1.0 then return math.max(start + w * f - now + PAD, MIN_WAIT) end
  end
  local at = start + w
  if c > limit - cost then at = at + w * (1.0 - (limit - cost) / c) end
  return math.max(at - now + PAD, MIN_WAIT)
end
local function store(key, index, c, p, w, now)
  redis.call('HSET', key, 'i', fmt(index), 'c', fmt(c), 'p', fmt(p))
  redis.call('PEXPIRE', key, math.ceil(((index + 2) * w - now) * 1000) + 60000)
end
"""

# KEYS: rate states. ARGV: now, MIN_WAIT, PAD, (limit, window, cost) per rate. -> nil | seconds as a string
_HIT_BODY = """
local now = tonumber(ARGV[1])
local states = {}
local longest = nil
for i = 1, #KEYS do
  local limit, w, cost = tonumber(ARGV[3 * i + 1]), tonumber(ARGV[3 * i + 2]), tonumber(ARGV[3 * i + 3])
  local index, c, p = roll(KEYS[i], w, now)
  local start = index * w
  if estimate(p, c, start, w, now) + cost > limit then
    local s = wait(p, c, start, w, limit, cost, now)
    if longest == nil or s > longest then longest = s end
  end
  states[i] = {index, c + cost, p, w}
end
if longest then return fmt(longest) end
for i = 1, #KEYS do
  local s = states[i]
  store(KEYS[i], s[1], s[2], s[3], s[4], now)
end
return false
"""
_HIT = (_WINDOWS + _HIT_BODY).replace("MIN_WAIT", "tonumber(ARGV[2])").replace("PAD", "tonumber(ARGV[3])")

# `hit` then `reserve` in one script (one round trip before a call is forwarded): each body runs as a function
# of its own KEYS and ARGV, cut from the script's. KEYS: the rates' states, then `reserve`'s KEYS. ARGV: how
# many rates, then `hit`'s ARGV, then `reserve`'s. -> 'W seconds' (a rate refused: nothing counted or reserved)
# | `reserve`'s reply. `wait` (a top-level function) reads MIN_WAIT and PAD from the script's own ARGV[3], [4].
_ADMIT = (
    (
        _LIMBS
        + _WINDOWS
        + "local function hit(KEYS, ARGV)\n"
        + _HIT_BODY
        + "end\nlocal function reserve(KEYS, ARGV)\n"
        + _RESERVE_BODY
        + """end
local nk = tonumber(ARGV[1])
local na = 3 + 3 * nk
local hk, ha, rk, ra = {}, {}, {}, {}
for i = 1, #KEYS do
  if i <= nk then hk[#hk + 1] = KEYS[i] else rk[#rk + 1] = KEYS[i] end
end
for i = 2, #ARGV do
  if i <= na + 1 then ha[#ha + 1] = ARGV[i] else ra[#ra + 1] = ARGV[i] end
end
local w = hit(hk, ha)
if w then return 'W ' .. w end
return reserve(rk, ra)
"""
    )
    .replace("MIN_WAIT", "tonumber(ARGV[3])")
    .replace("PAD", "tonumber(ARGV[4])")
)

# KEYS: rate state. ARGV: now, window, delta.
_ADJUST = (
    (
        _WINDOWS
        + """
local now, w = tonumber(ARGV[1]), tonumber(ARGV[2])
local index, c, p = roll(KEYS[1], w, now)
c = c + tonumber(ARGV[3])
if c < 0 then
  p = math.max(p + c, 0)
  c = 0
end
store(KEYS[1], index, c, p, w, now)
return false
"""
    )
    .replace("MIN_WAIT", "0")
    .replace("PAD", "0")
)

# KEYS: slots zset. ARGV: limit, holder, ttl ms. -> 1 | 0
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZSCORE', KEYS[1], ARGV[2]) or redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[2])
  local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
  redis.call('PEXPIREAT', KEYS[1], math.ceil(tonumber(last[2])) + 1)
  return 1
end
return 0
"""

# KEYS: claim. ARGV: holder, ttl ms. -> nil | the current holder
_CLAIM = """
local cur = redis.call('GET', KEYS[1])
if cur and cur ~= ARGV[1] then return cur end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
"""

# KEYS: claim. ARGV: holder.
_RELEASE_CLAIM = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return false
"""


class _Script:
    """A Lua script, run by its SHA1 (EVALSHA) once Redis has it."""

    def __init__(self, body: str) -> None:
        self.body = body
        self.sha = hashlib.sha1(body.encode()).hexdigest()


class RedisCounters:
    """`Counters` on Redis: ``url`` like ``redis://127.0.0.1:6379/0`` (limits/resp.py says which URLs); keys
    under ``prefix``.

    ``timeout``: seconds for a reply; ``connect_timeout``: to open the connection. ``clock`` (epoch seconds)
    dates reservations.
    """

    def __init__(
        self,
        url: str,
        prefix: str = "al:",
        *,
        timeout: float = 0.5,
        connect_timeout: float = 0.5,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._link = RedisLink(url, timeout=timeout, connect_timeout=connect_timeout)
        self._clock = clock
        self._prefix = prefix
        self._counter = prefix + "c:"
        self._reservation = prefix + "r:"
        self._deadlines = prefix + "deadlines"
        self._registry = prefix + "keys"
        register = _Script
        self._reserve = register(_RESERVE)
        self._settle = register(_SETTLE)
        self._add = register(_ADD)
        self._standing = register(_STANDING)
        self._expire = register(_EXPIRE)
        self._load = register(_LOAD)
        self._hit = register(_HIT)
        self._admit = register(_ADMIT)
        self._adjust = register(_ADJUST)
        self._acquire = register(_ACQUIRE)
        self._claim = register(_CLAIM)
        self._release_claim = register(_RELEASE_CLAIM)

    async def _run(self, script: _Script, keys: list[str], args: list[Arg], *, lazy: bool = False) -> Any:
        try:
            try:
                return await self._link.call(["EVALSHA", script.sha, len(keys), *keys, *args], lazy=lazy)
            except ResponseError as exc:
                if not str(exc).startswith("NOSCRIPT"):
                    raise
                # Redis restarted (or flushed its scripts): EVAL runs the script and caches it again.
                return await self._link.call(["EVAL", script.body, len(keys), *keys, *args])
        except RedisError as exc:
            raise CountersUnavailable(f"redis counters: {type(exc).__name__}: {exc}") from exc

    # --- budgets ----------------------------------------------------------------------------------------

    async def reserve(
        self, reservation_id: str, charges: Sequence[Charge], ttl: float
    ) -> dict[str, Standing] | Refused:
        check_reservation(charges, ttl)
        keys, args = self._reserve_call(reservation_id, charges, ttl)
        return _reserved((await self._run(self._reserve, keys, args)).split(" "), charges)

    def _reserve_call(self, reservation_id: str, charges: Sequence[Charge], ttl: float) -> tuple[list[str], list[Arg]]:
        keys = [self._deadlines, self._registry, self._reservation + reservation_id]
        keys += [self._counter + c.key for c in charges]
        args: list[Arg] = [reservation_id, repr(float(self._clock() + ttl))]
        for c in charges:
            args += [c.key, "" if c.limit is None else c.limit, c.amount]
        return keys, args

    def _hit_call(self, rates: Sequence[Rate], now: float) -> tuple[list[str], list[Arg]]:
        args: list[Arg] = [repr(float(now)), repr(MIN_RETRY_AFTER), repr(RETRY_PAD)]
        for r in rates:
            args += [r.limit, repr(float(r.window)), r.cost]
        return [self._rate_key(r.key, r.window) for r in rates], args

    async def hit_and_reserve(
        self, rates: Sequence[Rate], now: float, reservation_id: str, charges: Sequence[Charge], ttl: float
    ) -> tuple[float | None, dict[str, Standing] | Refused | None]:
        check_now(now)
        check_rates(rates)
        check_reservation(charges, ttl)
        if not rates:
            return None, await self.reserve(reservation_id, charges, ttl)
        hit_keys, hit_args = self._hit_call(rates, now)
        keys, args = self._reserve_call(reservation_id, charges, ttl)
        reply = (await self._run(self._admit, hit_keys + keys, [len(rates), *hit_args, *args])).split(" ")
        if reply[0] == "W":
            return float(reply[1]), None
        return None, _reserved(reply, charges)

    async def settle(self, reservation_id: str, actual: int, *, lazy: bool = False) -> dict[str, Standing]:
        check_amount(actual, "actual", non_negative=True)
        keys = [self._deadlines, self._reservation + reservation_id]
        reply = await self._run(self._settle, keys, [reservation_id, actual, self._counter], lazy=lazy)
        if reply[0] == "NONE":
            return {}
        if reply[0] == "O":
            raise ValueError(f"settling {reservation_id!r} would take a counter out of the 64-bit range")
        nums = reply[1].split(" ")
        return {key: Standing(int(nums[2 * i]), int(nums[2 * i + 1])) for i, key in enumerate(reply[2:])}

    def settle_now(self, reservation_id: str, actual: int) -> None:
        return None  # a round trip: await `settle`

    def reserve_now(self, reservation_id: str, hold: Hold, amount: int, ttl: float, now: float) -> None:
        return None  # a round trip: await `hit_and_reserve`

    async def add(self, charges: Sequence[Charge]) -> dict[str, Standing]:
        merged = merge_charges(charges)
        if not merged:
            return {}
        args: list[Arg] = []
        for key, amount in merged.items():
            args += [key, amount]
        keys = [self._registry] + [self._counter + k for k in merged]
        reply = (await self._run(self._add, keys, args)).split(" ")
        if reply[0] == "O":
            key = list(merged)[int(reply[1]) - 1]
            raise ValueError(f"counter {key!r} would leave the 64-bit range")
        return {k: Standing(int(reply[1 + 2 * i]), int(reply[2 + 2 * i])) for i, k in enumerate(merged)}

    async def standing(self, keys: Sequence[str]) -> dict[str, Standing]:
        if not keys:
            return {}
        reply = (await self._run(self._standing, [self._counter + k for k in keys], [])).split(" ")
        return {k: Standing(int(reply[2 * i]), int(reply[2 * i + 1])) for i, k in enumerate(keys)}

    async def expire(self, now: float) -> list[tuple[str, dict[str, int]]]:
        check_now(now)
        out: list[tuple[str, dict[str, int]]] = []
        while True:
            args: list[Arg] = [repr(float(now)), EXPIRE_BATCH, self._reservation, self._counter]
            reply = await self._run(self._expire, [self._deadlines], args)
            for entry in reply:
                out.append((entry[0], {entry[i]: int(entry[i + 1]) for i in range(1, len(entry), 2)}))
            if len(reply) < EXPIRE_BATCH:
                return out

    async def load(
        self, totals: Mapping[str, Standing], reservations: Mapping[str, tuple[float, dict[str, int]]]
    ) -> None:
        args: list[Arg] = [self._counter, self._reservation, len(totals)]
        for key, total in totals.items():
            if total.reserved < 0:
                raise ValueError(f"counter {key!r}: reserved {total.reserved} < 0")
            check_counter(key, total.spent, total.reserved)
            args += [key, total.spent, total.reserved]
        args.append(len(reservations))
        for rid, (deadline, amounts) in reservations.items():
            check_now(deadline)
            args += [rid, repr(float(deadline)), len(amounts)]
            for key, amount in amounts.items():
                check_amount(amount, "amount", non_negative=True)
                args += [key, amount]
        await self._run(self._load, [self._deadlines, self._registry], args)

    # --- rate limits --------------------------------------------------------------------------------------

    def _rate_key(self, key: str, window: float) -> str:
        return f"{self._prefix}rl:{float(window)!r}:{key}"

    async def hit(self, rates: Sequence[Rate], now: float) -> float | None:
        check_now(now)
        check_rates(rates)
        if not rates:
            return None
        keys, args = self._hit_call(rates, now)
        reply = await self._run(self._hit, keys, args)
        return None if reply is None else float(reply)

    async def adjust_rate(self, key: str, window: float, delta: int, now: float) -> None:
        check_now(now)
        check_seconds(window, "window")
        check_units(delta, "delta")
        await self._run(self._adjust, [self._rate_key(key, window)], [repr(float(now)), repr(float(window)), delta])

    # --- concurrency slots and claims ------------------------------------------------------------------

    async def acquire(self, key: str, limit: int, holder: str, ttl: float) -> bool:
        check_seconds(ttl, "ttl")
        check_units(limit, "limit", non_negative=True)
        reply = await self._run(self._acquire, [self._prefix + "s:" + key], [limit, holder, _ms(ttl)])
        return bool(reply)

    async def release_slot(self, key: str, holder: str) -> None:
        try:
            await self._link.call(["ZREM", self._prefix + "s:" + key, holder])
        except RedisError as exc:
            raise CountersUnavailable(f"redis counters: {type(exc).__name__}: {exc}") from exc

    async def claim(self, key: str, holder: str, ttl: float) -> str | None:
        check_seconds(ttl, "ttl")
        reply = await self._run(self._claim, [self._prefix + "cl:" + key], [holder, _ms(ttl)])
        return None if reply is None else str(reply)

    async def release_claim(self, key: str, holder: str) -> None:
        await self._run(self._release_claim, [self._prefix + "cl:" + key], [holder])

    async def aclose(self) -> None:
        await self._link.aclose()


def _ms(seconds: float) -> int:
    """A ttl in whole milliseconds, rounded up, at least 1."""
    return max(1, math.ceil(seconds * 1000))


def _reserved(reply: list[str], charges: Sequence[Charge]) -> dict[str, Standing] | Refused:
    """`reserve`'s reply, split: what each counter stands at now, or the refusal."""
    tag = reply[0]
    if tag == "R":
        charge = charges[int(reply[1]) - 1]
        assert charge.limit is not None
        return Refused(charge.key, Standing(int(reply[2]), int(reply[3])), charge.limit)
    if tag == "O":
        key = charges[int(reply[1]) - 1].key
        raise ValueError(f"counter {key!r} would leave the 64-bit range")
    return {c.key: Standing(int(reply[1 + 2 * i]), int(reply[2 + 2 * i])) for i, c in enumerate(charges)}

"""Budgets and rate limits on the hot path: admit a call (reserve), then settle what it cost.

Before a call is forwarded, `BudgetGate.admit` finds the budgets and rate limits that apply to it
(core/budgets.py), hits its rate limits and reserves its most possible cost against every applicable budget in one
atomic step of the counters (limits/: in-process or Redis). A refusal is a 402 (`budget_exceeded`) or a 429
(`rate_limited`, with Retry-After). When the call ends, `settle` books its actual cost: the ledger entries and the
policy_check step go out with the call's own records; the counters are settled once the answer is out
(in-process: then and there; Redis: in the background), and the alerts of thresholds crossed follow from the
counters' answer. A settle never holds up the answer.

A workspace without budgets or limits costs one cache lookup per call.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from agentledger.core.budgets import (
    Action,
    Budget,
    Decision,
    Figures,
    Period,
    PolicyReport,
    RateLimit,
    Scope,
    Subject,
    applicable_budgets,
    applicable_limits,
    counter_key,
    crossed,
    figures_of,
    input_bound,
    least_left,
    reservation_nanos,
    window,
    window_of_key,
)
from agentledger.core.errors import BudgetExceeded, InvalidRequest, RateLimited, StoreUnavailable
from agentledger.core.ids import new_id, ordered_id
from agentledger.core.model import (
    Attribution,
    BudgetAlert,
    LedgerEntries,
    LedgerEntry,
    StepKind,
    StepRecord,
    StepStatus,
    TraceEvent,
)
from agentledger.core.money import format_usd
from agentledger.gateway.cache import TTLCache
from agentledger.limits.base import Charge, Counters, CountersUnavailable, Hold, Rate, Refused, Standing
from agentledger.prices.catalog import worst_rates

log = logging.getLogger(__name__)

Rules = tuple[list[Budget], list[RateLimit]]
# The counters' answer to a reservation with its rates: the wait a rate asks (nothing reserved), else the figures (flat
# in-process, by key from Redis) or the refusal.
Answer = tuple[float | None, list[int] | dict[str, Standing] | Refused | None]


@dataclass(slots=True)
class Governed:
    """A call's governance, filled by `BudgetGate.admit` (the call itself is frozen, and claimed by identity)."""

    decision: Decision = Decision.ALLOWED
    reservation_id: str | None = None
    estimate: int = 0
    # Each applicable budget, its counter key, and its spent and reserved as reserving left it (flat: numbers[2i],
    # numbers[2i + 1]); `figures` makes them objects for whoever needs them, off the call's path.
    budgets: tuple[Budget, ...] = ()
    keys: tuple[str, ...] = ()
    numbers: Sequence[int] = ()
    limits: list[RateLimit] = field(default_factory=list)
    slots: list[str] = field(default_factory=list)  # concurrency slots held
    token_rates: list[str] = field(default_factory=list)  # tokens-per-minute keys charged with the estimate
    tokens_estimate: int = 0
    tokens_in: int = 0
    tokens_used: int | None = None  # what the call used, once settled (`give_back_limits` corrects its token rates)
    decided_by: dict[str, Any] | None = None
    note: str | None = None
    policy: dict[str, Any] | None = None  # the policies' verdict as the trace keeps it (gateway/policies.py)
    reserved_at: datetime | None = None  # admitted at, while its reserve entries are not written (BudgetGate._open)
    closed: str | None = None  # settled, its entries left to the call's report: "settle" or "release"
    actual: int = 0
    closed_at: datetime | None = None
    reserve_written: bool = True  # False: closed before its reserve entries were written (they never will be)
    # Its response headers (`headline`), made when an answer first asks for them, or ahead by `prepare_headline` (a
    # stream's, while its provider is asked); whatever changes the figures drops them.
    headers: dict[str, str] | None = None
    unsettled: tuple[Any, ...] | None = None  # `settle(later=True)`'s counters' settle, for `settle_later`

    @property
    def governed(self) -> bool:
        return bool(self.budgets or self.limits or self.decided_by or self.note or self.policy)

    @property
    def figures(self) -> list[Figures]:
        return figures_of(self.budgets, self.keys, self.numbers)

    def held(self, budgets: Sequence[Budget], keys: Sequence[str], numbers: Sequence[int]) -> None:
        self.budgets, self.keys, self.numbers = tuple(budgets), tuple(keys), numbers


_PLANS_KEPT = 4096


@dataclass(slots=True)
class _Plan:
    """How calls of one subject are admitted under one set of rules while the clock is in [since, until) (epoch
    seconds; the budgets' windows, so their counter keys, hold that long): the budgets and rate limits that apply,
    the keys and limits the reservation charges, the rates it counts. Built at a subject's first call and looked
    up after, for rules whose scopes a call's key names (workspace, department, agent, virtual key) and whose
    rates are requests per minute (docs/benchmark.md, 2026-11-27: ~20 µs of the event loop's CPU a call)."""

    rules: Rules
    applied: tuple[Budget, ...]
    rated: list[RateLimit]
    keys: tuple[str, ...]
    rates: list[Rate]
    hold: Hold  # the counters' keys, the limits of the budgets that block, and the rates: what a reservation charges
    since: float
    until: float
    quick: bool  # budgets apply, none of which throttles softly (`_admit_planned`)


def _plannable(rules: Rules) -> bool:
    """Rules a plan can stand for: no workflow or property scope (they depend on more than the key), no run
    budget (a counter per run), no concurrency or tokens-per-minute limit (per-call slots and amounts)."""
    budgets, limits = rules
    per_call = (Scope.WORKFLOW, Scope.PROPERTY)
    return all(b.scope not in per_call and b.period is not Period.RUN for b in budgets) and all(
        r.scope not in per_call and r.concurrent is None and r.tokens_per_minute is None for r in limits
    )


class BudgetGate:
    def __init__(
        self,
        rules: Callable[[str], Awaitable[Rules]],
        workflow_of: Callable[[str, str], Awaitable[str | None]],
        counters: Counters,
        commit: Callable[[list[TraceEvent]], object],
        clock: Callable[[], datetime],
        *,
        default_output_tokens: int = 4096,
        reservation_ttl: float = 900.0,
        cache_ttl: float = 30.0,
        stale_if_error: float = 3600.0,
        reservation: Callable[[str, str], Awaitable[dict[str, tuple[str, int, int]]]] | None = None,
        disable_key: Callable[[str, str], Awaitable[None]] | None = None,
        write_within: float = 0.0,
    ) -> None:
        # An admitted call's reserve entries are written only once it has run `write_within` seconds (0: at once);
        # one that ends sooner (most do) never writes them, its record's settle netting them out.
        self.write_within = write_within
        self._open: dict[str, tuple[Governed, str, str | None, float]] = {}  # by reservation: call, run, due
        self._writing: asyncio.TimerHandle | None = None
        self.reservation_of = reservation  # the ledger's sums of one reservation (store.budgets.reservation)
        self._disable_key = disable_key
        self._rules_of = rules
        self._workflow_of = workflow_of
        self.counters = counters
        self.commit = commit
        self.clock = clock
        self.default_output_tokens = default_output_tokens
        self.reservation_ttl = reservation_ttl
        self.rules: TTLCache[str, Rules] = TTLCache(cache_ttl, stale_if_error=stale_if_error)
        self.workflows: TTLCache[tuple[str, str], str | None] = TTLCache(cache_ttl, stale_if_error=stale_if_error)
        self._rates: dict[tuple[str, str, str, int], tuple[int, int] | None] = {}
        self._plans: dict[tuple[str, str | None, str | None, str | None], _Plan] = {}
        self._plannable: dict[str, tuple[Rules, bool]] = {}  # by workspace: its rules, and whether plans serve them
        self._limit_rates: dict[RateLimit, tuple[Rate | None, str]] = {}  # its requests rate, its tokens key
        self._background: set[asyncio.Task[None]] = set()

    # -- lookups -----------------------------------------------------------------------------------------------
    async def rules_for(self, workspace_id: str) -> Rules:
        return await self.rules.get(workspace_id, lambda: self._rules_of(workspace_id)) or ([], [])

    def idle(self, workspace_id: str) -> bool:
        """The workspace has no budgets and no rate limits, as this node last read them (within the cache's ttl):
        `admit` would do nothing, so a call's bounds need not be worked out."""
        cached, found = self.rules.fresh(workspace_id)
        return cached and (found is None or not (found[0] or found[1]))

    def invalidate(self, workspace_id: str) -> None:
        self.rules.invalidate(workspace_id)
        self._rates = {k: v for k, v in self._rates.items() if k[0] != workspace_id}
        # (plans name the rules they were made from: reloaded rules are new objects, and their plans are made anew)

    async def subject(self, base: Subject, budgets: Sequence[Budget], limits: Sequence[RateLimit]) -> Subject:
        """The subject with its run's workflow, looked up only when a workflow budget or limit exists."""
        if base.run_id is None or base.workflow is not None:
            return base
        if not any(b.scope is Scope.WORKFLOW for b in budgets) and not any(r.scope is Scope.WORKFLOW for r in limits):
            return base
        ws, run_id = base.workspace_id, base.run_id
        workflow = await self.workflows.get((ws, run_id), lambda: self._workflow_of(ws, run_id))
        if workflow is None:
            return base
        return replace(base, workflow=workflow)

    def _worst(
        self, workspace_id: str, model: str, provider: str, at: datetime, overrides: dict[str, Any]
    ) -> tuple[int, int] | None:
        # Catalog prices are dated: the rates are kept for the day they were read (a price override's change
        # drops them at once, with the workspace's caches).
        key = (workspace_id, model, provider, at.toordinal())
        if key not in self._rates:
            if len(self._rates) > 4096:  # yesterday's entries, mostly
                self._rates.clear()
            self._rates[key] = worst_rates(model, provider, at, overrides)
        return self._rates[key]

    def _tokens(self, body_bytes: int, max_output: int | None, embeddings: bool, choices: int) -> tuple[int, int]:
        """A call's most possible input and output tokens (the reservation's bound)."""
        tokens_out = 0 if embeddings else (max_output or self.default_output_tokens) * max(choices, 1)
        return input_bound(body_bytes), tokens_out

    def estimate(
        self,
        workspace_id: str,
        model: str,
        provider: str,
        now: datetime,
        overrides: dict[str, Any],
        *,
        body_bytes: int,
        max_output: int | None,
        embeddings: bool = False,
        choices: int = 1,
    ) -> int | None:
        """A call's most possible cost in nano-dollars, as a reservation would hold it (None: no known price)."""
        tokens_in, tokens_out = self._tokens(body_bytes, max_output, embeddings, choices)
        return self._bound(workspace_id, model, provider, now, overrides, tokens_in, tokens_out)

    def _bound(
        self,
        workspace_id: str,
        model: str,
        provider: str,
        now: datetime,
        overrides: dict[str, Any],
        tokens_in: int,
        tokens_out: int,
    ) -> int | None:
        """At most this many tokens at the model's dearest rates, within the per-event bound (None: no price)."""
        rates = self._worst(workspace_id, model, provider, now, overrides)
        if rates is None:
            return None
        return reservation_nanos(tokens_in, tokens_out, *rates)

    # -- admission ---------------------------------------------------------------------------------------------
    async def admit(
        self,
        governed: Governed,
        base: Subject,
        *,
        request_id: str,
        model: str,
        provider: str,
        body_bytes: int,
        max_output: int | None,
        overrides: dict[str, Any],
        embeddings: bool = False,
        choices: int = 1,
        extra_limits: Sequence[RateLimit] = (),
    ) -> None:
        """Reserve the call's most possible cost and count its rates, or raise BudgetExceeded / RateLimited.
        `extra_limits`: rate limits that already apply to this call (the policies' rate settings).

        `governed` is filled either way: a refused call is recorded with the decision that refused it."""
        cached, found = self.rules.fresh(base.workspace_id)
        rules = (found or ([], [])) if cached else await self.rules_for(base.workspace_id)
        budgets, limits = rules
        if not budgets and not limits and not extra_limits:
            return
        keys: tuple[str, ...] | None = None
        rates: list[Rate] | None = None
        held: Hold | None = None
        applied: Sequence[Budget]
        tokens = tokens_in, tokens_out = self._tokens(body_bytes, max_output, embeddings, choices)
        now = self.clock()
        plan = None if extra_limits else self._plan_for(rules, base, now)
        if plan is not None:
            if plan.quick and await self._admit_planned(
                governed, plan, base, request_id, (model, provider, overrides), now, tokens
            ):
                return
            applied, rated, keys, rates, run_id = plan.applied, plan.rated, plan.keys, plan.rates, base.run_id
            held = plan.hold
        else:
            subject = await self.subject(base, budgets, limits)
            applied = applicable_budgets(budgets, subject)
            rated = [*applicable_limits(limits, subject), *extra_limits]
            now, run_id = self.clock(), subject.run_id  # (after a lookup that may have waited)
        if not applied and not rated:
            return
        governed.limits = rated
        governed.tokens_estimate = tokens_in + tokens_out
        governed.tokens_in = tokens_in
        try:
            if rates is None:  # (a plan's limits hold no concurrency slots, and count requests only)
                # Slots first (only limits with `concurrent` have any): nothing is reserved before a step that may fail.
                await self._slots(governed, rated)
                rates = self._rates_of(governed, rated)
            if applied:  # the rates and the reservation in one step of the counters (one Redis round trip)
                estimate = self._bound(base.workspace_id, model, provider, now, overrides, tokens_in, tokens_out) or 0
                await self.hold(governed, applied, run_id, estimate, now, "this call", rated, rates, keys, held)
                numbers = governed.numbers
                for i, b in enumerate(governed.budgets):
                    if b.action is Action.SOFT_THROTTLE and numbers[2 * i] + numbers[2 * i + 1] > b.limit_nanos:
                        # a refusal undoes the hold: nothing to write
                        await self._soft_throttle(governed, b, governed.keys[i], now)
                # Written once the call is admitted: a refusal's reservation never reaches the ledger to be left open.
                self._keep_open(governed, request_id, run_id, now)
            elif rates:
                wait = await self.counters.hit(rates, now.timestamp())
                self._counted(governed, rated, rates, wait)
        except CountersUnavailable:
            self._unavailable(governed, applied)
        except BaseException:
            await self._undo(governed)
            raise

    async def _admit_planned(
        self,
        governed: Governed,
        plan: _Plan,
        base: Subject,
        request_id: str,
        priced: tuple[str, str, dict[str, Any]],
        now: datetime,
        tokens: tuple[int, int],
    ) -> bool:
        """`admit` under a plan of budgets none of which throttles softly, with counters that answer without waiting
        (in-process): most calls under budgets, in one pass (False: not so; nothing was done). A refusal raises.
        `priced`: the model, its provider and the workspace's price overrides; `tokens`: the call's bounds."""
        (model, provider, overrides), (tokens_in, tokens_out) = priced, tokens
        estimate = self._bound(base.workspace_id, model, provider, now, overrides, tokens_in, tokens_out) or 0
        reservation = ordered_id("rsv")
        done = self.counters.reserve_now(reservation, plan.hold, estimate, self.reservation_ttl, now.timestamp())
        if done is None:
            return False
        governed.limits = plan.rated
        governed.tokens_estimate = tokens_in + tokens_out
        governed.tokens_in = tokens_in
        wait, answer = done
        if wait is None and type(answer) is list:  # admitted (most calls), without a coroutine: a plan counts no tokens
            self._took(governed, reservation, estimate, plan.applied, plan.keys, answer)
        else:
            rated, rates = plan.rated, plan.hold.rates
            await self._taken(governed, reservation, done, plan.applied, plan.keys, estimate, "this call", rated, rates)
        self._keep_open(governed, request_id, base.run_id, now)
        return True

    def _keep_open(self, governed: Governed, request_id: str, run_id: str | None, now: datetime) -> None:
        """An admitted reservation: its reserve entries are written once `write_within` has passed, so that a crash
        the call outlives by that long still finds them; a call that ends sooner never writes them, its record's
        close netting them out (`settle(carry=True)`)."""
        if self.write_within <= 0 or governed.reservation_id is None:
            self.commit(self.entries(governed, "reserve", request_id, run_id, now))
            return
        governed.reserved_at = now
        loop = asyncio.get_running_loop()
        self._open[governed.reservation_id] = (governed, request_id, run_id, loop.time() + self.write_within)
        if self._writing is None:
            self._writing = loop.call_later(self.write_within, self._write_due)

    def _write_due(self) -> None:
        """Write the reserve entries of the calls admitted `write_within` ago and still running."""
        self._writing = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        events: list[TraceEvent] = []
        for reservation, (governed, request_id, run_id, due) in list(self._open.items()):
            if due > now:  # the rest were admitted later (loop time only grows)
                self._writing = loop.call_later(due - now, self._write_due)
                break
            del self._open[reservation]
            events += self.entries(governed, "reserve", request_id, run_id, governed.reserved_at or self.clock())
            governed.reserved_at = None
        if events:
            self.commit(events)

    def _plans_serve(self, workspace_id: str, rules: Rules) -> bool:
        found = self._plannable.get(workspace_id)
        if found is None or found[0] is not rules:
            if len(self._plannable) >= _PLANS_KEPT:
                self._plannable.clear()
            found = self._plannable[workspace_id] = (rules, _plannable(rules))
        return found[1]

    def _plan_for(self, rules: Rules, base: Subject, now: datetime) -> _Plan | None:
        """The subject's plan under these rules now, made if need be; None where plans cannot serve the rules."""
        key = (base.workspace_id, base.department_id, base.agent_id, base.virtual_key_id)
        at = now.timestamp()
        plan = self._plans.get(key)
        if plan is not None and plan.rules is rules and plan.since <= at < plan.until:
            return plan
        if not self._plans_serve(base.workspace_id, rules):
            return None
        budgets, limits = rules
        applied = applicable_budgets(budgets, base)
        rated = applicable_limits(limits, base)
        since, until = -math.inf, math.inf
        for b in applied:
            start, end = window(b, now)
            if start is not None and end is not None:
                since, until = max(since, start.timestamp()), min(until, end.timestamp())
        keys = tuple([counter_key(b, now, None) for b in applied])
        rates = self._rates_of(Governed(), rated)
        hold = Hold(keys, tuple([b.limit_nanos if b.blocks else None for b in applied]), tuple(rates))
        quick = bool(applied) and all(b.action is not Action.SOFT_THROTTLE for b in applied)
        plan = _Plan(rules, tuple(applied), rated, keys, rates, hold, since, until, quick)
        if len(self._plans) >= _PLANS_KEPT:
            self._plans.clear()  # subjects of rules since reloaded, mostly
        self._plans[key] = plan
        return plan

    def _rates_of(self, governed: Governed, rated: list[RateLimit]) -> list[Rate]:
        """The rates a call counts: a request, and its tokens (its estimate, corrected when it settles)."""
        rates: list[Rate] = []
        for r in rated:
            found = self._limit_rates.get(r)
            if found is None:  # the same for every call under the limit: built once
                if len(self._limit_rates) >= 4096:
                    self._limit_rates.clear()  # deleted and changed limits, mostly
                rpm = r.requests_per_minute
                found = self._limit_rates[r] = (
                    Rate(f"r:{r.workspace_id}:{r.id}:rpm", rpm, 60.0, 1) if rpm is not None else None,
                    f"r:{r.workspace_id}:{r.id}:tpm",
                )
            if found[0] is not None:
                rates.append(found[0])
            if r.tokens_per_minute is not None:
                rates.append(Rate(found[1], r.tokens_per_minute, 60.0, governed.tokens_estimate))
        return rates

    @staticmethod
    def _counted(governed: Governed, rated: list[RateLimit], rates: Sequence[Rate], wait: float | None) -> None:
        """After the rates were hit: raise the refusal if one refused, else note the tokens counted."""
        if wait is None:
            governed.token_rates = [r.key for r in rates if r.key.endswith(":tpm")]
            return
        governed.decision = Decision.THROTTLED
        # One round trip counts every rate at once, so which of them refused is not told apart: name them.
        named = [r for r in rated if r.requests_per_minute or r.tokens_per_minute]
        labels = ", ".join(f"{r.id!r} ({r.scope_label})" for r in named)
        which: dict[str, Any] = {"id": named[0].id} if len(named) == 1 else {"ids": [r.id for r in named]}
        governed.decided_by = {"kind": "rate_limit", **which, "scope": named[0].scope_label}
        if math.isinf(wait):  # no wait admits it: the call alone is past a tokens-per-minute limit
            raise InvalidRequest(
                f"This call may use up to {governed.tokens_estimate} tokens, more than rate limit "
                f"{labels} allows in a minute; lower max_tokens or shorten the prompt.",
                param="max_tokens",
            )
        raise RateLimited(f"Rate limit {labels} reached; retry in {wait:.1f} s.", retry_after=math.ceil(wait))

    async def _slots(self, governed: Governed, rated: list[RateLimit]) -> None:
        """A concurrency slot of each limit that has one, held until the call settles."""
        if all(r.concurrent is None for r in rated):
            return
        holder = new_id("slot")
        for r in rated:
            if r.concurrent is None:
                continue
            key = f"c:{r.workspace_id}:{r.id}"
            if not await self.counters.acquire(key, r.concurrent, holder, self.reservation_ttl):
                governed.decision = Decision.THROTTLED
                governed.decided_by = {"kind": "rate_limit", "id": r.id, "scope": r.scope_label}
                raise RateLimited(
                    f"Rate limit {r.id!r} ({r.scope_label}) allows {r.concurrent} concurrent requests; retry shortly.",
                    retry_after=1,
                )
            governed.slots.append(f"{key}\0{holder}")

    async def hold(
        self,
        governed: Governed,
        applied: Sequence[Budget],
        run_id: str | None,
        amount: int,
        now: datetime,
        what: str,
        rated: list[RateLimit] | None = None,
        rates: list[Rate] | None = None,
        keys: tuple[str, ...] | None = None,
        held: Hold | None = None,
    ) -> None:
        """Reserve `amount` against every budget in `applied` (all or none), or raise BudgetExceeded naming the
        first that has too little left. A soft_throttle or alert_only budget is counted, never refused here.
        With `rates`, they are hit first in the same step (a refusal raised as `_counted` says). `keys`: the
        budgets' counter keys now, and `held` their hold, when the caller has them (a plan)."""
        if keys is None:
            keys = tuple([counter_key(b, now, run_id) for b in applied])
        if held is None:
            held = Hold(keys, tuple([b.limit_nanos if b.blocks else None for b in applied]), tuple(rates or ()))
        reservation = ordered_id("rsv")
        ttl = self.reservation_ttl
        done: Answer | None = self.counters.reserve_now(reservation, held, amount, ttl, now.timestamp())
        if done is None:  # a round trip (Redis)
            if held.rates:
                charges = held.charges(amount)
                done = await self.counters.hit_and_reserve(held.rates, now.timestamp(), reservation, charges, ttl)
            else:
                done = None, await self.counters.reserve(reservation, held.charges(amount), ttl)
        await self._taken(governed, reservation, done, applied, keys, amount, what, rated or [], held.rates)

    async def _taken(
        self,
        governed: Governed,
        reservation: str,
        done: Answer,
        applied: Sequence[Budget],
        keys: tuple[str, ...],
        amount: int,
        what: str,
        rated: list[RateLimit],
        rates: Sequence[Rate] = (),
    ) -> None:
        """The counters' answer to a reservation (with `rates`, the rates of `rated`, hit first): the call's figures
        (flat in-process, by key from Redis), or the refusal raised."""
        wait, answer = done
        if rates:
            if wait is not None and applied:
                # Throttled before its reservation: its budgets' figures as they stand, for its answer's headers and
                # its trace (a refusal's read; the counters unreachable meanwhile, it goes without them).
                try:
                    standing = await self.counters.standing(keys)
                except CountersUnavailable:
                    pass
                else:
                    governed.held(applied, keys, [n for k in keys for n in (standing[k].spent, standing[k].reserved)])
            self._counted(governed, rated, rates, wait)
        assert answer is not None  # no wait: the reservation was tried
        if isinstance(answer, Refused):
            budget = applied[keys.index(answer.key)]
            governed.decision = Decision.BLOCKED
            governed.held((budget,), (answer.key,), (answer.standing.spent, answer.standing.reserved))
            governed.decided_by = {"kind": "budget", "id": budget.id, "scope": budget.scope_label}
            disabled = ""
            if budget.action is Action.DISABLE_KEY and budget.value and self._disable_key is not None:
                await self._disable_key(budget.workspace_id, budget.value)
                disabled = " The virtual key is disabled (revoked); issue a new one to go on."
            raise BudgetExceeded(
                f"Budget {budget.id!r} ({budget.scope_label}, {budget.period.value}, {budget.action.value}) has too "
                f"little left for {what}: limit ${format_usd(budget.limit_nanos)}, spent "
                f"${format_usd(answer.standing.spent)}, reserved ${format_usd(answer.standing.reserved)}, asked "
                f"${format_usd(amount)} at most.{disabled}"
            )
        if isinstance(answer, dict):
            answer = [n for k in keys for n in (answer[k].spent, answer[k].reserved)]
        self._took(governed, reservation, amount, applied, keys, answer)

    @staticmethod
    def _took(
        governed: Governed,
        reservation: str,
        amount: int,
        applied: Sequence[Budget],
        keys: tuple[str, ...],
        numbers: Sequence[int],
    ) -> None:
        """An admitted reservation's figures: each budget's spent and reserved after it, flat."""
        governed.reservation_id, governed.estimate = reservation, amount
        governed.held(applied, keys, numbers)

    async def rehold(
        self,
        governed: Governed,
        *,
        model: str,
        provider: str,
        overrides: dict[str, Any],
        request_id: str,
        run_id: str | None,
    ) -> None:
        """Before a fallback to another model: reserve again at its price when it may cost more than the
        reservation held (the old one released), or raise BudgetExceeded, which ends the call."""
        if governed.reservation_id is None or not governed.figures:
            return
        now = self.clock()
        ws = governed.figures[0].budget.workspace_id
        tokens_out = max(governed.tokens_estimate - governed.tokens_in, 0)
        estimate = self._bound(ws, model, provider, now, overrides, governed.tokens_in, tokens_out)
        if estimate is None or estimate <= governed.estimate:
            return
        old = Governed(reservation_id=governed.reservation_id, estimate=governed.estimate)
        old.held(governed.budgets, governed.keys, governed.numbers)
        try:
            await self.hold(governed, old.budgets, run_id, estimate, now, f"a fallback to {model!r}")
        except BudgetExceeded:
            # The call still holds its first reservation, settled as it ends.
            governed.held(old.budgets, old.keys, old.numbers)
            raise
        await self.counters.settle(old.reservation_id or "", 0)
        if self._open.pop(old.reservation_id or "", None) is None:  # its reserve was written: so is its release
            self.commit(self.entries(old, "release", request_id, run_id, now))
        # (else released before it was written: nothing moved, nothing to write)
        governed.headers = None  # (made for the first reservation's figures)
        self._keep_open(governed, request_id, run_id, now)

    async def _soft_throttle(self, governed: Governed, b: Budget, key: str, now: datetime) -> None:
        """Past its limit, a soft_throttle budget lets calls through at its `throttle_rpm` only."""
        rate = Rate(f"t:{key}", b.throttle_rpm or 1, 60.0, 1)
        wait = await self.counters.hit([rate], now.timestamp())
        if wait is not None:
            governed.decision = Decision.THROTTLED
            governed.decided_by = {"kind": "budget", "id": b.id, "scope": b.scope_label}
            raise RateLimited(
                f"Budget {b.id!r} ({b.scope_label}) is past its limit; soft_throttle allows {b.throttle_rpm or 1} "
                "requests a minute.",
                retry_after=math.ceil(wait),
            )
        governed.note = f"soft_throttle: budget {b.id} is past its limit"

    def _unavailable(self, governed: Governed, applied: Sequence[Budget]) -> None:
        """The counters cannot be reached: fail closed if a budget that blocks applies, open (and say so) if not."""
        blocking = [b for b in applied if b.blocks]
        if blocking:
            b = blocking[0]
            governed.decision = Decision.BLOCKED
            governed.decided_by = {"kind": "budget", "id": b.id, "scope": b.scope_label}
            raise StoreUnavailable(
                f"Budget {b.id!r} ({b.scope_label}) cannot be checked: the counters are unavailable; retry shortly."
            )
        governed.note = "counters unavailable: allowed unchecked (no budget that blocks applies)"
        log.warning("budget counters unavailable; a call was allowed unchecked (only alert_only budgets apply)")

    async def give_back_limits(self, governed: Governed, epoch: float | None = None) -> None:
        """Before a call's answer goes out, what it holds of the rate limits: its concurrency slots given back, its
        tokens-per-minute (counted at its estimate) corrected to what it used. A client that sends its next call
        once it has the answer finds the limits as that answer leaves them. (The budgets' counters settle after
        the answer: until then they hold the call's reservation, never less than it spent.) The counters
        unreachable, a slot frees itself at its ttl and a token window at its minute. `epoch`: when the call ended
        (else now)."""
        slots, governed.slots = governed.slots, []
        tokens, rates = governed.tokens_used, governed.token_rates
        if tokens is not None:  # (`settle` has told what the call used)
            governed.token_rates = []
        try:
            await self._free_slots(slots)
            if tokens is not None:
                at = self.clock().timestamp() if epoch is None else epoch
                for key in rates:
                    await self.counters.adjust_rate(key, 60.0, tokens - governed.tokens_estimate, at)
        except CountersUnavailable:
            log.warning("budget counters unavailable while giving back a call's rate limits; they free in time")

    async def _free_slots(self, slots: list[str]) -> None:
        for slot in slots:
            key, holder = slot.split("\0", 1)
            await self.counters.release_slot(key, holder)

    async def _undo(self, governed: Governed) -> None:
        """A refusal after some of the admission was taken gives it back."""
        slots, governed.slots = governed.slots, []
        await self._free_slots(slots)
        if governed.reservation_id is not None:
            await self.counters.settle(governed.reservation_id, 0)

    # -- settlement --------------------------------------------------------------------------------------------
    def settle(
        self,
        governed: Governed,
        actual: int,
        tokens: int,
        *,
        request_id: str,
        run_id: str | None,
        refused: bool = False,
        carry: bool = False,
        later: bool = False,
    ) -> list[TraceEvent]:
        """The ledger entries of a finished call, written with its records; the counters are settled after
        (`_settle_soon`), and the alerts of the thresholds that settle crossed follow from the counters' answer.
        `carry`: the entries are left to the call's report (`summary`, which must then be written in its request
        record; the writer expands them): its settle or release, net of its reserve when that was never written.
        `later`: the caller settles the counters after the answer (`settle_later`), else they settle at the loop's
        next turn."""
        if not governed.governed:
            return []
        governed.tokens_used = tokens
        now = self.clock()
        events: list[TraceEvent] = []
        if governed.reservation_id is not None:
            unwritten = self._open.pop(governed.reservation_id, None) is not None
            if refused:
                governed.reserved_at = None
            else:
                kind = "settle" if actual or not governed.estimate else "release"
                if carry:
                    governed.closed, governed.actual, governed.closed_at = kind, actual, now
                    governed.reserve_written = not unwritten
                else:
                    if unwritten:
                        at = governed.reserved_at or now
                        events += self.entries(governed, "reserve", request_id, run_id, at)
                    governed.reserved_at = None
                    events += self.entries(governed, kind, request_id, run_id, now, actual)
                # The figures once the reservation is replaced by what the call cost; the response headers follow
                # from them when an answer asks (`headline`: a stream's went out with its first event).
                numbers = list(governed.numbers)
                for i in range(0, len(numbers), 2):
                    numbers[i] += actual
                    numbers[i + 1] = max(numbers[i + 1] - governed.estimate, 0)
                governed.numbers = numbers
                governed.headers = None
        if governed.reservation_id is not None or governed.token_rates or governed.slots:
            # The counters are settled once the answer is out (`settle_later`; else at the loop's next turn): it
            # tells the call's own figures, made above, and nothing the call waits for waits for this.
            args = (governed, actual, tokens, now.timestamp(), request_id, run_id)
            if later:
                governed.unsettled = args
            else:
                asyncio.get_running_loop().call_soon(self._settle_soon, *args)
        return events

    def settle_later(self, governed: Governed, answered: asyncio.Future[None] | None) -> None:
        """Settle the counters of a call `settle(later=True)` closed once its answer is out: after `answered` (the
        durability its answer waits for) and the answer's own turn of the loop, or at the loop's next turn. On one
        core the interpreter is one: whatever runs before the answer delays it, a counter's settle included (a
        thread the answer waits for needs the interpreter too)."""
        args = governed.unsettled
        if args is None:
            return
        governed.unsettled = None
        loop = asyncio.get_running_loop()
        if answered is None or answered.done():
            loop.call_soon(self._settle_soon, *args)
        else:  # (callbacks run in the order they were added: this one before the answer's, which it then follows)
            answered.add_done_callback(lambda _: loop.call_soon(self._settle_soon, *args))

    def _settle_soon(
        self, governed: Governed, actual: int, tokens: int, epoch: float, request_id: str, run_id: str | None
    ) -> None:
        """In-process counters settle here, no task, and the alerts of the thresholds crossed are committed. Else
        (Redis; slots or token rates to give back; a reservation no longer held: `_late_settle`) a task settles
        it (idempotent)."""
        if not governed.token_rates and not governed.slots:  # (given back before its answer: `give_back_limits`)
            if governed.reservation_id is None:
                return
            try:
                after = self.counters.settle_now(governed.reservation_id, actual)
            except ValueError:  # out of the counters' range: the task fails the same way
                after = None
            if after:  # each of the reservation's keys, in the order it held them: the call's budgets'
                events: list[TraceEvent] = []
                for i, b in enumerate(governed.budgets):
                    self._crossed(events, b, governed.keys[i], after[2 * i], actual, request_id, run_id)
                if events:
                    self.commit(events)
                return
        self._spawn(self._settle_counters(governed, actual, tokens, epoch, request_id, run_id))

    def alerts(
        self,
        budgets: dict[str, Budget],
        after: dict[str, Standing],
        spent: int,
        request_id: str | None,
        run_id: str | None,
    ) -> list[TraceEvent]:
        """Alerts for the thresholds `spent` crossed, from the counters' own figures after it was booked: each
        settle or spend moves a counter atomically, so exactly one of them crosses each threshold."""
        events: list[TraceEvent] = []
        for key, standing in after.items():
            b = budgets.get(key)
            if b is not None:
                self._crossed(events, b, key, standing.spent, spent, request_id, run_id)
        return events

    def _crossed(
        self,
        events: list[TraceEvent],
        b: Budget,
        key: str,
        now_spent: int,
        spent: int,
        request_id: str | None,
        run_id: str | None,
    ) -> None:
        """An alert for each threshold of `b` that `spent` crossed, its counter at `now_spent` after it."""
        for threshold in crossed(b.limit_nanos, now_spent - spent, now_spent, b.thresholds):
            events.append(
                BudgetAlert(
                    workspace_id=b.workspace_id,
                    budget_id=b.id,
                    window_key=window_of_key(key),
                    threshold=threshold,
                    spent_nanos=now_spent,
                    limit_nanos=b.limit_nanos,
                    at=self.clock(),
                    request_id=request_id,
                    run_id=run_id,
                )
            )

    async def _settle_counters(
        self, governed: Governed, actual: int, tokens: int, epoch: float, request_id: str, run_id: str | None
    ) -> None:
        try:
            if governed.reservation_id is not None:
                after = await self.counters.settle(governed.reservation_id, actual, lazy=True)
                if after:
                    by_key = dict(zip(governed.keys, governed.budgets, strict=True))
                    alerts = self.alerts(by_key, after, actual, request_id, run_id)
                    if alerts:
                        self.commit(alerts)
                else:
                    await self._late_settle(governed, actual)
            await self.give_back_limits(governed, epoch)  # (those of a call that never answered: a client gone)
        except CountersUnavailable:
            # The reservation expires at its estimate and the sweep corrects it from the ledger, whose settle
            # entry is already written (gateway/budget_recovery.py); the slot frees itself at its ttl.
            log.warning("budget counters unavailable while settling reservation %s", governed.reservation_id)

    async def _late_settle(self, governed: Governed, actual: int) -> None:
        """The counters no longer held the reservation: the call outlived `reservation_ttl` and the sweep charged
        its estimate. If the sweep wrote an `expire` entry before this call's settle entry, the ledger now
        closes the reservation twice; an `adjust` entry takes the estimate back out, and the counters (which
        charged the estimate) get the difference. If the sweep saw the settle entry first, it already made the
        counters agree with it, and there is nothing to do."""
        if self.reservation_of is None or not governed.budgets or governed.reservation_id is None:
            return
        await asyncio.sleep(1.0)  # this call's settle entry is committed with its records: let it land
        ws = governed.budgets[0].workspace_id
        sums = await self.reservation_of(ws, governed.reservation_id)
        fixes: list[TraceEvent] = []
        counter_fixes: list[Charge] = []
        for b, key in zip(governed.budgets, governed.keys, strict=True):
            _, reserved, spent = sums.get(key, ("", 0, 0))
            if reserved == 0:
                continue
            fixes.append(
                LedgerEntry(
                    workspace_id=ws,
                    entry_id=new_id("led"),
                    budget_id=b.id,
                    counter_key=key,
                    kind="adjust",
                    reserved_delta=-reserved,
                    spent_delta=actual - spent,
                    at=self.clock(),
                    reservation_id=governed.reservation_id,
                    note="settled after it expired: the expiry's estimate taken back",
                )
            )
            counter_fixes.append(Charge(key, None, actual - governed.estimate))
        if fixes:
            self.commit(fixes)
            await self.counters.add(counter_fixes)

    def entries(
        self,
        governed: Governed,
        kind: str,
        request_id: str | None,
        run_id: str | None,
        now: datetime,
        actual: int = 0,
        step_id: str | None = None,
    ) -> list[TraceEvent]:
        """The reservation's `kind` entries, one per budget it holds, as one event (core.model.LedgerEntries: the
        budgets of one call are of one workspace)."""
        budgets = governed.budgets
        if not budgets or governed.reservation_id is None:
            return []
        return [
            LedgerEntries.of_reservation(
                budgets[0].workspace_id,
                kind,
                governed.estimate,
                actual,
                now,
                governed.reservation_id,
                tuple([(b.id, k) for b, k in zip(budgets, governed.keys, strict=True)]),
                request_id,
                run_id,
                step_id,
            )
        ]

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        try:
            task = asyncio.get_running_loop().create_task(work)
        except RuntimeError:
            work.close()
            return
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- what the trace shows ----------------------------------------------------------------------------------
    def summary(self, governed: Governed) -> PolicyReport:
        """The policy check as numbers (cheap on the answer's path); `report` is its dict."""
        return PolicyReport(
            governed.decision,
            governed.decided_by,
            governed.budgets,
            governed.keys,
            tuple(governed.numbers),
            tuple(governed.limits),
            governed.reservation_id,
            governed.estimate,
            governed.note,
            governed.policy,
            governed.closed_at or self.clock(),
            governed.closed,
            governed.actual,
            governed.reserve_written,
        )

    def report(self, governed: Governed) -> dict[str, Any]:
        """The policy check as the request row and the policy_check step keep it."""
        return self.summary(governed).as_dict()

    def policy_step(
        self,
        governed: Governed,
        report: dict[str, Any] | PolicyReport,
        *,
        request_id: str,
        base: Attribution,
        started_at: datetime,
        name: str | None = None,
        attempt: int = 1,
    ) -> StepRecord | None:
        """`attempt`: the client's try of this x-request-id; each try's check is a step of its own (a resend
        after an approval shows escalated → approved beside the first try's escalated → pending)."""
        if base.run_id is None:
            return None
        if name is None:
            by = (governed.decided_by or {}).get("kind")
            name = "policy check" if governed.policy is not None or by == "run_control" else "budgets and rate limits"
        tail = "" if attempt == 1 else f"\0{attempt}"  # the first try's id as it always was
        digest = hashlib.sha256(f"{base.workspace_id}\0{request_id}\0policy{tail}".encode()).hexdigest()[:24]
        now = self.clock()
        ok = governed.decision is Decision.ALLOWED
        return StepRecord(
            step_id=f"pc_{digest}",
            run_id=base.run_id,
            attribution=base,
            kind=StepKind.POLICY_CHECK,
            name=name,
            status=StepStatus.OK if ok else StepStatus.ERROR,
            started_at=started_at,  # the check ran before the model call; its figures are as the call left them
            ended_at=now,
            request_id=request_id,
            error=None if ok else f"{governed.decision.value} by {governed.decided_by}",
            attributes=report,
        )


def headline(governed: Governed) -> dict[str, str]:
    """Response headers: the decision, and the tightest applicable budget's remaining amount and scope."""
    if governed.headers is not None:
        return dict(governed.headers)
    return _headers(governed, *least_left(governed.budgets, governed.numbers))


def prepare_headline(governed: Governed) -> None:
    """Make `headline`'s headers ahead, from the figures as they stand, where the loop would otherwise wait (for a
    provider, for the call's records to be durable): the answer then takes them as they are. Whatever changes the
    figures after (a settle, a fallback's reservation) drops them."""
    if governed.headers is None:
        governed.headers = _headers(governed, *least_left(governed.budgets, governed.numbers))


def _headers(governed: Governed, at: int, left: int) -> dict[str, str]:
    """`headline`, the tightest budget's index in the call's and what it has left given."""
    decision = governed.decision
    headers = {"alephant-policy-decision": "allowed" if decision is Decision.ALLOWED else decision.value}
    if at >= 0:
        headers["alephant-budget-remaining-usd"] = format_usd(max(left, 0))
        headers["alephant-budget-scope"] = governed.budgets[at].scope_label
    return headers

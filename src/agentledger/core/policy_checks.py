"""Policies compiled into checks: globs into one regex per list, CIDRs into networks, time windows into
minute ranges of the week. Built once per change of a workspace's policies (core/policy.py), run per call.

A condition check says whether it holds; a setting check says why it refuses the call (None: it does not).
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from agentledger.core.money import format_usd

if TYPE_CHECKING:
    from agentledger.core.policy import CallContext, Conditions, Settings, TimeWindow

MODEL_CALL = "model_call"
_DAY = 1440  # minutes


class Env:
    """What several checks of one call derive from it, computed at most once."""

    __slots__ = ("ctx", "_minutes", "_ip", "_ip_read")

    def __init__(self, ctx: CallContext) -> None:
        self.ctx = ctx
        self._minutes: dict[str, int] | None = None
        self._ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
        self._ip_read = False

    def week_minute(self, key: str, zone: ZoneInfo) -> int:
        memo = self._minutes
        if memo is None:
            memo = self._minutes = {}
        found = memo.get(key)
        if found is None:
            local = _aware(self.ctx.now).astimezone(zone)
            found = memo[key] = local.weekday() * _DAY + local.hour * 60 + local.minute
        return found

    def ip(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        if not self._ip_read:
            self._ip_read = True
            try:
                addr = ipaddress.ip_address(self.ctx.client_ip or "")
            except ValueError:
                return None
            # A dual-stack socket shows an IPv4 client as ::ffff:a.b.c.d; IPv4 CIDRs must still match it.
            mapped = addr.ipv4_mapped if isinstance(addr, ipaddress.IPv6Address) else None
            self._ip = mapped or addr
        return self._ip


Check = Callable[["CallContext", Env], bool]
SettingCheck = Callable[["CallContext", Env], "str | None"]
_Match = Callable[[str], object]


def glob_matcher(patterns: Sequence[str]) -> _Match:
    """One regex for a whole glob list: a match object when any glob matches (case-insensitive)."""
    return re.compile("|".join(fnmatch.translate(p) for p in patterns), re.IGNORECASE).match


class _Windows:
    __slots__ = ("zones",)

    def __init__(self, windows: Iterable[TimeWindow]) -> None:
        spans: dict[str, list[tuple[int, int]]] = {}
        for w in windows:
            found = spans.setdefault(w.tz, [])
            for day in w.days:
                base = day * _DAY
                if w.start < w.end:
                    found.append((base + w.start, base + w.end))
                else:
                    found.append((base + w.start, base + _DAY))
                    following = (day + 1) % 7 * _DAY  # Sunday night runs into Monday
                    found.append((following, following + w.end))
        self.zones = tuple((tz, ZoneInfo(tz), tuple(s)) for tz, s in spans.items())

    def contains(self, env: Env) -> bool:
        for key, zone, spans in self.zones:
            minute = env.week_minute(key, zone)
            for lo, hi in spans:
                if lo <= minute < hi:
                    return True
        return False


class _Networks:
    __slots__ = ("nets",)

    def __init__(self, cidrs: Iterable[str]) -> None:
        self.nets = tuple(ipaddress.ip_network(c) for c in cidrs)

    def contains(self, addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return any(addr in net for net in self.nets)  # `in` is False across IP versions


def _field_check(attr: str, patterns: Sequence[str], negate: bool) -> Check:
    match = glob_matcher(patterns)
    if negate:
        return lambda c, e: (v := getattr(c, attr)) is not None and match(v) is None
    return lambda c, e: (v := getattr(c, attr)) is not None and match(v) is not None


def _run_over(attr: str, limit: int) -> Check:
    return lambda c, e: c.run is not None and getattr(c.run, attr) > limit


def _seconds_in_run(ctx: CallContext) -> float | None:
    run = ctx.run
    if run is None or run.started_at is None:
        return None
    return (_aware(ctx.now) - _aware(run.started_at)).total_seconds()


def _aware(ts: datetime) -> datetime:
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)


def _property_check(props: tuple[tuple[str, str], ...]) -> Check:
    pairs = tuple((name, glob_matcher([glob])) for name, glob in props)

    def check(c: CallContext, e: Env) -> bool:
        for name, match in pairs:
            value = c.properties.get(name)
            if value is None or match(value) is None:
                return False
        return True

    return check


def condition_checks(w: Conditions) -> tuple[Check, ...]:
    """Cheap checks first: a rule stops at its first condition that fails."""
    out: list[Check] = []
    if w.kinds is not None:
        kinds = w.kinds
        out.append(lambda c, e: c.kind in kinds or c.kind.lower() in kinds)
    for attr, pats, negate in (
        ("model", w.models, False),
        ("model", w.models_not, True),
        ("provider", w.providers, False),
        ("provider", w.providers_not, True),
        ("name", w.names, False),
        ("name", w.names_not, True),
    ):
        if pats is not None:
            out.append(_field_check(attr, pats, negate))
    if (tokens := w.max_tokens_over) is not None:
        out.append(lambda c, e: c.max_tokens > tokens if c.max_tokens is not None else c.kind == MODEL_CALL)
    if (cost := w.cost_over_nanos) is not None:
        out.append(lambda c, e: c.cost_nanos is not None and c.cost_nanos > cost)
    if (ids := w.prompt_ids) is not None:
        out.append(lambda c, e: c.prompt_id in ids)
    if (not_ids := w.prompt_ids_not) is not None:
        out.append(lambda c, e: c.prompt_id is not None and c.prompt_id not in not_ids)
    if (headers := w.missing_headers) is not None:
        out.append(lambda c, e: any(h not in c.headers for h in headers))
    if (pii := w.pii) is not None:
        out.append(lambda c, e: not pii.isdisjoint(c.pii))
    if w.properties is not None:
        out.append(_property_check(w.properties))
    if w.run_steps_over is not None:
        out.append(_run_over("steps", w.run_steps_over))
    if w.run_model_calls_over is not None:
        out.append(_run_over("model_calls", w.run_model_calls_over))
    if w.run_cost_over_nanos is not None:
        out.append(_run_over("cost_nanos", w.run_cost_over_nanos))
    if w.repeated_over is not None:
        out.append(_run_over("repeats", w.repeated_over))
    if (secs := w.run_duration_over_s) is not None:
        out.append(lambda c, e: (s := _seconds_in_run(c)) is not None and s > secs)
    if w.ip_in is not None:
        inside = _Networks(w.ip_in)
        out.append(lambda c, e: (a := e.ip()) is not None and inside.contains(a))
    if w.ip_not_in is not None:
        outside = _Networks(w.ip_not_in)
        out.append(lambda c, e: (a := e.ip()) is not None and not outside.contains(a))
    if w.hours is not None:
        hours = _Windows(w.hours)
        out.append(lambda c, e: hours.contains(e))
    if w.outside_hours is not None:
        off = _Windows(w.outside_hours)
        out.append(lambda c, e: not off.contains(e))
    return tuple(out)


def _glob_setting(what: str, patterns: tuple[str, ...], allow: bool) -> SettingCheck | None:
    """`what` is the CallContext field: model or provider."""
    if not patterns:
        return None
    match = glob_matcher(patterns)
    setting = f"{what}s_allow" if allow else f"{what}s_deny"

    def check(c: CallContext, e: Env) -> str | None:
        value = getattr(c, what)
        if value is None or (match(value) is not None) == allow:
            return None
        return f"{what} '{value}' is {'not in' if allow else 'in'} {setting}"

    return check


def setting_checks(s: Settings) -> dict[str, SettingCheck | None]:
    """A check per setting that refuses calls; None for one set to "no restriction" (an empty list)."""
    out: dict[str, SettingCheck | None] = {}
    for what in ("model", "provider"):
        for allow in (True, False):
            name = f"{what}s_allow" if allow else f"{what}s_deny"
            if (pats := getattr(s, name)) is not None:
                out[name] = _glob_setting(what, pats, allow)
    if s.time_windows is not None:
        out["time_windows"] = _windows_setting(s.time_windows)
    if s.ip_allow is not None:
        out["ip_allow"] = _ip_setting(s.ip_allow)
    if s.required_headers is not None:
        out["required_headers"] = _headers_setting(s.required_headers)
    if s.prompt_ids_allow is not None:
        out["prompt_ids_allow"] = _prompts_setting(s.prompt_ids_allow)
    if (steps := s.max_run_steps) is not None:
        out["max_run_steps"] = lambda c, e: (
            f"the run has {c.run.steps} steps (max_run_steps {steps})"
            if c.run is not None and c.run.steps >= steps
            else None
        )
    if (calls := s.max_run_model_calls) is not None:
        out["max_run_model_calls"] = lambda c, e: (
            f"the run has made {c.run.model_calls} model calls (max_run_model_calls {calls})"
            if c.run is not None and c.kind == MODEL_CALL and c.run.model_calls >= calls
            else None
        )
    if (secs := s.max_run_duration_s) is not None:
        out["max_run_duration_s"] = lambda c, e: (
            f"the run has lasted {d:.0f} s (max_run_duration_s {secs:g})"
            if (d := _seconds_in_run(c)) is not None and d > secs
            else None
        )
    if (cost := s.max_run_cost_nanos) is not None:
        out["max_run_cost_usd"] = lambda c, e: (
            f"the run has cost ${format_usd(c.run.cost_nanos)} (max_run_cost_usd {format_usd(cost)})"
            if c.run is not None and c.run.cost_nanos >= cost
            else None
        )
    if (loops := s.loop_repeats) is not None:
        out["loop_repeats"] = lambda c, e: (
            f"loop: the same request was seen {c.run.repeats} times in this run (loop_repeats {loops})"
            if c.run is not None and c.run.repeats >= loops
            else None
        )
    return out


def _windows_setting(windows: tuple[TimeWindow, ...]) -> SettingCheck | None:
    if not windows:
        return None
    allowed = _Windows(windows)
    return lambda c, e: None if allowed.contains(e) else "the call is outside every allowed time window"


def _ip_setting(cidrs: tuple[str, ...]) -> SettingCheck | None:
    if not cidrs:
        return None
    nets = _Networks(cidrs)

    def check(c: CallContext, e: Env) -> str | None:
        addr = e.ip()
        if addr is None:
            return "the client's IP address is unknown"  # fail closed: the setting exists to keep callers out
        return None if nets.contains(addr) else f"client IP {addr} is not in ip_allow"

    return check


def _headers_setting(names: tuple[str, ...]) -> SettingCheck | None:
    if not names:
        return None

    def check(c: CallContext, e: Env) -> str | None:
        missing = [h for h in names if h not in c.headers]
        return f"missing required header {', '.join(missing)}" if missing else None

    return check


def _prompts_setting(ids: tuple[str, ...]) -> SettingCheck | None:
    if not ids:
        return None
    allowed = frozenset(ids)

    def check(c: CallContext, e: Env) -> str | None:
        if c.kind != MODEL_CALL or c.prompt_id in allowed:
            return None
        if c.prompt_id is None:
            return "the call names no prompt (alephant-prompt-id)"
        return f"prompt '{c.prompt_id}' is not in prompt_ids_allow"

    return check

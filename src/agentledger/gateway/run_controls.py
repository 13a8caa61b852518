"""Run controls on the hot path: a cancelled run's calls are refused, a paused run's calls wait for its resume, and
an open stream of a run being cancelled is ended.

Each (workspace, run)'s control is kept in a TTL cache, absent ones too, for as long as present ones: a call of an
uncontrolled run costs a cache hit, not a query. A change through the API drops the entry here and, broadcast as
the "run" kind (gateway/broadcast.py), on every replica at once; without Redis another replica sees it within
`cache_ttl`, as for keys. The broadcast value carries the new state, so a replica ends its open streams of a
cancelled run without asking the store.

A paused run's call waits on an asyncio.Event of its run, set by any change of the run (here or broadcast), up
to `pause_wait` seconds (reading the store itself every RECHECK seconds, in case a broadcast was lost); then it
proceeds (resumed), is refused 403 (cancelled meanwhile), or gets 423 with Retry-After (still paused). It waits
before the budget gate, so nothing is reserved while it waits.

A store that cannot be asked fails open: the run is taken as uncontrolled for `cache_ttl` (logged), since
refusing every call that names a run through an outage would stop the gateway, which a store outage must not.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from agentledger.core.budgets import Decision
from agentledger.core.errors import RunCancelled, RunPaused, StoreUnavailable
from agentledger.gateway.budgets import Governed
from agentledger.gateway.cache import TTLCache

log = logging.getLogger(__name__)
T = TypeVar("T")

CANCELLED = "cancelled"
PAUSED = "paused"
RUNNING = "running"  # resumed: what a resume writes
STATES = (CANCELLED, PAUSED, RUNNING)
# Bounds of `run_pause_wait_s` (config.py): a held call keeps its connection open, and the SDKs' own timeouts
# (OpenAI's 600 s, Anthropic's 600 s) must not end it first.
MAX_PAUSE_WAIT = 300.0
# A held call reads the store itself this often (seconds) when no change woke it: a broadcast may be lost.
RECHECK = 1.0

Key = tuple[str, str]  # (workspace_id, run_id)


@dataclass(frozen=True, slots=True)
class RunControl:
    state: str
    reason: str | None
    by: str | None
    at: datetime

    @classmethod
    def of(cls, row: dict[str, Any]) -> RunControl:
        return cls(row["state"], row["reason"], row["by"], row["at"])

    def view(self) -> dict[str, Any]:
        return {"state": self.state, "reason": self.reason, "by": self.by, "at": self.at}


def change_value(workspace_id: str, run_id: str, state: str) -> str:
    """The broadcast value of a change: ids hold no space (core/headers.py ID_RE)."""
    return f"{state} {workspace_id} {run_id}"


class RunControls:
    def __init__(
        self,
        load: Callable[[str, str], Awaitable[dict[str, Any] | None]],
        *,
        pause_wait: float = 10.0,
        cache_ttl: float = 30.0,
        stale_if_error: float = 3600.0,
    ) -> None:
        self._load = load  # store.governance.run_control
        self.pause_wait = min(max(pause_wait, 0.0), MAX_PAUSE_WAIT)
        self.cache: TTLCache[Key, RunControl] = TTLCache(
            cache_ttl, negative_ttl=cache_ttl, stale_if_error=stale_if_error
        )
        self._changed: dict[Key, tuple[asyncio.Event, int]] = {}  # a paused run's waiters: its event, how many
        self._streams: weakref.WeakSet[_Watch[Any]] = weakref.WeakSet()

    async def control(self, workspace_id: str, run_id: str) -> RunControl | None:
        key = (workspace_id, run_id)
        try:
            return await self.cache.get(key, lambda: self._fetch(workspace_id, run_id))
        except StoreUnavailable:
            log.warning("run controls unavailable (store down): run %r taken as uncontrolled", run_id)
            self.cache.put(key, None)
            return None

    async def _fetch(self, workspace_id: str, run_id: str) -> RunControl | None:
        row = await self._load(workspace_id, run_id)
        return RunControl.of(row) if row is not None else None

    async def _refresh(self, workspace_id: str, run_id: str, known: RunControl) -> RunControl | None:
        try:
            found = await self._fetch(workspace_id, run_id)
        except StoreUnavailable:
            return known
        self.cache.put((workspace_id, run_id), found)
        return found

    # -- admission ---------------------------------------------------------------------------------------------
    async def admit(self, workspace_id: str, run_id: str | None, governed: Governed) -> None:
        """Let the call of an uncontrolled or resumed run through; hold a paused run's call until it is resumed or
        `pause_wait` passes; raise RunCancelled / RunPaused (`governed` says who refused it, for the record)."""
        if run_id is None:
            return
        control = await self.control(workspace_id, run_id)
        if control is None or control.state == RUNNING:
            return
        t0 = time.monotonic()
        deadline = t0 + self.pause_wait
        while control is not None and control.state == PAUSED:
            left = deadline - time.monotonic()
            if left <= 0:
                self._refused(governed, Decision.THROTTLED, run_id, control)
                raise RunPaused(
                    f"Run {run_id!r} is paused{_why(control)}; this call waited {self.pause_wait:g} s for it to be "
                    "resumed.",
                    retry_after=max(1, math.ceil(self.pause_wait)),
                )
            if await self._wait((workspace_id, run_id), min(left, RECHECK)):
                control = await self.control(workspace_id, run_id)
            else:  # no change seen: read the store itself, in case another replica's broadcast was lost
                control = await self._refresh(workspace_id, run_id, control)
        if control is not None and control.state == CANCELLED:
            self._refused(governed, Decision.BLOCKED, run_id, control)
            raise RunCancelled(f"Run {run_id!r} is cancelled{_why(control)}: no further calls are allowed in it.")
        if time.monotonic() > t0:  # it waited: say so on the call's record
            governed.note = f"run {run_id} was paused: this call waited {time.monotonic() - t0:.3f} s"

    async def _wait(self, key: Key, timeout: float) -> bool:
        """Wait for a change of the run; False if `timeout` passed first."""
        event, n = self._changed.get(key) or (asyncio.Event(), 0)
        self._changed[key] = (event, n + 1)
        try:
            async with asyncio.timeout(timeout):
                await event.wait()
            return True
        except TimeoutError:
            return False
        finally:
            held = self._changed.get(key)
            if held is not None and held[0] is event:
                if held[1] > 1:
                    self._changed[key] = (event, held[1] - 1)
                else:
                    del self._changed[key]

    @staticmethod
    def _refused(governed: Governed, decision: Decision, run_id: str, control: RunControl) -> None:
        governed.decision = decision
        governed.decided_by = {"kind": "run_control", "run_id": run_id, "state": control.state}
        if control.reason is not None:
            governed.decided_by["reason"] = control.reason
        if control.by is not None:
            governed.decided_by["by"] = control.by

    # -- streams -----------------------------------------------------------------------------------------------
    def watch(self, workspace_id: str, run_id: str | None, events: AsyncIterator[T]) -> AsyncIterator[T]:
        """`events` until the run is cancelled, then RunCancelled, raised at once even while the provider is
        silent: the stream is no longer read."""
        if run_id is None:
            return events
        watch = _Watch(self, (workspace_id, run_id), events)
        self._streams.add(watch)
        return watch

    # -- changes -----------------------------------------------------------------------------------------------
    def invalidate(self, value: str) -> None:
        """A run's control changed (here, or on another replica: the broadcast `change_value`): drop it from the
        cache, wake its held calls to look again, and end its open streams if it is now cancelled."""
        parts = value.split(" ")
        if len(parts) != 3:
            log.warning("ignored a malformed run control change %r", value)
            return
        state, workspace_id, run_id = parts
        key = (workspace_id, run_id)
        self.cache.invalidate(key)
        held = self._changed.pop(key, None)
        if held is not None:
            held[0].set()
        if state == CANCELLED:
            for watch in list(self._streams):
                if watch.key == key:
                    watch.stop()


class _Watch(Generic[T]):
    """One open stream of a run. Its task is cancelled only while it waits on the provider (`waiting`), where
    a cancel ends just that read; the cancel is then taken back (`uncancel`) and RunCancelled raised instead,
    unless someone else (the client hanging up) cancelled it too."""

    __slots__ = ("__weakref__", "cancelled", "checked", "controls", "events", "key", "stopped", "task", "waiting")

    def __init__(self, controls: RunControls, key: Key, events: AsyncIterator[T]) -> None:
        self.controls = controls
        self.key = key
        self.events = events
        self.checked = False
        self.stopped = False
        self.waiting = False
        self.cancelled = False  # this watch cancelled its task (once, while it waited)
        self.task: asyncio.Task[Any] | None = None

    def __aiter__(self) -> _Watch[T]:
        return self

    async def __anext__(self) -> T:
        if not self.checked:  # cancelled between admission and the provider's answer
            self.checked = True
            control = await self.controls.control(*self.key)
            if control is not None and control.state == CANCELLED:
                self.stopped = True
        if self.stopped:
            raise self._error()
        task = self.task = asyncio.current_task()
        self.waiting = True
        try:
            return await self.events.__anext__()
        except asyncio.CancelledError:
            if self.cancelled and task is not None and task.uncancel() == 0:
                raise self._error() from None
            raise
        finally:
            self.waiting = False

    def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        if self.waiting and self.task is not None:
            self.cancelled = True
            self.task.cancel()

    def _error(self) -> RunCancelled:
        return RunCancelled(f"Run {self.key[1]!r} was cancelled: the stream is ended.")


def _why(control: RunControl) -> str:
    who = f" by {control.by}" if control.by else ""
    return who + (f" ({control.reason})" if control.reason else "")

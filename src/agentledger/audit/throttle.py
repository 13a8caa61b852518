"""At most one failed-authentication event per source and minute (docs/audit.md): a token sprayed at /api must not
turn the audit log into a request log. Pure: the caller passes the time."""

from __future__ import annotations

from collections import OrderedDict


class FailureThrottle:
    """`admit(key, now)`: True when a failure from `key` (source address, token prefix) is recorded now; each later
    failure in the window is counted instead, and the next recorded one says how many (`suppressed`). Every
    source together records at most `per_window` a window, and at most `max_keys` sources are remembered (the
    oldest forgotten first), so a spray of distinct tokens costs bounded memory and bounded events."""

    def __init__(self, window: float = 60.0, *, per_window: int = 120, max_keys: int = 10_000) -> None:
        self.window = window
        self.per_window = per_window
        self.max_keys = max_keys
        self._last: OrderedDict[tuple[str, str], tuple[float, int]] = OrderedDict()
        self._window_start = 0.0
        self._in_window = 0

    def admit(self, key: tuple[str, str], now: float) -> int | None:
        """The number of failures of `key` suppressed since its last event, when one is to be recorded; else None."""
        if now - self._window_start >= self.window:
            self._window_start, self._in_window = now, 0
        last = self._last.get(key)
        if last is not None and now - last[0] < self.window:
            self._last[key] = (last[0], last[1] + 1)
            self._last.move_to_end(key)  # a source still failing is the last one to forget
            return None
        if self._in_window >= self.per_window:
            suppressed = (last[1] + 1) if last is not None else 1
            self._last[key] = (last[0] if last is not None else now, suppressed)
            self._trim()
            return None
        self._in_window += 1
        suppressed = last[1] if last is not None else 0
        self._last[key] = (now, 0)
        self._last.move_to_end(key)
        self._trim()
        return suppressed

    def _trim(self) -> None:
        while len(self._last) > self.max_keys:
            self._last.popitem(last=False)

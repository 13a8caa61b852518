"""Append-only local spool for batches the store could not take, replayed when it recovers.

Records are pickled TraceEvent dataclasses: the spool is a private file of this process (mode 0600),
never read from anywhere else, so pickle's trust model holds and every field round-trips exactly.
"""

from __future__ import annotations

import errno
import os
import pickle
import struct
from collections.abc import Sequence
from pathlib import Path

from agentledger.core.model import TraceEvent

_LEN = struct.Struct(">I")


class Spool:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # A crash mid-append leaves a torn record at the end; cut it off now, or every batch appended after
        # it would sit behind an unreadable length prefix and be lost.
        if self.path.exists():
            raw = self.path.read_bytes()
            end = 0
            while end + _LEN.size <= len(raw) and end + _LEN.size + _LEN.unpack_from(raw, end)[0] <= len(raw):
                end += _LEN.size + _LEN.unpack_from(raw, end)[0]
            if end < len(raw):
                os.truncate(self.path, end)
        # This process is the spool's only writer, so whether it holds anything is known without a stat()
        # (pending() is asked on the event loop for every batch).
        self._pending = self.path.exists() and self.path.stat().st_size > 0

    def append(self, events: Sequence[TraceEvent]) -> None:
        data = pickle.dumps(list(events), protocol=pickle.HIGHEST_PROTOCOL)
        record = _LEN.pack(len(data)) + data
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            start = os.fstat(fd).st_size
            try:
                if os.write(fd, record) != len(record):
                    raise OSError(errno.ENOSPC, "short write to the spool")
                os.fsync(fd)
                if start == 0:
                    fsync_dir(self.path.parent)  # a new file's directory entry must be durable too
                self._pending = True
            except OSError:
                os.ftruncate(fd, start)  # the batch is not spooled; leave no torn record for later appends
                raise
        finally:
            os.close(fd)

    def pending(self) -> bool:
        return self._pending

    def read(self) -> list[list[TraceEvent]]:
        """All complete batches; a torn tail (crash mid-append) is ignored, it was never acknowledged."""
        if not self.path.exists():
            return []
        raw = self.path.read_bytes()
        batches: list[list[TraceEvent]] = []
        pos = 0
        while pos + _LEN.size <= len(raw):
            (n,) = _LEN.unpack_from(raw, pos)
            if pos + _LEN.size + n > len(raw):
                break
            batches.append(pickle.loads(raw[pos + _LEN.size : pos + _LEN.size + n]))
            pos += _LEN.size + n
        return batches

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)
        self._pending = False


def fsync_dir(path: Path) -> None:
    """A directory's entries made durable (a file created in it, or removed)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

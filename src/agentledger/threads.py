"""The gateway's worker threads, named for the operating system too.

A pool's threads carry Python names (`store-writer_0`, `trace-journal_0`); the OS knows them all as `python`
unless told. Named, `top -H`, `ps -L`, `perf` and `py-spy` tell them apart, and so does the benchmark's CPU by
thread (docs/benchmark.md), which is how a governed call's cost was found to be mostly the store writer's.
"""

from __future__ import annotations

import contextlib
import threading

from setproctitle import setthreadtitle


def name_os_thread() -> None:
    """A pool's initializer: the OS thread takes the Python thread's name (Linux keeps its first 15 bytes)."""
    with contextlib.suppress(Exception):  # a platform without thread names: nothing to do
        setthreadtitle(threading.current_thread().name)

"""Ids: 96 random bits each from the OS's CSPRNG, drawn a page at a time (core/ids.py), never handed out twice:
not across threads taking them at once, not across a fork (the child starts with no bytes of its parent's)."""

from __future__ import annotations

import os
import re
import threading

from agentledger.core import ids
from agentledger.core.ids import new_id, ordered_id


def test_formats_and_time_order() -> None:
    assert re.fullmatch(r"req_[0-9a-f]{24}", new_id("req"))
    first, later = ordered_id("rsv"), None
    assert re.fullmatch(r"rsv_[0-9a-f]{36}", first)
    ids._pool.clear()
    while later is None or later[4:16] == first[4:16]:  # the next millisecond's
        later = ordered_id("rsv")
    assert later > first


def test_threads_taking_ids_at_once_never_share_one() -> None:
    ids._pool.clear()  # every thread starts on an empty pool: they refill it together
    taken: list[list[str]] = [[] for _ in range(8)]
    start = threading.Barrier(8)

    def take(out: list[str]) -> None:
        start.wait()
        out.extend(new_id("x") for _ in range(3000))  # ~9 pools' worth each

    threads = [threading.Thread(target=take, args=(out,)) for out in taken]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [i for out in taken for i in out]
    assert len(every) == 24_000 == len(set(every))


def test_a_forked_child_never_repeats_its_parent() -> None:
    new_id("x")  # the pool holds bytes the child would copy
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        os.write(write, " ".join(new_id("x") for _ in range(400)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        child = set(f.read().split())
    os.waitpid(pid, 0)
    parent = {new_id("x") for _ in range(400)}
    assert len(child) == 400 and not child & parent

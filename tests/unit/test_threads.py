"""The gateway's worker threads are named for the OS (`top -H`, py-spy, the benchmark's CPU by thread)."""

from __future__ import annotations

import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from agentledger.threads import name_os_thread

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def os_name(tid: int) -> str:
    return Path(f"/proc/self/task/{tid}/comm").read_text().strip()


def test_a_pool_thread_takes_its_python_name_for_the_os() -> None:
    with ThreadPoolExecutor(1, thread_name_prefix="store-writer", initializer=name_os_thread) as pool:
        assert os_name(pool.submit(threading.get_native_id).result()) == "store-writer_0"
    with ThreadPoolExecutor(1, thread_name_prefix="store-writer") as pool:  # without it: the process's name
        assert os_name(pool.submit(threading.get_native_id).result()) != "store-writer_0"


def test_a_long_name_keeps_the_first_15_bytes() -> None:
    with ThreadPoolExecutor(1, thread_name_prefix="trace-journal-long", initializer=name_os_thread) as pool:
        assert os_name(pool.submit(threading.get_native_id).result()) == "trace-journal-l"

"""Ids: `new_id` random, `ordered_id` random and in time order (core/ids.py)."""

from __future__ import annotations

import re
import time

from agentledger.core.ids import new_id, ordered_id


def test_new_ids_are_prefixed_random_hex() -> None:
    ids = {new_id("req") for _ in range(1000)}
    assert len(ids) == 1000 and all(re.fullmatch(r"req_[0-9a-f]{24}", i) for i in ids)


def test_ordered_ids_sort_by_the_millisecond_they_were_made_and_stay_unguessable() -> None:
    made: list[str] = []
    for _ in range(5):
        made += [ordered_id("rsv") for _ in range(200)]
        time.sleep(0.002)
    assert all(re.fullmatch(r"rsv_[0-9a-f]{12}[0-9a-f]{24}", i) for i in made) and len(set(made)) == len(made)
    stamps = [int(i[4:16], 16) for i in made]
    assert stamps == sorted(stamps) and abs(stamps[-1] - time.time_ns() // 1_000_000) < 1000
    # Sorted, they come in the order they were made, up to the order within one millisecond (random).
    assert [i[:16] for i in sorted(made)] == [i[:16] for i in made]
    assert len({i[16:] for i in made}) == len(made)

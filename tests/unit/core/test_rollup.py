from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson
import pytest

from agentledger.core.rollup import MAX_TREE_DEPTH, duration_ms, step_tree, totals


def s(step_id: str, parent_id: str | None = None, **kw: Any) -> dict[str, Any]:
    return {"id": step_id, "parent_id": parent_id, "seq": 1, "cost_nanos": 0, **kw}


def shape(nodes: list[dict[str, Any]]) -> list[Any]:
    return [(n["id"], shape(n["children"])) if n["children"] else n["id"] for n in nodes]


def test_steps_nest_under_their_parents_in_the_order_given() -> None:
    tree = step_tree([s("a"), s("b", "a"), s("c"), s("d", "b"), s("e", "a"), s("f", "c")])
    assert shape(tree) == [("a", [("b", ["d"]), "e"]), ("c", ["f"])]


def test_a_child_listed_before_its_parent_still_nests() -> None:
    assert shape(step_tree([s("child", "parent"), s("parent")])) == [("parent", ["child"])]


def test_orphans_stay_at_the_top_level() -> None:
    tree = step_tree([s("a"), s("orphan", "missing"), s("b", "orphan")])
    assert shape(tree) == ["a", ("orphan", ["b"])]


def test_a_step_that_is_its_own_parent_is_a_root() -> None:
    assert shape(step_tree([s("a", "a"), s("b", "a")])) == [("a", ["b"])]


def test_a_parent_cycle_keeps_every_step_and_stays_renderable() -> None:
    tree = step_tree([s("a", "c"), s("b", "a"), s("c", "b"), s("d")])
    assert sorted(n["id"] for n in _walk(tree)) == ["a", "b", "c", "d"]
    assert len(tree) == 2
    orjson.dumps(tree)  # no reference cycle


def _walk(nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for n in nodes:
        out += [n, *_walk(n["children"])]
    return out


def test_nodes_carry_cost_usd_and_drop_the_storage_sequence() -> None:
    (node,) = step_tree([s("a", cost_nanos=435_000, name="search")])
    assert node["cost_usd"] == "0.000435000" and node["name"] == "search"
    assert "seq" not in node
    (node,) = step_tree([{"id": "a", "parent_id": None, "cost_nanos": None}])
    assert node["cost_usd"] == "0.000000000"


def test_step_tree_does_not_modify_its_input() -> None:
    rows = [s("a"), s("b", "a")]
    step_tree(rows)
    assert rows == [s("a"), s("b", "a")]


def test_empty() -> None:
    assert step_tree([]) == []


def test_totals_render_exact_integers_and_money() -> None:
    row = {
        "cost_nanos": Decimal(2**62 + 1),  # PostgreSQL sums BIGINT as NUMERIC
        "input_tokens": 100,
        "cached_input_tokens": 20,
        "cache_write_tokens": None,
        "output_tokens": 50,
        "reasoning_tokens": 10,
        "steps": Decimal(3),
        "errors": 1,
        "model_latency_ms": 12.34567,
        "unrelated": "ignored",
    }
    out = totals(row)
    assert out == {
        "cost_nanos": 2**62 + 1,
        "cost_usd": "4611686018.427387905",
        "input_tokens": 100,
        "cached_input_tokens": 20,
        "cache_write_tokens": 0,
        "output_tokens": 50,
        "reasoning_tokens": 10,
        "total_tokens": 150,
        "steps": 3,
        "errors": 1,
        "model_latency_ms": 12.346,
    }
    assert all(type(v) is int for k, v in out.items() if k not in ("cost_usd", "model_latency_ms"))


def test_totals_of_nothing() -> None:
    assert totals({}) == {
        "cost_nanos": 0,
        "cost_usd": "0.000000000",
        "input_tokens": 0,
        "cached_input_tokens": 0,
        "cache_write_tokens": 0,
        "output_tokens": 0,
        "reasoning_tokens": 0,
        "total_tokens": 0,
    }


def test_duration_ms() -> None:
    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    assert duration_ms(t0, t0 + timedelta(seconds=1, microseconds=2500)) == 1002.5
    assert duration_ms(t0, None) is None
    assert duration_ms(None, t0) is None


def _depth(nodes: list[dict[str, Any]]) -> int:
    return max((1 + _depth(n["children"]) for n in nodes), default=0)


def test_a_chain_deeper_than_the_limit_is_capped_under_the_ancestor_at_the_last_but_one_level() -> None:
    rows = [s("0"), *(s(str(i), str(i - 1)) for i in range(1, 8))]
    tree = step_tree(rows, max_depth=3)
    assert shape(tree) == [("0", [("1", ["2", "3", "4", "5", "6", "7"])])]
    assert [n["parent_id"] for n in tree[0]["children"][0]["children"]] == ["1", "2", "3", "4", "5", "6"]


def test_capped_steps_keep_the_order_given_among_their_hosts_children() -> None:
    # a → b → c → d, and e under b: at max_depth 2, everything under b lands under a, in the order given.
    rows = [s("a"), s("b", "a"), s("d", "c"), s("c", "b"), s("e", "b")]
    assert shape(step_tree(rows, max_depth=2)) == [("a", ["b", "d", "c", "e"])]
    assert shape(step_tree(rows, max_depth=3)) == [("a", [("b", ["d", "c", "e"])])]
    assert shape(step_tree(rows)) == [("a", [("b", [("c", ["d"]), "e"])])]


def test_a_very_long_chain_renders_at_the_default_limit_in_linear_time() -> None:
    n = 20_000  # quadratic work would take minutes here
    rows = [s("0"), *(s(str(i), str(i - 1)) for i in range(1, n))]
    for given in (rows, rows[::-1]):
        tree = step_tree(given)
        assert _depth(tree) == MAX_TREE_DEPTH
        assert len(_walk(tree)) == n
        orjson.dumps(tree)


def test_a_cycle_is_cut_before_the_depth_limit_applies() -> None:
    tree = step_tree([s("a", "c"), s("b", "a"), s("c", "b")], max_depth=2)
    assert shape(tree) == [("c", ["a", "b"])]


def test_max_depth_below_two_is_refused() -> None:
    with pytest.raises(ValueError):
        step_tree([], max_depth=1)

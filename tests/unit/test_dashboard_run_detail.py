"""The run detail page's preparation of the step tree: placed on the time axis, flattened in tree order for the
detail panels (one loop, not one include per step: benchmarks/dashboard.py), JSON pre-rendered."""

from __future__ import annotations

from agentledger.dashboard.pages.run_detail import waterfall


def _step(sid: str, start: str, end: str | None, children: list[dict] | None = None, **more: object) -> dict:
    return {"id": sid, "started_at": start, "ended_at": end, "children": children or [], **more}


def test_waterfall_places_steps_and_flattens_the_tree_in_order() -> None:
    t = "2026-11-26T10:00:0{}+00:00"
    tree = [
        _step(
            "a", t.format(0), t.format(4), [_step("a1", t.format(1), t.format(2), [_step("a1x", t.format(1), None)])]
        ),
        _step("b", t.format(2), t.format(4), attributes={"z": 1, "a": "<b>"}, input={"q": "x"}),
    ]
    steps, span_ms, flat = waterfall(tree)
    assert steps is tree and span_ms == 4000.0
    assert [s["id"] for s in flat] == ["a", "a1", "a1x", "b"]
    assert (flat[1]["left"], flat[1]["width"]) == (25.0, 25.0)
    assert flat[3]["attributes_json"] == '{\n  "a": "<b>",\n  "z": 1\n}'  # keys sorted; the template escapes it
    assert flat[3]["input_json"] == '{\n  "q": "x"\n}' and flat[3]["output_json"] is None
    assert flat[0]["attributes_json"] is None


def test_waterfall_of_no_steps() -> None:
    assert waterfall([]) == ([], 0.0, [])

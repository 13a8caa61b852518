"""ingest.step_parse: the fast paths accept and refuse exactly what the full rules do, with the same messages.

The pinned errors below were produced by the step parser before it had fast paths; a change to any of them is
a change to the API, not a refactoring.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from agentledger.core.errors import AgentLedgerError, InvalidRequest
from agentledger.core.fields import id_field, text_field
from agentledger.core.headers import has_control
from agentledger.core.model import Attribution, StepKind, StepStatus
from agentledger.core.pricing import CostSource, Price
from agentledger.gateway.bodies import storable_json
from agentledger.ingest.runs import KnownRuns, RunIdentity
from agentledger.ingest.step_parse import _PRINTABLE, BatchParser, ident, label, storable

NOW = datetime(2025, 1, 1, tzinfo=UTC)
ATTRIBUTION = Attribution(workspace_id="ws", department_id="dep", virtual_key_id="vk", run_id="r", session_id="s")
KINDS = "model_call, model_attempt, tool_call, api_call, workflow_step, payment, policy_check, audit"
STAMP = "must be an ISO 8601 timestamp from 1970-01-01T00:00:00Z to 9999-12-31T23:59:59Z."
ID_HELP = "must start with a letter or digit and hold only letters, digits, '.', '_', ':', '-'."
COST = "'cost_usd' must be a decimal from 0 to 1000000 dollars, such as \"0.0125\"."


def text(field: str, limit: int = 256) -> str:
    return f"'{field}' must be a non-empty string of at most {limit} characters."


def nested(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = [value]
    return value


BAD: list[tuple[Any, str, str]] = [
    ("not an object", "steps[3] must be a JSON object.", "steps[3]"),
    (None, "steps[3] must be a JSON object.", "steps[3]"),
    ([1], "steps[3] must be a JSON object.", "steps[3]"),
    *[
        ({"name": "x", "kind": k}, f"steps[3].kind must be one of {KINDS}.", "steps[3].kind")
        for k in ("telepathy", None, ["tool_call"], 3)
    ],
    *[
        ({"name": "x", "status": s}, "steps[3].status must be 'ok' or 'error'.", "steps[3].status")
        for s in ("maybe", None, ["ok"], True)
    ],
    *[
        ({"name": "x", "started_at": v}, f"'started_at' {STAMP}", "steps[3].started_at")
        for v in ("yesterday", 12345, "0001-01-01T00:00:00+01:00")
    ],
    ({"name": "x", "ended_at": "not a time"}, f"'ended_at' {STAMP}", "steps[3].ended_at"),
    (
        {"name": "x", "started_at": "2025-01-02T00:00:00Z", "ended_at": "2025-01-01T00:00:00Z"},
        "steps[3].ended_at is before started_at.",
        "steps[3].ended_at",
    ),
    *[
        (
            {"name": "x", "latency_ms": v},
            "steps[3].latency_ms must be a number from 0 to 31536000000.",
            "steps[3].latency_ms",
        )
        for v in (-1, True, "5", 31_536_000_001)
    ],
    *[
        ({"name": "x", "attempt": v}, "steps[3].attempt must be an integer from 1 to 1000.", "steps[3].attempt")
        for v in (0, True, 1.0, 1001, None)
    ],
    *[({"name": "x", "model": v}, text("model"), "steps[3].model") for v in ("", 5, "m" * 257)],
    ({"name": "x", "model": "gpt\x00"}, "'model' contains control characters.", "steps[3].model"),
    ({"name": "x", "provider": "p" * 65}, text("provider", 64), "steps[3].provider"),
    ({"name": "x", "provider": "open\x85ai"}, "'provider' contains control characters.", "steps[3].provider"),
    ({"name": "x", "usage": [1, 2]}, "'usage' must be an object.", "steps[3].usage"),
    *[
        ({"name": "x", "usage": {f: v}}, f"'usage.{f}' must be an integer from 0 to 1000000000.", f"steps[3].usage.{f}")
        for f, v in (
            ("input_tokens", -5),
            ("output_tokens", 1.5),
            ("cached_input_tokens", "3"),
            ("reasoning_tokens", True),
            ("cache_write_tokens", 1_000_000_001),
            ("input_tokens", None),
        )
    ],
    *[
        ({"name": "x", "cost_usd": v}, COST, "steps[3].cost_usd")
        for v in ("a lot", "-0.5", True, "1000001", [1], "NaN")
    ],
    (
        {"name": "x", "session_path": "//"},
        "Header 'session_path' must be a path such as '/plan/search'.",
        "steps[3].session_path",
    ),
    *[
        ({"name": "x", "session_path": v}, text("session_path", 1024), "steps[3].session_path")
        for v in ("", 7, "a" * 1025)
    ],
    ({"name": "x", "session_path": "/a\x01b"}, "'session_path' contains control characters.", "steps[3].session_path"),
    ({"name": "x", "id": "bad id!"}, f"'id' {ID_HELP}", "steps[3].id"),
    *[({"name": "x", "id": v}, text("id", 128), "steps[3].id") for v in ("", 5, "a" * 129)],
    *[({"name": "x", "id": v}, "'id' contains control characters.", "steps[3].id") for v in ("abc\n", "ab\x00c")],
    ({"kind": "tool_call"}, "'name' is required.", "steps[3].name"),
    ({"name": None}, "'name' is required.", "steps[3].name"),
    *[({"name": v}, text("name"), "steps[3].name") for v in ("", 3, "a" * 257)],
    *[({"name": v}, "'name' contains control characters.", "steps[3].name") for v in ("t\x7fn", "t\x9bn", "t\tn")],
    ({"name": "x", "parent_id": "no good"}, f"'parent_id' {ID_HELP}", "steps[3].parent_id"),
    ({"name": "x", "parent_id": 1}, text("parent_id", 128), "steps[3].parent_id"),
    ({"name": "x", "branch": ""}, text("branch"), "steps[3].branch"),
    ({"name": "x", "branch": "b\x1b"}, "'branch' contains control characters.", "steps[3].branch"),
    *[({"name": "x", "error": v}, text("error", 10_000), "steps[3].error") for v in ("e" * 10_001, 5)],
    *[
        ({"name": "x", "attributes": v}, "'attributes' must be an object.", "steps[3].attributes")
        for v in ("nope", [1])
    ],
    ({"name": "x", "input": nested(33)}, "'input' is nested more than 32 levels deep.", "steps[3].input"),
    ({"name": "x", "input": nested(300)}, "'input' is nested more than 32 levels deep.", "steps[3].input"),
    (
        {"name": "x", "output": {"a": "x" * (1 << 20)}},
        "'output' is larger than 1048576 bytes as JSON.",
        "steps[3].output",
    ),
    ({"name": "x", "input": "y" * (1 << 20)}, "'input' is larger than 1048576 bytes as JSON.", "steps[3].input"),
    (
        {"name": "x", "attributes": {"deep": nested(32)}},
        "'attributes' is nested more than 32 levels deep.",
        "steps[3].attributes",
    ),
    # Several bad fields: the one checked first is named, as it always was.
    (
        {"name": "x", "kind": "bogus", "status": "bogus", "started_at": "bad"},
        f"steps[3].kind must be one of {KINDS}.",
        "steps[3].kind",
    ),
    ({"name": "", "id": "bad id", "attributes": 1}, f"'id' {ID_HELP}", "steps[3].id"),
    ({"name": "x", "model": "", "usage": 1, "cost_usd": "x"}, text("model"), "steps[3].model"),
]


@pytest.mark.parametrize(("step", "message", "param"), BAD, ids=[f"{i}-{p}" for i, (_, _, p) in enumerate(BAD)])
def test_each_bad_field_is_the_same_400_as_before(step: Any, message: str, param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        BatchParser("r", ATTRIBUTION, {}, NOW).step(step, 3)
    assert (type(caught.value), caught.value.message, caught.value.param) == (InvalidRequest, message, param)


def test_printable_is_exactly_what_has_control_refuses() -> None:
    controls = [chr(c) for c in range(0x110000) if c < 0x20 or 0x7F <= c <= 0x9F]
    assert len(controls) == 65
    for c in controls:
        assert has_control(c) and not _PRINTABLE.fullmatch(f"a{c}b")
    rest = "".join(chr(c) for c in range(0x110000) if not (c < 0x20 or 0x7F <= c <= 0x9F))
    assert not has_control(rest) and _PRINTABLE.fullmatch(rest)
    assert not _PRINTABLE.fullmatch("")


VALUES: list[Any] = [
    "x",
    "web search",
    "ünïcode ✓",
    " padded ",
    "a" * 256,
    "a" * 257,
    "",
    "a\nb",
    "tab\t",
    "\x85",
    "\u2028",
    5,
    None,
    True,
    ["x"],
    "run-1",
    "run:1.a_b-c",
    "-lead",
    "a" * 128,
    "a" * 129,
    "abc\n",
]


def outcome(fn: Any, *args: Any, **kw: Any) -> Any:
    try:
        return ("ok", fn(*args, **kw))
    except AgentLedgerError as exc:
        return ("error", type(exc), exc.message, exc.param)


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_label_and_ident_answer_as_the_full_rules(value: Any) -> None:
    for limit in (64, 256, 10_000):
        assert outcome(label, value, "f", limit) == outcome(text_field, value, "f", limit=limit)
    assert outcome(ident, value, "f") == outcome(id_field, value, "f")


@pytest.mark.parametrize(
    "value",
    [
        None,
        1,
        1.5,
        True,
        "s",
        {},
        [],
        {"a": "[[[[{{{{" * 40},  # many brackets, shallow: the slow path, which accepts it
        nested(32),
        nested(33),
        {"k": nested(31)},
        {"k": nested(32)},
        "x" * ((1 << 20) - 2),  # serialized: exactly the limit
        "x" * ((1 << 20) - 1),
        "\x00" * 200_000,  # 6 bytes a character as JSON
        ["é" * 600_000],
    ],
    ids=lambda v: repr(v)[:40],
)
def test_storable_answers_as_storable_json(value: Any) -> None:
    assert outcome(storable, value, "input") == outcome(storable_json, value, "input")


def test_a_batch_shares_what_its_steps_share() -> None:
    prices = {"priced": [Price(Decimal(1), Decimal(2))]}
    parser = BatchParser("r", ATTRIBUTION, prices, NOW)
    a, b, c, d = parser.parse(
        [
            {"name": "a", "session_path": "/plan"},
            {"name": "b", "session_path": "plan/"},
            {
                "name": "c",
                "session_path": "/plan",
                "kind": "model_call",
                "model": "priced",
                "usage": {"input_tokens": 10},
            },
            {"name": "d", "cost_usd": "0.5", "status": "error", "attempt": 2},
        ]
    )
    assert a.attribution is c.attribution and a.attribution.session_path == b.attribution.session_path == "/plan"
    assert d.attribution is ATTRIBUTION
    assert a.started_at == d.started_at == NOW and a.step_id != b.step_id
    assert (c.kind, c.cost_nanos, c.cost_source) == (StepKind.MODEL_CALL, 10_000, CostSource.COMPUTED)
    assert (d.status, d.attempt, d.cost_nanos, d.cost_source) == (StepStatus.ERROR, 2, 500_000_000, CostSource.REPORTED)


RUN = RunIdentity("dep", "planner", None, None)


async def test_known_runs_let_one_creator_through_at_a_time() -> None:
    runs = KnownRuns()
    order: list[str] = []

    async def creator(name: str, succeed: bool) -> None:
        async with runs.claim("ws", "r") as known:
            order.append(f"{name}:{'known' if known else 'claims'}")
            if known is None:
                await asyncio.sleep(0.01)
                if not succeed:
                    raise RuntimeError("the batch was refused")
                runs.remember("ws", "r", RUN)

    results = await asyncio.gather(creator("a", False), creator("b", True), creator("c", True), return_exceptions=True)
    assert [type(r).__name__ for r in results] == ["RuntimeError", "NoneType", "NoneType"]
    # a failed, so b claimed in its turn and created; c then found the run known.
    assert order == ["a:claims", "b:claims", "c:known"]
    assert runs.get("ws", "r") == RUN and runs.get("other", "r") is None


def test_known_runs_forget_the_least_recently_used() -> None:
    runs = KnownRuns(capacity=2)
    runs.remember("ws", "r1", RUN)
    runs.remember("ws", "r2", RUN)
    assert runs.get("ws", "r1") == RUN  # r1 is now the most recently used
    runs.remember("ws", "r3", RUN)
    assert [runs.get("ws", r) for r in ("r1", "r2", "r3")] == [RUN, None, RUN]

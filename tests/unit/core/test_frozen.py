"""`core.frozen.frozen`: records the type checker keeps immutable, equal and hashed by their fields as a frozen
dataclass is."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
from mypy import api as mypy_api

from agentledger.core.budgets import Subject
from agentledger.core.frozen import frozen
from agentledger.core.pricing import Cost, CostSource

SRC = Path(__file__).resolve().parents[3] / "src"


@frozen
class Point:
    x: int
    y: int = 0


def test_a_record_is_equal_and_hashed_by_its_fields() -> None:
    assert Point(1, 2) == Point(1, 2) != Point(2, 1)
    assert hash(Point(1, 2)) == hash(Point(1, 2))
    assert {Point(1, 2): "a"}[Point(1, 2)] == "a"
    assert Point(1) == Point(1, 0) and repr(Point(1)) == "Point(x=1, y=0)"


def test_a_record_has_no_instance_dict() -> None:
    assert not hasattr(Point(1), "__dict__")


def test_records_of_the_gateway_survive_a_pickle_round_trip() -> None:
    cost = Cost(1234, CostSource.REPORTED)
    subject = Subject("ws", "dep", "ag", "vk", run_id="run", properties={"customer": "acme"})
    assert pickle.loads(pickle.dumps(cost)) == cost
    assert pickle.loads(pickle.dumps(subject)) == subject


def test_the_type_checker_refuses_to_change_a_field(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # What keeps a record unchanged is mypy --strict in CI: this fails if `frozen` stopped telling it so.
    monkeypatch.setenv("MYPYPATH", str(SRC))
    snippet = tmp_path / "change.py"
    snippet.write_text(
        "from agentledger.core.model import Attribution\na = Attribution(workspace_id='w')\na.workspace_id = 'x'\n"
    )
    out, _, status = mypy_api.run(
        ["--strict", "--no-incremental", "--follow-imports=silent", "--python-version=3.11", str(snippet)]
        + ["--config-file=/dev/null"]
    )
    assert status == 1, out
    assert 'Property "workspace_id" defined in "Attribution" is read-only' in out

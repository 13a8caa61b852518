"""What fuzzing over PostgreSQL found (AGENTLEDGER_FUZZ_DB=postgres): inputs SQLite takes in its stride but
PostgreSQL refuses, NUL in a text value and strings longer than their VARCHAR column. Each must be a 4xx.

Each is a plain test of the fixed behaviour; a new finding goes in as a strict xfail naming the bug, so its fix
makes it fail until the mark is removed.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from agentledger.testing import ServerThread
from tests.harness import Harness, running_gateway

pytestmark = [pytest.mark.fuzz, pytest.mark.pg]


@pytest.fixture(scope="module")
def pg_live(tmp_path_factory: pytest.TempPathFactory, upstream: ServerThread, pg_url: str) -> Iterator[Harness]:
    with running_gateway(pg_url, tmp_path_factory.mktemp("pgfind"), upstream) as harness:
        yield harness


def error(resp: Any, status: int, param: str | None) -> None:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "code", "param"}
    assert body["error"]["param"] == param


@pytest.mark.parametrize("path", ["/api/virtual-keys/a%00b", "/api/provider-keys/a%00b"])
def test_revoking_a_key_id_with_nul_is_404(pg_live: Harness, path: str) -> None:
    error(pg_live.api("DELETE", path), 404, "key_id")


@pytest.mark.parametrize(
    ("method", "path", "kw", "status", "param"),
    [
        pytest.param("GET", "/api/runs/a%00b", {}, 404, "run_id", id="run"),
        pytest.param("GET", "/api/sessions/a%00b", {}, 404, "session_id", id="session"),
        pytest.param("GET", "/api/requests/a%00b", {}, 404, "request_id", id="request"),
        *(
            pytest.param("GET", "/api/runs", {"params": {name: "a\x00b"}}, 400, name, id=f"filter-{name}")
            for name in ("agent", "session", "workflow", "status")
        ),
        pytest.param(
            "GET", "/api/analytics/costs", {"params": {"group_by": "property.a\x00"}}, 400, "group_by", id="group-by"
        ),
        pytest.param(
            "POST",
            "/api/virtual-keys",
            {"json": {"name": "k", "agent_id": "planner", "department_id": "d" * 200}},
            400,
            "department_id",
            id="long-department",
        ),
        pytest.param(
            "POST", "/api/agents", {"json": {"department_id": "d" * 129}}, 400, "department_id", id="agent-dep"
        ),
        pytest.param("POST", "/api/departments", {"json": {"name": "a\x00b"}}, 400, "name", id="department-name"),
        # The step API creates the run its path names, so a malformed run id is a 400 there, as for steps.
        pytest.param("POST", "/v1/runs/a%00b/end", {"json": {}}, 400, "run_id", id="end-run"),
        pytest.param("POST", "/v1/runs/a%00b/steps", {"json": {"name": "s"}}, 400, "run_id", id="steps"),
    ],
)
def test_input_postgres_refuses_is_4xx(
    pg_live: Harness, method: str, path: str, kw: dict[str, Any], status: int, param: str
) -> None:
    call = pg_live.v1 if path.startswith("/v1/") else pg_live.api
    error(call(method, path, **kw), status, param)

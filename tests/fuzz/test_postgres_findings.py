"""What fuzzing over PostgreSQL found (AGENTLEDGER_FUZZ_DB=postgres): inputs SQLite takes in its stride but
PostgreSQL refuses, NUL in a text value and strings longer than their VARCHAR column. Each must be a 4xx.

Fixed ones are plain tests; the others are strict xfails naming the bug, so a fix makes them fail until the
mark is removed.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from agentledger.testing import ServerThread
from tests.harness import Harness, running_gateway

pytestmark = [pytest.mark.fuzz, pytest.mark.pg]

NUL_IN_QUERY = "api/query.py and ingest/steps.py pass ids and filters with NUL to PostgreSQL, which refuses them (500)"


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


def xfail(reason: str) -> pytest.MarkDecorator:
    return pytest.mark.xfail(strict=True, reason=reason)


@pytest.mark.parametrize(
    ("method", "path", "kw", "status", "param"),
    [
        pytest.param("GET", "/api/runs/a%00b", {}, 404, "run_id", marks=xfail(NUL_IN_QUERY), id="run"),
        pytest.param("GET", "/api/sessions/a%00b", {}, 404, "session_id", marks=xfail(NUL_IN_QUERY), id="session"),
        pytest.param("GET", "/api/requests/a%00b", {}, 404, "request_id", marks=xfail(NUL_IN_QUERY), id="request"),
        pytest.param(
            "GET", "/api/runs", {"params": {"agent": "a\x00b"}}, 400, "agent", marks=xfail(NUL_IN_QUERY), id="filter"
        ),
        pytest.param(
            "GET",
            "/api/analytics/costs",
            {"params": {"group_by": "property.a\x00"}},
            400,
            "group_by",
            marks=xfail(NUL_IN_QUERY),
            id="group-by",
        ),
        pytest.param(
            "POST",
            "/api/virtual-keys",
            {"json": {"name": "k", "agent_id": "planner", "department_id": "d" * 200}},
            400,
            "department_id",
            marks=xfail(
                "governance.create_virtual_key: a department_id of 129-256 characters with an agent_id "
                "reaches the VARCHAR(128) column (PostgreSQL: 500; SQLite stores it)"
            ),
            id="long-department",
        ),
    ],
)
def test_admin_input_postgres_refuses_is_4xx(
    pg_live: Harness, method: str, path: str, kw: dict[str, Any], status: int, param: str
) -> None:
    error(pg_live.api(method, path, **kw), status, param)


@xfail(NUL_IN_QUERY)
def test_ending_a_run_id_with_nul_is_404(pg_live: Harness) -> None:
    error(pg_live.v1("POST", "/v1/runs/a%00b/end", json={}), 404, "run_id")

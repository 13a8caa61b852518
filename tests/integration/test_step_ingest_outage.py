"""The step API during a PostgreSQL outage: a batch for a run this gateway already knows needs no database read,
so it is spooled (durable) and answered 201, and lands once the database is back; whatever must be looked up
(a run not seen yet, a parent from an earlier batch) answers 503 store_unavailable, as before."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentledger.testing import ServerThread
from tests.harness import Harness, fresh_pg_database, running_gateway
from tests.tcp_proxy import TCPProxy

pytestmark = pytest.mark.pg


@pytest.fixture
def proxied(tmp_path: Path, upstream: ServerThread) -> Iterator[tuple[Harness, TCPProxy]]:
    with fresh_pg_database() as url, TCPProxy("127.0.0.1", 5432) as proxy:
        with running_gateway(url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}"), tmp_path, upstream) as gw:
            yield gw, proxy


def test_batches_for_a_known_run_are_spooled_through_an_outage(proxied: tuple[Harness, TCPProxy]) -> None:
    gw, proxy = proxied
    first = {"run": {"workflow": "w"}, "steps": [{"id": "before", "name": "a", "cost_usd": "0.01"}]}
    assert gw.v1("POST", "/v1/runs/run-known/steps", json=first).status_code == 201

    proxy.cut()
    during = [
        {"id": "during", "name": "b", "cost_usd": "0.02"},
        {"id": "during-child", "parent_id": "during", "name": "c"},
    ]
    resp = gw.v1("POST", "/v1/runs/run-known/steps", json=during)
    assert (resp.status_code, resp.json()) == (201, {"run_id": "run-known", "step_ids": ["during", "during-child"]})
    resp = gw.v1("POST", "/v1/runs", json={"run_id": "run-known"})
    assert (resp.status_code, resp.json()) == (200, {"run_id": "run-known", "created": False})
    for path, body in (
        ("/v1/runs/run-new/steps", {"name": "x"}),  # a run this gateway has not seen: it must be looked up
        ("/v1/runs/run-known/steps", {"name": "x", "parent_id": "before"}),  # so must a parent of an earlier batch
        ("/v1/runs", {"run_id": "run-new"}),
    ):
        resp = gw.v1("POST", path, json=body)
        assert (resp.status_code, resp.json()["error"]["code"], resp.headers["retry-after"]) == (
            503,
            "store_unavailable",
            "2",
        ), path
    proxy.restore()

    deadline = time.monotonic() + 20
    while True:  # the spool is replayed once the pipeline's backoff has passed
        run = gw.api("GET", "/api/runs/run-known")
        if run.status_code == 200 and run.json()["totals"]["steps"] == 3:
            break
        assert time.monotonic() < deadline, run.text
        time.sleep(0.1)
    assert [s["id"] for s in run.json()["steps"]] == ["before", "during"]
    assert run.json()["totals"]["cost_nanos"] == 30_000_000
    assert gw.api("GET", "/api/runs/run-new").status_code == 404

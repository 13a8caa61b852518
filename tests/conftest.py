from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentledger.testing import ServerThread, fake_upstream_app
from tests.harness import Harness, fresh_pg_database, running_gateway

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.pg)]


@pytest.fixture(scope="session")
def upstream() -> Iterator[ServerThread]:
    with ServerThread(fake_upstream_app()) as server:
        yield server


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    if os.environ.get("AGENTLEDGER_TEST_PG_URL"):
        yield os.environ["AGENTLEDGER_TEST_PG_URL"]
        return
    with fresh_pg_database() as url:
        yield url


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('db') / 'agentledger.db'}"


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest) -> str:
    name = "sqlite_url" if request.param == "sqlite" else "pg_url"
    return str(request.getfixturevalue(name))


@pytest.fixture
def gw(db_url: str, tmp_path: Path, upstream: ServerThread) -> Iterator[Harness]:
    """A real gateway server over a real store (SQLite and PostgreSQL), with a fake upstream behind it."""
    fake = upstream.config.app.state.fake
    fake.received.clear()
    fake.script.clear()
    fake.retry_after = None
    with running_gateway(db_url, tmp_path, upstream) as harness:
        yield harness

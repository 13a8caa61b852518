"""Test harness: a real gateway server on 127.0.0.1 over a real store, with a fake upstream behind it."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import psycopg

from agentledger.app import build_components, create_app
from agentledger.config import Settings
from agentledger.store.retention import Batch
from agentledger.store.sql import SQLStore
from agentledger.testing import FakeUpstream, ServerThread

PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"
# One shared client: building an httpx client costs ~40 ms (its TLS context), a lot per test call.
HTTP = httpx.Client(timeout=30, trust_env=False)


@contextmanager
def fresh_pg_database() -> Iterator[str]:
    """A new, empty PostgreSQL database for this test session, dropped afterwards."""
    name = f"agentledger_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass
class Harness:
    url: str
    workspace: str
    department: str
    agent: str
    vk: str
    admin: str
    fake: FakeUpstream
    server: ServerThread
    settings: Settings
    upstream_url: str = ""

    def add_provider_key(self, **fields: Any) -> dict[str, Any]:
        """A provider key created through the API (which also drops the gateway's cached routes).
        `base_url` defaults to the fake upstream's, in the form the kind expects."""
        kind = fields.setdefault("kind", "openai")
        if "base_url" not in fields:
            fields["base_url"] = self.upstream_url + ("" if kind == "azure" else "/v1")
        fields.setdefault("api_key", f"sk-{kind}-upstream-secret")
        resp = self.api("POST", "/api/provider-keys", json=fields)
        assert resp.status_code == 201, resp.text
        return dict(resp.json())

    def openai(self, **kw: Any) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=kw.pop("api_key", self.vk), max_retries=0, **kw)

    def async_openai(self, **kw: Any) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.url + "/v1", api_key=kw.pop("api_key", self.vk), max_retries=0, **kw)

    def api(self, method: str, path: str, **kw: Any) -> httpx.Response:
        headers = {"authorization": f"Bearer {self.admin}", **kw.pop("headers", {})}
        return HTTP.request(method, self.url + path, headers=headers, **kw)

    def get(self, path: str, **params: Any) -> Any:
        resp = self.api("GET", path, params=params)
        assert resp.status_code == 200, resp.text
        return resp.json()

    def v1(self, method: str, path: str, **kw: Any) -> httpx.Response:
        headers = {"authorization": f"Bearer {self.vk}", **kw.pop("headers", {})}
        return HTTP.request(method, self.url + path, headers=headers, **kw)


def provision(settings: Settings, upstream_url: str) -> dict[str, str]:
    """A fresh workspace (unique per test, which also proves tenant isolation on a shared database)."""

    async def run() -> dict[str, str]:
        c = build_components(settings)
        await c.store.migrate()
        gov = c.governance
        ws, admin = await gov.create_workspace("test", workspace_id=f"ws-{uuid.uuid4().hex[:8]}")
        dep = await gov.create_department(ws, {"id": "research", "name": "Research"})
        agent = await gov.create_agent(ws, {"id": "planner", "department_id": dep["id"], "name": "Planner"})
        await gov.create_provider_key(
            ws,
            {
                "name": "fake-openai",
                "kind": "openai",
                "provider": "openai",
                "base_url": upstream_url + "/v1",
                "api_key": "sk-fake-upstream-secret",
                "models": ["gpt-*", "o3*", "priced-*"],
            },
        )
        vk = await gov.create_virtual_key(ws, {"name": "test", "department_id": dep["id"]})
        await c.store.aclose()
        return {"workspace": ws, "department": dep["id"], "agent": agent["id"], "vk": vk["key"], "admin": admin}

    return asyncio.run(run())


@contextmanager
def running_gateway(db_url: str, data_dir: Path, upstream: ServerThread, **settings: Any) -> Iterator[Harness]:
    defaults: dict[str, Any] = dict(
        connect_timeout=1.0, read_timeout=1.0, first_token_timeout=1.0, batch_interval_ms=5.0
    )
    cfg = Settings(data_dir=str(data_dir), db_url=db_url, **{**defaults, **settings})
    ids = provision(cfg, upstream.url)
    server = ServerThread(create_app(cfg, store=SQLStore(cfg.database_url, durable_commits=cfg.durability == "strict")))
    with server:
        yield Harness(
            url=server.url,
            fake=upstream.config.app.state.fake,
            server=server,
            settings=cfg,
            upstream_url=upstream.url,
            **ids,
        )


async def unlocked(batch: Callable[..., Awaitable[Batch]], *args: Any) -> Batch:
    """`batch(*args)`, a retention batch, asked again while another process holds the retention lock (on the shared
    PostgreSQL, a parallel test's sweep): it did nothing (`busy`) and the job would try again later."""
    for _ in range(200):
        done = await batch(*args)
        if not done.busy:
            return done
        await asyncio.sleep(0.05)
    raise AssertionError("the retention lock stayed held for 10 s")

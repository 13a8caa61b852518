"""`max_body_bytes` (issue 5, row 10): a body over the limit is a JSON 413 on every route, refused before it
is read in full, and nothing of it reaches the provider. The store does not matter here: SQLite only."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from agentledger.config import Settings
from agentledger.testing import ServerThread
from tests.harness import Harness, running_gateway

LIMIT = 4096


@pytest.fixture
def small(sqlite_url: str, tmp_path: Path, upstream: ServerThread) -> Iterator[Harness]:
    upstream.config.app.state.fake.received.clear()
    with running_gateway(sqlite_url, tmp_path, upstream, max_body_bytes=LIMIT) as harness:
        yield harness


def chat_body(size: int) -> bytes:
    """A valid chat request of exactly `size` bytes."""
    body = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": ""}]})
    pad = size - len(body)
    return orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x" * pad}]})


def assert_413(resp: httpx.Response) -> None:
    assert resp.status_code == 413, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    assert resp.headers["x-request-id"]
    assert resp.json() == {
        "error": {
            "message": f"The request body is larger than the {LIMIT} bytes this server accepts.",
            "type": "invalid_request_error",
            "code": "request_too_large",
            "param": None,
        }
    }


def test_the_default_is_documented_50_mib() -> None:
    assert Settings().max_body_bytes == 50 * 1024 * 1024
    assert "`max_body_bytes`" in (Path(__file__).parents[2] / "docs" / "configuration.md").read_text()


def test_a_body_at_the_limit_is_served(small: Harness) -> None:
    body = chat_body(LIMIT)
    assert len(body) == LIMIT
    resp = small.v1("POST", "/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert resp.status_code == 200, resp.text
    assert len(small.fake.received) == 1


def test_a_declared_length_over_the_limit_is_413_and_never_forwarded(small: Harness) -> None:
    body = chat_body(LIMIT + 1)
    resp = small.v1("POST", "/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert_413(resp)
    assert small.fake.received == []


def test_a_chunked_body_is_counted_as_it_arrives(small: Harness) -> None:
    sent: list[int] = []

    def chunks() -> Iterator[bytes]:
        body = chat_body(LIMIT + 1)
        for i in range(0, len(body), 512):
            sent.append(i)
            yield body[i : i + 512]

    resp = small.v1("POST", "/v1/chat/completions", content=chunks(), headers={"content-type": "application/json"})
    assert "content-length" not in resp.request.headers and resp.request.headers["transfer-encoding"] == "chunked"
    assert_413(resp)
    assert small.fake.received == []


@pytest.mark.parametrize(
    ("path", "key"),
    [
        ("/v1/runs", "vk"),
        ("/v1/runs/run-big/steps", "vk"),
        ("/v1/runs/run-big/end", "vk"),
        ("/api/prices", "admin"),
        ("/api/departments", "admin"),
        ("/v1/models", "vk"),  # a GET with a body is counted too
    ],
)
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_every_route_refuses_an_oversized_body(small: Harness, path: str, key: str, chunked: bool) -> None:
    body = orjson.dumps({"name": "x" * LIMIT})
    content: bytes | Iterator[bytes] = iter([body[:1000], body[1000:]]) if chunked else body
    method = "GET" if path == "/v1/models" else "POST"
    headers = {"authorization": f"Bearer {getattr(small, key)}", "content-type": "application/json"}
    resp = httpx.request(method, small.url + path, content=content, headers=headers, timeout=10)
    if chunked and method == "GET":
        # /v1/models never reads its body, so a chunked one is never counted: nothing is buffered either.
        assert resp.status_code == 200, resp.text
        return
    assert_413(resp)
    assert small.get("/api/runs")["data"] == []
    assert small.get("/api/prices")["data"] == []

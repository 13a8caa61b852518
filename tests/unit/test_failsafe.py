"""ErrorMiddleware: an exception escaping a handler never becomes Starlette's text/plain 500."""

from __future__ import annotations

import httpx
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from agentledger.core.errors import StoreUnavailable
from agentledger.gateway.failsafe import ErrorMiddleware
from agentledger.gateway.middleware import RequestIdMiddleware


async def crash(request: Request) -> Response:
    raise RuntimeError("a bug")


async def outage(request: Request) -> Response:
    raise StoreUnavailable("The database is unavailable; retry shortly.")


def client() -> httpx.AsyncClient:
    app = Starlette(
        routes=[Route("/crash", crash), Route("/outage", outage)],
        middleware=[Middleware(RequestIdMiddleware), Middleware(ErrorMiddleware)],
    )
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


async def test_an_unhandled_exception_is_a_json_500_in_the_openai_shape() -> None:
    async with client() as c:
        resp = await c.get("/crash", headers={"x-request-id": "req-crash"})
    assert resp.status_code == 500
    assert resp.headers["content-type"] == "application/json"
    assert resp.headers["x-request-id"] == "req-crash"
    assert resp.json() == {
        "error": {
            "message": "The server failed to handle this request; it has been logged.",
            "type": "internal_error",
            "code": None,
            "param": None,
        }
    }


async def test_an_escaped_store_outage_is_a_503_with_retry_after() -> None:
    async with client() as c:
        resp = await c.get("/outage")
    assert (resp.status_code, resp.headers["retry-after"]) == (503, "2")
    assert resp.headers["content-type"] == "application/json"
    assert resp.json() == {
        "error": {
            "message": "The database is unavailable; retry shortly.",
            "type": "api_error",
            "code": "store_unavailable",
            "param": None,
        }
    }

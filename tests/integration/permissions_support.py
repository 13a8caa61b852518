"""Helpers of the permission and tenant-isolation walks: every mounted /api route, members with PATs."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.routing import Route

from tests.harness import HTTP, Harness

PARAM = re.compile(r"\{(\w+)(?::\w+)?\}")


def api_routes(app: Starlette) -> Iterator[tuple[str, str]]:
    """(method, path template) of every mounted /api route, as the matrix names them."""
    for route in app.routes:
        if isinstance(route, Route) and route.path.startswith("/api/"):
            for method in sorted((route.methods or set()) - {"HEAD"}):
                yield method, route.path


def fill(template: str, value: str) -> str:
    return PARAM.sub(value, template)


def call(gw: Harness, token: str, method: str, path: str, **kw: Any) -> httpx.Response:
    headers = {"authorization": f"Bearer {token}"}
    if method in ("POST", "PUT", "PATCH") and "json" not in kw:
        kw["json"] = {}
    return HTTP.request(method, gw.url + path, headers=headers, **kw)


def member(gw: Harness, role: str, *, token: str | None = None, **fields: Any) -> dict[str, Any]:
    email = f"{role}-{len(fields)}-{id(fields)}@example.com"
    resp = call(gw, token or gw.admin, "POST", "/api/members", json={"email": email, "role": role, **fields})
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


def pat(gw: Harness, member_id: str, scopes: list[str], *, token: str | None = None, **fields: Any) -> str:
    body = {"member_id": member_id, "scopes": scopes, "name": "t", **fields}
    resp = call(gw, token or gw.admin, "POST", "/api/tokens", json=body)
    assert resp.status_code == 201, resp.text
    secret = resp.json()["token"]
    assert secret.startswith("pat_")
    return str(secret)


def denied(resp: httpx.Response) -> bool:
    if resp.status_code != 403:
        return False
    error = resp.json()["error"]
    assert error["type"] == "permission_error" and error["code"] == "permission_denied", resp.text
    assert set(error) == {"message", "type", "code", "param"}, resp.text
    return True

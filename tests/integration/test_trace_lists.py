"""GET /api/sessions and GET /api/requests over a real gateway on each store: pages joined by `next_cursor` (null on
the last), the requests list's filters, and 400s naming a bad filter or cursor."""

from __future__ import annotations

from typing import Any

from tests.harness import Harness

HELLO = [{"role": "user", "content": "hello"}]


def call(gw: Harness, rid: str, session: str, model: str = "gpt-4o-mini") -> int:
    headers = {"x-request-id": rid, "alephant-session-id": session}
    body = {"model": model, "messages": HELLO}
    return gw.v1("POST", "/v1/chat/completions", json=body, headers=headers).status_code


def pages(gw: Harness, path: str, **params: Any) -> list[list[str]]:
    out: list[list[str]] = []
    cursor = None
    while True:
        page = gw.get(path, **params, **({"cursor": cursor} if cursor else {}))
        out.append([r["id"] for r in page["data"]])
        cursor = page["next_cursor"]
        if cursor is None:
            return out


def test_sessions_and_requests_are_paged_by_their_cursors(gw: Harness) -> None:
    for i, session in enumerate(["s-1", "s-2", "s-3", "s-1", "s-4"]):
        assert call(gw, f"q-{i}", session, "gpt-4o" if i == 2 else "gpt-4o-mini") == 200
    # s-1 was seen again last but one; the newest activity comes first.
    assert pages(gw, "/api/sessions", limit=2) == [["s-4", "s-1"], ["s-3", "s-2"], []]
    (s1,) = [s for s in gw.get("/api/sessions")["data"] if s["id"] == "s-1"]
    assert s1["totals"]["requests"] == 2 and s1["run_count"] == 0
    assert pages(gw, "/api/requests", limit=2) == [["q-4", "q-3"], ["q-2", "q-1"], ["q-0"]]
    assert pages(gw, "/api/requests", limit=3, model="gpt-4o-mini") == [["q-4", "q-3", "q-1"], ["q-0"]]
    assert pages(gw, "/api/requests", model="gpt-4o", status="ok") == [["q-2"]]
    assert pages(gw, "/api/requests", status="error") == [[]]
    # Nothing governed these calls: no decision.
    assert pages(gw, "/api/requests", decision="allowed") == [[]]
    for path, params, param in (
        ("/api/sessions", {"cursor": "nope"}, "cursor"),
        ("/api/sessions", {"limit": 0}, "limit"),
        ("/api/requests", {"cursor": "bm9wZQ"}, "cursor"),
        ("/api/requests", {"status": "maybe"}, "status"),
        ("/api/requests", {"decision": "maybe"}, "decision"),
        ("/api/requests", {"from": "yesterday"}, "from"),
        ("/api/requests", {"model": "a\x00b"}, "model"),
    ):
        resp = gw.api("GET", path, params=params)
        assert resp.status_code == 400, (path, params, resp.text)
        assert resp.json()["error"]["param"] == param

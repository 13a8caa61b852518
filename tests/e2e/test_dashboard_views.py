"""The overview, sessions and requests views in a real browser (Debian chromium, Playwright; the seeded server of
test_dashboard): each renders the seed's numbers, the session's path tree has the right nodes and costs, a request
is found by its x-request-id, and no page logs a console error."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest

from tests.e2e.test_dashboard import Seeded, _signed_in, browser, seeded  # noqa: F401 (fixtures)

pytestmark = pytest.mark.e2e
REQUEST_ID = "req-dash-views-1"


@pytest.fixture(scope="module")
def api(seeded: Seeded) -> Iterator[httpx.Client]:  # noqa: F811
    # One more call with a request id of the client's own, in session trip-1 at path /book.
    v1 = httpx.Client(base_url=seeded.url, headers={"authorization": f"Bearer {seeded.vk}"}, timeout=10)
    chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "book it"}]}
    headers = {"x-request-id": REQUEST_ID, "alephant-session-id": "trip-1", "alephant-session-path": "/book"}
    assert v1.post("/v1/chat/completions", json=chat, headers=headers).status_code == 200
    with httpx.Client(base_url=seeded.url, headers={"authorization": f"Bearer {seeded.admin}"}) as client:
        yield client


def test_overview_shows_spend_top_lists_and_links(browser: Any, seeded: Seeded, api: httpx.Client) -> None:  # noqa: F811
    w = _signed_in(browser, seeded, seeded.admin)
    w.page.goto("/")
    # The last 30 days hold the trip's calls (the blog run's steps are dated 2025-06-02).
    month = api.get("/api/analytics/costs", params={"group_by": "agent", "from": _days_ago(30)}).json()["data"]
    planner = next(r for r in month if r["key"] == "planner")
    month_cost = w.page.locator("#spend [data-period='30d'] .value").inner_text()
    assert month_cost == _usd(sum((Decimal(r["cost_usd"]) for r in month), Decimal(0))) != "$0.00"
    assert "planner" in w.page.locator("#top-agents tr[data-key]").evaluate_all("rs => rs.map(r => r.dataset.key)")
    assert _usd(Decimal(planner["cost_usd"])) in w.page.locator("#top-agents tr[data-key=planner]").inner_text()
    assert w.page.locator("#top-models tr[data-key='gpt-4o-mini']").count() == 1
    sessions = w.page.locator("#top-sessions tr[data-key]").evaluate_all("rs => rs.map(r => r.dataset.key)")
    assert sessions == ["trip-1"]
    assert w.page.locator("#revenue .value").inner_text() == "$0.00"
    assert w.page.locator("#budget-bars, #pending-approvals, #recent-alerts").count() == 3
    w.page.click("#top-sessions a[href='/sessions/trip-1']")
    w.page.wait_for_url(re.compile(r"/sessions/trip-1$"))
    assert w.page.locator("#path-tree").count() == 1
    assert w.problems == []


def test_sessions_list_and_path_tree(browser: Any, seeded: Seeded, api: httpx.Client) -> None:  # noqa: F811
    w = _signed_in(browser, seeded, seeded.admin)
    w.page.goto("/sessions")
    rows = w.page.locator("#session-rows tr[data-session]")
    assert sorted(rows.evaluate_all("rs => rs.map(r => r.dataset.session)")) == ["post-7", "trip-1"]
    assert "$0.2625" in w.page.locator("tr[data-session=post-7]").inner_text()
    w.page.click("a[href='/sessions/trip-1']")
    w.page.wait_for_url(re.compile(r"/sessions/trip-1$"))
    tree = w.page.locator("#path-tree")
    top = tree.locator(":scope > ul > li").evaluate_all("ns => ns.map(n => n.dataset.path)")
    assert top == ["/book", "/plan"]
    assert tree.locator("li[data-path='/plan'] > ul > li").evaluate_all("ns => ns.map(n => n.dataset.path)") == [
        "/plan/search"
    ]
    paths = {p["path"]: Decimal(p["cost_usd"]) for p in api.get("/api/sessions/trip-1").json()["paths"]}
    assert all(cost > 0 for cost in paths.values())
    shown = {
        path: w.page.locator(f"#path-tree li[data-path='{path}'] > .node-cost").inner_text()
        for path in ("/plan", "/plan/search", "/book")
    }
    assert shown["/plan/search"] == _usd(paths["/plan/search"])
    assert shown["/book"] == _usd(paths["/book"])
    assert shown["/plan"] == _usd(paths["/plan"] + paths["/plan/search"])  # a node counts its subtree
    assert w.page.locator("#session-runs tr[data-run]").evaluate_all("rs => rs.map(r => r.dataset.run)") == ["run-trip"]
    w.page.goto("/runs")
    w.page.click("tr[data-run=run-trip] a[href='/sessions/trip-1']")  # the runs list links the session page
    w.page.wait_for_url(re.compile(r"/sessions/trip-1$"))
    assert w.problems == []


def test_request_search_filters_and_detail(browser: Any, seeded: Seeded, api: httpx.Client) -> None:  # noqa: F811
    w = _signed_in(browser, seeded, seeded.admin)
    w.page.goto("/requests")
    rows = w.page.locator("#request-rows tr[data-request]")
    assert rows.count() == 3
    w.page.fill("#request-search input[name=id]", REQUEST_ID)
    w.page.click("#request-search button")
    w.page.wait_for_url(re.compile(rf"/requests/{REQUEST_ID}$"))
    found = api.get(f"/api/requests/{REQUEST_ID}").json()
    assert w.page.locator("#request-cost").inner_text() == _usd(Decimal(found["cost_usd"]))
    assert "gpt-4o-mini" in w.page.locator("#request-detail").inner_text()
    w.page.goto("/requests?id=no-such-request")
    assert "no-such-request" in w.page.locator("#not-found").inner_text()
    w.page.select_option("#request-filters select[name=status]", "error")
    w.page.click("#request-filters button")
    w.page.wait_for_url(re.compile(r"status=error"))
    assert rows.count() == 0
    w.page.goto("/requests?model=gpt-4o-mini&status=ok")
    assert rows.count() == 3
    assert w.problems == []


def _days_ago(days: int) -> str:
    return (datetime.now(UTC) - timedelta(days=days)).isoformat()


def _usd(amount: Decimal) -> str:
    from agentledger.dashboard.format import usd

    return usd(str(amount))


def test_runs_filtered_by_decision_and_property_stay_filtered_live(
    browser: Any,  # noqa: F811
    seeded: Seeded,  # noqa: F811
    api: httpx.Client,
) -> None:
    # Last in the module: the policy governs (and adds a policy check to) every call made while it exists.
    rules = [{"when": {"models": ["gpt-4o"]}, "action": "block"}]
    policy = api.post("/api/policies", json={"name": "no gpt-4o", "scope": "workspace", "rules": rules})
    assert policy.status_code == 201, policy.text
    v1 = httpx.Client(base_url=seeded.url, headers={"authorization": f"Bearer {seeded.vk}"}, timeout=10)

    def blocked_call(run: str) -> None:
        chat = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
        headers = {"alephant-run-id": run, "alephant-property-customer": "acme"}
        assert v1.post("/v1/chat/completions", json=chat, headers=headers).status_code == 403

    try:
        blocked_call("run-denied")
        w = _signed_in(browser, seeded, seeded.admin)
        w.page.goto("/runs")
        rows = w.page.locator("#run-rows tr[data-run]")
        shown = "rs => rs.map(r => r.dataset.run)"
        assert sorted(rows.evaluate_all(shown)) == ["run-blog", "run-denied", "run-trip"]
        w.page.select_option("select[name=decision]", "blocked")
        w.page.click("text=Filter")
        w.page.wait_for_url(re.compile(r"decision=blocked"))
        assert rows.evaluate_all(shown) == ["run-denied"]
        assert w.page.locator("select[name=decision]").input_value() == "blocked"
        # The live update polls with the filter: a new blocked run appears, the others stay out.
        assert "decision=blocked" in (w.page.locator("#run-rows").get_attribute("hx-get") or "")
        blocked_call("run-denied-2")
        w.page.wait_for_selector("tr[data-run=run-denied-2]", timeout=10_000)
        assert rows.evaluate_all(shown) == ["run-denied-2", "run-denied"]
        w.page.select_option("select[name=decision]", "allowed")
        w.page.click("text=Filter")
        w.page.wait_for_url(re.compile(r"decision=allowed"))
        assert rows.count() == 0 and "No runs match" in w.page.locator("#run-rows").inner_text()
        # By property: a name and a value.
        w.page.goto("/runs")
        w.page.fill("input[name=property]", "customer")
        w.page.fill("input[name=value]", "acme")
        w.page.click("text=Filter")
        w.page.wait_for_url(re.compile(r"property=customer&value=acme"))
        assert rows.evaluate_all(shown) == ["run-denied-2", "run-denied"]
        w.page.fill("input[name=value]", "globex")
        w.page.click("text=Filter")
        w.page.wait_for_url(re.compile(r"value=globex"))
        assert rows.count() == 0
        assert w.problems == []
    finally:
        assert api.delete(f"/api/policies/{policy.json()['id']}").status_code in (200, 204)

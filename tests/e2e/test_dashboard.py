"""The dashboard in a real browser: Debian's chromium driven by Playwright against a real server on 127.0.0.1,
seeded through the real gateway (mock provider) and the step API. One server and one browser for the module."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from agentledger.app import build_components, create_app
from agentledger.config import Settings
from agentledger.core.model import Role
from agentledger.store.sql import SQLStore
from agentledger.testing.server import ServerThread

pytestmark = pytest.mark.e2e
playwright_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = Path("/usr/bin/chromium")


@dataclass
class Seeded:
    url: str
    admin: str
    viewer: str
    vk: str


def _provision(settings: Settings) -> dict[str, str]:
    async def run() -> dict[str, str]:
        c = build_components(settings)
        await c.store.migrate()
        gov = c.governance
        ws, admin = await gov.create_workspace("Dash", workspace_id=f"ws-{uuid.uuid4().hex[:8]}")
        dep = await gov.create_department(ws, {"id": "research", "name": "Research"})
        for agent in ("planner", "writer"):
            await gov.create_agent(ws, {"id": agent, "department_id": dep["id"], "name": agent.title()})
        await gov.create_provider_key(ws, {"name": "mock", "kind": "mock", "provider": "mock", "models": ["*"]})
        vk = await gov.create_virtual_key(ws, {"name": "dash", "department_id": dep["id"]})
        viewer = await gov.create_admin_token(ws, "viewer", Role.VIEWER)
        await c.store.aclose()
        return {"admin": admin, "viewer": viewer, "vk": vk["key"]}

    # Playwright's sync API holds an event loop on this thread: provision on another.
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, run()).result()


def _seed(url: str, vk: str) -> None:
    v1 = httpx.Client(base_url=url, headers={"authorization": f"Bearer {vk}"}, timeout=10)
    chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "plan my trip"}]}
    for path in ("/plan", "/plan/search"):
        headers = {
            "alephant-run-id": "run-trip",
            "alephant-agent-id": "planner",
            "alephant-session-id": "trip-1",
            "alephant-session-path": path,
        }
        assert v1.post("/v1/chat/completions", json=chat, headers=headers).status_code == 200
    steps = [
        {
            "id": "s-orch",
            "kind": "workflow_step",
            "name": "orchestrate",
            "started_at": "2025-06-02T09:00:00Z",
            "ended_at": "2025-06-02T09:00:04Z",
        },
        {
            "id": "s-hotel",
            "parent_id": "s-orch",
            "kind": "tool_call",
            "name": "search_hotels",
            "cost_usd": "0.0125",
            "started_at": "2025-06-02T09:00:01Z",
            "ended_at": "2025-06-02T09:00:03Z",
            "input": {"city": "Lisbon"},
        },
        {
            "id": "s-flight",
            "parent_id": "s-orch",
            "kind": "tool_call",
            "name": "search_flights",
            "started_at": "2025-06-02T09:00:01Z",
            "ended_at": "2025-06-02T09:00:02Z",
        },
        {
            "id": "s-geo",
            "parent_id": "s-hotel",
            "kind": "api_call",
            "name": "geocode",
            "started_at": "2025-06-02T09:00:01.500Z",
            "ended_at": "2025-06-02T09:00:02Z",
        },
        {
            "id": "s-pay",
            "kind": "payment",
            "name": "buy map",
            "started_at": "2025-06-02T09:00:04Z",
            "ended_at": "2025-06-02T09:00:05Z",
            "payment": {"direction": "outbound", "status": "settled", "amount_usd": "0.25", "counterparty": "maps"},
        },
    ]
    resp = v1.post(
        "/v1/runs/run-blog/steps",
        json={"steps": steps, "run": {"agent_id": "writer", "workflow": "blog", "session_id": "post-7"}},
    )
    assert resp.status_code == 201, resp.text
    assert v1.post("/v1/runs/run-blog/end", json={"status": "succeeded"}).status_code in (200, 201)


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seeded]:
    data_dir = tmp_path_factory.mktemp("dash")
    cfg = Settings(data_dir=str(data_dir), db_url=f"sqlite:///{data_dir}/al.db", batch_interval_ms=5.0)
    ids = _provision(cfg)
    with ServerThread(create_app(cfg, store=SQLStore(cfg.database_url))) as server:
        _seed(server.url, ids["vk"])
        yield Seeded(server.url, ids["admin"], ids["viewer"], ids["vk"])


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip("Debian chromium is not installed (.ci/run installs it)")
    with playwright_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield b
        b.close()


class Watched:
    """A page whose console errors and failed requests fail the test."""

    def __init__(self, context: Any) -> None:
        self.page = context.new_page()
        self.problems: list[str] = []
        self.page.on("console", lambda m: m.type == "error" and self.problems.append(f"console: {m.text}"))
        self.page.on("pageerror", lambda e: self.problems.append(f"pageerror: {e}"))
        self.page.on("requestfailed", lambda r: self.problems.append(f"failed: {r.url} {r.failure}"))
        self.page.on(
            "response",
            lambda r: r.status >= 500 and self.problems.append(f"{r.status}: {r.url}"),
        )


def _signed_in(browser: Any, seeded: Seeded, token: str) -> Watched:
    w = Watched(browser.new_context(base_url=seeded.url))
    w.page.goto("/signin")
    w.page.fill("#token", token)
    w.page.click("button[type=submit]")
    w.page.wait_for_load_state()
    return w


def test_signin_refuses_a_bad_token_and_signs_out(browser: Any, seeded: Seeded) -> None:
    w = Watched(browser.new_context(base_url=seeded.url))
    w.page.goto("/runs")
    assert "/signin" in w.page.url
    w.page.fill("#token", "adm-not-a-real-token")
    w.page.click("button[type=submit]")
    assert w.page.locator(".error").inner_text().strip() != ""
    assert "/signin" in w.page.url
    w.page.fill("#token", seeded.admin)
    w.page.click("button[type=submit]")
    w.page.wait_for_url(re.compile(r"/runs$"))
    cookie = next(c for c in w.page.context.cookies() if c["name"] == "agentledger_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    w.page.click("text=Sign out")
    w.page.wait_for_url(re.compile(r"/signin"))
    w.page.goto("/runs")
    assert "/signin" in w.page.url
    problems = [p for p in w.problems if "401" not in p]
    assert problems == []
    # A login and a logout are audit events of the token's workspace, the token as actor (never the token).
    api = httpx.Client(base_url=seeded.url, headers={"authorization": f"Bearer {seeded.admin}"}, timeout=10)
    for action in ("session.signin", "session.signout"):
        events = api.get("/api/audit-logs", params={"action": action}).json()["data"]
        assert events and events[0]["actor"]["type"] == "admin_token", (action, events)
        assert seeded.admin not in str(events)


def test_runs_list_and_filters(browser: Any, seeded: Seeded) -> None:
    w = _signed_in(browser, seeded, seeded.admin)
    w.page.goto("/runs")
    rows = w.page.locator("#run-rows tr[data-run]")
    assert sorted(rows.evaluate_all("rs => rs.map(r => r.dataset.run)")) == ["run-blog", "run-trip"]
    blog = w.page.locator("tr[data-run=run-blog]")
    # tool 0.0125 + payment 0.25 = $0.2625; the run has five steps
    assert "$0.2625" in blog.inner_text()
    w.page.fill("input[name=agent]", "planner")
    w.page.click("text=Filter")
    w.page.wait_for_url(re.compile(r"agent=planner"))
    assert rows.evaluate_all("rs => rs.map(r => r.dataset.run)") == ["run-trip"]
    assert w.problems == []


def test_run_detail_waterfall_nests_steps_to_scale(browser: Any, seeded: Seeded) -> None:
    w = _signed_in(browser, seeded, seeded.admin)
    w.page.goto("/runs")  # sign-in lands on the overview
    w.page.click("a[href='/runs/run-blog']")
    w.page.wait_for_url(re.compile(r"/runs/run-blog$"))
    wf = w.page.locator("#waterfall")
    assert wf.locator(".wf-bar").count() == 5
    top = wf.evaluate("el => [...el.children].map(n => n.dataset.step)")
    assert top == ["s-orch", "s-pay"]
    children = wf.locator("[data-step=s-orch] > .wf-children > .wf-node")
    assert children.evaluate_all("ns => ns.map(n => n.dataset.step)") == ["s-hotel", "s-flight"]
    assert wf.locator("[data-step=s-hotel] > .wf-children > [data-step=s-geo]").count() == 1
    # Parallel steps start at the same place on the time axis; the 2 s hotel search is twice the 1 s flights'.
    left = {
        s: wf.locator(f"[data-step={s}] > .wf-row .wf-bar").evaluate("b => b.style.left")
        for s in ("s-hotel", "s-flight")
    }
    assert left["s-hotel"] == left["s-flight"] == "20%"
    width = wf.locator("[data-step=s-hotel] > .wf-row .wf-bar").evaluate("b => b.style.width")
    assert width == "40%"
    assert w.page.locator("#run-cost").inner_text() == "$0.2625"
    w.page.click("[data-step=s-pay] > .wf-row")
    detail = w.page.locator("#detail-s-pay")
    assert detail.is_visible() and "outbound · settled · $0.25" in detail.inner_text()
    w.page.click("[data-step=s-hotel] > .wf-row")
    assert w.page.locator("#detail-s-hotel").is_visible() and not detail.is_visible()
    assert "Lisbon" in w.page.locator("#detail-s-hotel").inner_text()
    assert w.problems == []


def test_viewer_sees_no_write_buttons_and_forged_writes_are_refused(browser: Any, seeded: Seeded) -> None:
    viewer = _signed_in(browser, seeded, seeded.viewer)
    viewer.page.goto("/runs/run-trip")
    assert viewer.page.locator("form.controls, button[name=action]").count() == 0
    csrf = viewer.page.locator("input[name=csrf_token]").first.get_attribute("value")
    url = "/runs/run-trip/control"
    for form in (
        {"action": "pause"},
        {"action": "pause", "csrf_token": "wrong"},
        {"action": "pause", "csrf_token": csrf},
    ):
        assert viewer.page.request.post(url, form=form, max_redirects=0).status == 403
    admin = _signed_in(browser, seeded, seeded.admin)
    admin.page.goto("/runs/run-trip")
    assert admin.page.locator("button[name=action][value=pause]").count() == 1
    assert admin.page.request.post(url, form={"action": "pause"}, max_redirects=0).status == 403  # no CSRF token
    admin.page.click("button[name=action][value=pause]")
    admin.page.wait_for_selector("button[name=action][value=resume]")
    admin.page.click("button[name=action][value=resume]")
    admin.page.wait_for_selector("button[name=action][value=pause]")
    assert viewer.problems == [] and admin.problems == []


def test_costs_group_chart_table_and_csv(browser: Any, seeded: Seeded) -> None:
    w = _signed_in(browser, seeded, seeded.admin)
    w.page.goto("/costs?group_by=agent&from=2025-06-01T00:00:00Z&interval=day")
    table = w.page.locator("#cost-table tbody tr[data-key]")
    assert sorted(table.evaluate_all("rs => rs.map(r => r.dataset.key)")) == ["planner", "writer"]
    assert "$0.2625" in w.page.locator("#cost-table tr[data-key=writer]").inner_text()
    w.page.wait_for_selector("#cost-chart canvas")
    assert w.page.locator("#cost-chart .u-legend .u-series").count() == 3  # the x axis and two bands
    w.page.select_option("select[name=group_by]", "workflow")
    w.page.click("text=Show")
    w.page.wait_for_url(re.compile(r"group_by=workflow"))
    assert sorted(table.evaluate_all("rs => rs.map(r => r.dataset.key)")) == ["", "blog"]
    with w.page.expect_download() as download:
        w.page.click("#csv")
    lines = Path(download.value.path()).read_text().splitlines()
    assert lines[0].startswith("key,cost_usd") and any(line.startswith("blog,0.2625") for line in lines)
    # Chromium reports a download's navigation as aborted: that is the download, not a failure.
    assert [p for p in w.problems if not ("/costs.csv" in p and "ERR_ABORTED" in p)] == []

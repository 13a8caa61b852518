"""The governance and finance views in a real browser (Debian chromium, Playwright; the harness of test_dashboard):
an escalated call held in a thread proceeds after the Approve click on a page that was open before it was asked,
a monitor-mode policy's hit is counted and listed on the Policies view and links to its run, a created key is shown
once, a viewer sees no write buttons, and no page logs a console error."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from agentledger.app import create_app
from agentledger.config import Settings
from agentledger.store.sql import SQLStore
from agentledger.testing.server import ServerThread
from tests.e2e.test_dashboard import Seeded, _provision, _signed_in, browser  # noqa: F401 (a fixture)

pytestmark = pytest.mark.e2e
VIEWS = ("/budgets", "/policies", "/approvals", "/finance", "/audit", "/keys")


@pytest.fixture(scope="module")
def gov(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seeded]:
    data_dir = tmp_path_factory.mktemp("dash-gov")
    cfg = Settings(data_dir=str(data_dir), db_url=f"sqlite:///{data_dir}/al.db", batch_interval_ms=5.0)
    ids = _provision(cfg)
    with ServerThread(create_app(cfg, store=SQLStore(cfg.database_url))) as server:
        api = httpx.Client(base_url=server.url, headers={"authorization": f"Bearer {ids['admin']}"})
        budget = {"id": "b-research", "scope": "department", "scope_value": "research", "limit_usd": "2.00"}
        assert api.post("/api/budgets", json={**budget, "period": "30d"}).status_code == 201
        policy = {
            "id": "opus-needs-a-human",
            "name": "Opus needs a human",
            "scope": "workspace",
            "settings": {"approval_wait_s": 30},
            "rules": [{"id": "opus", "action": "escalate", "when": {"models": ["claude-opus-*"]}}],
        }
        assert api.post("/api/policies", json=policy).status_code == 201
        trial = {
            "id": "long-outputs",
            "name": "Long outputs (trial)",
            "scope": "workspace",
            "mode": "monitor",
            "rules": [{"id": "max-2k", "action": "block", "when": {"models": ["gpt-4o"], "max_tokens_over": 2000}}],
        }
        assert api.post("/api/policies", json=trial).status_code == 201
        v1 = httpx.Client(base_url=server.url, headers={"authorization": f"Bearer {ids['vk']}"})
        chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}
        assert v1.post("/v1/chat/completions", json=chat, headers={"alephant-run-id": "run-1"}).status_code == 200
        # What the trial policy would have blocked: answered (200), a monitor hit.
        long = {**chat, "model": "gpt-4o", "max_tokens": 4096}
        headers = {"alephant-run-id": "run-trial", "x-request-id": "trial-1"}
        assert v1.post("/v1/chat/completions", json=long, headers=headers).status_code == 200
        yield Seeded(server.url, ids["admin"], ids["viewer"], ids["vk"])


def test_approving_in_the_page_lets_the_held_call_proceed(browser: Any, gov: Seeded) -> None:  # noqa: F811
    w = _signed_in(browser, gov, gov.admin)
    w.page.goto("/approvals")
    answer: dict[str, Any] = {}

    def held_call() -> None:
        chat = {"model": "claude-opus-4-1", "messages": [{"role": "user", "content": "review the plan"}]}
        headers = {"authorization": f"Bearer {gov.vk}", "alephant-run-id": "run-held"}
        resp = httpx.post(gov.url + "/v1/chat/completions", json=chat, headers=headers, timeout=60)
        answer["status"], answer["at"] = resp.status_code, time.monotonic()

    thread = threading.Thread(target=held_call)
    thread.start()
    row = w.page.locator("#approval-rows tr", has_text="run-held")
    row.locator("button", has_text="Approve").wait_for(timeout=10_000)  # appeared without a reload
    assert "status" not in answer  # still held
    row.locator("input[name=comment]").fill("go ahead")
    clicked = time.monotonic()
    row.locator("button", has_text="Approve").click()
    thread.join(15)
    assert answer["status"] == 200 and answer["at"] >= clicked
    w.page.wait_for_url(re.compile(r"/approvals$"))
    assert "go ahead" in w.page.locator("#approval-rows tr", has_text="run-held").inner_text()
    assert w.problems == []


def test_a_created_key_is_shown_once_and_can_be_revoked(browser: Any, gov: Seeded) -> None:  # noqa: F811
    w = _signed_in(browser, gov, gov.admin)
    w.page.goto("/keys")
    w.page.fill("#create-key input[name=name]", "from the dashboard")
    w.page.select_option("#create-key select[name=agent_id]", "planner")
    w.page.click("#create-key button[type=submit]")
    key = w.page.locator("#new-key").inner_text().strip()
    assert key.startswith("vk-")
    chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    as_key = {"authorization": f"Bearer {key}"}
    assert httpx.post(gov.url + "/v1/chat/completions", json=chat, headers=as_key).is_success
    w.page.goto("/keys")
    assert w.page.locator("#new-key").count() == 0 and key not in w.page.content()
    row = w.page.locator("tr[data-key]", has_text="from the dashboard")
    row.locator("button", has_text="Revoke").click()
    w.page.wait_for_url(re.compile(r"/keys$"))
    assert "revoked" in w.page.locator("tr[data-key]", has_text="from the dashboard").inner_text()
    assert httpx.post(gov.url + "/v1/chat/completions", json=chat, headers=as_key).status_code == 401
    assert w.problems == []


def test_every_view_renders_and_a_viewer_sees_no_write_buttons(browser: Any, gov: Seeded) -> None:  # noqa: F811
    admin = _signed_in(browser, gov, gov.admin)
    for view in VIEWS:
        admin.page.goto(view)
        assert admin.page.locator("h1").count() == 1, view
    admin.page.goto("/budgets")
    assert "b-research" in admin.page.content() and admin.page.locator(".bar").count() == 1
    admin.page.goto("/audit")
    assert admin.page.locator("[data-chain=ok]").count() == 1
    assert admin.page.locator("tr[data-seq]", has_text="policy.create").count() == 2
    assert admin.problems == []

    viewer = _signed_in(browser, gov, gov.viewer)
    for view in VIEWS:
        viewer.page.goto(view)
        writes = viewer.page.locator("form[method=post]:not([action='/signout'])")
        assert writes.count() == 0, view
    csrf = viewer.page.locator("input[name=csrf_token]").first.get_attribute("value")
    forged = viewer.page.request.post(
        "/keys/create", form={"csrf_token": csrf or "", "name": "nope"}, headers={"origin": gov.url}
    )
    assert forged.status == 403
    assert viewer.problems == []


def test_the_policies_view_counts_and_lists_a_monitor_hit(browser: Any, gov: Seeded) -> None:  # noqa: F811
    w = _signed_in(browser, gov, gov.admin)
    w.page.goto("/policies")
    row = w.page.locator("table.policy-hits-summary tr[data-policy=long-outputs]")
    counted = [row.locator(f"[data-hits={k}]").inner_text() for k in ("enforce-24h", "monitor-24h", "monitor-7d")]
    assert counted == ["0", "1", "1"]
    row.locator("a").click()
    w.page.wait_for_url(re.compile(r"/policies\?policy=long-outputs$"))
    assert w.page.locator("#hits-of").inner_text() == "Recent hits of Long outputs (trial)"
    hits = w.page.locator("table.policy-hits tr[data-hit]")
    assert hits.count() == 1 and hits.first.get_attribute("data-mode") == "monitor"
    cells = hits.first.locator("td").all_inner_texts()
    assert cells[1:6] == ["monitor", "would be blocked", "max-2k v1", "trial-1", "run-trial"], cells
    w.page.click("p.filters a:text-is('enforce')")
    w.page.wait_for_url(re.compile(r"mode=enforce"))
    assert w.page.locator("table.policy-hits tr[data-hit]").count() == 0
    assert "No hits in enforce mode." in w.page.locator("table.policy-hits").inner_text()
    w.page.click("p.filters a:text-is('all')")
    w.page.click("table.policy-hits a[href='/runs/run-trial']")
    w.page.wait_for_url(re.compile(r"/runs/run-trial$"))
    assert w.page.locator("[data-step^='pc_']").count() == 1  # the call's policy check, beside its model call
    assert w.problems == []

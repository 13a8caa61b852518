"""The audit log through a real gateway on SQLite and PostgreSQL (docs/audit.md): every kind of control-plane change
through the API is an event with its actor, target, before/after, client address and request id, and no secret
the test used is anywhere in the stored events; a refused call is an event of its run; failed authentications are
rate-limited; the chain verifies and its export verifies offline; an admin write whose audit event meets a store
outage is answered once the event is spooled, and the event lands once."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import select

from agentledger.app import create_app
from agentledger.audit.checkpoints import load_public
from agentledger.audit.export import read_csv, read_jsonl, verify_export
from agentledger.config import Settings
from agentledger.core.errors import StoreUnavailable
from agentledger.store import schema as t
from agentledger.store.audit import INSTALLATION
from agentledger.store.base import WriteResult
from agentledger.store.sql import SQLStore
from agentledger.testing import ServerThread
from tests.harness import HTTP, Harness, provision, running_gateway

PAY_TO = "0x52908400098527886E0F7030069857D2E4169EE7"
SIGNER_KEY = "0x" + "4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318"
FAST = dict(webhook_allow_hosts="127.0.0.1", approval_wait_s=0.0, audit_checkpoint_interval_s=3600.0)


@pytest.fixture
def gw(db_url: str, tmp_path: Path, upstream: ServerThread) -> Iterator[Harness]:
    with running_gateway(db_url, tmp_path, upstream, **FAST) as harness:
        yield harness


def ok(resp: Any, status: int = 200) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    return dict(resp.json())


def all_events(gw: Harness, **filters: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": 200, **filters}
    while True:
        page = gw.get("/api/audit-logs", **params)
        out += page["data"]
        if page["next_cursor"] is None:
            return out
        params["cursor"] = page["next_cursor"]


def stored_rows(gw: Harness, workspace: str) -> list[dict[str, Any]]:
    async def read() -> list[dict[str, Any]]:
        store = SQLStore(gw.settings.database_url)
        try:
            return await store._select(select(t.audit_events).where(t.audit_events.c.workspace_id == workspace))
        finally:
            await store.aclose()

    return asyncio.run(read())


def test_every_kind_of_change_is_an_event_and_no_secret_is_stored(gw: Harness) -> None:
    secrets = [gw.admin, gw.vk]
    ok(gw.api("POST", "/api/departments", json={"id": "ops", "name": "Ops"}), 201)
    ok(gw.api("POST", "/api/agents", json={"id": "helper", "department_id": "ops", "name": "Helper"}), 201)
    runtime_secret = "n8n-secret-" + os.urandom(8).hex()
    secrets.append(runtime_secret)
    runtime = {
        "type": "n8n",
        "url": "http://127.0.0.1:9/hook",
        "auth_header": {"name": "X-Key", "value": runtime_secret},
    }
    flow = {"id": "flow", "department_id": "ops", "name": "Flow", "kind": "workflow", "runtime": runtime}
    ok(gw.api("POST", "/api/agents", json=flow), 201)
    second_secret = "n8n-other-" + os.urandom(8).hex()
    secrets.append(second_secret)
    put = {**runtime, "auth_header": {"name": "X-Key", "value": second_secret}}
    ok(gw.api("PUT", "/api/agents/flow/runtime", json=put))
    key = ok(gw.api("POST", "/api/virtual-keys", json={"department_id": "ops", "name": "k"}), 201)
    secrets.append(key["key"])
    ok(gw.api("DELETE", f"/api/virtual-keys/{key['id']}"))
    ok(gw.api("DELETE", f"/api/virtual-keys/{key['id']}"))  # revoked already: no second event
    provider_secret = "sk-provider-" + os.urandom(12).hex()
    secrets.append(provider_secret)
    pk = gw.add_provider_key(name="audited", api_key=provider_secret, models=["audited-*"])
    ok(gw.api("DELETE", f"/api/provider-keys/{pk['id']}"))
    ok(gw.api("POST", "/api/prices", json={"model": "audited-1", "input_mtok": "1", "output_mtok": "2"}), 201)
    budget = ok(gw.api("POST", "/api/budgets", json={"scope": "workspace", "limit_usd": "5", "period": "24h"}), 201)
    ok(gw.api("DELETE", f"/api/budgets/{budget['id']}"))
    limit = ok(gw.api("POST", "/api/rate-limits", json={"scope": "workspace", "requests_per_minute": 100}), 201)
    ok(gw.api("DELETE", f"/api/rate-limits/{limit['id']}"))
    rule = {"when": {"models": ["gpt-4o"]}, "action": "escalate"}
    pol = ok(gw.api("POST", "/api/policies", json={"name": "big", "scope": "workspace", "rules": [rule]}), 201)
    ok(gw.api("PUT", f"/api/policies/{pol['id']}", json={"name": "bigger", "scope": "workspace", "rules": [rule]}))
    ok(gw.api("POST", "/api/analytics/properties", json={"name": "team"}), 201)
    ok(gw.api("POST", "/api/analytics/properties", json={"name": "team"}))  # declared already: no event
    hook = ok(gw.api("POST", "/api/webhooks", json={"url": "http://127.0.0.1:9/alerts"}), 201)
    secrets.append(hook["secret"])
    ok(gw.api("POST", f"/api/webhooks/{hook['id']}/test"), 202)
    ok(gw.api("DELETE", f"/api/webhooks/{hook['id']}"))
    secrets.append(SIGNER_KEY[2:])
    signer = ok(gw.api("POST", "/api/payment-signers", json={"name": "wallet", "private_key": SIGNER_KEY}), 201)
    ok(gw.api("DELETE", f"/api/payment-signers/{signer['id']}"))
    ok(gw.api("DELETE", f"/api/payment-signers/{signer['id']}"))  # revoked already
    endpoint = ok(
        gw.api(
            "POST",
            "/api/paid-endpoints",
            json={"slug": "sum", "agent_id": "flow", "price_usd": "0.01", "pay_to": PAY_TO},
        ),
        201,
    )
    ok(gw.api("PATCH", f"/api/paid-endpoints/{endpoint['id']}", json={"price_usd": "0.02"}))
    ok(gw.api("DELETE", f"/api/paid-endpoints/{endpoint['id']}"))
    # A run, paused, resumed and cancelled; and an escalated call's approval decided, another's denied.
    headers = {"alephant-run-id": "run-audit", "x-request-id": "call-1"}
    assert gw.v1("POST", "/v1/chat/completions", json=_chat(), headers=headers).status_code == 200
    for verb in ("pause", "resume", "cancel"):
        ok(gw.api("POST", f"/api/runs/run-audit/{verb}", json={"reason": f"{verb} it"}))
    for n, verb in enumerate(("approve", "deny")):
        held = gw.v1(
            "POST", "/v1/chat/completions", json=_chat("gpt-4o", f"ask {n}"), headers={"x-request-id": f"esc-{n}"}
        )
        assert held.status_code == 403, held.text
        ok(gw.api("POST", f"/api/approvals/{held.json()['error']['approval_id']}/{verb}", json={"comment": "ok"}))
    ok(gw.api("DELETE", f"/api/policies/{pol['id']}"), 200)
    mine = ok(gw.api("POST", "/api/departments", json={"name": "Labelled"}, headers={"x-request-id": "my-req-1"}), 201)

    events = all_events(gw)
    control = [e for e in reversed(events) if not e["action"].startswith("decision.")]
    assert [e["action"] for e in control] == [
        "department.create",
        "agent.create",
        "agent.create",
        "agent.set_runtime",
        "virtual_key.create",
        "virtual_key.revoke",
        "provider_key.create",
        "provider_key.revoke",
        "price_override.create",
        "budget.create",
        "budget.delete",
        "rate_limit.create",
        "rate_limit.delete",
        "policy.create",
        "policy.update",
        "indexed_property.create",
        "webhook.create",
        "webhook.test",
        "webhook.delete",
        "payment_signer.create",
        "payment_signer.revoke",
        "paid_endpoint.create",
        "paid_endpoint.update",
        "paid_endpoint.disable",
        "run.pause",
        "run.resume",
        "run.cancel",
        "approval.approve",
        "approval.deny",
        "policy.delete",
        "department.create",
    ]
    assert {e["action"] for e in events if e["action"].startswith("decision.")} == {"decision.escalated"}
    last = control[-1]
    assert last["target"] == {"type": "department", "id": mine["id"]} and last["before"] is None
    assert last["after"]["name"] == "Labelled" and last["request_id"] == "my-req-1"
    assert last["actor"]["type"] == "admin_token" and last["actor"]["role"] == "owner"
    assert last["client_ip"] == "127.0.0.1"
    by = {e["action"]: e for e in control}
    update = by["policy.update"]
    assert (update["before"]["name"], update["after"]["name"]) == ("big", "bigger")
    assert {"field": "name", "from": "big", "to": "bigger"} in update["diff"]
    assert {"field": "version", "from": 1, "to": 2} in update["diff"]
    assert by["virtual_key.create"]["after"]["key"] == key["key"][:10] + "…"
    assert by["virtual_key.revoke"]["before"]["revoked_at"] is None and by["virtual_key.revoke"]["after"]["revoked_at"]
    assert by["webhook.create"]["after"]["secret"] == hook["secret"][:10] + "…"
    assert by["agent.set_runtime"]["after"]["runtime"]["auth_header"] == {"name": "X-Key", "set": True}
    assert by["run.cancel"]["before"]["state"] == "running" and by["run.cancel"]["after"]["state"] == "cancelled"
    assert (
        by["approval.approve"]["before"]["status"] == "pending" and by["approval.deny"]["after"]["status"] == "denied"
    )
    assert by["payment_signer.create"]["after"]["address"] == signer["address"]
    assert all(e["actor"]["id"] == last["actor"]["id"] for e in control)

    stored = orjson.dumps(stored_rows(gw, gw.workspace), default=str, option=orjson.OPT_NON_STR_KEYS).decode()
    for secret in secrets:
        assert secret not in stored, secret[:12]
    assert SIGNER_KEY[2:12] not in stored  # not even a private key's prefix

    report = ok(gw.api("GET", "/api/audit/verify"))
    assert report["ok"] and report["events"] == len(events) and report["broken"] is None


def _chat(model: str = "gpt-4o-mini", text: str = "hi") -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}]}


def test_a_blocked_call_is_an_audit_event_of_its_run(gw: Harness) -> None:
    rule = {"when": {"models": ["gpt-4o"]}, "action": "block"}
    pol = ok(gw.api("POST", "/api/policies", json={"name": "no-4o", "scope": "workspace", "rules": [rule]}), 201)
    headers = {"alephant-run-id": "run-blocked", "x-request-id": "blocked-1"}
    resp = gw.v1("POST", "/v1/chat/completions", json=_chat("gpt-4o"), headers=headers)
    assert resp.status_code == 403 and resp.json()["error"]["code"] == "policy_blocked"
    assert (
        gw.v1("POST", "/v1/chat/completions", json=_chat(), headers={"alephant-run-id": "run-blocked"}).status_code
        == 200
    )
    run = gw.get("/api/runs/run-blocked")
    (event,) = run["audit_events"]
    check = next(s for s in run["steps"] if s["kind"] == "policy_check")
    assert event["action"] == "decision.blocked" and event["run_id"] == "run-blocked"
    assert event["step_id"] == check["id"] and event["request_id"] == "blocked-1"
    assert event["after"]["decided_by"] == {
        "kind": "policy",
        "id": pol["id"],
        "version": 1,
        "rule": pol["rules"][0]["id"],
    }
    assert event["actor"] == {"type": "system", "id": "policy", "role": None}
    # From the run an auditor finds who set the policy that decided it.
    (created,) = all_events(gw, target_type="policy", target_id=pol["id"])
    assert created["action"] == "policy.create" and created["actor"]["type"] == "admin_token"
    assert [e["seq"] for e in all_events(gw, action="decision.*")] == [event["seq"]]
    assert all_events(gw, run_id="run-blocked") == [event]
    # A refused call outside a run has no policy_check step: its request row is the event's source.
    lone = gw.v1("POST", "/v1/chat/completions", json=_chat("gpt-4o"), headers={"x-request-id": "blocked-alone"})
    assert lone.status_code == 403
    (alone,) = all_events(gw, target_id="blocked-alone")
    assert (alone["action"], alone["run_id"], alone["step_id"]) == ("decision.blocked", None, None)
    assert alone["request_id"] == "blocked-alone" and alone["after"]["caller"]["department_id"] == gw.department


def test_a_policy_check_step_an_agent_posts_is_no_decision_in_the_audit_log(gw: Harness) -> None:
    """The step API takes steps of any kind, policy_check too; only the gateway's own checks are decisions."""
    resp = gw.v1("POST", "/v1/runs", json={"id": "run-forged"})
    assert resp.status_code == 201, resp.text
    forged = {"kind": "policy_check", "name": "looks official", "attributes": {"decision": "blocked"}}
    resp = gw.v1("POST", "/v1/runs/run-forged/steps", json={"steps": [forged]})
    assert resp.status_code in (200, 201), resp.text
    run = gw.get("/api/runs/run-forged")
    assert [s["kind"] for s in run["steps"]] == ["policy_check"]  # recorded as the agent's step
    assert run["audit_events"] == [] and all_events(gw, action="decision.*") == []


def test_failed_authentications_are_rate_limited(gw: Harness) -> None:
    stranger = "adm-" + os.urandom(16).hex()
    for _ in range(5):
        assert HTTP.get(gw.url + "/api/runs", headers={"authorization": f"Bearer {stranger}"}).status_code == 401
    other = "adm-" + os.urandom(16).hex()
    assert HTTP.get(gw.url + "/api/runs", headers={"authorization": f"Bearer {other}"}).status_code == 401
    gw.get("/api/audit-logs")  # a read flushes the pipeline: the failures' events (queued, not waited for) are in
    rows = [r for r in stored_rows(gw, INSTALLATION) if r["actor_id"] in (stranger[:10], other[:10])]
    assert sorted((r["actor_id"], r["after"]["suppressed"]) for r in rows) == sorted(
        [(stranger[:10], 0), (other[:10], 0)]
    )
    assert all(r["action"] == "auth.failed" and r["after"]["path"] == "/api/runs" for r in rows)
    assert stranger not in orjson.dumps(rows, default=str, option=orjson.OPT_NON_STR_KEYS).decode()


def test_a_revoked_tokens_failures_are_its_workspaces_events(
    db_url: str, tmp_path: Path, upstream: ServerThread
) -> None:
    from click.testing import CliRunner

    from agentledger.cli import main

    with running_gateway(db_url, tmp_path, upstream, **FAST) as gw:
        cli = CliRunner()
        args = ["--db", gw.settings.database_url, "--data-dir", gw.settings.data_dir]
        made = cli.invoke(main, [*args, "admin-token", "create", "--workspace", gw.workspace, "--role", "viewer"])
        token = orjson.loads(made.output)["token"]
        tokens = orjson.loads(
            cli.invoke(main, [*args, "admin-token", "list", "--workspace", gw.workspace, "--json"]).output
        )
        viewer = next(t["id"] for t in tokens["data"] if t["role"] == "viewer")
        assert cli.invoke(main, [*args, "admin-token", "revoke", viewer, "--workspace", gw.workspace]).exit_code == 0
        for _ in range(3):
            assert HTTP.get(gw.url + "/api/runs", headers={"authorization": f"Bearer {token}"}).status_code == 401
        events = all_events(gw)
        assert [e["action"] for e in reversed(events)] == ["admin_token.create", "admin_token.revoke", "auth.failed"]
        created, revoked, failed = reversed(events)
        assert created["actor"]["type"] == "cli" and created["target"] == {"type": "admin_token", "id": viewer}
        assert failed["actor"] == {"type": "admin_token", "id": viewer, "role": "viewer"}
        assert failed["after"]["token_prefix"] == token[:10] and failed["after"]["suppressed"] == 0
        assert token not in orjson.dumps(events).decode()


def test_the_export_verifies_offline_and_a_changed_line_does_not(gw: Harness, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from agentledger.cli import main

    for n in range(5):
        ok(gw.api("POST", "/api/departments", json={"name": f"Dep {n}"}), 201)
    trail = gw.server.config.app.state.components.audit
    loop = gw.server.server.servers[0].get_loop()
    assert asyncio.run_coroutine_threadsafe(trail.checkpoint(1, gw.workspace), loop).result(timeout=5) == 1
    ok(gw.api("POST", "/api/departments", json={"name": "After the checkpoint"}), 201)
    key = gw.get("/api/audit/public-key")
    pem = tmp_path / "key.pem"
    pem.write_text(key["public_key"])
    exported = HTTP.get(gw.url + "/api/audit-logs/export", headers={"authorization": f"Bearer {gw.admin}"})
    assert exported.status_code == 200 and exported.headers["content-type"] == "application/x-ndjson"
    assert exported.headers["audit-head"].startswith("6:") and "seq=5;" in exported.headers["audit-checkpoint"]
    pinned = {key["key_id"]: load_public(key["public_key"])}
    report = verify_export(read_jsonl(exported.text.splitlines()), pinned)
    assert report.ok and report.events == 6 and report.checkpoints == 1 and report.unsigned == 1, report
    as_csv = HTTP.get(gw.url + "/api/audit-logs/export?format=csv", headers={"authorization": f"Bearer {gw.admin}"})
    assert as_csv.headers["content-type"].startswith("text/csv")
    assert verify_export(read_csv(as_csv.text.splitlines(keepends=True)), pinned).ok

    path = tmp_path / "export.jsonl"
    path.write_bytes(exported.content)
    runner = CliRunner()
    good = runner.invoke(main, ["audit", "verify", "--file", str(path), "--public-key", str(pem)])
    assert good.exit_code == 0, good.output
    assert "chain verified, 6 events" in good.output
    lines = exported.text.splitlines()
    fourth = next(i for i, line in enumerate(lines) if '"seq":4,' in line)
    lines[fourth] = lines[fourth].replace("Dep 3", "Dep X")
    path.write_text("\n".join(lines) + "\n")
    bad = runner.invoke(main, ["audit", "verify", "--file", str(path), "--public-key", str(pem), "--json"])
    assert bad.exit_code == 1
    assert orjson.loads(bad.output)["broken"]["seq"] == 4 and orjson.loads(bad.output)["broken"]["problem"] == "altered"

    # The same from the CLI against the database: the key, an export, a verification with the pinned key, a listing.
    db = ["--db", gw.settings.database_url, "--data-dir", gw.settings.data_dir]
    ws = ["--workspace", gw.workspace]
    assert runner.invoke(main, [*db, "audit", "public-key", *ws]).output == key["public_key"]
    made = runner.invoke(main, [*db, "departments", "create", "--name", "From the CLI", *ws])
    assert made.exit_code == 0, made.output
    assert runner.invoke(main, [*db, "audit", "checkpoint", *ws]).output == "signed 1 checkpoint\n"
    out = tmp_path / "cli-export.csv"
    exported_cli = runner.invoke(main, [*db, "audit", "export", *ws, "--format", "csv", "--output", str(out)])
    assert exported_cli.exit_code == 0, exported_cli.output
    by_file = runner.invoke(main, ["audit", "verify", "--file", str(out), "--public-key", str(pem), "--json"])
    assert by_file.exit_code == 0 and orjson.loads(by_file.output)["events"] == 7, by_file.output
    in_db = runner.invoke(main, [*db, "audit", "verify", *ws, "--public-key", str(pem), "--json"])
    assert in_db.exit_code == 0 and orjson.loads(in_db.output)["checkpoints"] == 2, in_db.output
    (latest,) = orjson.loads(runner.invoke(main, [*db, "audit", "list", *ws, "--limit", "1", "--json"]).output)["data"]
    assert latest["action"] == "department.create" and latest["actor"]["type"] == "cli"
    assert latest["after"]["name"] == "From the CLI" and "@" in latest["actor"]["id"]


class FlakyStore(SQLStore):
    """A store whose trace writes fail while `down` (an outage between an admin's change and its audit event), and
    whose department writes fail while `refusing` (an outage that refuses the change itself)."""

    down = False
    refusing = False

    async def write_batch(self, events: Any) -> WriteResult:
        if self.down:
            return WriteResult.FAILURE
        return await super().write_batch(events)

    async def create_department(self, workspace_id: str, department_id: str, name: str, now: Any) -> None:
        if self.refusing:
            raise StoreUnavailable("The database is unavailable; retry shortly.")
        await super().create_department(workspace_id, department_id, name, now)


def test_an_audit_event_that_meets_an_outage_is_spooled_and_lands_once(tmp_path: Path, upstream: ServerThread) -> None:
    cfg = Settings(data_dir=str(tmp_path), db_url=f"sqlite:///{tmp_path / 'db'}", audit_checkpoint_interval_s=3600.0)
    ids = provision(cfg, upstream.url)
    store = FlakyStore(cfg.database_url)
    with ServerThread(create_app(cfg, store=store)) as server:
        gw = Harness(server.url, fake=None, server=server, settings=cfg, **ids)  # type: ignore[arg-type]
        store.refusing = True
        refused = gw.api("POST", "/api/departments", json={"name": "Refused"})
        assert (refused.status_code, refused.json()["error"]["code"]) == (503, "store_unavailable")
        store.refusing = False
        store.down = True
        made = ok(gw.api("POST", "/api/departments", json={"name": "During"}), 201)  # answered: spooled, durable
        assert (tmp_path / "spool" / "trace.spool").stat().st_size > 0  # (not only journaled: `submit` waits)
        store.down = False
        deadline = time.monotonic() + 10
        while not (events := all_events(gw)):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert [(e["action"], e["target"]["id"]) for e in events] == [("department.create", made["id"])]  # only
        assert ok(gw.api("GET", "/api/audit/verify"))["ok"]

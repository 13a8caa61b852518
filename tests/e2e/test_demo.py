"""`agentledger demo` against a real `agentledger serve` (subprocesses, as a newcomer runs them), then the books it
leaves, read back through the API: exact counts, so a demo that silently stops making something fails here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.test_cli_serve import _clean_env, printed, serve, stop

pytestmark = pytest.mark.e2e

RUNS = 23  # 21 named by the demo (13 of them backfilled nightlies) and the two sales' runs the endpoint started
STEPS = 73
AGENT_RUNS = {"trip-planner": 16, "support-bot": 4, "shopper": 1, "summarizer-flow": 2}


def _steps(nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for node in nodes:
        out += [node, *_steps(node.get("children") or [])]
    return out


def test_demo_fills_a_fresh_instance(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    # The outbound purchase buys from this gateway's own endpoint, on loopback: the allow-list must name it.
    with serve(data_dir, "demo", "--set", "x402_fetch_allow_hosts=127.0.0.1") as srv:
        admin = printed(srv.out(), "admin token")
        port = srv.url.rsplit(":", 1)[1]
        demo = subprocess.run(
            [sys.executable, "-m", "agentledger", "--data-dir", str(data_dir), "--port", port, "demo"],
            capture_output=True,
            text=True,
            env=_clean_env(),
            timeout=60,
        )
        assert demo.returncode == 0, demo.stdout + demo.stderr
        assert f"open the dashboard   {srv.url}/" in demo.stdout
        assert "note:" not in demo.stdout, demo.stdout

        api = httpx.Client(base_url=srv.url, headers={"authorization": f"Bearer {admin}"}, trust_env=False)
        runs = api.get("/api/runs", params={"limit": 1000}).json()["data"]
        assert len(runs) == RUNS
        by_agent: dict[str, int] = {}
        for run in runs:
            by_agent[run["agent_id"]] = by_agent.get(run["agent_id"], 0) + 1
        assert by_agent == AGENT_RUNS
        assert sum(r["totals"]["steps"] for r in runs) == STEPS

        steps = [s for r in runs for s in _steps(api.get(f"/api/runs/{r['id']}").json()["steps"])]
        assert len(steps) == STEPS
        payments = sorted((s["payment"]["direction"], s["payment"]["status"]) for s in steps if s["kind"] == "payment")
        # each sale: its proof verified, then settled (two steps); the purchase: one settled outbound payment
        assert payments == [("inbound", "settled")] * 2 + [("inbound", "verified")] * 2 + [("outbound", "settled")]
        assert {s["kind"] for s in steps} >= {"model_call", "tool_call", "api_call", "workflow_step", "policy_check"}
        assert any(s.get("branch") == "refund" for s in steps)

        summary = api.get("/api/finance/summary", params={"group_by": "endpoint"}).json()
        assert summary["totals"]["revenue_usd"] == "0.040000000"
        assert summary["totals"]["outbound_payments_usd"] == "0.020000000"

        decisions = {e["action"] for e in api.get("/api/audit-logs", params={"action": "decision.*"}).json()["data"]}
        assert {"decision.blocked", "decision.escalated"} <= decisions
        # Each policy's hits (the Policies view): the monitor-mode trial would have blocked every call that named no
        # max_tokens or more than 2,000 (the ticket asking 4,096 among them), and changed none of them.
        hits = {p["id"]: p["hits_24h"] for p in api.get("/api/policies").json()["data"]}
        assert hits == {
            "demo-support-small-models": {"enforce": 1, "monitor": 0},
            "demo-opus-approval": {"enforce": 2, "monitor": 0},
            "demo-long-outputs": {"enforce": 0, "monitor": 11},
        }
        trial = api.get("/api/policies/demo-long-outputs/hits", params={"limit": 1000}).json()["data"]
        assert {(h["mode"], h["decision"], h["rule_id"]) for h in trial} == {("monitor", "blocked", "max-2k")}
        approvals = sorted(a["status"] for a in api.get("/api/approvals").json()["data"])
        assert approvals == ["approved", "pending"]
        assert api.get("/api/audit/verify").json()["ok"] is True
        stop(srv)

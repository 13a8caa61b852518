"""The CLI's budgets, rate limits, ledger and alerts: what it creates governs a gateway on the same books, what
it lists is what the API shows, and a bad invocation is one error line, never a traceback.

The CLI runs against the store, not a gateway: its budget figures are the ledger's sums for the current window,
which is what a gateway's counters are rebuilt from on start, so a gateway started afterwards shows the same.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from starlette.testclient import TestClient

from agentledger.app import create_app
from agentledger.cli import main
from agentledger.config import load_settings
from tests.e2e.test_cli_manage import ISO, run_all

pytestmark = pytest.mark.e2e

ACME = ("--workspace", "acme")


def _create(data_dir: Path, *args: str) -> Any:
    result = CliRunner().invoke(main, ["--data-dir", str(data_dir), *args], env={"AGENTLEDGER_DB_URL": None})
    assert result.exit_code == 0, (result.output, result.exception)
    return json.loads(result.stdout)


@dataclass(frozen=True)
class Books:
    data_dir: Path
    owner_token: str
    key: str


def _gateway(data_dir: Path) -> TestClient:
    return TestClient(create_app(load_settings({"data_dir": str(data_dir), "bootstrap": False}, environ={})))


@pytest.fixture(scope="module")
def books(tmp_path_factory: pytest.TempPathFactory) -> Books:
    data_dir = tmp_path_factory.mktemp("cli-budgets") / "data"
    ws = _create(data_dir, "workspaces", "create", "Acme", "--id", "acme")
    _create(data_dir, "departments", "create", *ACME, "--name", "Sales", "--id", "sales")
    _create(data_dir, "agents", "create", *ACME, "--name", "Closer", "--department", "sales", "--id", "closer")
    key = _create(data_dir, "keys", "create", *ACME, "--agent", "closer")
    _create(data_dir, "provider-keys", "create", *ACME, "--kind", "mock", "--name", "offline")
    return Books(data_dir, ws["owner_token"], key["key"])


def test_budgets_and_rate_limits_are_created_listed_and_govern_a_gateway(books: Books) -> None:
    department = _create(
        books.data_dir,
        "budgets",
        "create",
        *ACME,
        "--id",
        "sales-daily",
        "--scope",
        "department",
        "--scope-value",
        "sales",
        "--limit-usd",
        "25.00",
        "--period",
        "24h",
        "--threshold",
        "80",
        "--threshold",
        "50",
    )
    assert department["limit_nanos"] == 25_000_000_000 and department["limit_usd"] == "25.000000000"
    assert department["action"] == "block_requests" and department["thresholds"] == [50, 80]
    assert (
        department["status"]["spent_usd"] == "0.000000000" and department["status"]["scope_label"] == "department:sales"
    )
    assert ISO.match(department["anchor"]) and department["anchor"].endswith("T00:00:00+00:00")
    # A tiny alert_only budget: the first call crosses every threshold, and is never refused.
    tiny = _create(
        books.data_dir,
        "budgets",
        "create",
        *ACME,
        "--id",
        "closer-tiny",
        "--scope",
        "agent",
        "--value",
        "closer",
        "--limit-usd",
        "0.000000001",
        "--period",
        "total",
        "--action",
        "alert_only",
        "--name",
        "canary",
    )
    assert tiny["status"]["window_end"] is None and tiny["name"] == "canary"
    per_run = _create(
        books.data_dir,
        "budgets",
        "create",
        *ACME,
        "--scope",
        "property",
        "--property",
        "customer",
        "--scope-value",
        "acme",
        "--limit-usd",
        "1",
        "--period",
        "run",
    )
    assert per_run["id"].startswith("bud") and per_run["status"] is None
    rate = _create(
        books.data_dir,
        "rate-limits",
        "create",
        *ACME,
        "--id",
        "rl-agent",
        "--scope",
        "agent",
        "--value",
        "closer",
        "--rpm",
        "600",
        "--concurrent",
        "4",
    )
    assert (rate["requests_per_minute"], rate["tokens_per_minute"], rate["concurrent"]) == (600, None, 4)

    # A gateway on the same books applies them: the call is admitted, reserved and settled in the ledger.
    with _gateway(books.data_dir) as client:
        chat = client.post(
            "/v1/chat/completions",
            headers={"authorization": f"Bearer {books.key}"},
            json={"model": "gpt-4o-mini", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]},
        )
        assert chat.status_code == 200, chat.text
        assert chat.headers["alephant-policy-decision"] == "allowed"
        assert chat.headers["alephant-budget-scope"] == "agent:closer"  # the tightest of the two that apply
        cost = Decimal(chat.headers["alephant-cost-usd"])
        assert cost > 0

    budgets, budgets_json, limits, ledger, ledger_json, alerts = run_all(
        books.data_dir,
        ("budgets", "list", *ACME),
        ("budgets", "list", *ACME, "--json"),
        ("rate-limits", "list", *ACME),
        ("ledger", *ACME, "--budget", "sales-daily"),
        ("ledger", *ACME, "--json"),
        ("alerts", *ACME),
    )
    table = {r["id"]: r for r in budgets.table()}
    assert list(table)[:2] == ["sales-daily", "closer-tiny"]
    assert table["sales-daily"]["spent_usd"] == f"{cost:.9f}" and table["sales-daily"]["reserved_usd"] == "0.000000000"
    assert table["sales-daily"]["remaining_usd"] == f"{Decimal(25) - cost:.9f}"
    assert table["closer-tiny"]["remaining_usd"] == "0.000000000" and table["closer-tiny"]["window_end"] == "-"
    assert table[per_run["id"]]["spent_usd"] == "-" and table[per_run["id"]]["scope"] == "property.customer:acme"
    assert [(r["id"], r["requests_per_minute"], r["concurrent"]) for r in limits.table()] == [("rl-agent", "600", "4")]

    # Per budget: the call's settle (the cost spent), and its reserve before it when the call outlived the pipeline's
    # interval (else reserving and settling net out and the reservation is never written: docs/budgets.md).
    entries = ledger.table()
    assert [e["kind"] for e in entries] in (["settle"], ["settle", "reserve"])
    assert entries[0]["spent_usd"] == f"{cost:.9f}"
    assert sum(Decimal(e["reserved_usd"]) for e in entries) == 0
    every = ledger_json.json()["data"]
    assert {e["budget_id"] for e in every} == {"sales-daily", "closer-tiny"} and all(ISO.match(e["at"]) for e in every)
    assert sum(e["reserved_delta"] for e in every) == 0
    crossed = alerts.table()
    assert sorted(int(a["threshold"]) for a in crossed) == [50, 80, 100]
    assert {(a["budget_id"], a["window_key"], a["limit_usd"]) for a in crossed} == {
        ("closer-tiny", "total", "0.000000001")
    }

    # The figures are the ledger's sums: a gateway rebuilding its counters from the ledger shows the same.
    with _gateway(books.data_dir) as client:
        auth = {"authorization": f"Bearer {books.owner_token}"}
        api = client.get("/api/budgets", headers=auth).json()
        api_limits = client.get("/api/rate-limits", headers=auth).json()
        api_ledger = client.get("/api/ledger", headers=auth).json()
    assert budgets_json.json() == api
    assert run_all(books.data_dir, ("rate-limits", "list", *ACME, "--json"))[0].json() == api_limits
    assert ledger_json.json() == api_ledger


def test_delete_commands_delete_and_the_gateway_stops_applying(books: Books) -> None:
    _create(
        books.data_dir,
        "budgets",
        "create",
        *ACME,
        "--id",
        "frozen",
        "--scope",
        "workspace",
        "--limit-usd",
        "0",
        "--period",
        "30d",
    )
    _create(
        books.data_dir, "rate-limits", "create", *ACME, "--id", "rl-gone", "--scope", "workspace", "--tpm", "1000000"
    )
    body = {"model": "gpt-4o-mini", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
    with _gateway(books.data_dir) as client:
        refused = client.post("/v1/chat/completions", headers={"authorization": f"Bearer {books.key}"}, json=body)
    assert refused.status_code == 402, refused.text
    assert refused.json()["error"]["code"] == "budget_exceeded" and "'frozen'" in refused.json()["error"]["message"]
    assert refused.headers["alephant-policy-decision"] == "blocked"

    deleted = run_all(
        books.data_dir,
        ("budgets", "delete", "frozen", *ACME),
        ("rate-limits", "delete", "rl-gone", *ACME, "--json"),
    )
    assert all(r.code == 0 and not r.err for r in deleted), deleted
    assert deleted[0].out.startswith("deleted budget frozen in workspace acme")
    assert deleted[1].json() == {"id": "rl-gone", "deleted": True}
    budgets, limits, again = run_all(
        books.data_dir,
        ("budgets", "list", *ACME, "--json"),
        ("rate-limits", "list", *ACME, "--json"),
        ("budgets", "delete", "frozen", *ACME),
    )
    assert "frozen" not in {b["id"] for b in budgets.json()["data"]}
    assert "rl-gone" not in {r["id"] for r in limits.json()["data"]}
    assert again.code == 1 and again.err.strip().endswith("Budget 'frozen' does not exist in workspace 'acme'.")
    with _gateway(books.data_dir) as client:
        answered = client.post("/v1/chat/completions", headers={"authorization": f"Bearer {books.key}"}, json=body)
    assert answered.status_code == 200, answered.text


# (arguments, exit code, what the one error line says). Exit 2 is click's usage error, 1 anything else.
_BUDGET = ("budgets", "create", *ACME, "--limit-usd", "5", "--period", "24h")
BAD = [
    (("budgets", "create", *ACME, "--scope", "workspace", "--period", "24h"), 2, "Missing option '--limit-usd'"),
    ((*_BUDGET, "--scope", "galaxy"), 2, "'galaxy' is not one of"),
    ((*_BUDGET, "--scope", "department", "--value", "nope"), 2, "the department 'nope' does not exist"),
    ((*_BUDGET, "--scope", "agent"), 2, "'--scope-value'"),
    ((*_BUDGET, "--scope", "workspace", "--value", "x"), 2, "A workspace scope takes no 'scope_value'"),
    ((*_BUDGET, "--scope", "property", "--value", "acme"), 2, "'--property'"),
    ((*_BUDGET, "--scope", "agent", "--value", "closer", "--action", "pause_all"), 2, "'--action'"),
    ((*_BUDGET, "--scope", "workspace", "--action", "soft_throttle"), 2, "'--throttle-rpm'"),
    ((*_BUDGET, "--scope", "workspace", "--threshold", "0"), 2, "'--threshold'"),
    ((*_BUDGET, "--scope", "workspace", "--anchor", "yesterday"), 2, "'--anchor'"),
    (
        ("budgets", "create", *ACME, "--scope", "workspace", "--period", "24h", "--limit-usd", "lots"),
        2,
        "'--limit-usd'",
    ),
    ((*_BUDGET, "--scope", "workspace", "--id", "taken"), 1, "already exists"),
    (
        ("budgets", "create", "--workspace", "nope", "--scope", "workspace", "--limit-usd", "1", "--period", "7d"),
        1,
        "Workspace 'nope' does not exist",
    ),
    (
        ("rate-limits", "create", *ACME, "--scope", "workspace"),
        2,
        "Missing option '--rpm' or '--tpm' or '--concurrent'",
    ),
    (("rate-limits", "create", *ACME, "--scope", "workspace", "--rpm", "0"), 2, "'--rpm'"),
    (("rate-limits", "delete", "rl-nope", *ACME), 1, "Rate limit 'rl-nope' does not exist"),
    (("ledger", *ACME, "--budget", "not an id"), 2, "'--budget'"),
    (("ledger", *ACME, "--limit", "0"), 2, "'--limit'"),
    (("alerts", "--workspace", "nope"), 1, "Workspace 'nope' does not exist"),
]


def test_bad_invocations_are_one_error_line_never_a_traceback(books: Books) -> None:
    _create(books.data_dir, *_BUDGET, "--scope", "workspace", "--id", "taken", "--action", "alert_only")
    ran = run_all(books.data_dir, *[argv for argv, _, _ in BAD])
    for (_, code, message), r in zip(BAD, ran, strict=True):
        assert "Traceback" not in r.err and r.out == "", r
        last = r.err.strip().splitlines()[-1]
        assert r.code == code and last.startswith("Error: ") and message in last, r
        assert [line for line in r.err.splitlines() if line.startswith("Error")] == [last], r

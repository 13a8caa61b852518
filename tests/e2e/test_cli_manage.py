"""The CLI lists and revokes what it creates, and never answers a bad invocation with a traceback.

Every command runs as a real subprocess (`python -m agentledger ...`), the way a user runs it; independent
invocations run side by side to keep the module fast. One data directory serves the whole module: the
fixture creates a workspace with one of everything, the list tests read it, the revoke test runs last.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from starlette.testclient import TestClient

from agentledger.app import create_app
from agentledger.cli import main
from agentledger.config import load_settings

pytestmark = pytest.mark.e2e

ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?\+00:00$")


@dataclass(frozen=True)
class Ran:
    argv: Sequence[str]
    code: int
    out: str
    err: str

    def json(self) -> Any:
        assert self.code == 0, self
        return json.loads(self.out)

    def table(self) -> list[dict[str, str]]:
        """The printed table as rows keyed by the header (cells never contain spaces here)."""
        assert self.code == 0 and not self.err, self
        header, *lines = [line.split() for line in self.out.splitlines()]
        assert all(len(line) == len(header) for line in lines), self.out
        return [dict(zip(header, line, strict=True)) for line in lines]


def run_all(data_dir: Path, *invocations: Sequence[str]) -> list[Ran]:
    """Runs each invocation in its own `python -m agentledger` process, all at once."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTLEDGER_")}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "agentledger", "--data-dir", str(data_dir), *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for argv in invocations
    ]
    ran = []
    for argv, proc in zip(invocations, procs, strict=True):
        out, err = proc.communicate(timeout=60)
        ran.append(Ran(argv, proc.returncode, out, err))
    return ran


@dataclass(frozen=True)
class Books:
    data_dir: Path
    owner_token: str
    agent_key_id: str
    department_key_id: str
    department_key: str
    provider_key_id: str
    price_id: str
    reader_token: str


def _create(data_dir: Path, *args: str) -> Any:
    result = CliRunner().invoke(main, ["--data-dir", str(data_dir), *args], env={"AGENTLEDGER_DB_URL": None})
    assert result.exit_code == 0, (result.output, result.exception)
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def books(tmp_path_factory: pytest.TempPathFactory) -> Books:
    data_dir = tmp_path_factory.mktemp("cli") / "data"
    ws = _create(data_dir, "workspaces", "create", "Acme", "--id", "acme")
    _create(data_dir, "workspaces", "create", "Beta", "--id", "beta")
    _create(data_dir, "departments", "create", "--workspace", "acme", "--name", "Sales", "--id", "sales")
    _create(data_dir, "departments", "create", "--workspace", "acme", "--name", "Ops", "--id", "ops")
    _create(
        data_dir,
        "agents",
        "create",
        "--workspace",
        "acme",
        "--name",
        "Closer",
        "--department",
        "sales",
        "--id",
        "closer",
    )
    agent_key = _create(data_dir, "keys", "create", "--workspace", "acme", "--agent", "closer", "--name", "closer-key")
    dep_key = _create(
        data_dir,
        "keys",
        "create",
        "--workspace",
        "acme",
        "--department",
        "ops",
        "--name",
        "ops-key",
        "--allow-model",
        "gpt-*",
    )
    pk = _create(
        data_dir,
        "provider-keys",
        "create",
        "--workspace",
        "acme",
        "--kind",
        "mock",
        "--name",
        "offline",
        "--model",
        "house-*",
    )
    price = _create(
        data_dir,
        "prices",
        "set",
        "--workspace",
        "acme",
        "--model",
        "house-model",
        "--input-mtok",
        "1",
        "--output-mtok",
        "2.5",
    )
    reader = _create(data_dir, "admin-token", "--workspace", "acme", "--role", "viewer", "--name", "reader")
    assert reader == {"workspace": "acme", "role": "viewer", "token": reader["token"]}
    return Books(
        data_dir,
        ws["owner_token"],
        agent_key["id"],
        dep_key["id"],
        dep_key["key"],
        pk["id"],
        price["id"],
        reader["token"],
    )


def test_list_commands_print_a_table_and_json(books: Books) -> None:
    acme = ("--workspace", "acme")
    ran = run_all(
        books.data_dir,
        ("workspaces", "list"),
        ("departments", "list", *acme),
        ("agents", "list", *acme),
        ("keys", "list", *acme),
        ("provider-keys", "list", *acme),
        ("prices", "list", *acme),
        ("admin-token", "list", *acme),
        ("keys", "list", *acme, "--json"),
        ("admin-token", "list", *acme, "--json"),
    )
    workspaces, departments, agents, keys, provider_keys, prices, tokens, keys_json, tokens_json = ran

    assert [(r["id"], r["name"]) for r in workspaces.table()] == [("acme", "Acme"), ("beta", "Beta")]
    assert [(r["id"], r["name"]) for r in departments.table()] == [("sales", "Sales"), ("ops", "Ops")]
    assert [(r["id"], r["department_id"], r["kind"]) for r in agents.table()] == [("closer", "sales", "ai")]
    assert [(r["id"], r["name"], r["agent_id"], r["department_id"], r["allowed_models"]) for r in keys.table()] == [
        (books.agent_key_id, "closer-key", "closer", "sales", "-"),
        (books.department_key_id, "ops-key", "-", "ops", "gpt-*"),
    ]
    assert [(r["id"], r["kind"], r["models"], r["revoked_at"]) for r in provider_keys.table()] == [
        (books.provider_key_id, "mock", "house-*", "-")
    ]
    assert [(r["id"], r["model"], r["input_mtok"], r["output_mtok"]) for r in prices.table()] == [
        (books.price_id, "house-model", "1", "2.5")
    ]
    assert [(r["name"], r["role"], r["revoked_at"]) for r in tokens.table()] == [
        ("owner", "owner", "-"),
        ("reader", "viewer", "-"),
    ]
    # Timestamps are ISO 8601 with a "T", in the table and in the JSON alike; secrets are never listed.
    for table in (workspaces, departments, agents, keys, provider_keys, prices, tokens):
        assert all(ISO.match(row["created_at"]) for row in table.table()), table.out
    keys_data = keys_json.json()["data"]
    assert [k["id"] for k in keys_data] == [books.agent_key_id, books.department_key_id]
    assert [k["created_at"] for k in keys_data] == [r["created_at"] for r in keys.table()]
    assert all(k["revoked_at"] is None and "key_hash" not in k and "key" not in k for k in keys_data)
    assert all("token_hash" not in t and "token" not in t for t in tokens_json.json()["data"])
    assert "secret" not in provider_keys.out and "api_key" not in provider_keys.out


def test_cli_timestamps_are_the_apis(books: Books) -> None:
    (cli,) = run_all(books.data_dir, ("departments", "list", "--workspace", "acme", "--json"))
    settings = load_settings({"data_dir": str(books.data_dir), "bootstrap": False}, environ={})
    with TestClient(create_app(settings)) as client:
        api = client.get("/api/departments", headers={"authorization": f"Bearer {books.owner_token}"}).json()
    assert cli.json() == api


def test_revoke_commands_revoke_and_the_lists_show_it(books: Books) -> None:
    acme = ("--workspace", "acme")
    tokens = run_all(books.data_dir, ("admin-token", "list", *acme, "--json"))[0].json()["data"]
    reader = next(t["id"] for t in tokens if t["name"] == "reader")

    revoked = run_all(
        books.data_dir,
        ("keys", "revoke", books.department_key_id, *acme),
        ("provider-keys", "revoke", books.provider_key_id, *acme, "--json"),
        ("admin-token", "revoke", reader, *acme),
    )
    assert all(r.code == 0 and not r.err for r in revoked), revoked
    assert revoked[0].out.startswith(f"revoked virtual key {books.department_key_id} in workspace acme")
    assert revoked[1].json() == {"id": books.provider_key_id, "revoked": True}
    assert revoked[2].out.startswith(f"revoked admin token {reader} in workspace acme")

    keys, provider_keys, tokens_after, again = run_all(
        books.data_dir,
        ("keys", "list", *acme, "--json"),
        ("provider-keys", "list", *acme, "--json"),
        ("admin-token", "list", *acme, "--json"),
        ("provider-keys", "revoke", books.provider_key_id, *acme),
    )
    revoked_at = {k["id"]: k["revoked_at"] for k in keys.json()["data"]}
    assert revoked_at[books.agent_key_id] is None and ISO.match(revoked_at[books.department_key_id])
    assert ISO.match(provider_keys.json()["data"][0]["revoked_at"])
    assert {t["name"]: t["revoked_at"] is not None for t in tokens_after.json()["data"]} == {
        "owner": False,
        "reader": True,
    }
    assert again.code == 1 and again.err.strip().endswith("or is already revoked.")

    # A gateway on the same books refuses what was revoked.
    settings = load_settings({"data_dir": str(books.data_dir), "bootstrap": False}, environ={})
    with TestClient(create_app(settings)) as client:
        chat = client.post(
            "/v1/chat/completions",
            headers={"authorization": f"Bearer {books.department_key}"},
            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert chat.status_code == 401, chat.text
        owner = client.get("/api/agents", headers={"authorization": f"Bearer {books.owner_token}"})
        assert owner.status_code == 200
        reader = client.get("/api/agents", headers={"authorization": f"Bearer {books.reader_token}"})
        assert reader.status_code == 401, reader.text


# (arguments, exit code, what the one error line says). Exit 2 is click's usage error, 1 anything else.
BAD = [
    (("keys", "create", "--workspace", "acme"), 2, "Missing option '--department' or '--agent'"),
    (("keys", "create", "--workspace", "nope", "--department", "sales"), 1, "Workspace 'nope' does not exist"),
    (("keys", "create", "--workspace", "acme", "--agent", "ghost"), 2, "'--agent': Agent 'ghost' does not exist"),
    (
        ("agents", "create", "--workspace", "acme", "--name", "X", "--department", "nope"),
        2,
        "'--department': Department 'nope' does not exist",
    ),
    (
        ("agents", "create", "--workspace", "acme", "--name", "X", "--department", "sales", "--kind", "robot"),
        2,
        "robot",
    ),
    (("workspaces", "create", "Again", "--id", "acme"), 1, "Workspace 'acme' already exists"),
    (("departments", "create", "--workspace", "acme", "--name", "Other", "--id", "sales"), 1, "already exists"),
    (
        ("prices", "set", "--workspace", "acme", "--model", "m", "--input-mtok", "lots", "--output-mtok", "1"),
        2,
        "'--input-mtok'",
    ),
    (("admin-token", "revoke", "tok_nope", "--workspace", "acme"), 1, "Admin token 'tok_nope' does not exist"),
    (("admin-token", "--workspace", "acme", "list"), 2, "after the subcommand"),
    (("--set", "port", "migrate"), 2, "expected NAME=VALUE"),
    (("--set", "colour=blue", "migrate"), 2, "unknown setting 'colour'"),
    (("--set", "log_level=loud", "serve"), 2, "'log_level'"),
    (("--db", "bogus://x", "migrate"), 2, "'--db'"),
    (("--db", "postgresql+psycopg://who:hunter2@127.0.0.1:1/none", "migrate"), 1, "who:***@127.0.0.1:1/none"),
]


def test_bad_invocations_are_one_error_line_never_a_traceback(books: Books) -> None:
    ran = run_all(books.data_dir, *[argv for argv, _, _ in BAD])
    for (_, code, message), r in zip(BAD, ran, strict=True):
        assert "Traceback" not in r.err and r.out == "", r
        last = r.err.strip().splitlines()[-1]
        assert r.code == code and last.startswith("Error: ") and message in last, r
        assert [line for line in r.err.splitlines() if line.startswith("Error")] == [last], r
    assert "hunter2" not in ran[-1].err

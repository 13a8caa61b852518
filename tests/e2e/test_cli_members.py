"""`agentledger members` and `agentledger tokens`: members created, listed and revoked (with their keys and PATs),
PATs printed once and refused by the API once revoked; each change an audit event with actor `cli`. In process
(click's runner) over one data directory; the API read through a TestClient on the same books."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from starlette.testclient import TestClient

from agentledger.app import create_app
from agentledger.cli import main
from agentledger.config import load_settings

pytestmark = pytest.mark.e2e


def cli(data_dir: Path, *args: str) -> Result:
    return CliRunner().invoke(main, ["--data-dir", str(data_dir), *args], env={"AGENTLEDGER_DB_URL": None})


def ok(data_dir: Path, *args: str) -> Any:
    result = cli(data_dir, *args)
    assert result.exit_code == 0, (result.output, result.exception)
    return json.loads(result.stdout) if result.stdout.lstrip().startswith(("{", "[")) else result.stdout


def test_members_and_tokens_from_the_cli(tmp_path: Path) -> None:
    d = tmp_path / "data"
    ws = ok(d, "workspaces", "create", "Acme", "--id", "acme")
    acme = ("--workspace", "acme")
    ok(d, "departments", "create", *acme, "--name", "Sales", "--id", "sales")
    boss = ok(d, "members", "create", *acme, "--email", "Boss@Example.com", "--role", "admin", "--name", "Boss")
    assert (boss["email"], boss["name"], boss["role"], boss["status"]) == (
        "boss@example.com",
        "Boss",
        "admin",
        "active",
    )
    lead = ok(
        d,
        "members",
        "create",
        *acme,
        "--email",
        "lead@example.com",
        "--role",
        "department_admin",
        "--department",
        "sales",
    )
    assert lead["department_id"] == "sales" and lead["name"] == "lead@example.com"

    bad = cli(d, "members", "create", *acme, "--email", "x@example.com", "--role", "department_admin")
    assert bad.exit_code == 2 and "needs a '--department'" in bad.output
    bad = cli(d, "members", "create", *acme, "--email", "x@example.com", "--department", "nope")
    assert bad.exit_code == 2 and "'--department': Department 'nope' does not exist" in bad.output
    bad = cli(d, "members", "create", *acme, "--email", "boss@example.com")
    assert bad.exit_code == 1 and "already exists" in bad.output
    bad = cli(d, "members", "create", *acme, "--email", "not-an-email")
    assert bad.exit_code == 2 and "'--email'" in bad.output

    table = ok(d, "members", "list", *acme).splitlines()
    assert table[0].split()[:4] == ["id", "email", "name", "role"]
    assert [line.split()[0] for line in table[1:]] == [boss["id"], lead["id"]]

    made = ok(
        d, "tokens", "create", *acme, "--member", boss["id"], "--scope", "write", "--scope", "read", "--name", "laptop"
    )
    secret = made["token"]
    assert secret.startswith("pat_") and made["scopes"] == ["read", "write"] and made["member_id"] == boss["id"]
    listed = ok(d, "tokens", "list", *acme, "--json")["data"]
    assert [(t["id"], t["token_prefix"]) for t in listed] == [(made["id"], secret[:10])]
    assert secret not in json.dumps(listed) and "token_hash" not in listed[0]
    bad = cli(d, "tokens", "create", *acme, "--member", "mem_nope", "--scope", "read")
    assert bad.exit_code == 2 and "does not exist or is revoked" in bad.output
    bad = cli(d, "tokens", "create", *acme, "--member", boss["id"], "--scope", "root")
    assert bad.exit_code == 2
    other = ok(d, "tokens", "create", *acme, "--member", lead["id"], "--scope", "admin", "--expires-in-days", "1")
    key = ok(d, "keys", "create", *acme, "--department", "sales")

    settings = load_settings({"data_dir": str(d), "bootstrap": False}, environ={})
    owner = {"authorization": f"Bearer {ws['owner_token']}"}
    with TestClient(create_app(settings)) as client:
        assert client.get("/api/agents", headers={"authorization": f"Bearer {secret}"}).status_code == 200
        assert client.get("/api/agents", headers={"authorization": f"Bearer {other['token']}"}).status_code == 200
        # A key the member owns (made through the API) goes with them.
        owned = client.post(
            "/api/virtual-keys", json={"department_id": "sales", "member_id": lead["id"]}, headers=owner
        )
        assert owned.status_code == 201, owned.text

    assert ok(d, "tokens", "revoke", made["id"], *acme).startswith(f"revoked token {made['id']} in workspace acme")
    assert ok(d, "tokens", "revoke", made["id"], *acme, "--json") == {"id": made["id"], "revoked": True}
    assert cli(d, "tokens", "revoke", "pat_nope", *acme).exit_code == 1
    assert ok(d, "members", "revoke", lead["id"], *acme, "--json") == {"id": lead["id"], "revoked": True}
    assert ok(d, "members", "revoke", lead["id"], *acme).startswith(f"revoked member {lead['id']}")

    # A gateway started after the revocations (a running one drops its cached principals within cache_ttl).
    with TestClient(create_app(settings)) as client:
        assert client.get("/api/agents", headers={"authorization": f"Bearer {secret}"}).status_code == 401
        assert client.get("/api/agents", headers={"authorization": f"Bearer {other['token']}"}).status_code == 401
        keys = {k["id"]: k for k in client.get("/api/virtual-keys", headers=owner).json()["data"]}
        assert keys[owned.json()["id"]]["revoked_at"] is not None and keys[key["id"]]["revoked_at"] is None
        assert client.get(f"/api/members/{lead['id']}", headers=owner).json()["status"] == "revoked"
        events = client.get("/api/audit-logs", headers=owner).json()["data"]
    mine = [(e["action"], e["target"]["id"]) for e in events if e["action"].startswith(("member.", "pat."))]
    assert sorted(mine) == sorted(
        [
            ("member.create", boss["id"]),
            ("member.create", lead["id"]),
            ("pat.create", made["id"]),
            ("pat.create", other["id"]),
            ("pat.revoke", made["id"]),
            ("member.revoke", lead["id"]),
        ]
    )
    assert all(e["actor"]["type"] == "cli" for e in events if e["action"].startswith(("member.", "pat.")))
    assert secret not in json.dumps(events)

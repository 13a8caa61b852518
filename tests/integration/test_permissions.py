"""The permission matrix walked: every mounted /api route with every role (and PAT scope) answers as
api/permissions.py says (allowed: never 401/403; forbidden: 403 with the error shape). A route without an
entry fails here. One gateway for the module (SQLite): the matrix does not depend on the store; a department
admin's reach over budgets, rate limits, policies and the ledger (filtered in the store too) on both stores."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agentledger.api.permissions import ROLES, ROUTES, grants, matrix_markdown
from agentledger.core.model import AdminPrincipal, Role
from agentledger.testing import ServerThread
from tests.conftest import BACKENDS
from tests.harness import HTTP, Harness, running_gateway
from tests.integration.permissions_support import api_routes, call, denied, fill, member, pat

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def gw(sqlite_url: str, tmp_path_factory: pytest.TempPathFactory, upstream: ServerThread) -> Iterator[Harness]:
    with running_gateway(sqlite_url, tmp_path_factory.mktemp("perm"), upstream) as harness:
        yield harness


@pytest.fixture(scope="module", params=BACKENDS)
def both(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, upstream: ServerThread
) -> Iterator[Harness]:
    """A gateway on SQLite and one on PostgreSQL, for what the store filters (a department admin's reach)."""
    url = str(request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url"))
    with running_gateway(url, tmp_path_factory.mktemp("perm-db"), upstream) as harness:
        yield harness


def test_every_mounted_api_route_has_an_entry_and_every_entry_a_route(gw: Harness) -> None:
    mounted = set(api_routes(gw.server.config.app))
    assert sorted(mounted - set(ROUTES)) == [], "routes without a permission (api/permissions.py ROUTES)"
    assert sorted(set(ROUTES) - mounted) == [], "stale entries in api/permissions.py ROUTES"


def test_docs_security_holds_the_matrix() -> None:
    assert matrix_markdown() in (ROOT / "docs" / "security.md").read_text(), (
        "regenerate: python -m agentledger.api.permissions"
    )


def test_every_route_with_every_role_and_scope(gw: Harness) -> None:
    principals: dict[str, tuple[str, AdminPrincipal]] = {
        "admin token (owner)": (gw.admin, AdminPrincipal(gw.workspace, "-", Role.OWNER))
    }
    for role in Role:
        extra = {"department_id": gw.department} if role is Role.DEPARTMENT_ADMIN else {}
        m = member(gw, role.value, **extra)
        token = pat(gw, m["id"], ["admin"])
        principals[f"{role.value} (admin scope)"] = (
            token,
            AdminPrincipal(gw.workspace, "-", role, m["id"], frozenset({"admin"})),
        )
    owner = member(gw, "owner")
    for scope in ("read", "write"):
        token = pat(gw, owner["id"], [scope])
        principals[f"owner ({scope} scope)"] = (
            token,
            AdminPrincipal(gw.workspace, "-", Role.OWNER, owner["id"], frozenset({scope})),
        )
    wrong = []
    for method, template in sorted(api_routes(gw.server.config.app)):
        path = fill(template, "no-such-id")
        for who, (token, principal) in principals.items():
            allowed = ROUTES[(method, template)] in grants(principal)
            resp = call(gw, token, method, path)
            if allowed and resp.status_code in (401, 403):
                wrong.append(f"{who}: {method} {template} refused {resp.status_code} {resp.text}")
            elif not allowed and not denied(resp):
                wrong.append(f"{who}: {method} {template} not refused: {resp.status_code}")
    assert wrong == []
    assert len(principals) == len(Role) + 3


def test_a_pat_never_creates_a_pat_with_more_rights(gw: Harness) -> None:
    owner = member(gw, "owner")
    writer = pat(gw, owner["id"], ["write"])
    resp = call(gw, writer, "POST", "/api/tokens", json={"scopes": ["admin"]})
    assert denied(resp)
    assert resp.json()["error"]["message"] == "A token cannot have more rights than the credential that creates it."
    resp = call(gw, writer, "POST", "/api/tokens", json={"scopes": ["read", "write"], "expires_in_days": 1})
    assert resp.status_code == 201, resp.text
    viewer = member(gw, "viewer")
    # A viewer's own PAT may ask for `admin`: its rights are still the role's (role ∩ scopes), nothing more.
    vpat = pat(gw, viewer["id"], ["admin"])
    assert denied(call(gw, vpat, "POST", "/api/tokens", json={"member_id": owner["id"], "scopes": ["read"]}))
    # Another member's token: a writer without members.write may not make one.
    assert denied(call(gw, writer, "POST", "/api/tokens", json={"member_id": viewer["id"], "scopes": ["read"]}))


def test_expired_and_revoked_pats_are_401(gw: Harness) -> None:
    m = member(gw, "admin")
    soon = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
    expiring = pat(gw, m["id"], ["read"], expires_at=soon)
    assert call(gw, expiring, "GET", "/api/workspaces").status_code == 200
    token = pat(gw, m["id"], ["read"])
    listed = call(gw, gw.admin, "GET", "/api/tokens").json()["data"]
    token_id = next(
        t["id"]
        for t in listed
        if t["member_id"] == m["id"]
        and t["expires_at"] != soon
        and t["revoked_at"] is None
        and t["token_prefix"] == token[:10]
    )
    assert "token_hash" not in listed[0] and "token" not in listed[0]
    assert call(gw, gw.admin, "DELETE", f"/api/tokens/{token_id}").json() == {"id": token_id, "revoked": True}
    resp = call(gw, token, "GET", "/api/workspaces")
    assert resp.status_code == 401
    assert resp.json()["error"]["message"] == "Invalid or revoked personal access token."
    time.sleep(max(0.0, (datetime.fromisoformat(soon) - datetime.now(UTC)).total_seconds()) + 0.05)
    resp = call(gw, expiring, "GET", "/api/workspaces")
    assert resp.status_code == 401
    assert resp.json()["error"]["message"] == "This personal access token has expired."


def test_own_tokens_only_for_members_without_members_write(gw: Harness) -> None:
    a, b = member(gw, "viewer"), member(gw, "billing_admin")
    ta, tb = pat(gw, a["id"], ["read"]), pat(gw, b["id"], ["write"])
    mine = call(gw, ta, "GET", "/api/tokens").json()["data"]
    assert {t["member_id"] for t in mine} == {a["id"]}
    other = call(gw, tb, "GET", "/api/tokens").json()["data"][0]["id"]
    assert call(gw, ta, "DELETE", f"/api/tokens/{other}").status_code == 403  # a read PAT writes nothing
    resp = call(gw, pat(gw, a["id"], ["write"]), "DELETE", f"/api/tokens/{other}")
    assert resp.status_code == 404  # another member's token is not found, not forbidden
    assert call(gw, tb, "GET", "/api/budgets").status_code == 200


def test_revoking_a_member_disables_their_keys_and_pats_at_once(gw: Harness) -> None:
    m = member(gw, "admin")
    token = pat(gw, m["id"], ["admin"])
    resp = call(gw, token, "POST", "/api/virtual-keys", json={"department_id": gw.department, "member_id": m["id"]})
    assert resp.status_code == 201, resp.text
    key = resp.json()
    assert key["owner_member_id"] == m["id"]
    gw.add_provider_key(name=f"p-{m['id']}", models=["gpt-*"])
    chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    headers = {"authorization": f"Bearer {key['key']}"}
    assert HTTP.post(gw.url + "/v1/chat/completions", json=chat, headers=headers).status_code == 200
    resp = call(gw, gw.admin, "DELETE", f"/api/members/{m['id']}")
    assert resp.json() == {"id": m["id"], "revoked": True}
    resp = HTTP.post(gw.url + "/v1/chat/completions", json=chat, headers=headers)
    assert resp.status_code == 401, resp.text
    assert call(gw, token, "GET", "/api/workspaces").status_code == 401
    got = call(gw, gw.admin, "GET", f"/api/members/{m['id']}").json()
    assert got["status"] == "revoked" and got["revoked_at"] is not None
    keys = {k["id"]: k for k in call(gw, gw.admin, "GET", "/api/virtual-keys").json()["data"]}
    assert keys[key["id"]]["revoked_at"] is not None
    events = call(gw, gw.admin, "GET", "/api/audit-logs", params={"action": "member.revoke"}).json()["data"]
    assert [e["target"]["id"] for e in events] == [m["id"]]


def test_member_changes_are_audited_with_the_pat_as_actor(gw: Harness) -> None:
    boss = member(gw, "admin")
    token = pat(gw, boss["id"], ["admin"])
    resp = call(gw, token, "POST", "/api/members", json={"email": "Audit.Me@Example.com", "role": "approver"})
    assert resp.status_code == 201, resp.text
    made = resp.json()
    assert made["email"] == "audit.me@example.com" and made["status"] == "active"
    assert call(gw, token, "POST", "/api/members", json={"email": "audit.me@example.com"}).status_code == 409
    resp = call(gw, token, "PATCH", f"/api/members/{made['id']}", json={"role": "viewer"})
    assert resp.status_code == 200 and resp.json()["role"] == "viewer"
    events = call(gw, gw.admin, "GET", "/api/audit-logs", params={"action": "member.*"}).json()["data"]
    mine = [e for e in events if e["target"]["id"] == made["id"]]
    assert {e["action"] for e in mine} == {"member.create", "member.update"}
    pat_id = call(gw, token, "GET", "/api/tokens").json()["data"]
    assert all(e["actor"]["type"] == "pat" and e["actor"]["role"] == "admin" for e in mine)
    assert {e["actor"]["id"] for e in mine} <= {t["id"] for t in pat_id}
    # Only an owner makes an owner.
    resp = call(gw, token, "POST", "/api/members", json={"email": "o@example.com", "role": "owner"})
    assert denied(resp)
    assert resp.json()["error"]["message"] == "Only an owner may grant the owner role or change an owner."


def test_roles_table_names_every_role() -> None:
    assert set(ROLES) == set(Role)


def test_a_department_admin_cannot_touch_another_departments_agent_or_key(gw: Harness) -> None:
    dep = call(gw, gw.admin, "POST", "/api/departments", json={"name": "Other"}).json()["id"]
    agent = call(gw, gw.admin, "POST", "/api/agents", json={"name": "theirs", "department_id": dep}).json()["id"]
    key = call(gw, gw.admin, "POST", "/api/virtual-keys", json={"department_id": dep}).json()["id"]
    boss = member(gw, "department_admin", department_id=gw.department)
    token = pat(gw, boss["id"], ["write"])

    def not_found(resp: Any, message: str, param: str) -> None:
        assert resp.status_code == 404, resp.text
        assert resp.json()["error"] == {
            "message": message,
            "type": "not_found_error",
            "code": "not_found",
            "param": param,
        }

    agents = call(gw, token, "GET", "/api/agents").json()["data"]
    assert agents and {a["department_id"] for a in agents} == {gw.department}
    keys = call(gw, token, "GET", "/api/virtual-keys").json()["data"]
    assert keys and {k["department_id"] for k in keys} == {gw.department}
    not_found(call(gw, token, "GET", f"/api/agents/{agent}"), f"Agent {agent!r} does not exist.", "agent_id")
    not_found(call(gw, token, "DELETE", f"/api/virtual-keys/{key}"), f"Virtual key {key!r} does not exist.", "key_id")
    not_found(
        call(gw, token, "POST", "/api/virtual-keys", json={"department_id": dep}),
        "Department does not exist.",
        "department_id",
    )
    not_found(
        call(gw, token, "POST", "/api/virtual-keys", json={"agent_id": agent}),
        "Department does not exist.",
        "department_id",
    )
    not_found(
        call(gw, token, "POST", "/api/agents", json={"name": "x", "department_id": dep}),
        "Department does not exist.",
        "department_id",
    )
    assert denied(call(gw, token, "GET", "/api/alerts"))  # not granted: see docs/security.md
    mine = call(gw, token, "POST", "/api/virtual-keys", json={"department_id": gw.department})
    assert mine.status_code == 201, mine.text
    assert call(gw, token, "DELETE", f"/api/virtual-keys/{mine.json()['id']}").status_code == 200
    assert call(gw, token, "GET", f"/api/agents/{gw.agent}").status_code == 200


def test_a_department_admin_manages_only_their_departments_budgets_rate_limits_and_policies(both: Harness) -> None:
    gw = both
    dep = call(gw, gw.admin, "POST", "/api/departments", json={"name": "Elsewhere"}).json()["id"]
    agent = call(gw, gw.admin, "POST", "/api/agents", json={"name": "far", "department_id": dep}).json()["id"]
    key = call(gw, gw.admin, "POST", "/api/virtual-keys", json={"department_id": dep}).json()["id"]
    boss = member(gw, "department_admin", department_id=gw.department)
    token = pat(gw, boss["id"], ["write"])
    money = {"limit_usd": "5", "period": "24h"}
    theirs = {
        "budgets": call(
            gw, gw.admin, "POST", "/api/budgets", json={"scope": "department", "scope_value": dep, **money}
        ),
        "rate-limits": call(
            gw, gw.admin, "POST", "/api/rate-limits", json={"scope": "agent", "scope_value": agent, "concurrent": 2}
        ),
        "policies": call(
            gw, gw.admin, "POST", "/api/policies", json={"name": "t", "scope": "virtual_key", "scope_value": key}
        ),
    }
    assert all(r.status_code == 201 for r in theirs.values()), {k: r.text for k, r in theirs.items()}
    workspace_wide = call(gw, gw.admin, "POST", "/api/policies", json={"name": "all", "scope": "workspace"}).json()
    ws_budget = call(gw, gw.admin, "POST", "/api/budgets", json={"scope": "workspace", **money}).json()
    extra = {"budgets": money, "rate-limits": {"concurrent": 3}, "policies": {"name": "mine"}}

    for kind in ("budgets", "rate-limits", "policies"):
        # Their own: created (department, agent), listed, changed (a policy's new version), deleted.
        made = call(
            gw, token, "POST", f"/api/{kind}", json={"scope": "department", "scope_value": gw.department, **extra[kind]}
        )
        assert made.status_code == 201, made.text
        mine = made.json()["id"]
        by_agent = call(
            gw, token, "POST", f"/api/{kind}", json={"scope": "agent", "scope_value": gw.agent, **extra[kind]}
        )
        assert by_agent.status_code == 201, by_agent.text
        listed = {r["id"] for r in call(gw, token, "GET", f"/api/{kind}").json()["data"]}
        assert {mine, by_agent.json()["id"]} <= listed
        assert theirs[kind].json()["id"] not in listed and ws_budget["id"] not in listed
        assert (workspace_wide["id"] in listed) is (kind == "policies")  # workspace-wide policies: readable
        assert listed <= {r["id"] for r in call(gw, gw.admin, "GET", f"/api/{kind}").json()["data"]}
        if kind == "policies":
            body = {"name": "mine", "scope": "agent", "scope_value": gw.agent, "mode": "monitor"}
            changed = call(gw, token, "PUT", f"/api/policies/{mine}", json=body)
            assert changed.status_code == 200 and changed.json()["version"] == 2, changed.text
            assert call(gw, token, "GET", f"/api/policies/{mine}/versions").status_code == 200
            # Not moved out of their reach: to another department's agent (404) or workspace-wide (403).
            moved = call(gw, token, "PUT", f"/api/policies/{mine}", json={**body, "scope_value": agent})
            assert moved.status_code == 404 and moved.json()["error"]["param"] == "scope_value", moved.text
            assert denied(call(gw, token, "PUT", f"/api/policies/{mine}", json={"name": "x", "scope": "workspace"}))
            assert call(gw, token, "GET", f"/api/policies/{workspace_wide['id']}").status_code == 200
            assert denied(call(gw, token, "DELETE", f"/api/policies/{workspace_wide['id']}"))
            assert denied(call(gw, token, "PUT", f"/api/policies/{workspace_wide['id']}", json=body))
        elif kind == "budgets":
            assert call(gw, token, "GET", f"/api/budgets/{mine}").status_code == 200
            assert call(gw, token, "GET", f"/api/budgets/{ws_budget['id']}").status_code == 404
        assert call(gw, token, "DELETE", f"/api/{kind}/{mine}").json() == {"id": mine, "deleted": True}
        assert mine not in {r["id"] for r in call(gw, token, "GET", f"/api/{kind}").json()["data"]}

        # Another department's: not found to read, change or delete; not created under its department, agent or key.
        other = theirs[kind].json()["id"]
        gone = call(gw, token, "DELETE", f"/api/{kind}/{other}")
        assert gone.status_code == 404, gone.text
        if kind != "rate-limits":
            assert call(gw, token, "GET", f"/api/{kind}/{other}").status_code == 404
        if kind == "policies":
            assert call(gw, token, "GET", f"/api/policies/{other}/versions").status_code == 404
            put = call(
                gw,
                token,
                "PUT",
                f"/api/policies/{other}",
                json={"name": "x", "scope": "department", "scope_value": gw.department},
            )
            assert put.status_code == 404 and put.json()["error"]["param"] == "policy_id", put.text
        for scope, value in (("department", dep), ("agent", agent), ("virtual_key", key)):
            resp = call(gw, token, "POST", f"/api/{kind}", json={"scope": scope, "scope_value": value, **extra[kind]})
            assert resp.status_code == 404, resp.text
            assert resp.json()["error"]["message"] == f"The {scope} {value!r} does not exist in this workspace."
        # Workspace-wide (nothing to hide): 403.
        assert denied(call(gw, token, "POST", f"/api/{kind}", json={"scope": "workspace", **extra[kind]}))
    # The admin's objects are untouched.
    for kind, resp in theirs.items():
        assert resp.json()["id"] in {r["id"] for r in call(gw, gw.admin, "GET", f"/api/{kind}").json()["data"]}


def test_a_department_admins_evaluate_and_ledger_stay_in_their_department(both: Harness) -> None:
    gw = both
    dep = call(gw, gw.admin, "POST", "/api/departments", json={"name": "Away"}).json()["id"]
    agent = call(gw, gw.admin, "POST", "/api/agents", json={"name": "away", "department_id": dep}).json()["id"]
    key = call(gw, gw.admin, "POST", "/api/virtual-keys", json={"department_id": dep}).json()["id"]
    token = pat(gw, member(gw, "department_admin", department_id=gw.department)["id"], ["read"])
    for field, value, param in (("department_id", dep, "department_id"), ("agent_id", agent, "agent_id")):
        resp = call(gw, token, "POST", "/api/policies/evaluate", json={field: value})
        assert resp.status_code == 404 and resp.json()["error"]["param"] == param, resp.text
    resp = call(gw, token, "POST", "/api/policies/evaluate", json={"virtual_key_id": key})
    assert resp.status_code == 404 and resp.json()["error"]["param"] == "virtual_key_id", resp.text
    for body in ({}, {"agent_id": gw.agent}, {"department_id": gw.department}):
        resp = call(gw, token, "POST", "/api/policies/evaluate", json=body)
        assert resp.status_code == 200 and resp.json()["decision"] == "allowed", resp.text
    assert call(gw, gw.admin, "POST", "/api/policies/evaluate", json={"agent_id": agent}).status_code == 200

    # The ledger: only the entries of budgets they see.
    money = {"limit_usd": "100", "period": "24h"}
    ours = call(
        gw, gw.admin, "POST", "/api/budgets", json={"scope": "department", "scope_value": gw.department, **money}
    )
    wide = call(gw, gw.admin, "POST", "/api/budgets", json={"scope": "workspace", **money})
    assert ours.status_code == 201 and wide.status_code == 201, (ours.text, wide.text)
    gw.add_provider_key(name=f"p-{dep}", models=["gpt-*"])
    chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    sent = HTTP.post(gw.url + "/v1/chat/completions", json=chat, headers={"authorization": f"Bearer {gw.vk}"})
    assert sent.status_code == 200, sent.text
    everything = call(gw, gw.admin, "GET", "/api/ledger").json()["data"]
    assert {ours.json()["id"], wide.json()["id"]} <= {e["budget_id"] for e in everything}
    seen = call(gw, token, "GET", "/api/ledger").json()["data"]
    assert seen and {e["budget_id"] for e in seen} == {ours.json()["id"]}
    assert call(gw, token, "GET", "/api/ledger", params={"budget": wide.json()["id"]}).json()["data"] == []

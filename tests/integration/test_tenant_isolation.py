"""The cross-tenant suite (issue 11, docs/security.md "Tenant isolation"): two workspaces, A and B, each seeded
with one of everything; then every mounted /api, /v1 and /x402 route, walked from `app.routes` (a new route
without a case here fails), is called with each of A's credentials (admin token, an admin PAT, a read PAT, a
virtual key) naming B's ids in the path, the body, the query or the tracking headers. The assertion is 0 leaks:

- naming B's object in the path or the body of an /api or /x402 call is never a 2xx (400, 401, 403, 404 only);
- no answer (2xx or error) carries any of B's ids, names or secrets that the call did not send itself;
- B reads the same afterwards as before (every GET route of B's, with B's own admin token).

One gateway and one seed per store for the module (SQLite, PostgreSQL: a few seconds each)."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from starlette.routing import Route

from agentledger.app import create_app
from agentledger.config import Settings
from agentledger.store.sql import SQLStore
from agentledger.testing import ServerThread
from tests.conftest import BACKENDS
from tests.harness import HTTP, provision
from tests.integration.permissions_support import PARAM

PAY_TO = "0x" + "ab" * 20
REFUSED = {400, 401, 403, 404}


@dataclass
class Tenant:
    workspace: str
    admin: str  # the admin token
    ids: dict[str, str] = field(default_factory=dict)  # what the seed made, by name
    secrets: dict[str, str] = field(default_factory=dict)  # the virtual key and PATs, shown once

    def marks(self) -> set[str]:
        """Everything of this tenant's that must never appear in another's answers."""
        return {self.workspace, *self.ids.values(), *self.secrets.values()}


@dataclass
class World:
    url: str
    a: Tenant
    b: Tenant
    app: Any


def _ok(resp: httpx.Response, status: int = 201) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body: dict[str, Any] = resp.json()
    return body


def _seed(url: str, ws: dict[str, str], upstream_url: str) -> Tenant:
    """One of everything, through the API as a client would make it."""
    tag = uuid.uuid4().hex[:8]
    t = Tenant(ws["workspace"], ws["admin"])

    def api(method: str, path: str, body: Any = None, status: int = 201, token: str | None = None) -> dict[str, Any]:
        headers = {"authorization": f"Bearer {token or t.admin}"}
        return _ok(HTTP.request(method, url + path, json=body, headers=headers), status)

    def v1(path: str, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
        return HTTP.post(
            url + path, json=body, headers={"authorization": f"Bearer {t.secrets['vk']}", **(headers or {})}
        )

    t.ids["department"] = api("POST", "/api/departments", {"id": f"dep-{tag}", "name": f"Dept {tag}"})["id"]
    dep = t.ids["department"]
    t.ids["agent"] = api("POST", "/api/agents", {"id": f"agt-{tag}", "department_id": dep, "name": "Bot"})["id"]
    runtime = {"type": "n8n", "url": f"{upstream_url}/flow-{tag}", "method": "POST"}
    flow = {"id": f"flow-{tag}", "department_id": dep, "name": "Flow", "kind": "workflow", "runtime": runtime}
    t.ids["flow"] = api("POST", "/api/agents", flow)["id"]
    owner = api("POST", "/api/members", {"email": f"owner-{tag}@example.com", "role": "owner", "department_id": dep})
    t.ids["member"], t.ids["member_email"] = owner["id"], owner["email"]
    for scope in ("admin", "read"):
        made = api("POST", "/api/tokens", {"member_id": owner["id"], "scopes": [scope], "name": f"{scope}-{tag}"})
        t.ids[f"pat_{scope}"], t.secrets[f"pat_{scope}"] = made["id"], made["token"]
    body = {"name": f"vk-{tag}", "agent_id": t.ids["agent"], "member_id": owner["id"]}
    key = api("POST", "/api/virtual-keys", body)
    t.ids["vk"], t.secrets["vk"] = key["id"], key["key"]
    t.ids["provider_key"] = api(
        "POST", "/api/provider-keys", {"name": f"pk-{tag}", "kind": "mock", "provider": "mock", "models": ["mock-*"]}
    )["id"]
    t.ids["price"] = api("POST", "/api/prices", {"model": f"model-{tag}", "input_mtok": "1", "output_mtok": "2"})["id"]
    budget = {"scope": "agent", "scope_value": t.ids["agent"], "limit_usd": "100", "period": "30d"}
    t.ids["budget"] = api("POST", "/api/budgets", {**budget, "name": f"bud-{tag}"})["id"]
    limit = {"scope": "agent", "scope_value": t.ids["agent"], "requests_per_minute": 1000, "name": f"rl-{tag}"}
    t.ids["rate_limit"] = api("POST", "/api/rate-limits", limit)["id"]
    rules = [{"when": {"kinds": ["payment"]}, "action": "escalate"}]
    t.ids["policy"] = api("POST", "/api/policies", {"name": f"pol-{tag}", "scope": "workspace", "rules": rules})["id"]
    t.ids["property"] = api("POST", "/api/analytics/properties", {"name": f"prop{tag}"})["name"]
    hook = {"url": f"{upstream_url}/hook-{tag}", "kinds": ["margin_loss"], "description": f"hook-{tag}"}
    t.ids["webhook"] = api("POST", "/api/webhooks", hook)["id"]
    endpoint = {"slug": f"slug-{tag}", "agent_id": t.ids["flow"], "price_usd": "0.01", "pay_to": PAY_TO}
    made = api("POST", "/api/paid-endpoints", endpoint)
    t.ids["endpoint"], t.ids["slug"] = made["id"], made["slug"]
    signer = api("POST", "/api/payment-signers", {"name": f"signer-{tag}", "generate": True})
    t.ids["signer"], t.ids["signer_name"] = signer["id"], signer["name"]
    t.ids["signer_address"] = signer["address"]
    api("PUT", "/api/retention", {"bodies_days": 30, "traces_days": 60, "audit_days": 400}, status=200)
    # A run with steps in a session, a metered request in it, and an escalated payment: an approval and its alert.
    run, session = f"run-{tag}", f"ses-{tag}"
    _ok(v1("/v1/runs", {"run_id": run, "session_id": session, "name": f"run {tag}"}))
    _ok(v1(f"/v1/runs/{run}/steps", {"id": f"step-{tag}", "name": "think"}))
    chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    resp = v1("/v1/chat/completions", chat, {"alephant-run-id": run, "x-request-id": f"req-{tag}"})
    assert resp.status_code == 200, resp.text
    t.ids["run"], t.ids["session"], t.ids["step"], t.ids["request"] = run, session, f"step-{tag}", f"req-{tag}"
    pay = {"run_id": run, "kind": "payment", "name": f"pay-{tag}", "amount_usd": "1"}
    resp = v1("/v1/policy/check", pay)
    assert resp.status_code == 403, resp.text
    t.ids["approval"] = resp.json()["error"]["approval_id"]
    return t


@pytest.fixture(scope="module", params=BACKENDS)
def world(
    tmp_path_factory: pytest.TempPathFactory, upstream: ServerThread, request: pytest.FixtureRequest
) -> Iterator[World]:
    data = tmp_path_factory.mktemp("tenants")
    url = str(request.getfixturevalue("pg_url")) if request.param == "postgres" else f"sqlite:///{data / 'tenants.db'}"
    cfg = Settings(
        data_dir=str(data),
        db_url=url,
        connect_timeout=1.0,
        read_timeout=1.0,
        first_token_timeout=1.0,
        batch_interval_ms=5.0,
        webhook_allow_hosts="127.0.0.1",
        approval_wait_s=0.0,  # an escalation answers at once, pending
    )
    ws_a, ws_b = provision(cfg, upstream.url), provision(cfg, upstream.url)
    app = create_app(cfg, store=SQLStore(cfg.database_url))
    with ServerThread(app) as server:
        a, b = _seed(server.url, ws_a, upstream.url), _seed(server.url, ws_b, upstream.url)
        yield World(server.url, a, b, app)


# -- the cases: for each mounted route, the calls that name B's objects --------------------------------------------


@dataclass
class Call:
    path: str
    body: Any = None
    params: dict[str, str] | None = None
    headers: dict[str, str] | None = None
    refuse: bool = True  # naming B's object here must not be a 2xx (False: a client-chosen id, A may use it too)


Case = Callable[[str, Tenant, Tenant], list[Call]]


def _path(template: str, b: Tenant, a: Tenant) -> str:
    """The template with B's ids (the x402 route: A's workspace, B's slug)."""
    by_param = {
        "agent_id": b.ids["flow"],
        "endpoint_id": b.ids["endpoint"],
        "webhook_id": b.ids["webhook"],
        "budget_id": b.ids["budget"],
        "rate_limit_id": b.ids["rate_limit"],
        "approval_id": b.ids["approval"],
        "policy_id": b.ids["policy"],
        "run_id": b.ids["run"],
        "session_id": b.ids["session"],
        "request_id": b.ids["request"],
        "signer_id": b.ids["signer"],
        "member_id": b.ids["member"],
        "token_id": b.ids["pat_admin"],
        "workspace": a.workspace,
        "slug": b.ids["slug"],
    }
    if template.startswith(("/api/virtual-keys/", "/keys/")):  # the dashboard's keys are virtual keys
        by_param["key_id"] = b.ids["vk"]
    elif template.startswith("/api/provider-keys/"):
        by_param["key_id"] = b.ids["provider_key"]
    return PARAM.sub(lambda m: by_param[m.group(1)], template)


def plain(template: str, a: Tenant, b: Tenant) -> list[Call]:
    return [Call(_path(template, b, a))]


def with_body(make: Callable[[Tenant], Any]) -> Case:
    return lambda template, a, b: [Call(_path(template, b, a), make(b))]


def lists(*queries: Callable[[Tenant], dict[str, str]]) -> Case:
    """A list: bare, and filtered by B's ids (answered, but with none of B's objects)."""
    return lambda template, a, b: [Call(template)] + [Call(template, params=q(b), refuse=False) for q in queries]


def creates(*bodies: Callable[[Tenant], dict[str, Any]]) -> Case:
    return lambda template, a, b: [Call(template, body(b)) for body in bodies] or [Call(template)]


def _tracked(b: Tenant) -> list[dict[str, str]]:
    """Tracking headers naming B's objects: an agent is A's or refused; a run or session id is the client's own
    choice (A may have its own of that name), so those may be answered, but must not reach B's."""
    return [
        {"alephant-agent-id": b.ids["agent"]},
        {"alephant-run-id": b.ids["run"], "alephant-session-id": b.ids["session"]},
    ]


def v1(make: Callable[[Tenant], Any]) -> Case:
    def case(template: str, a: Tenant, b: Tenant) -> list[Call]:
        path = _path(template, b, a)
        body = make(b)
        agent, run = _tracked(b)
        return [Call(path, body, headers=agent), Call(path, body, headers=run, refuse=False)]

    return case


def v1_run_path(make: Callable[[Tenant], Any]) -> Case:
    # /v1/runs/{run_id}/…: B's run id is a name A may use for a run of its own; B's run must stay as it was.
    return lambda template, a, b: [
        Call(_path(template, b, a), make(b), refuse=False),
        Call(_path(template, b, a), make(b), headers=_tracked(b)[0]),
    ]


CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def _budget_on(scope: str, name: str) -> Callable[[Tenant], dict[str, Any]]:
    return lambda b: {"scope": scope, "scope_value": b.ids[name], "limit_usd": "1", "period": "24h"}


def _grouped(group_by: str) -> Callable[[Tenant], dict[str, str]]:
    return lambda b: {"group_by": group_by}


CASES: dict[tuple[str, str], Case] = {
    ("GET", "/api/workspaces"): plain,
    ("GET", "/api/departments"): plain,
    ("POST", "/api/departments"): creates(lambda b: {"name": "mine", "id": "x-" + b.ids["department"][-8:]}),
    ("GET", "/api/agents"): plain,
    ("POST", "/api/agents"): creates(lambda b: {"name": "x", "department_id": b.ids["department"]}),
    ("GET", "/api/agents/{agent_id}"): lambda t, a, b: [Call(_path(t, b, a)), Call(f"/api/agents/{b.ids['agent']}")],
    ("PUT", "/api/agents/{agent_id}/runtime"): with_body(lambda b: {"type": "n8n", "url": "http://127.0.0.1:9/x"}),
    ("GET", "/api/virtual-keys"): plain,
    ("POST", "/api/virtual-keys"): creates(
        lambda b: {"department_id": b.ids["department"]},
        lambda b: {"agent_id": b.ids["agent"]},
        lambda b: {"member_id": b.ids["member"]},
    ),
    ("DELETE", "/api/virtual-keys/{key_id}"): plain,
    ("GET", "/api/provider-keys"): plain,
    ("POST", "/api/provider-keys"): creates(lambda b: {"name": "x", "fallbacks": [b.ids["provider_key"]]}),
    ("DELETE", "/api/provider-keys/{key_id}"): plain,
    ("GET", "/api/prices"): plain,
    ("POST", "/api/prices"): creates(),  # names nothing of B's: walked bare below
    ("GET", "/api/paid-endpoints"): plain,
    ("POST", "/api/paid-endpoints"): creates(
        lambda b: {"slug": "x-mine", "agent_id": b.ids["flow"], "price_usd": "0.01", "pay_to": PAY_TO}
    ),
    ("GET", "/api/paid-endpoints/{endpoint_id}"): plain,
    ("PATCH", "/api/paid-endpoints/{endpoint_id}"): with_body(lambda b: {"description": "mine"}),
    ("DELETE", "/api/paid-endpoints/{endpoint_id}"): plain,
    ("POST", "/x402/{workspace}/{slug}"): with_body(lambda b: {"text": "hi"}),
    ("GET", "/api/alerts"): lists(),
    ("GET", "/api/webhooks"): plain,
    ("POST", "/api/webhooks"): creates(),
    ("GET", "/api/webhooks/{webhook_id}"): plain,
    ("DELETE", "/api/webhooks/{webhook_id}"): plain,
    ("POST", "/api/webhooks/{webhook_id}/test"): plain,
    ("GET", "/api/webhooks/{webhook_id}/deliveries"): plain,
    ("GET", "/api/budgets"): plain,
    ("POST", "/api/budgets"): creates(
        *(
            _budget_on(scope, name)
            for scope, name in (("department", "department"), ("agent", "agent"), ("virtual_key", "vk"))
        )
    ),
    ("GET", "/api/budgets/{budget_id}"): plain,
    ("DELETE", "/api/budgets/{budget_id}"): plain,
    ("GET", "/api/rate-limits"): plain,
    ("POST", "/api/rate-limits"): creates(
        lambda b: {"scope": "agent", "scope_value": b.ids["agent"], "requests_per_minute": 1},
        lambda b: {"scope": "virtual_key", "scope_value": b.ids["vk"], "requests_per_minute": 1},
    ),
    ("DELETE", "/api/rate-limits/{rate_limit_id}"): plain,
    ("GET", "/api/ledger"): lists(lambda b: {"run": b.ids["run"]}, lambda b: {"budget": b.ids["budget"]}),
    ("GET", "/v1/budget"): v1(lambda b: None),
    ("POST", "/v1/spend/authorize"): v1(lambda b: {"run_id": b.ids["run"], "amount_usd": "0.01"}),
    ("GET", "/api/approvals"): lists(lambda b: {"status": "pending"}),
    ("GET", "/api/approvals/{approval_id}"): plain,
    ("POST", "/api/approvals/{approval_id}/approve"): with_body(lambda b: {"comment": "mine"}),
    ("POST", "/api/approvals/{approval_id}/deny"): with_body(lambda b: {"comment": "mine"}),
    ("GET", "/api/policies"): plain,
    ("POST", "/api/policies"): creates(
        lambda b: {"name": "x", "scope": "agent", "scope_value": b.ids["agent"]},
        lambda b: {"name": "x", "scope": "department", "scope_value": b.ids["department"]},
        lambda b: {"name": "x", "scope": "virtual_key", "scope_value": b.ids["vk"]},
    ),
    ("POST", "/api/policies/evaluate"): creates(
        lambda b: {"virtual_key_id": b.ids["vk"], "call": {"model": "gpt-4o"}},
        lambda b: {"agent_id": b.ids["agent"], "call": {"model": "gpt-4o"}},
        lambda b: {"department_id": b.ids["department"], "call": {"model": "gpt-4o"}},
    ),
    ("GET", "/api/policies/{policy_id:policy_id}"): plain,
    ("PUT", "/api/policies/{policy_id:policy_id}"): with_body(lambda b: {"name": "mine", "scope": "workspace"}),
    ("DELETE", "/api/policies/{policy_id:policy_id}"): plain,
    ("GET", "/api/policies/{policy_id:policy_id}/versions"): plain,
    ("GET", "/api/policies/{policy_id:policy_id}/hits"): lambda t, a, b: [
        Call(_path(t, b, a)),
        Call(_path(t, b, a), params={"mode": "enforce", "limit": "1000"}),
    ],
    ("POST", "/v1/policy/check"): v1(lambda b: {"run_id": b.ids["run"], "kind": "tool_call", "name": "x"}),
    ("POST", "/api/runs/{run_id}/cancel"): with_body(lambda b: {"reason": "mine"}),
    ("POST", "/api/runs/{run_id}/pause"): with_body(lambda b: {"reason": "mine"}),
    ("POST", "/api/runs/{run_id}/resume"): with_body(lambda b: {"reason": "mine"}),
    ("GET", "/api/runs"): lists(
        lambda b: {"agent": b.ids["agent"]},
        lambda b: {"session": b.ids["session"]},
        lambda b: {"endpoint": b.ids["endpoint"]},
    ),
    ("GET", "/api/runs/{run_id}"): plain,
    ("GET", "/api/sessions"): lists(),
    ("GET", "/api/sessions/{session_id}"): plain,
    ("GET", "/api/requests"): lists(lambda b: {"model": "gpt-4o-mini"}),
    ("GET", "/api/requests/{request_id}"): plain,
    ("GET", "/api/analytics/costs"): lists(*(_grouped(g) for g in ("agent", "department", "virtual_key", "model"))),
    ("GET", "/api/analytics/properties"): plain,
    ("POST", "/api/analytics/properties"): creates(),
    ("GET", "/api/payment-signers"): plain,
    ("POST", "/api/payment-signers"): creates(),
    ("GET", "/api/payment-signers/{signer_id}"): plain,
    ("DELETE", "/api/payment-signers/{signer_id}"): plain,
    ("POST", "/v1/x402/fetch"): v1(
        lambda b: {"url": "http://127.0.0.1:9/x", "max_amount_usd": "0.01", "signer": b.ids["signer_name"]}
    ),
    ("GET", "/api/finance/summary"): lists(*(_grouped(g) for g in ("endpoint", "agent"))),
    ("GET", "/api/audit-logs"): lists(
        lambda b: {"target_id": b.ids["member"]},
        lambda b: {"run_id": b.ids["run"]},
        lambda b: {"actor": b.ids["pat_admin"]},
    ),
    ("GET", "/api/audit-logs/export"): lists(lambda b: {"format": "csv"}),
    ("GET", "/api/audit/verify"): plain,
    ("GET", "/api/audit/public-key"): plain,
    ("GET", "/api/retention"): plain,
    ("PUT", "/api/retention"): creates(),
    ("GET", "/api/members"): plain,
    ("POST", "/api/members"): creates(lambda b: {"email": "x@example.com", "department_id": b.ids["department"]}),
    ("GET", "/api/members/{member_id}"): plain,
    ("PATCH", "/api/members/{member_id}"): with_body(lambda b: {"name": "mine"}),
    ("DELETE", "/api/members/{member_id}"): plain,
    ("GET", "/api/tokens"): plain,
    ("POST", "/api/tokens"): creates(lambda b: {"member_id": b.ids["member"], "scopes": ["read"]}),
    ("DELETE", "/api/tokens/{token_id}"): plain,
    ("POST", "/v1/chat/completions"): v1(lambda b: CHAT),
    ("POST", "/v1/messages"): v1(lambda b: {**CHAT, "max_tokens": 5}),
    ("POST", "/v1/responses"): v1(lambda b: {"model": "gpt-4o-mini", "input": "hi"}),
    ("POST", "/v1/embeddings"): v1(lambda b: {"model": "gpt-4o-mini", "input": "hi"}),
    ("POST", "/v1/messages/count_tokens"): v1(lambda b: CHAT),
    ("GET", "/v1/models"): lambda t, a, b: [Call(t, headers=h, refuse=False) for h in _tracked(b)],  # no tracking
    ("POST", "/v1/runs"): lambda t, a, b: [
        Call(t, {"agent_id": b.ids["agent"]}),
        Call(t, {"run_id": b.ids["run"], "session_id": b.ids["session"]}, refuse=False),
    ],
    ("POST", "/v1/runs/{run_id}/steps"): v1_run_path(lambda b: {"id": b.ids["step"], "name": "x"}),
    # Ending a run reads no tracking headers: B's run id names A's own run of that name, or none.
    ("POST", "/v1/runs/{run_id}/end"): lambda t, a, b: [Call(_path(t, b, a), {"status": "failed"}, refuse=False)],
}


def walked_routes(app: Any) -> set[tuple[str, str]]:
    """Every mounted route an /api, /v1 or /x402 credential reaches (the dashboard's cookie pages have a walk of their
    own: `test_no_dashboard_page_of_a_shows_or_changes_b`)."""
    out = set()
    for route in app.routes:
        if isinstance(route, Route) and route.path.startswith(("/api/", "/v1/", "/x402/")):
            out |= {(m, route.path) for m in (route.methods or set()) - {"HEAD"}}
    return out


def _send(url: str, token: str, method: str, call: Call) -> httpx.Response:
    headers = {"authorization": f"Bearer {token}", **(call.headers or {})}
    kw: dict[str, Any] = {"params": call.params, "headers": headers}
    if call.body is not None or method in ("POST", "PUT", "PATCH"):
        kw["json"] = call.body if call.body is not None else {}
    return HTTP.request(method, url + call.path, **kw)


def _sent(call: Call) -> str:
    return json.dumps([call.path, call.body, call.params, call.headers])


def _snapshot(w: World) -> dict[str, Any]:
    """B as B's own admin token reads it: every GET route with B's ids."""
    out: dict[str, Any] = {}
    for method, template in sorted(walked_routes(w.app)):
        if method != "GET" or not template.startswith("/api/") or template == "/api/audit-logs/export":
            continue
        path = _path(template, w.b, w.b)
        resp = HTTP.get(w.url + path, headers={"authorization": f"Bearer {w.b.admin}"})
        out[path] = (resp.status_code, _stable(resp.json()))
    return out


def _stable(value: Any) -> Any:
    """Drop what changes by itself between two reads (clocks of a read, a budget's live figures)."""
    volatile = {"checked_at", "now", "generated_at", "as_of"}
    if isinstance(value, dict):
        return {k: _stable(v) for k, v in value.items() if k not in volatile}
    if isinstance(value, list):
        return [_stable(v) for v in value]
    return value


def test_every_walked_route_has_a_case(world: World) -> None:
    mounted = walked_routes(world.app)
    assert sorted(mounted - set(CASES)) == [], "routes the cross-tenant walk does not exercise: add a case"
    assert sorted(set(CASES) - mounted) == [], "stale cases: the route is gone"


def test_no_credential_of_a_reaches_b(world: World) -> None:
    a, b = world.a, world.b
    creds = {"admin token": a.admin, "admin PAT": a.secrets["pat_admin"], "read PAT": a.secrets["pat_read"]}
    creds["virtual key"] = a.secrets["vk"]
    marks = b.marks()
    before = _snapshot(world)
    leaks: list[str] = []
    exercised: set[tuple[str, str]] = set()
    for method, template in sorted(walked_routes(world.app)):
        calls = CASES[(method, template)](template, a, b)
        for call in calls:
            sent = _sent(call)
            names_b = any(m in sent for m in marks)
            for who, token in creds.items():
                resp = _send(world.url, token, method, call)
                exercised.add((method, template))
                where = f"{who}: {method} {call.path} {call.params or ''} {call.body or ''} {call.headers or ''}"
                if resp.status_code >= 500:
                    leaks.append(f"{where} → {resp.status_code} {resp.text[:200]}")
                if names_b and call.refuse and resp.status_code not in REFUSED:
                    leaks.append(f"{where} → {resp.status_code}: B's object answered {resp.text[:200]}")
                shown = sorted(m for m in marks if m in resp.text and m not in sent)
                if shown:
                    leaks.append(f"{where} → {resp.status_code} shows B's {shown}")
    assert exercised == walked_routes(world.app), "a route was not exercised"
    assert leaks == [], "\n".join(leaks)
    after = _snapshot(world)
    changed = sorted(p for p in before if before[p] != after[p])
    assert changed == [], "B changed: " + ", ".join(changed)
    assert all(status == 200 for status, _ in before.values()), {p: s for p, (s, _) in before.items() if s != 200}


def test_b_is_seeded_with_one_of_everything(world: World) -> None:
    """The walk proves something only if B's objects exist to be leaked: each is found by B's own token."""
    b = world.b
    run = HTTP.get(f"{world.url}/api/runs/{b.ids['run']}", headers={"authorization": f"Bearer {b.admin}"}).json()
    assert run["id"] == b.ids["run"] and run["session_id"] == b.ids["session"]
    assert len(run.get("steps", [])) >= 2, run
    for path in ("/api/alerts", "/api/audit-logs", f"/api/policies/{b.ids['policy']}/hits"):
        data = HTTP.get(world.url + path, headers={"authorization": f"Bearer {b.admin}"}).json()["data"]
        assert data, path


def test_evaluating_for_another_workspaces_department_is_a_404(world: World) -> None:
    """Found by the walk: `POST /api/policies/evaluate` took a department id it did not check (an agent's and a
    key's were), and evaluated A's policies for B's department as if it were A's."""
    dep = world.b.ids["department"]
    body = {"department_id": dep, "call": {"model": "gpt-4o"}}
    resp = HTTP.post(
        world.url + "/api/policies/evaluate", json=body, headers={"authorization": f"Bearer {world.a.admin}"}
    )
    assert resp.status_code == 404, resp.text
    assert resp.json()["error"]["param"] == "department_id"
    mine = {"department_id": world.a.ids["department"], "call": {"model": "gpt-4o"}}
    resp = HTTP.post(
        world.url + "/api/policies/evaluate", json=mine, headers={"authorization": f"Bearer {world.a.admin}"}
    )
    assert resp.status_code == 200, resp.text


# -- the dashboard: the same walk through its cookie-session pages -------------------------------------------------

_NOT_PAGES = ("/signin", "/signout", "/static", "/healthz", "/readyz", "/metrics", "/openapi.json")
# What a page may take in its query string, with B's ids: a filter naming B's object lists none of B's rows.
_PAGE_QUERIES: list[Callable[[Tenant], dict[str, str]]] = [
    lambda b: {"agent": b.ids["agent"], "session": b.ids["session"], "workflow": b.ids["flow"]},
    lambda b: {"policy": b.ids["policy"], "budget": b.ids["budget"], "run": b.ids["run"], "q": b.ids["request"]},
    lambda b: {"group_by": "agent", "department": b.ids["department"], "endpoint": b.ids["endpoint"]},
]


def dashboard_routes(app: Any) -> set[tuple[str, str]]:
    out = set()
    for route in app.routes:
        if isinstance(route, Route) and not route.path.startswith(("/api/", "/v1/", "/x402/", *_NOT_PAGES)):
            out |= {(m, route.path) for m in (route.methods or set()) - {"HEAD"}}
    return out


def test_no_dashboard_page_of_a_shows_or_changes_b(world: World) -> None:
    """Signed in to the dashboard as A's admin (a cookie session), every page with B's ids in its path or query
    shows none of B's objects, and every form naming B's objects (with A's own CSRF token) changes nothing of B's."""
    a, b = world.a, world.b
    host = world.url.split("://", 1)[1]
    with httpx.Client(base_url=world.url, timeout=30, trust_env=False, headers={"origin": f"http://{host}"}) as web:
        signed = web.post("/signin", data={"token": a.admin, "next": "/"})
        assert signed.status_code == 303, signed.text
        page = web.get("/keys")
        assert page.status_code == 200, page.text
        found = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert found is not None, "no CSRF token on the keys page"
        csrf = found.group(1)
        # Run, session, step and request ids are the client's own names: A's /v1 calls of the walk above may have
        # made runs and sessions of A's own so named, which A's pages rightly show. Every other mark is B's alone.
        clients = {b.ids[k] for k in ("run", "session", "step", "request")}
        marks = b.marks() - clients
        before = _snapshot(world)
        leaks: list[str] = []
        for method, template in sorted(dashboard_routes(world.app)):
            path = _path(template, b, a)
            names_b = any(m in path for m in marks)
            if method == "GET":
                calls = [(path, None)] + [(path, q(b)) for q in _PAGE_QUERIES]
                for url, params in calls:
                    resp = web.get(url, params=params)
                    sent = json.dumps([url, params])
                    where = f"GET {url} {params or ''}"
                    if resp.status_code >= 500 or (names_b and resp.status_code not in REFUSED):
                        leaks.append(f"{where} → {resp.status_code}")
                    shown = sorted(m for m in marks if m in resp.text and m not in sent)
                    if shown:
                        leaks.append(f"{where} → {resp.status_code} shows B's {shown}")
            else:
                form = {"csrf_token": csrf, "action": "pause", "comment": "not yours", "agent_id": b.ids["agent"]}
                resp = web.post(path, data=form)
                if resp.status_code >= 500 or (names_b and resp.status_code not in REFUSED):
                    leaks.append(f"POST {path} → {resp.status_code}")
                shown = sorted(m for m in marks if m in resp.text and m not in json.dumps([path, form]))
                if shown:
                    leaks.append(f"POST {path} → {resp.status_code} shows B's {shown}")
        assert leaks == [], "\n".join(leaks)
        after = _snapshot(world)
    changed = sorted(p for p in before if before[p] != after[p])
    assert changed == [], "B changed: " + ", ".join(changed)

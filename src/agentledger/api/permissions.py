"""The permission matrix: every mounted /api route's permission, and what each role and each PAT scope grants.

This table is the only place access to /api is decided: `AdminAuth.guard` looks the matched route up here and
refuses (403) what the caller's role ∩ scopes does not grant. A route missing from `ROUTES` is refused to every
caller (fail closed) and fails tests/unit/test_permissions.py, which also checks docs/security.md against it.
"""

from __future__ import annotations

from collections.abc import Mapping

from agentledger.core.model import AdminPrincipal, Role

# (method, route path template as mounted) → permission. A permission is `<area>.<verb>`; the verb `read` is what
# a `read` scope grants.
ROUTES: Mapping[tuple[str, str], str] = {
    ("GET", "/api/workspaces"): "workspace.read",
    ("GET", "/api/departments"): "departments.read",
    ("POST", "/api/departments"): "departments.write",
    ("GET", "/api/agents"): "agents.read",
    ("POST", "/api/agents"): "agents.write",
    ("GET", "/api/agents/{agent_id}"): "agents.read",
    ("PUT", "/api/agents/{agent_id}/runtime"): "paid_endpoints.write",
    ("GET", "/api/virtual-keys"): "keys.read",
    ("POST", "/api/virtual-keys"): "keys.write",
    ("DELETE", "/api/virtual-keys/{key_id}"): "keys.write",
    ("GET", "/api/provider-keys"): "provider_keys.read",
    ("POST", "/api/provider-keys"): "provider_keys.write",
    ("DELETE", "/api/provider-keys/{key_id}"): "provider_keys.write",
    ("GET", "/api/prices"): "prices.read",
    ("POST", "/api/prices"): "prices.write",
    ("GET", "/api/paid-endpoints"): "paid_endpoints.read",
    ("POST", "/api/paid-endpoints"): "paid_endpoints.write",
    ("GET", "/api/paid-endpoints/{endpoint_id}"): "paid_endpoints.read",
    ("PATCH", "/api/paid-endpoints/{endpoint_id}"): "paid_endpoints.write",
    ("DELETE", "/api/paid-endpoints/{endpoint_id}"): "paid_endpoints.write",
    ("GET", "/api/alerts"): "alerts.read",
    ("GET", "/api/webhooks"): "webhooks.read",
    ("POST", "/api/webhooks"): "webhooks.write",
    ("GET", "/api/webhooks/{webhook_id}"): "webhooks.read",
    ("DELETE", "/api/webhooks/{webhook_id}"): "webhooks.write",
    ("POST", "/api/webhooks/{webhook_id}/test"): "webhooks.write",
    ("GET", "/api/webhooks/{webhook_id}/deliveries"): "webhooks.read",
    ("GET", "/api/budgets"): "budgets.read",
    ("POST", "/api/budgets"): "budgets.write",
    ("GET", "/api/budgets/{budget_id}"): "budgets.read",
    ("DELETE", "/api/budgets/{budget_id}"): "budgets.write",
    ("GET", "/api/rate-limits"): "budgets.read",
    ("POST", "/api/rate-limits"): "budgets.write",
    ("DELETE", "/api/rate-limits/{rate_limit_id}"): "budgets.write",
    # The budget ledger: entries of budgets, so `budgets.read` (a department admin's are filtered to their budgets).
    ("GET", "/api/ledger"): "budgets.read",
    ("GET", "/api/approvals"): "approvals.read",
    ("GET", "/api/approvals/{approval_id}"): "approvals.read",
    ("POST", "/api/approvals/{approval_id}/approve"): "approvals.decide",
    ("POST", "/api/approvals/{approval_id}/deny"): "approvals.decide",
    ("GET", "/api/policies"): "policies.read",
    ("POST", "/api/policies"): "policies.write",
    ("POST", "/api/policies/evaluate"): "policies.read",
    ("GET", "/api/policies/{policy_id:policy_id}"): "policies.read",
    ("PUT", "/api/policies/{policy_id:policy_id}"): "policies.write",
    ("DELETE", "/api/policies/{policy_id:policy_id}"): "policies.write",
    ("GET", "/api/policies/{policy_id:policy_id}/versions"): "policies.read",
    ("GET", "/api/policies/{policy_id:policy_id}/hits"): "policies.read",
    ("POST", "/api/runs/{run_id}/cancel"): "runs.control",
    ("POST", "/api/runs/{run_id}/pause"): "runs.control",
    ("POST", "/api/runs/{run_id}/resume"): "runs.control",
    ("GET", "/api/runs"): "runs.read",
    ("GET", "/api/runs/{run_id}"): "runs.read",
    ("GET", "/api/sessions"): "runs.read",
    ("GET", "/api/sessions/{session_id}"): "runs.read",
    ("GET", "/api/requests"): "runs.read",
    ("GET", "/api/requests/{request_id}"): "runs.read",
    ("GET", "/api/analytics/costs"): "analytics.read",
    ("GET", "/api/analytics/properties"): "analytics.read",
    ("POST", "/api/analytics/properties"): "analytics.write",
    ("GET", "/api/payment-signers"): "payment_signers.read",
    ("POST", "/api/payment-signers"): "payment_signers.write",
    ("GET", "/api/payment-signers/{signer_id}"): "payment_signers.read",
    ("DELETE", "/api/payment-signers/{signer_id}"): "payment_signers.write",
    ("GET", "/api/finance/summary"): "finance.read",
    ("GET", "/api/audit-logs"): "audit.read",
    ("GET", "/api/audit-logs/export"): "audit.read",
    ("GET", "/api/audit/verify"): "audit.read",
    ("GET", "/api/audit/public-key"): "audit.read",
    ("GET", "/api/retention"): "retention.read",
    ("PUT", "/api/retention"): "retention.write",
    ("GET", "/api/members"): "members.read",
    ("POST", "/api/members"): "members.write",
    ("GET", "/api/members/{member_id}"): "members.read",
    ("PATCH", "/api/members/{member_id}"): "members.write",
    ("DELETE", "/api/members/{member_id}"): "members.write",
    # Every member manages their own tokens; others' tokens need `members.write` (checked in api/members.py).
    ("GET", "/api/tokens"): "tokens.read",
    ("POST", "/api/tokens"): "tokens.write",
    ("DELETE", "/api/tokens/{token_id}"): "tokens.write",
}

PERMISSIONS: frozenset[str] = frozenset(ROUTES.values())
_READS = frozenset(p for p in PERMISSIONS if p.endswith(".read"))
_OWN_TOKENS = frozenset({"tokens.read", "tokens.write"})
# What only the `admin` scope carries: who may act (members, others' tokens) and the workspace's secrets and rules
# of the house (upstream credentials, wallets, retention).
ADMIN_ONLY: frozenset[str] = frozenset(
    {"members.write", "provider_keys.write", "payment_signers.write", "retention.write"}
)

ROLES: Mapping[Role, frozenset[str]] = {
    Role.OWNER: PERMISSIONS,
    Role.ADMIN: PERMISSIONS,
    # Money: budgets and rate limits, the ledger and finance, prices and paid endpoints (their pricing), analytics;
    # reads what a budget names (departments, agents, keys) but changes no key, policy or member.
    Role.BILLING_ADMIN: _OWN_TOKENS
    | {
        "workspace.read",
        "departments.read",
        "agents.read",
        "keys.read",
        "budgets.read",
        "budgets.write",
        "finance.read",
        "analytics.read",
        "prices.read",
        "prices.write",
        "paid_endpoints.read",
        "paid_endpoints.write",
        "alerts.read",
        "runs.read",
    },
    Role.APPROVER: _OWN_TOKENS | {"workspace.read", "approvals.read", "approvals.decide", "runs.read"},
    Role.VIEWER: _OWN_TOKENS | _READS,
    # Their department's agents, virtual keys, budgets, rate limits, ledger entries and policy overrides (narrowed in
    # the handlers: api/scoping.py); the workspace-wide policies read only. Alerts are not granted (not every kind
    # names a budget or a department to filter by).
    Role.DEPARTMENT_ADMIN: _OWN_TOKENS
    | {
        "workspace.read",
        "departments.read",
        "agents.read",
        "agents.write",
        "keys.read",
        "keys.write",
        "budgets.read",
        "budgets.write",
        "policies.read",
        "policies.write",
    },
}

SCOPES: Mapping[str, frozenset[str]] = {
    "read": _READS,
    "write": PERMISSIONS - ADMIN_ONLY,
    "admin": PERMISSIONS,
}


def required(method: str, path: str) -> str | None:
    return ROUTES.get((method, path))


def grants(principal: AdminPrincipal) -> frozenset[str]:
    """What a principal may do: its role's permissions, narrowed by its PAT's scopes."""
    allowed = ROLES[principal.role]
    if principal.scopes is not None:
        scoped: frozenset[str] = frozenset()
        for scope in principal.scopes:
            scoped |= SCOPES.get(scope, frozenset())
        allowed &= scoped
    return allowed


def permits(principal: AdminPrincipal, permission: str) -> bool:
    return permission in grants(principal)


def matrix_markdown() -> str:
    """The role × route matrix as docs/security.md shows it (a test checks the doc holds exactly this)."""
    roles = list(ROLES)
    head = "| route | permission | " + " | ".join(r.value for r in roles) + " | PAT scope |"
    rows = [head, "|" + "---|" * (len(roles) + 3)]
    for (method, path), permission in sorted(ROUTES.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        marks = " | ".join("✓" if permission in ROLES[r] else "" for r in roles)
        scope = next(s for s in ("read", "write", "admin") if permission in SCOPES[s])
        rows.append(f"| `{method} {path}` | `{permission}` | {marks} | {scope} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(matrix_markdown(), end="")

"""A department admin's reach: only their department's objects. Another department's object is answered 404, as
if it did not exist (a 403 would confirm that it does); lists are filtered (docs/security.md).
Budgets, rate limits and policies are narrowed by what they are scoped to (`Reach`)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from agentledger.core.budgets import Scope
from agentledger.core.errors import NotFound, PermissionDenied
from agentledger.core.model import AdminPrincipal
from agentledger.store.base import Store


def visible(admin: AdminPrincipal, rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    if admin.department_id is None:
        return list(rows)
    return [r for r in rows if r.get("department_id") == admin.department_id]


def require(admin: AdminPrincipal, department_id: Any, what: str, param: str) -> None:
    """404 unless `department_id` is the department admin's own (anyone else: no check)."""
    if admin.department_id is not None and department_id != admin.department_id:
        raise NotFound(f"{what} does not exist.", param=param)


@dataclass(frozen=True)
class Reach:
    """What a department admin's budgets, rate limits and policies may be scoped to: their department, its agents
    and its virtual keys (loaded once per request)."""

    department_id: str
    agents: frozenset[str]
    keys: frozenset[str]

    def covers(self, scope: str, value: Any) -> bool:
        if scope == Scope.DEPARTMENT:
            return bool(value == self.department_id)
        if scope == Scope.AGENT:
            return value in self.agents
        if scope == Scope.VIRTUAL_KEY:
            return value in self.keys
        return False  # workspace-wide, a workflow or a property value: no department's alone

    def sees(self, row: dict[str, Any], *, workspace_wide: bool = False) -> bool:
        """Whether a scoped row is shown: it covers their department's objects, or (policies: `workspace_wide`) the
        whole workspace, whose policies govern their calls too (readable, never writable)."""
        if workspace_wide and row["scope"] == Scope.WORKSPACE:
            return True
        return self.covers(row["scope"], row["scope_value"])

    def require(self, scope: str, value: Any) -> None:
        """A scope to create or change under: another department's object is a 404 (as if it did not exist, the
        message of a missing one); a scope that hides nothing (workspace, workflow, property) is a 403."""
        if self.covers(scope, value):
            return
        if scope in (Scope.DEPARTMENT, Scope.AGENT, Scope.VIRTUAL_KEY):
            raise NotFound(f"The {scope} {value!r} does not exist in this workspace.", param="scope_value")
        raise PermissionDenied(
            "A department admin may scope only to their department, its agents or its virtual keys.", param="scope"
        )


async def reach(store: Store, admin: AdminPrincipal) -> Reach | None:
    """A department admin's reach (None for everyone else: no narrowing)."""
    dep = admin.department_id
    if dep is None:
        return None
    agents = frozenset(a["id"] for a in await store.list_agents(admin.workspace_id) if a["department_id"] == dep)
    keys = frozenset(k["id"] for k in await store.list_virtual_keys(admin.workspace_id) if k["department_id"] == dep)
    return Reach(dep, agents, keys)

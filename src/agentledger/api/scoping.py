"""A department admin's reach: only their department's objects. Another department's object is answered 404, as
if it did not exist (a 403 would confirm that it does); lists are filtered (docs/security.md)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from agentledger.core.errors import NotFound
from agentledger.core.model import AdminPrincipal


def visible(admin: AdminPrincipal, rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    if admin.department_id is None:
        return list(rows)
    return [r for r in rows if r.get("department_id") == admin.department_id]


def require(admin: AdminPrincipal, department_id: Any, what: str, param: str) -> None:
    """404 unless `department_id` is the department admin's own (anyone else: no check)."""
    if admin.department_id is not None and department_id != admin.department_id:
        raise NotFound(f"{what} does not exist.", param=param)

"""Whether a principal may use an /api route: the one question every dashboard page and button asks.

The dashboard never decides access itself. Its reads and writes are the /api routes' own handlers, called in
process (web.Ctx.api), so their guard refuses what the caller may not do; this function only says in advance
whether to show a page in the navigation or a write button, by the guard's own matrix (api/permissions.py).
"""

from __future__ import annotations

from agentledger.api.permissions import permits, required
from agentledger.core.model import AdminPrincipal


def can(principal: AdminPrincipal, method: str, api_path: str) -> bool:
    """`api_path` is the route's template as mounted (`/api/runs/{run_id}/cancel`); a route the matrix does not
    name is refused, as the guard refuses it."""
    permission = required(method, api_path)
    return permission is not None and permits(principal, permission)

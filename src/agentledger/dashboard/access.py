"""Whether a principal may use an /api route: the one question every dashboard page and button asks.

The dashboard never decides access itself. Its reads and writes are the /api routes' own handlers, called in
process (web.Ctx.api), so their guard refuses what the caller may not do; this function only says in advance
whether to show a page in the navigation or a write button, by the same rule the guard applies.
"""

from __future__ import annotations

from agentledger.core.model import AdminPrincipal, Role


def can(principal: AdminPrincipal, method: str, api_path: str) -> bool:
    """`api_path` is the route's template as mounted (`/api/runs/{run_id}/cancel`). Today's guard: viewers read,
    the other roles of an admin token write."""
    if method == "GET":
        return True
    return principal.role is not Role.VIEWER

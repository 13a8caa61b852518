"""The web dashboard, served by the gateway at `/` (docs/dashboard.md)."""

from __future__ import annotations

from starlette.routing import BaseRoute

from agentledger.api.auth import AdminAuth
from agentledger.dashboard.pages import PAGES
from agentledger.dashboard.web import Dashboard
from agentledger.secrets_box import SecretBox


def dashboard_routes(auth: AdminAuth, box: SecretBox) -> list[BaseRoute]:
    """Mounted after every other route, so no page can shadow /v1, /api, /x402 or the health routes."""
    return Dashboard(auth, box, PAGES).routes()

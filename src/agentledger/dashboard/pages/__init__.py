"""Every dashboard page, in navigation order. A view is a module here with its `PAGES` and a template of the
same name in dashboard/templates/; adding it to this list mounts it and (with a `nav` label) links it."""

from __future__ import annotations

from agentledger.dashboard.pages import books, costs, governance, overview, requests, run_detail, runs, sessions
from agentledger.dashboard.web import Page

PAGES: list[Page] = [
    *overview.PAGES,
    *runs.PAGES,
    *run_detail.PAGES,
    *sessions.PAGES,
    *requests.PAGES,
    *costs.PAGES,
    *governance.PAGES,
    *books.PAGES,
]

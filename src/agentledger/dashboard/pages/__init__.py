"""Every dashboard page, in navigation order. A view is a module here with its `PAGES` and a template of the
same name in dashboard/templates/; adding it to this list mounts it and (with a `nav` label) links it."""

from __future__ import annotations

from agentledger.dashboard.pages import books, costs, governance, run_detail, runs
from agentledger.dashboard.web import Page

PAGES: list[Page] = [
    *runs.PAGES,
    *run_detail.PAGES,
    *costs.PAGES,
    *governance.PAGES,
    *books.PAGES,
]

"""Every mounted /api write route says what the audit log records of it: `guard(..., write=True, audit=[...])`. A
new write route without its audit actions fails here (docs/audit.md)."""

from __future__ import annotations

from pathlib import Path

from starlette.routing import Route

from agentledger.app import create_app
from agentledger.audit.changes import ACTION_RE
from agentledger.config import Settings

# POSTs that change nothing: each with the reason it is not audited.
READ_ONLY = {("POST", "/api/policies/evaluate"): "a dry run of the policies: nothing is stored or counted"}


def test_every_mounted_write_route_declares_its_audit_actions(tmp_path: Path) -> None:
    app = create_app(Settings(data_dir=str(tmp_path)))
    missing, writes = [], 0
    for route in app.routes:
        if not isinstance(route, Route) or not route.path.startswith("/api/"):
            continue
        for method in sorted((route.methods or set()) - {"GET", "HEAD"}):
            if (method, route.path) in READ_ONLY:
                continue
            writes += 1
            endpoint = route.endpoint
            actions = getattr(endpoint, "audit_actions", ())
            if not getattr(endpoint, "writes", False) or not actions:
                missing.append(f"{method} {route.path}")
            assert all(ACTION_RE.fullmatch(a) for a in actions), (method, route.path, actions)
    assert missing == [], f"write routes without audit actions (guard(..., write=True, audit=[...])): {missing}"
    assert writes >= 30


def test_guarded_reads_record_nothing(tmp_path: Path) -> None:
    app = create_app(Settings(data_dir=str(tmp_path)))
    for route in app.routes:
        if isinstance(route, Route) and route.path.startswith("/api/") and route.methods == {"GET", "HEAD"}:
            assert not getattr(route.endpoint, "writes", False), route.path

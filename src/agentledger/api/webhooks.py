"""Alerts and webhooks: `GET /api/alerts`, `/api/webhooks` (subscriptions, a test delivery, the delivery log).

Reads take any admin token of the workspace, writes an admin's or owner's. A webhook's signing secret is
answered once, at creation, and kept encrypted (secrets_box.py) for the delivery worker.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from agentledger.api.auth import AdminAuth, describe, json_body, path_id
from agentledger.audit.changes import Change
from agentledger.core import alerts as core_alerts
from agentledger.core.errors import InvalidRequest, NotFound
from agentledger.core.fields import id_field, text_field, time_field
from agentledger.core.ids import new_id
from agentledger.core.model import AdminPrincipal
from agentledger.gateway.responses import JSONResponse
from agentledger.pipeline.queue import TracePipeline
from agentledger.secrets_box import SecretBox
from agentledger.store.webhooks import WebhookStore
from agentledger.webhooks.guard import AddressRefused, AllowList, Lookup, check, system_lookup
from agentledger.webhooks.signing import new_secret

MAX_PAGE = 1000
MAX_URL_LEN = 2048
MAX_DESCRIPTION_LEN = 1024
_PUBLIC = ("id", "url", "kinds", "description", "created_at")
_FIELDS = {"url", "kinds", "description"}


def _limit(request: Request) -> int:
    raw = request.query_params.get("limit", "100")
    if not re.fullmatch(r"[0-9]{1,7}", raw) or not 1 <= int(raw) <= MAX_PAGE:
        raise InvalidRequest(f"'limit' must be an integer from 1 to {MAX_PAGE}.", param="limit")
    return int(raw)


def _choice(request: Request, name: str, allowed: tuple[str, ...]) -> str | None:
    raw = request.query_params.get(name)
    if raw is not None and raw not in allowed:
        raise InvalidRequest(f"'{name}' must be one of {', '.join(allowed)}.", param=name)
    return raw


def encode_cursor(at: datetime, ident: str) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([at.isoformat(), ident])).decode().rstrip("=")


def _cursor(request: Request) -> tuple[datetime, str] | None:
    raw = request.query_params.get("cursor")
    if raw is None:
        return None
    try:
        at, ident = orjson.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
        return time_field(at, "cursor"), id_field(ident, "cursor")
    except (ValueError, TypeError, InvalidRequest):
        raise InvalidRequest("'cursor' must be the next_cursor of a previous page.", param="cursor") from None


def _since(request: Request) -> datetime | None:
    # `from` is what this listing took before alerts had kinds; `since` is the name it has with them.
    # Both are read (and so checked) when both are sent; `since` wins.
    found = [time_field(raw, name) for name in ("since", "from") if (raw := request.query_params.get(name)) is not None]
    return found[0] if found else None


def webhook_row(data: dict[str, Any]) -> tuple[str, list[str] | None, str | None]:
    """(url, kinds or None for every kind, description), each checked, else a 400 naming the field."""
    unknown = sorted(set(data) - _FIELDS)
    if unknown:
        raise InvalidRequest(
            f"Unknown field {unknown[0]!r}: a webhook takes url, kinds and description.", param=unknown[0]
        )
    if "url" not in data:
        raise InvalidRequest("'url' is required.", param="url")
    url = text_field(data["url"], "url", limit=MAX_URL_LEN)
    kinds = data.get("kinds")
    if kinds is not None:
        if (
            not isinstance(kinds, list)
            or not kinds
            or any(not isinstance(k, str) or k not in core_alerts.KINDS for k in kinds)
        ):
            raise InvalidRequest(
                f"'kinds' must be a non-empty list of alert kinds ({', '.join(core_alerts.KINDS)}), or omitted "
                "for every kind.",
                param="kinds",
            )
        kinds = sorted(set(kinds))
    description = data.get("description")
    if description is not None:
        description = text_field(description, "description", limit=MAX_DESCRIPTION_LEN)
    return url, kinds, description


def webhook_routes(
    auth: AdminAuth,
    hooks: WebhookStore,
    box: SecretBox,
    pipeline: TracePipeline,
    allow: AllowList,
    *,
    lookup: Lookup = system_lookup,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    wake: Callable[[], None] = lambda: None,
) -> list[Route]:
    async def list_alerts(request: Request, admin: AdminPrincipal) -> Response:
        limit = _limit(request)
        kind = _choice(request, "kind", core_alerts.KINDS)
        severity = _choice(request, "severity", core_alerts.SEVERITIES)
        since, cursor = _since(request), _cursor(request)
        await pipeline.flush()  # read your writes: alerts of calls already answered
        rows = await hooks.alerts(
            admin.workspace_id, kind=kind, severity=severity, since=since, cursor=cursor, limit=limit
        )
        more = len(rows) == limit
        data = [core_alerts.public_fields(r) for r in rows]
        return JSONResponse(
            {"data": data, "next_cursor": encode_cursor(rows[-1]["at"], rows[-1]["id"]) if more else None}
        )

    async def create(request: Request, admin: AdminPrincipal) -> Response:
        url, kinds, description = webhook_row(await json_body(request))
        try:
            await check(url, allow, lookup)
        except AddressRefused as exc:
            raise InvalidRequest(f"'url' is refused: {exc}.", param="url") from None
        secret = new_secret()
        row = {
            "workspace_id": admin.workspace_id,
            "id": new_id("wh"),
            "url": url,
            "kinds": kinds,
            "description": description,
            "secret_encrypted": box.encrypt(secret),
            "created_at": clock(),
            "deleted_at": None,
        }
        await hooks.create(row)
        created = {**_public(row), "secret": secret}
        describe(request, Change("webhook.create", "webhook", str(row["id"]), after=created))  # the secret: its prefix
        return JSONResponse(created, status_code=201)

    async def found(request: Request, admin: AdminPrincipal) -> dict[str, Any]:
        webhook_id = path_id(request, "webhook_id", "Webhook")
        row = await hooks.get(admin.workspace_id, webhook_id)
        if row is None:
            raise NotFound(f"Webhook {webhook_id!r} does not exist.", param="webhook_id")
        return row

    async def list_hooks(request: Request, admin: AdminPrincipal) -> Response:
        return JSONResponse({"data": [_public(r) for r in await hooks.list_hooks(admin.workspace_id)]})

    async def get_hook(request: Request, admin: AdminPrincipal) -> Response:
        return JSONResponse(_public(await found(request, admin)))

    async def delete_hook(request: Request, admin: AdminPrincipal) -> Response:
        webhook_id = path_id(request, "webhook_id", "Webhook")
        before = await hooks.get(admin.workspace_id, webhook_id)
        if not await hooks.delete(admin.workspace_id, webhook_id, clock()):
            raise NotFound(f"Webhook {webhook_id!r} does not exist.", param="webhook_id")
        old = None if before is None else _public(before)
        describe(request, Change("webhook.delete", "webhook", webhook_id, before=old))
        return JSONResponse({"id": webhook_id, "deleted": True})

    async def test_hook(request: Request, admin: AdminPrincipal) -> Response:
        row = await found(request, admin)
        ident = new_id("dlv")
        await hooks.enqueue_test(admin.workspace_id, row["id"], ident, clock())
        wake()
        describe(request, Change("webhook.test", "webhook", row["id"], after={"delivery_id": ident}))
        return JSONResponse({"delivery_id": ident, "status": "pending"}, status_code=202)

    async def deliveries(request: Request, admin: AdminPrincipal) -> Response:
        limit, cursor = _limit(request), _cursor(request)
        row = await found(request, admin)
        rows = await hooks.deliveries(admin.workspace_id, row["id"], limit=limit, cursor=cursor)
        more = len(rows) == limit
        data = [{k: v for k, v in r.items() if k != "workspace_id"} for r in rows]
        nxt = encode_cursor(rows[-1]["created_at"], rows[-1]["id"]) if more else None
        return JSONResponse({"data": data, "next_cursor": nxt})

    g = auth.guard
    return [
        Route("/api/alerts", g(list_alerts), methods=["GET"]),
        Route("/api/webhooks", g(list_hooks), methods=["GET"]),
        Route("/api/webhooks", g(create, write=True, audit=["webhook.create"]), methods=["POST"]),
        Route("/api/webhooks/{webhook_id}", g(get_hook), methods=["GET"]),
        Route("/api/webhooks/{webhook_id}", g(delete_hook, write=True, audit=["webhook.delete"]), methods=["DELETE"]),
        Route("/api/webhooks/{webhook_id}/test", g(test_hook, write=True, audit=["webhook.test"]), methods=["POST"]),
        Route("/api/webhooks/{webhook_id}/deliveries", g(deliveries), methods=["GET"]),
    ]


def _public(row: dict[str, Any]) -> dict[str, Any]:
    return {k: row[k] for k in _PUBLIC}

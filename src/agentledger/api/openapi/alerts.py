"""The OpenAPI paths and rows of alerts and webhooks (api/webhooks.py; docs/alerts.md)."""

from __future__ import annotations

from agentledger.api.openapi.paths import ADMIN, API_READ, API_WRITE, op, path_id
from agentledger.api.openapi.schemas import ID, TIMESTAMP
from agentledger.api.openapi.shapes import (
    Schema,
    array,
    body,
    enum,
    integer,
    nullable,
    obj,
    ok_json,
    param,
    ref,
    text,
)
from agentledger.api.webhooks import MAX_DESCRIPTION_LEN, MAX_PAGE, MAX_URL_LEN
from agentledger.core.alerts import KINDS, LINKS, SEVERITIES, TEST_EVENT

STR = {"type": "string"}
OPT_STR = nullable(STR)
_PAGE = param("limit", "query", integer(1, MAX_PAGE, default=100), "Page size (newest first).")
_CURSOR = param("cursor", "query", {"type": "string"}, "The `next_cursor` of the previous page.")
_HOOK = path_id("webhook_id", ID)
_NEXT = nullable({"type": "string", "description": "Pass as `cursor` for the next page; null on the last."})

ALERT = obj(
    {
        "id": STR,
        "kind": enum(KINDS),
        "severity": enum(SEVERITIES),
        "message": STR,
        **{k: OPT_STR for k in LINKS},
        "at": TIMESTAMP,
        "data": {"type": "object", "description": "The kind's own figures (also flattened into the alert)."},
    },
    ["id", "kind", "severity", "message", *LINKS, "at", "data"],
)
WEBHOOK = obj(
    {
        "id": STR,
        "url": STR,
        "kinds": nullable(array(enum(KINDS))),
        "description": OPT_STR,
        "created_at": TIMESTAMP,
    },
    ["id", "url", "kinds", "description", "created_at"],
)
WEBHOOK_CREATED = obj(
    {**WEBHOOK["properties"], "secret": {"type": "string", "description": "`whsec_...`: shown once, keep it."}},
    [*WEBHOOK["required"], "secret"],
)
WEBHOOK_IN = obj(
    {
        "url": {
            **text(MAX_URL_LEN),
            "description": "http(s) URL at a public address (or one webhook_allow_hosts names).",
        },
        "kinds": {**array(enum(KINDS), min_items=1), "description": "Alert kinds delivered; omitted: every kind."},
        "description": text(MAX_DESCRIPTION_LEN),
    },
    ["url"],
    closed=True,
)
DELIVERY = obj(
    {
        "id": STR,
        "webhook_id": STR,
        "alert_id": OPT_STR,
        "event": enum([*KINDS, TEST_EVENT]),
        "status": enum(["pending", "delivered", "failed"]),
        "attempts": {"type": "integer"},
        "next_attempt_at": nullable(TIMESTAMP),
        "last_status_code": nullable({"type": "integer"}),
        "last_error": OPT_STR,
        "created_at": TIMESTAMP,
        "updated_at": TIMESTAMP,
    },
    ["id", "webhook_id", "event", "status", "attempts", "created_at", "updated_at"],
)


def _paged(item: str) -> Schema:
    return obj({"data": array(ref(item)), "next_cursor": _NEXT}, ["data", "next_cursor"])


ALERT_ROWS: dict[str, Schema] = {
    "Alert": ALERT,
    "Alerts": _paged("Alert"),
    "Webhook": WEBHOOK,
    "WebhookCreated": WEBHOOK_CREATED,
    "WebhookIn": WEBHOOK_IN,
    "Webhooks": obj({"data": array(ref("Webhook"))}, ["data"]),
    "WebhookDelivery": DELIVERY,
    "WebhookDeliveries": _paged("WebhookDelivery"),
    "WebhookTest": obj({"delivery_id": STR, "status": {"const": "pending"}}, ["delivery_id", "status"]),
}

ALERT_PATHS: dict[str, Schema] = {
    "/api/alerts": {
        "get": op(
            "Alerts of every kind (each recorded once per subject and window), newest first.",
            "alerts",
            ADMIN,
            {200: ok_json("Alerts.", ref("Alerts"))},
            (400, *API_READ),
            parameters=[
                param("kind", "query", enum(KINDS), "Only alerts of this kind."),
                param("severity", "query", enum(SEVERITIES), "Only alerts of this severity."),
                param("since", "query", TIMESTAMP, "Alerts at or after."),
                param("from", "query", TIMESTAMP, "The same as `since` (its former name)."),
                _PAGE,
                _CURSOR,
            ],
        )
    },
    "/api/webhooks": {
        "get": op("The workspace's webhooks.", "alerts", ADMIN, {200: ok_json("Webhooks.", ref("Webhooks"))}, API_READ),
        "post": op(
            "Subscribe a URL to alerts; the answer holds the signing secret, once.",
            "alerts",
            ADMIN,
            {201: ok_json("Created.", ref("WebhookCreated"))},
            API_WRITE,
            requestBody=body(ref("WebhookIn")),
        ),
    },
    "/api/webhooks/{webhook_id}": {
        "get": op(
            "One webhook.",
            "alerts",
            ADMIN,
            {200: ok_json("The webhook.", ref("Webhook"))},
            (404, *API_READ),
            parameters=[_HOOK],
        ),
        "delete": op(
            "Delete a webhook; its pending deliveries fail.",
            "alerts",
            ADMIN,
            {200: ok_json("Deleted.", ref("Deleted"))},
            (401, 403, 404, 503),
            parameters=[_HOOK],
        ),
    },
    "/api/webhooks/{webhook_id}/test": {
        "post": op(
            "Enqueue a `test` event for this webhook.",
            "alerts",
            ADMIN,
            {202: ok_json("Enqueued.", ref("WebhookTest"))},
            (401, 403, 404, 503),
            parameters=[_HOOK],
        )
    },
    "/api/webhooks/{webhook_id}/deliveries": {
        "get": op(
            "The webhook's delivery log, newest first.",
            "alerts",
            ADMIN,
            {200: ok_json("Deliveries.", ref("WebhookDeliveries"))},
            (400, 404, *API_READ),
            parameters=[_HOOK, _PAGE, _CURSOR],
        )
    },
}

"""The OpenAPI paths and rows of paid endpoints, workflow runtimes and the public x402 route
(api/paid_endpoints.py, finance/selling.py; docs/paid-endpoints.md)."""

from __future__ import annotations

from agentledger.api.openapi.paths import ADMIN, API_READ, API_WRITE, PUBLIC, op, path_id
from agentledger.api.openapi.schemas import AMOUNT_USD, ID, TIMESTAMP, USD
from agentledger.api.openapi.shapes import (
    Schema,
    array,
    body,
    enum,
    integer,
    json_content,
    nullable,
    obj,
    ok_json,
    param,
    ref,
    text,
)
from agentledger.core import paid_endpoints as pe
from agentledger.core.bounds import MAX_EVENT_COST_USD
from agentledger.core.headers import MAX_NAME_LEN, MAX_PATH_LEN, RUN_ID, SESSION_ID, SESSION_NAME, SESSION_PATH

STR = {"type": "string"}
OPT_STR = nullable(STR)
ADDRESS = {"type": "string", "pattern": "^0x[0-9a-fA-F]{40}$", "description": "An EVM address (EIP-55 checked)."}
_EVENT_DIGITS = len(str(MAX_EVENT_COST_USD)) - 1
# core.budget_config.dollars: a decimal string (or an integer), 0 to MAX_EVENT_COST_USD, at most 9 decimals.
FEE_USD = {
    "type": ["string", "integer"],
    "pattern": f"^0*([0-9]{{1,{_EVENT_DIGITS}}}(\\.[0-9]{{1,9}})?|{MAX_EVENT_COST_USD}(\\.0{{1,9}})?)$",
    "minimum": 0,
    "maximum": int(MAX_EVENT_COST_USD),
    "description": "Dollars, at most 9 decimals.",
}
PERCENT = {
    "type": ["string", "integer"],
    "pattern": "^0*([0-9]{1,2}(\\.[0-9]{1,4})?|100(\\.0{1,4})?)$",
    "minimum": 0,
    "maximum": 100,
    "description": 'A percentage of the price, 0 to 100, at most 4 decimals ("2.5").',
}
_HEADER_NAME = text(64, pattern="^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
_SECRET = text(pe.MAX_SECRET_LEN, pattern="^[\\u0020-\\u007e]+$")
_URL = text(pe.MAX_URL_LEN, pattern="^https?://[^\\s\\u0000-\\u001f\\u007f]+$")

RUNTIME_IN = obj(
    {
        "type": enum(pe.RUNTIME_TYPES),
        "url": {**_URL, "description": "The workflow's webhook URL (no credentials in it: use auth_header)."},
        "method": enum(pe.METHODS, default="POST"),
        "auth_header": nullable(
            obj(
                {"name": _HEADER_NAME, "value": {**_SECRET, "description": "Encrypted at rest, never shown back."}},
                ["name", "value"],
            )
        ),
    },
    ["type", "url"],
)
RUNTIME = obj(
    {
        "type": enum(pe.RUNTIME_TYPES),
        "url": STR,
        "method": enum(pe.METHODS),
        "auth_header": nullable(obj({"name": STR, "set": {"const": True}}, ["name", "set"])),
    },
    ["type", "url", "method", "auth_header"],
)
AGENT_DETAIL = obj(
    {
        "id": STR,
        "department_id": STR,
        "name": STR,
        "kind": enum(["ai", "workflow"]),
        "created_at": TIMESTAMP,
        "runtime": {**nullable(ref("Runtime")), "description": "A workflow agent's runtime; null when it has none."},
    },
    ["id", "department_id", "name", "kind", "created_at", "runtime"],
)
_POLICY_PROPS = {
    "max_price_usd": {**nullable(AMOUNT_USD), "description": "The price may not exceed it."},
    "requests_per_minute": nullable(integer(1, pe.MAX_RPM)),
    "concurrent": nullable(integer(1, pe.MAX_CONCURRENT)),
    "allowed_payers": {
        **nullable(array(ADDRESS, max_items=pe.MAX_PAYERS)),
        "description": "Payers the endpoint sells to; null: any.",
    },
}
_FEE_IN = obj({"percent": PERCENT, "fixed_usd": FEE_USD})
_SETTINGS = {
    "description": nullable(text(pe.MAX_DESCRIPTION_LEN)),
    "agent_id": {**ID, "description": "A workflow agent with a runtime."},
    "price_usd": {**AMOUNT_USD, "description": "A whole number of the asset's atomic units ($0.000001 for USDC)."},
    "network": {**text(64, pattern="^eip155:[1-9][0-9]*$"), "description": "CAIP-2; one of x402_networks."},
    "asset": {**ADDRESS, "description": "The token contract; default: the network's USDC."},
    "pay_to": ADDRESS,
    "fee": _FEE_IN,
    "input_schema": {**nullable({"type": "object"}), "description": "A JSON Schema the body must match."},
    "timeout_s": {
        "type": "number",
        "exclusiveMinimum": 0,
        "maximum": 3600,
        "description": "The workflow's timeout (at most workflow_timeout_cap_s).",
    },
    "max_timeout_s": {
        **integer(1, pe.MAX_TIMEOUT_S),
        "description": f"The payment's validity window: at least timeout_s + {pe.SETTLEMENT_MARGIN_S}.",
    },
    "policy": obj(_POLICY_PROPS),
}
PAID_ENDPOINT_IN = obj(
    {"slug": text(64, pattern=pe.SLUG_RE.pattern), **_SETTINGS},
    ["slug", "agent_id", "price_usd", "pay_to"],
)
PAID_ENDPOINT_PATCH = obj({"slug": text(64, pattern=pe.SLUG_RE.pattern), **_SETTINGS})
PAID_ENDPOINT = obj(
    {
        "id": STR,
        "slug": STR,
        "description": OPT_STR,
        "agent_id": STR,
        "price_usd": USD,
        "network": STR,
        "asset": STR,
        "asset_amount": {"type": "string", "pattern": "^[0-9]+$", "description": "The price in atomic units."},
        "pay_to": STR,
        "fee": obj({"percent": STR, "fixed_usd": USD}, ["percent", "fixed_usd"]),
        "input_schema": nullable({"type": "object"}),
        "timeout_s": {"type": "number"},
        "max_timeout_s": {"type": "integer"},
        "policy": obj(
            {
                "max_price_usd": nullable(USD),
                "requests_per_minute": nullable({"type": "integer"}),
                "concurrent": nullable({"type": "integer"}),
                "allowed_payers": nullable(array(STR)),
            },
            ["max_price_usd", "requests_per_minute", "concurrent", "allowed_payers"],
        ),
        "url": {"type": "string", "description": "The public route: /x402/{workspace}/{slug}."},
        "virtual_key_id": {"type": "string", "description": "The scoped key of the workflow agent (never shown)."},
        "enabled": {"type": "boolean"},
        "created_at": TIMESTAMP,
        "updated_at": TIMESTAMP,
        "disabled_at": nullable(TIMESTAMP),
    },
    ["id", "slug", "agent_id", "price_usd", "network", "asset", "asset_amount", "pay_to", "fee", "url", "enabled"],
)
# The public route's one error shape: the API's, plus x402's reason code on a 402.
PAYMENT_ERROR = obj(
    {
        "error": obj(
            {"message": STR, "type": STR, "code": OPT_STR, "param": OPT_STR, "reason": STR},
            ["message", "type", "code", "param"],
            closed=True,
        )
    },
    ["error"],
    closed=True,
)

PAID_ROWS: dict[str, Schema] = {
    "RuntimeIn": RUNTIME_IN,
    "Runtime": RUNTIME,
    "AgentDetail": AGENT_DETAIL,
    "PaidEndpointIn": PAID_ENDPOINT_IN,
    "PaidEndpointPatch": PAID_ENDPOINT_PATCH,
    "PaidEndpoint": PAID_ENDPOINT,
    "PaidEndpoints": obj({"data": array(ref("PaidEndpoint"))}, ["data"]),
    "PaymentError": PAYMENT_ERROR,
}

_ENDPOINT = path_id("endpoint_id")
_AGENT = path_id("agent_id")
_B64 = {"type": "string", "description": "base64 of x402's JSON document."}
_RETRY = {"description": "Seconds to wait.", "schema": {"type": "string", "pattern": "^[0-9]+$"}}
_RUN = {"description": "The run of this paid call.", "schema": ID}


def _x402_error(description: str, **headers: Schema) -> Schema:
    return {"description": description, "headers": dict(headers), "content": json_content(ref("PaymentError"))}


_X402_ANSWERS: Schema = {
    "200": {
        "description": "The workflow's JSON answer; the payment was settled.",
        "headers": {
            "PAYMENT-RESPONSE": {"description": "x402's SettleResponse.", "schema": _B64},
            "alephant-run-id": _RUN,
        },
        "content": json_content({}),
    },
    "400": _x402_error("Body not a JSON object, not matching the input schema (`invalid_input`), or a bad header."),
    "402": _x402_error(
        "Payment required: none sent (`payment_required`), malformed (`invalid_payment`), for other requirements "
        "(`payment_mismatch`), expiring too soon (`payment_expires_too_soon`), refused by the facilitator "
        "(`payment_invalid`, `reason` says why), already used (`payment_already_used`): PAYMENT-REQUIRED holds the "
        "requirements. Or the settlement failed after the workflow ran (`settlement_failed`): PAYMENT-RESPONSE holds "
        "the failed settlement, and the output is withheld.",
        **{
            "PAYMENT-REQUIRED": {"description": "x402's PaymentRequired (version 2).", "schema": _B64},
            "PAYMENT-RESPONSE": {"description": "x402's failed SettleResponse (settlement_failed).", "schema": _B64},
        },
    ),
    "403": _x402_error("The endpoint's policy does not sell to this payer (`payer_not_allowed`)."),
    "404": _x402_error("No enabled paid endpoint at this address."),
    "413": _x402_error("The body is larger than paid_endpoint_max_body_bytes (`request_too_large`)."),
    "429": _x402_error("Over the endpoint's rate or concurrency limit (`rate_limited`).", **{"Retry-After": _RETRY}),
    "502": _x402_error(
        "The workflow failed, could not be reached or answered something that is not JSON (`workflow_failed`, "
        "`workflow_unavailable`, `workflow_bad_response`), or the facilitator's answer was unusable "
        "(`facilitator_error`); nothing was charged.",
        **{"alephant-run-id": _RUN},
    ),
    "503": _x402_error(
        "The facilitator (`facilitator_unavailable`), the store or the counters could not be asked; nothing was "
        "charged.",
        **{"Retry-After": _RETRY},
    ),
    "504": _x402_error(
        "The workflow did not answer within the endpoint's timeout (`workflow_timeout`); nothing was charged.",
        **{"alephant-run-id": _RUN},
    ),
}

PAID_PATHS: dict[str, Schema] = {
    "/api/agents/{agent_id}": {
        "get": op(
            "An agent, with its runtime when it is a workflow agent (never the runtime's secret).",
            "manage",
            ADMIN,
            {200: ok_json("The agent.", ref("AgentDetail"))},
            (404, *API_READ),
            parameters=[_AGENT],
        )
    },
    "/api/agents/{agent_id}/runtime": {
        "put": op(
            "Set or replace a workflow agent's runtime (n8n or webhook: URL, method, auth header).",
            "manage",
            ADMIN,
            {200: ok_json("The agent with its runtime.", ref("AgentDetail"))},
            (*API_WRITE, 404),
            parameters=[_AGENT],
            requestBody=body(ref("RuntimeIn")),
        )
    },
    "/api/paid-endpoints": {
        "get": op(
            "Paid endpoints (disabled ones too).",
            "finance",
            ADMIN,
            {200: ok_json("The workspace's paid endpoints.", ref("PaidEndpoints"))},
            API_READ,
        ),
        "post": op(
            "Publish a workflow agent as a paid endpoint; a scoped virtual key of the agent is made for it.",
            "finance",
            ADMIN,
            {201: ok_json("Created.", ref("PaidEndpoint"))},
            API_WRITE,
            requestBody=body(ref("PaidEndpointIn")),
        ),
    },
    "/api/paid-endpoints/{endpoint_id}": {
        "get": op(
            "A paid endpoint.",
            "finance",
            ADMIN,
            {200: ok_json("The endpoint.", ref("PaidEndpoint"))},
            (404, *API_READ),
            parameters=[_ENDPOINT],
        ),
        "patch": op(
            "Change a paid endpoint's settings (not its slug); every rule is checked again.",
            "finance",
            ADMIN,
            {200: ok_json("The endpoint after.", ref("PaidEndpoint"))},
            (*API_WRITE, 404),
            parameters=[_ENDPOINT],
            requestBody=body(ref("PaidEndpointPatch")),
        ),
        "delete": op(
            "Disable a paid endpoint: no more sales, its scoped key revoked; its slug stays taken.",
            "finance",
            ADMIN,
            {200: ok_json("Disabled.", ref("PaidEndpoint"))},
            (401, 403, 404, 503),
            parameters=[_ENDPOINT],
        ),
    },
    "/x402/{workspace}/{slug}": {
        "post": {
            "summary": "Call a paid endpoint over x402 version 2 (public): without PAYMENT-SIGNATURE a 402 with the "
            "requirements; with a valid payment the workflow runs, the payment settles and its JSON is the answer.",
            "tags": ["x402"],
            "security": PUBLIC,
            "parameters": [
                param("workspace", "path", ID, "The seller's workspace."),
                param("slug", "path", text(64, pattern=pe.SLUG_RE.pattern), "The endpoint's slug."),
                param("PAYMENT-SIGNATURE", "header", STR, "x402's PaymentPayload, base64."),
                param(SESSION_ID, "header", ID, "Puts the run in the buyer's session."),
                param(SESSION_PATH, "header", text(MAX_PATH_LEN, pattern=None), "Session path of the run."),
                param(SESSION_NAME, "header", text(MAX_NAME_LEN), "Session name."),
                param(RUN_ID, "header", ID, "Ignored: the gateway makes the run."),
            ],
            "requestBody": body({"type": "object"}),
            "responses": _X402_ANSWERS,
        }
    },
}

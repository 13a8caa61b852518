"""The OpenAPI paths and rows of outbound payments: POST /v1/x402/fetch and /api/payment-signers
(api/x402_fetch.py, api/payment_signers.py; docs/paid-endpoints.md, "Outbound payments")."""

from __future__ import annotations

from agentledger.api.openapi.paths import ADMIN, API_READ, API_WRITE, TRACKING, VIRTUAL_KEY, op, path_id
from agentledger.api.openapi.schemas import AMOUNT_USD, ANY, ID, TIMESTAMP, USD
from agentledger.api.openapi.shapes import Schema, array, body, enum, json_content, nullable, obj, ok_json, ref, text
from agentledger.core.headers import RUN_ID
from agentledger.finance.fetch_request import MAX_HEADER_NAME, MAX_HEADER_VALUE, MAX_HEADERS, MAX_URL_LEN, METHODS
from agentledger.finance.signers import KNOWN_NETWORKS

STR: Schema = {"type": "string"}
OPT_STR = nullable(STR)
_TAG = "payments"
_ERROR = ref("Error")
_HEADER_NAME = "^[!#$%&'*+\\-.^_`|~0-9A-Za-z]+$"
_HEADER_VALUE = "^[^\\u0000-\\u0008\\u000a-\\u001f\\u007f]*$"
_PRIVATE_KEY = "^(0x)?[0-9a-fA-F]{64}$"

FETCH_IN = obj(
    {
        "url": {
            **text(MAX_URL_LEN, pattern=None),
            "description": "Absolute http(s) URL. Every address its host resolves to must be public unless "
            "`x402_fetch_allow_hosts` names it (403 `address_refused`); the connection goes to those addresses.",
        },
        "method": nullable(enum(METHODS, default="GET")),
        "headers": nullable(
            {
                "type": "object",
                "maxProperties": MAX_HEADERS,
                "propertyNames": {"type": "string", "maxLength": MAX_HEADER_NAME, "pattern": _HEADER_NAME},
                "additionalProperties": {"type": "string", "maxLength": MAX_HEADER_VALUE, "pattern": _HEADER_VALUE},
                "description": "Sent to the seller. Hop-by-hop, framing, credential (Authorization, Cookie, "
                "x-api-key), forwarding (Forwarded, X-Forwarded-*, Proxy-*) and x402 headers are refused (400).",
            }
        ),
        "body": {
            **ANY,
            "description": "Sent to the seller: a string as text/plain, anything else as JSON (unless `headers` "
            "names a content-type). Not with GET.",
        },
        "max_amount_usd": {**AMOUNT_USD, "description": f"The most this fetch may pay. {AMOUNT_USD['description']}"},
        "run_id": nullable({**ID, "description": "The run (else the alephant-run-id header's, else a new one)."}),
        "signer": nullable(
            {**text(256), "description": "The payment signer's name (default: the oldest that can pay)."}
        ),
    },
    ["url", "max_amount_usd"],
    closed=True,
)

FETCH_PAYMENT = obj(
    {
        "status": enum(["settled", "failed"]),
        "confirmed": {
            "type": "boolean",
            "description": "false: the seller served without a PAYMENT-RESPONSE (or did not answer after the "
            "payment left): it holds a valid authorization, so the payment is counted as settled.",
        },
        "amount_usd": USD,
        "charged_usd": {**USD, "description": "What the books and budgets count: the amount, or 0 when failed."},
        "asset_amount": {**STR, "description": "Atomic units of the asset, as signed."},
        "network": {**STR, "description": "CAIP-2."},
        "asset": STR,
        "payee": STR,
        "payer": {**STR, "description": "The signer's address."},
        "signer": STR,
        "reference": nullable({**STR, "description": "The settlement's transaction (local facilitators: `local:…`)."}),
        "error": OPT_STR,
        "step_id": {**STR, "description": "The run's `payment` step."},
    },
    ["status", "confirmed", "amount_usd", "charged_usd", "asset_amount", "network", "asset", "payee", "step_id"],
)

FETCH_OUT = obj(
    {
        "status": {"type": "integer", "description": "The seller's status (after the payment, when one was made)."},
        "headers": {
            "type": "object",
            "additionalProperties": STR,
            "description": "A safe subset of the seller's headers (content-type, cache-control, location, "
            "payment-required, payment-response, ...).",
        },
        "body": {**ANY, "description": "The seller's body, as `body_encoding` says."},
        "body_encoding": enum(["json", "text", "base64", "none"]),
        "run_id": STR,
        "payment": nullable(ref("X402FetchPayment")),
    },
    ["status", "headers", "body", "body_encoding", "run_id", "payment"],
)

SIGNER = obj(
    {
        "id": STR,
        "name": STR,
        "address": {**STR, "description": "The signer's EVM address (EIP-55). The key itself is never answered."},
        "networks": array(enum(KNOWN_NETWORKS)),
        "max_payment_usd": nullable(USD),
        "created_at": TIMESTAMP,
        "revoked_at": nullable(TIMESTAMP),
        "revoked": {"type": "boolean"},
    },
    ["id", "name", "address", "networks", "max_payment_usd", "created_at", "revoked_at", "revoked"],
)

SIGNER_IN = obj(
    {
        "name": {**text(256), "description": "Unique in the workspace, revoked signers included."},
        "private_key": nullable(
            {"type": "string", "pattern": _PRIVATE_KEY, "description": "32 bytes of hex; or send `generate`."}
        ),
        "generate": nullable({"type": "boolean", "description": "true: the gateway makes a new key."}),
        "networks": nullable({**array(enum(KNOWN_NETWORKS), min_items=1), "description": "Default: all of them."}),
        "max_payment_usd": nullable({**AMOUNT_USD, "description": "The most one payment may be (budgets apart)."}),
    },
    ["name"],
    closed=True,
)

OUTBOUND_ROWS: dict[str, Schema] = {
    "X402FetchIn": FETCH_IN,
    "X402FetchOut": FETCH_OUT,
    "X402FetchPayment": FETCH_PAYMENT,
    "PaymentSigner": SIGNER,
    "PaymentSignerIn": SIGNER_IN,
    "PaymentSigners": obj({"data": array(ref("PaymentSigner"))}, ["data"]),
}

_FETCH_HEADERS = {
    RUN_ID: {"description": "The fetch's run.", "schema": STR},
    "alephant-cost-usd": {"description": "What this fetch was charged.", "schema": USD},
    "alephant-policy-decision": {"description": "`allowed`.", "schema": STR},
    "alephant-replayed": {
        "description": "`true` on a replay of an earlier fetch under this x-request-id (charged 0).",
        "schema": {"const": "true"},
    },
}


def _error(description: str) -> Schema:
    return {"description": description, "content": json_content(_ERROR)}


_FETCH_ERRORS = {
    402: _error(
        "Nothing was paid: `payment_over_max` (the cheapest payable price is over `max_amount_usd` or the signer's "
        "own limit; `price_usd`, `max_amount_usd` and `accepts` say so), `payment_unsupported` (nothing offered is "
        "payable: an unknown asset, another scheme, not x402 version 2), `no_payment_signer`, or `budget_exceeded`."
    ),
    403: _error(
        "`address_refused` (the URL resolves to a private, loopback, link-local or metadata address), "
        "`policy_blocked`, `approval_required` / `approval_denied`, `run_cancelled`, `agent_mismatch`."
    ),
}

OUTBOUND_PATHS: dict[str, Schema] = {
    "/v1/x402/fetch": {
        "post": op(
            "Fetch a URL for the agent, paying an x402 version 2 402 from the workspace's payment signer within "
            "`max_amount_usd`, the agent's policies and budgets (one spend authorization); the payment is a step "
            "of the run.",
            _TAG,
            VIRTUAL_KEY,
            {
                200: {
                    "description": "The seller's answer (the paid one, when a payment was made).",
                    "headers": _FETCH_HEADERS,
                    "content": json_content(ref("X402FetchOut")),
                },
                **_FETCH_ERRORS,
            },
            (400, 401, 409, 410, 413, 423, 429, 502, 503, 504),
            parameters=TRACKING[:6],
            requestBody=body(ref("X402FetchIn")),
            description=(
                "Idempotent under the client's `x-request-id`, as model calls are: the first fetch claims the id (in "
                "the workspace); a concurrent duplicate waits for it. Once the first is final (a signed payment was "
                "sent, or the seller's answer was relayed without payment and below 400), a repeat of the same "
                "request (url, method, headers, body, max_amount_usd, signer) replays its answer, status and body "
                "(with the seller's payment headers) as first given, with `alephant-replayed: true` and "
                "`alephant-cost-usd: 0`: nothing is signed, paid, recorded or charged again. Another request under "
                "the id is `409 idempotency_key_reused`; a final fetch whose answer retention pruned is `410 "
                "replay_unavailable`. A fetch that failed before any payment left (a refusal, the seller "
                "unreachable or answering 4xx/5xx without payment) releases the id: a retry tries again."
            ),
        )
    },
    "/api/payment-signers": {
        "get": op(
            "The workspace's payment signers, revoked ones too (addresses, never keys).",
            _TAG,
            ADMIN,
            {200: ok_json("Payment signers.", ref("PaymentSigners"))},
            API_READ,
        ),
        "post": op(
            "Add a payment signer from a private key, or generate one; the key is kept encrypted and never answered.",
            _TAG,
            ADMIN,
            {201: ok_json("Created.", ref("PaymentSigner"))},
            API_WRITE,
            requestBody=body(ref("PaymentSignerIn")),
        ),
    },
    "/api/payment-signers/{signer_id}": {
        "get": op(
            "One payment signer.",
            _TAG,
            ADMIN,
            {200: ok_json("The signer.", ref("PaymentSigner"))},
            (404, *API_READ),
            parameters=[path_id("signer_id")],
        ),
        "delete": op(
            "Revoke a payment signer: it pays nothing from now on, on every replica (revoking again is a no-op).",
            _TAG,
            ADMIN,
            {200: ok_json("The revoked signer.", ref("PaymentSigner"))},
            (401, 403, 404, 503),
            parameters=[path_id("signer_id")],
        ),
    },
}

"""The paths object: every route the app mounts, with its parameters, body, security and statuses."""

from __future__ import annotations

from agentledger.api.budgets import MAX_PAGE
from agentledger.api.openapi.rows import DECISIONS
from agentledger.api.openapi.schemas import ID, NAME, PATH, TIMESTAMP
from agentledger.api.openapi.shapes import (
    Schema,
    body,
    enum,
    integer,
    json_content,
    nullable,
    obj,
    ok_json,
    param,
    ref,
    responses,
    text,
)
from agentledger.api.query import MAX_PROPERTY_FILTERS
from agentledger.api.run_controls import MAX_REASON
from agentledger.core import headers as h
from agentledger.core.model import RunStatus
from agentledger.core.pricing import CostSource
from agentledger.store.base import GROUP_COLUMNS

Security = list[dict[str, list[str]]]
VIRTUAL_KEY: Security = [{"virtualKey": []}, {"virtualKeyHeader": []}]
ADMIN: Security = [{"adminToken": []}]
PUBLIC: Security = []

# Who can answer what: every authenticated route may meet a store outage (503); a body may be too large (413).
V1 = (401, 503)
V1_WRITE = (400, 401, 413, 503)
API_READ = (401, 503)
API_WRITE = (400, 401, 403, 409, 413, 503)

_PROMPT = {**text(h.MAX_ID_LEN * 2 + 1, pattern=None), "description": "`id` or `id@version` (each in id format)."}
# docs/retention.md: `true` or `false` in any case; anything else is a 400 naming the header.
_FLAG = {"type": "string", "pattern": "^([Tt][Rr][Uu][Ee]|[Ff][Aa][Ll][Ss][Ee])$"}
OMIT_REQUEST = param(
    h.OMIT_REQUEST,
    "header",
    _FLAG,
    "`true`: the request body is not stored (the gateway keeps only its SHA-256; a step's `input` is null).",
)
OMIT_RESPONSE = param(
    h.OMIT_RESPONSE,
    "header",
    _FLAG,
    "`true`: the response is not stored (no body, no stream bytes; a step's `output`, a run's end `output` null): "
    "a repeat of the x-request-id is then `410 replay_unavailable`, never forwarded again.",
)
OMIT = [OMIT_REQUEST, OMIT_RESPONSE]
TRACKING = [
    param(h.REQUEST_ID, "header", ID, "Idempotency key and lookup id; generated when absent, always echoed."),
    param(h.AGENT_ID, "header", ID, "Attribute the call to an agent of the key's workspace."),
    param(h.RUN_ID, "header", ID, "The run this call belongs to; created on first sight."),
    param(h.SESSION_ID, "header", ID, "Groups runs and requests into a session."),
    param(h.SESSION_PATH, "header", text(h.MAX_PATH_LEN, pattern=PATH["pattern"]), "Route inside the workflow."),
    param(h.SESSION_NAME, "header", text(h.MAX_NAME_LEN), "Human label of the session."),
    param(h.PROMPT_ID, "header", _PROMPT, "Prompt template id."),
    param(h.PROMPT_VERSION, "header", ID, "Prompt version; needs alephant-prompt-id."),
    param(
        h.FORCED_ROUTING,
        "header",
        text(h.MAX_NAME_LEN),
        "A provider key's name: the call goes to that key (which must serve the model), not the route table.",
    ),
    *OMIT,
]


def op(
    summary: str,
    tag: str,
    security: Security,
    ok: dict[int, Schema],
    errors: tuple[int, ...],
    **extra: Schema | list[Schema] | str,
) -> Schema:
    return {"summary": summary, "tags": [tag], "security": security, "responses": responses(ok, errors), **extra}


def path_id(name: str, schema: Schema = ID) -> Schema:
    return param(name, "path", schema, f"The {name.removesuffix('_id').replace('_', ' ')}'s id.")


def _listing(item: str) -> Schema:
    return {"type": "object", "properties": {"data": {"type": "array", "items": ref(item)}}, "required": ["data"]}


def _crud(item: str, body_schema: str, summary: str) -> Schema:
    return {
        "get": op(
            f"List {summary}.", "manage", ADMIN, {200: ok_json(f"The workspace's {summary}.", _listing(item))}, API_READ
        ),
        "post": op(
            f"Create one of the {summary}.",
            "manage",
            ADMIN,
            {201: ok_json("Created.", ref(item))},
            API_WRITE,
            requestBody=body(ref(body_schema)),
        ),
    }


_PROPERTY_NAME = h.PROPERTY_NAME_RE.pattern.removeprefix("^").removesuffix("$").replace("\\-", "-")
_RUN_FILTERS = [
    param("agent", "query", ID, "Only runs of this agent."),
    param("session", "query", ID, "Only runs of this session."),
    param("workflow", "query", NAME, "Only runs of this workflow."),
    param("status", "query", enum([s.value for s in RunStatus]), "Only runs in this status."),
    param("from", "query", TIMESTAMP, "Runs started at or after."),
    param("to", "query", TIMESTAMP, "Runs started before."),
    param("limit", "query", integer(1, 1000, default=50), "Page size."),
    param("offset", "query", integer(0, 10_000_000, default=0), "Rows to skip (reads them; prefer `cursor`)."),
    param("cursor", "query", {"type": "string"}, "The `next_cursor` of the previous page."),
    param("endpoint", "query", ID, "Only runs started by a sale of this paid endpoint."),
    param(
        "decision",
        "query",
        enum(DECISIONS),
        "Only runs in which a call or check had this decision (its policy_check step says so; an escalation that "
        "was approved counts as escalated too).",
    ),
]
_PROPERTY_FILTERS = (
    f"Property filters: `property.<name>=<value>` ({h.PROPERTY_NAME_HELP}; values 1 to {h.MAX_PROPERTY_VALUE_LEN} "
    f"characters), up to {MAX_PROPERTY_FILTERS} of them: only runs in which a request or step carried each of these "
    "`alephant-property-<name>` values. A bad name or value is a 400 naming the parameter."
)
_GROUP_BY = {
    "type": "string",
    "pattern": f"^({'|'.join(GROUP_COLUMNS)}|property\\.{_PROPERTY_NAME})$",
    "default": "workspace",
}
_GATEWAY_HEADERS = {
    "x-request-id": {"description": "The request's id: the client's, or generated.", "schema": {"type": "string"}},
    "alephant-run-id": {"description": "The run, when the call belongs to one.", "schema": ID},
    "alephant-policy-decision": {
        "description": "What budgets and rate limits decided: `allowed` on every answer; a refusal says `blocked` "
        "(402, or 503 when a budget that blocks cannot be checked) or `throttled` (429).",
        "schema": enum(DECISIONS),
    },
    "alephant-budget-remaining-usd": {
        "description": "When a budget applies: what the tightest applicable budget has left (limit - spent - "
        "reserved, floored at 0, 9 decimals): after this call's cost on a non-streamed answer, after its "
        "reservation on a stream (sent before its cost is known).",
        "schema": {"type": "string", "pattern": "^[0-9]+\\.[0-9]{9}$"},
    },
    "alephant-budget-scope": {
        "description": "With the remaining amount: that budget's scope, e.g. `workspace`, `agent:planner`, "
        "`property.customer:acme`.",
        "schema": {"type": "string"},
    },
    "alephant-cost-usd": {
        "description": "Non-streamed calls and replays: exact cost, 9 decimals (0 on a replay).",
        "schema": {"type": "string", "pattern": "^[0-9]+\\.[0-9]{9}$"},
    },
    "alephant-cost-source": {
        "description": "Where the cost came from.",
        "schema": enum([s.value for s in CostSource]),
    },
    "alephant-replayed": {"description": "`true` on a replay of an earlier x-request-id.", "schema": {"const": "true"}},
    "alephant-provider": {
        "description": "Non-streamed calls: the name of the provider key that answered (after fallbacks).",
        "schema": {"type": "string"},
    },
    "alephant-model": {
        "description": "Non-streamed calls: the model that answered (a fallback may have changed it).",
        "schema": {"type": "string"},
    },
    "alephant-attempts": {
        "description": "Non-streamed calls: the provider attempts the call took (retries and fallbacks).",
        "schema": {"type": "string", "pattern": "^[1-9][0-9]*$"},
    },
}
_STREAM_OR_JSON = {
    "description": "The provider's answer: a chat completion, or an SSE stream when `stream` is true.",
    "headers": _GATEWAY_HEADERS,
    "content": {**json_content(ref("ChatCompletion")), "text/event-stream": {"schema": {"type": "string"}}},
}
_PLAIN_METRICS = {"description": "Prometheus text format.", "content": {"text/plain": {"schema": {"type": "string"}}}}
_STATUS = {
    "type": "object",
    "properties": {"status": {"type": "string"}, "reason": {"type": "string"}},
    "required": ["status"],
}

_PAGE = param("limit", "query", integer(1, MAX_PAGE, default=100), "Page size (newest first).")
_BUDGET_HEADERS = [
    param(h.AGENT_ID, "header", ID, "The agent whose budgets count (default: the key's agent)."),
    param(h.RUN_ID, "header", ID, "The run: its workflow's budgets and its own `run` budgets count."),
]
_DELETED = ok_json("Deleted (it governs no call from now on; its ledger stays).", ref("Deleted"))
_BUDGET_PATHS: Schema = {
    "/api/budgets": {
        "get": op(
            "Budgets, each with its current window's figures.",
            "budgets",
            ADMIN,
            {200: ok_json("The workspace's budgets.", ref("Budgets"))},
            API_READ,
        ),
        "post": op(
            "Create a budget (a department, agent or virtual key it names must exist: 404 naming `scope_value`).",
            "budgets",
            ADMIN,
            {201: ok_json("Created, with its figures.", ref("Budget"))},
            (*API_WRITE, 404),
            requestBody=body(ref("BudgetIn")),
        ),
    },
    "/api/budgets/{budget_id}": {
        "get": op(
            "A budget and its current window's figures.",
            "budgets",
            ADMIN,
            {200: ok_json("The budget.", ref("Budget"))},
            (404, *API_READ),
            parameters=[path_id("budget_id")],
        ),
        "delete": op(
            "Delete a budget.",
            "budgets",
            ADMIN,
            {200: _DELETED},
            (401, 403, 404, 503),
            parameters=[path_id("budget_id")],
        ),
    },
    "/api/rate-limits": {
        "get": op(
            "Rate limits.",
            "budgets",
            ADMIN,
            {200: ok_json("The workspace's rate limits.", ref("RateLimits"))},
            API_READ,
        ),
        "post": op(
            "Create a rate limit: requests and tokens per minute, concurrent calls.",
            "budgets",
            ADMIN,
            {201: ok_json("Created.", ref("RateLimit"))},
            (*API_WRITE, 404),
            requestBody=body(ref("RateLimitIn")),
        ),
    },
    "/api/rate-limits/{rate_limit_id}": {
        "delete": op(
            "Delete a rate limit.",
            "budgets",
            ADMIN,
            {200: _DELETED},
            (401, 403, 404, 503),
            parameters=[path_id("rate_limit_id")],
        )
    },
    "/api/ledger": {
        "get": op(
            "The budget ledger: every reserve, settle, release, expiry, spend and adjustment, newest first.",
            "budgets",
            ADMIN,
            {200: ok_json("Ledger entries.", ref("Ledger"))},
            (400, *API_READ),
            parameters=[
                param("budget", "query", ID, "Only this budget's entries."),
                param("run", "query", ID, "Only this run's entries."),
                param("from", "query", TIMESTAMP, "Entries at or after."),
                param("to", "query", TIMESTAMP, "Entries before."),
                _PAGE,
            ],
        )
    },
    "/v1/budget": {
        "get": op(
            "The budgets that govern this key's calls (with the agent and run the headers name), in their current "
            "window; `alephant-property-<name>` headers bring in property budgets.",
            "budgets",
            VIRTUAL_KEY,
            {200: ok_json("Each applicable budget's figures.", ref("BudgetList"))},
            (400, *V1),
            parameters=_BUDGET_HEADERS,
        )
    },
    "/v1/spend/authorize": {
        "post": op(
            "Reserve spend outside a model call (a paid tool or API) against every applicable budget; a later step "
            "naming the `reservation_id` settles it.",
            "budgets",
            VIRTUAL_KEY,
            {
                201: ok_json("Reserved.", ref("SpendAuthorization")),
                200: ok_json("No budget applies: nothing reserved (`reservation_id` null).", ref("SpendAuthorization")),
            },
            (*V1_WRITE, 402),
            parameters=_BUDGET_HEADERS,
            requestBody=body(ref("SpendAuthorizeIn")),
        )
    },
}

_MODEL_ERRORS = (400, 401, 402, 403, 404, 409, 410, 413, 423, 429, 502, 503, 504)


def _run_control(summary: str) -> Schema:
    return {
        "post": op(
            summary,
            "runs",
            ADMIN,
            {200: ok_json("The run's control now.", ref("RunControl"))},
            (*API_WRITE, 404),
            parameters=[path_id("run_id")],
            requestBody=body(obj({"reason": nullable(text(MAX_REASON))}), required=False),
        )
    }


def _answer(kind: str, schema: str, streams: bool = True) -> Schema:
    content = json_content(ref(schema))
    if streams:
        content["text/event-stream"] = {"schema": {"type": "string"}}
    what = f"The provider's answer: {kind}" + (", or an SSE stream when `stream` is true." if streams else ".")
    return {"description": what, "headers": _GATEWAY_HEADERS, "content": content}


def _anthropic_op(summary: str, ok: Schema, errors: tuple[int, ...], **extra: Schema | list[Schema]) -> Schema:
    """An operation on /v1/messages: its errors have Anthropic's shape."""
    answers = {"200": ok, **{str(s): {"$ref": f"#/components/responses/AnthropicError{s}"} for s in sorted(errors)}}
    return {"summary": summary, "tags": ["gateway"], "security": VIRTUAL_KEY, "responses": answers, **extra}


PATHS: Schema = {
    "/v1/messages": {
        "post": _anthropic_op(
            "Anthropic Messages, streamed or not (`x-api-key` or Bearer virtual key); routed, priced and recorded.",
            _answer("a Message", "Message"),
            _MODEL_ERRORS,
            parameters=TRACKING,
            requestBody=body(ref("MessagesRequest")),
        )
    },
    "/v1/messages/count_tokens": {
        "post": _anthropic_op(
            "Anthropic's token count, from the provider serving the model (not billed, not recorded).",
            ok_json("The count.", ref("TokenCount")),
            (400, 401, 404, 413, 429, 502, 503, 504),
            requestBody=body(ref("CountTokensRequest")),
        )
    },
    "/v1/responses": {
        "post": op(
            "OpenAI Responses, streamed or not; routed, priced and recorded.",
            "gateway",
            VIRTUAL_KEY,
            {200: _answer("a Response", "Response")},
            _MODEL_ERRORS,
            parameters=TRACKING,
            requestBody=body(ref("ResponsesRequest")),
        )
    },
    "/v1/embeddings": {
        "post": op(
            "OpenAI embeddings; routed, priced (input tokens) and recorded.",
            "gateway",
            VIRTUAL_KEY,
            {200: _answer("embeddings", "Embeddings", streams=False)},
            _MODEL_ERRORS,
            parameters=TRACKING,
            requestBody=body(ref("EmbeddingsRequest")),
        )
    },
    "/v1/chat/completions": {
        "post": op(
            "OpenAI chat completion, streamed or not; routed, priced and recorded.",
            "gateway",
            VIRTUAL_KEY,
            {200: _STREAM_OR_JSON},
            _MODEL_ERRORS,
            parameters=TRACKING,
            requestBody=body(ref("ChatCompletionRequest")),
        )
    },
    "/v1/models": {
        "get": op(
            "Models the workspace's provider keys name.",
            "gateway",
            VIRTUAL_KEY,
            {200: ok_json("Models.", ref("Models"))},
            V1,
        )
    },
    "/v1/runs": {
        "post": op(
            "Start a run (an existing run id is returned unchanged).",
            "runs",
            VIRTUAL_KEY,
            {201: ok_json("Created.", ref("RunStarted")), 200: ok_json("Already existed.", ref("RunStarted"))},
            (*V1_WRITE, 403),
            requestBody=body(ref("RunStart")),
        )
    },
    "/v1/runs/{run_id}/steps": {
        "post": op(
            'Record one step, an array of steps, or {"steps": [...]}; all or nothing.',
            "runs",
            VIRTUAL_KEY,
            {201: ok_json("Durable.", ref("StepsAdded"))},
            (*V1_WRITE, 403, 409),
            parameters=[path_id("run_id"), *OMIT],
            requestBody=body(ref("StepBatch")),
        )
    },
    "/v1/runs/{run_id}/end": {
        "post": op(
            "End a run.",
            "runs",
            VIRTUAL_KEY,
            {200: ok_json("Ended.", ref("RunEnded"))},
            (*V1_WRITE, 404),
            parameters=[path_id("run_id"), OMIT_RESPONSE],
            requestBody=body(ref("RunEnd")),
        )
    },
    "/api/workspaces": {
        "get": op(
            "This token's workspace.",
            "manage",
            ADMIN,
            {200: ok_json("One workspace.", _listing("Workspace"))},
            API_READ,
        )
    },
    "/api/departments": _crud("Department", "DepartmentIn", "departments"),
    "/api/agents": _crud("Agent", "AgentIn", "agents"),
    "/api/virtual-keys": _crud("VirtualKey", "VirtualKeyIn", "virtual keys (the key is shown once)"),
    "/api/virtual-keys/{key_id}": {
        "delete": op(
            "Revoke a virtual key at once.",
            "manage",
            ADMIN,
            {200: ok_json("Revoked.", ref("Revoked"))},
            (401, 403, 404, 503),
            parameters=[path_id("key_id")],
        )
    },
    "/api/provider-keys": _crud("ProviderKey", "ProviderKeyIn", "provider keys (never returned)"),
    "/api/provider-keys/{key_id}": {
        "delete": op(
            "Revoke a provider key.",
            "manage",
            ADMIN,
            {200: ok_json("Revoked.", ref("Revoked"))},
            (401, 403, 404, 503),
            parameters=[path_id("key_id")],
        )
    },
    "/api/prices": _crud("Price", "PriceIn", "price overrides"),
    **_BUDGET_PATHS,
    "/api/runs": {
        "get": op(
            "Runs with totals, newest first.",
            "query",
            ADMIN,
            {200: ok_json("A page of runs; `next_cursor` is null on the last.", ref("RunPage"))},
            (400, *API_READ),
            parameters=_RUN_FILTERS,
            # A parameter whose name varies cannot be declared: a form-exploded object would say that any name is
            # one of them, and the API ignores the query parameters it does not know.
            description=_PROPERTY_FILTERS,
        )
    },
    "/api/runs/{run_id}": {
        "get": op(
            "A run, its totals and its step tree.",
            "query",
            ADMIN,
            {200: ok_json("The run.", ref("RunDetail"))},
            (404, *API_READ),
            parameters=[path_id("run_id")],
        )
    },
    "/api/runs/{run_id}/cancel": _run_control(
        "Cancel a run: its later calls are refused (403 run_cancelled), its open streams end, it ends `cancelled`. "
        "Cancelling again keeps the first cancel."
    ),
    "/api/runs/{run_id}/pause": _run_control(
        "Pause a run: its calls wait for the resume, up to run_pause_wait_s, then 423 run_paused (409: cancelled)."
    ),
    "/api/runs/{run_id}/resume": _run_control("Resume a paused run: its waiting calls go on at once (409: cancelled)."),
    "/api/sessions": {
        "get": op(
            "Sessions, most recently active first, with their run count and totals.",
            "query",
            ADMIN,
            {200: ok_json("A page of sessions; `next_cursor` is null on the last.", ref("SessionPage"))},
            (400, *API_READ),
            parameters=[
                param("limit", "query", integer(1, 1000, default=50), "Page size."),
                param("cursor", "query", {"type": "string"}, "The `next_cursor` of the previous page."),
            ],
        )
    },
    "/api/sessions/{session_id}": {
        "get": op(
            "A session: its runs, paths and totals.",
            "query",
            ADMIN,
            {200: ok_json("The session.", ref("Session"))},
            (404, *API_READ),
            parameters=[path_id("session_id")],
        )
    },
    "/api/requests": {
        "get": op(
            "Gateway requests, newest first.",
            "query",
            ADMIN,
            {200: ok_json("A page of requests; `next_cursor` is null on the last.", ref("RequestPage"))},
            (400, *API_READ),
            parameters=[
                param("model", "query", NAME, "Only requests answered by this model."),
                param("provider", "query", NAME, "Only requests answered by this provider."),
                param("status", "query", enum(["ok", "error"]), "Only requests with this outcome."),
                param("decision", "query", enum(DECISIONS), "Only requests with this policy decision."),
                param("from", "query", TIMESTAMP, "Requests started at or after."),
                param("to", "query", TIMESTAMP, "Requests started before."),
                param("limit", "query", integer(1, 1000, default=50), "Page size."),
                param("cursor", "query", {"type": "string"}, "The `next_cursor` of the previous page."),
            ],
        )
    },
    "/api/requests/{request_id}": {
        "get": op(
            "One gateway request by its x-request-id.",
            "query",
            ADMIN,
            {200: ok_json("The request.", ref("Request"))},
            (404, *API_READ),
            parameters=[path_id("request_id")],
        )
    },
    "/api/analytics/costs": {
        "get": op(
            "Cost and token rollups.",
            "query",
            ADMIN,
            {200: ok_json("Rollup rows.", ref("Costs"))},
            (400, *API_READ),
            parameters=[
                param(
                    "group_by",
                    "query",
                    _GROUP_BY,
                    "workspace, department, …, member (the owner of the calls' virtual keys) or property.<name>.",
                ),
                param("from", "query", TIMESTAMP, "Events at or after the start of this hour."),
                param("to", "query", TIMESTAMP, "Events before this time rounded up to the hour."),
                param("interval", "query", enum(["hour", "day"]), "Bucket the rows by time."),
            ],
        )
    },
    "/api/analytics/properties": {
        "get": op(
            "Properties whose cost rollups are kept (group_by=property.<name> reads them).",
            "query",
            ADMIN,
            {200: ok_json("Indexed properties.", ref("IndexedProperties"))},
            API_READ,
        ),
        "post": op(
            "Keep cost rollups for a property, filled from the events already stored.",
            "query",
            ADMIN,
            {
                201: ok_json("Declared.", ref("PropertyDeclared")),
                200: ok_json("Already declared.", ref("PropertyDeclared")),
            },
            API_WRITE,
            requestBody=body(
                {
                    "type": "object",
                    "properties": {"name": {"type": "string", "pattern": f"^{_PROPERTY_NAME}$"}},
                    "required": ["name"],
                }
            ),
        ),
    },
    "/healthz": {"get": op("Alive.", "operations", PUBLIC, {200: ok_json("Alive.", _STATUS)}, ())},
    "/readyz": {
        "get": op(
            "Ready: the store answers.",
            "operations",
            PUBLIC,
            {200: ok_json("Ready.", _STATUS), 503: ok_json("Not ready; `reason` says why.", _STATUS)},
            (),
        )
    },
    "/metrics": {"get": op("Prometheus metrics.", "operations", PUBLIC, {200: _PLAIN_METRICS}, ())},
    "/openapi.json": {
        "get": op("This document.", "operations", PUBLIC, {200: ok_json("OpenAPI 3.1.", {"type": "object"})}, ())
    },
}

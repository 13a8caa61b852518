"""Policies: `/api/policies` (versioned: every change is a new version, each kept; each row with its hit counts),
`GET /api/policies/{id}/hits` (api/policy_hits.py), `POST /api/policies/evaluate` (what a call would get and why,
nothing forwarded), and for a virtual key `POST /v1/policy/check` (an agent asks before a sensitive tool or API
call; the decision is a policy_check step of its run).

A department admin reads the policies scoped to their department, its agents or its virtual keys, and the
workspace-wide ones (they govern the department's calls too); they change only the former. Another policy is a 404,
a workspace-wide one to change a 403 (they can read it: nothing to hide); evaluate takes only subjects of their
department (api/scoping.py `Reach`, docs/security.md)."""

from __future__ import annotations

from typing import Any

from starlette.convertors import Convertor, register_url_convertor
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from agentledger.api import policy_hits, scoping
from agentledger.api.auth import AdminAuth, describe, json_body, path_id
from agentledger.audit.changes import Change
from agentledger.core.budget_config import amount_nanos
from agentledger.core.budgets import Subject
from agentledger.core.errors import AgentLedgerError, InvalidRequest, NotFound, PermissionDenied
from agentledger.core.fields import id_field, text_field
from agentledger.core.headers import parse_tracking
from agentledger.core.ids import new_id
from agentledger.core.model import AdminPrincipal
from agentledger.core.policy_config import parse_policy, policy_json
from agentledger.gateway.budgets import Governed, headline
from agentledger.gateway.flow import Gateway
from agentledger.gateway.policies import PolicyDesk, names_of, policy_from_row
from agentledger.gateway.responses import JSONResponse, error_response
from agentledger.store.base import Store

MAX_ATTRIBUTES_KEYS = 64
RESERVED_IDS = frozenset({"evaluate"})


class PolicyId(Convertor[str]):
    """A policy id in a path: any segment but `evaluate`, so `/api/policies/evaluate` is that route's alone
    (a GET there is a 405 naming POST, not a lookup of a policy called "evaluate")."""

    regex = "(?!evaluate(?:/|$))[^/]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("policy_id", PolicyId())


def _view(row: dict[str, Any]) -> dict[str, Any]:
    policy = policy_from_row(row)
    return {
        "id": row["id"],
        "version": row["version"],
        **policy_json(policy),
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
    }


def _amount(value: Any) -> int | None:
    return None if value is None else amount_nanos(value)


def policy_routes(auth: AdminAuth, store: Store, gateway: Gateway) -> list[Route]:
    if gateway.policies is None:
        return []
    desk: PolicyDesk = gateway.policies
    governance = store.governance

    async def content(data: dict[str, Any], admin: AdminPrincipal) -> tuple[dict[str, Any], dict[str, Any]]:
        """The validated policy (400 naming the field), its scope checked to exist (404) and, for a department
        admin, to be within their reach (404, or 403 workspace-wide): its row's columns and its body."""
        workspace_id = admin.workspace_id
        policy = parse_policy(data, id="new", version=1)
        if (reach := await scoping.reach(store, admin)) is not None:
            reach.require(policy.scope, policy.scope_value)
        if not await store.budgets.scope_exists(workspace_id, policy.scope, policy.scope_value):
            raise NotFound(
                f"The {policy.scope.value} {policy.scope_value!r} does not exist in this workspace.",
                param="scope_value",
            )
        doc = policy_json(policy)
        columns = {k: doc.pop(k) for k in ("name", "scope", "scope_value", "mode")}
        return columns, doc

    async def readable(admin: AdminPrincipal, row: dict[str, Any]) -> bool:
        reach = await scoping.reach(store, admin)
        return reach is None or reach.sees(row, workspace_wide=True)

    async def may_change(admin: AdminPrincipal, policy_id: str) -> None:
        """A department admin's PUT or DELETE: a policy they cannot read is a 404, a workspace-wide one a 403."""
        reach = await scoping.reach(store, admin)
        if reach is None:
            return
        row = await governance.get_policy(admin.workspace_id, policy_id)
        if row is None or not reach.sees(row, workspace_wide=True):
            raise NotFound(f"Policy {policy_id!r} does not exist.", param="policy_id")
        if not reach.covers(row["scope"], row["scope_value"]):
            raise PermissionDenied("A department admin may not change a workspace-wide policy.", param="policy_id")

    async def create_policy(request: Request, admin: AdminPrincipal) -> Response:
        data = await json_body(request)
        ident = id_field(data.pop("id"), "id") if data.get("id") is not None else new_id("pol")
        data.pop("id", None)
        if ident in RESERVED_IDS:
            raise InvalidRequest(f"{ident!r} names a route (/api/policies/{ident}), not a policy.", param="id")
        columns, body = await content(data, admin)
        row = {
            "workspace_id": admin.workspace_id,
            "id": ident,
            **columns,
            "body": body,
            "created_at": desk.clock(),
        }
        created = await governance.create_policy(row, admin.token_id)
        gateway.invalidate_workspace(admin.workspace_id)
        view = _view(created)
        describe(request, Change("policy.create", "policy", ident, after=view))
        return JSONResponse(view, status_code=201)

    async def replace_policy(request: Request, admin: AdminPrincipal) -> Response:
        policy_id = path_id(request, "policy_id", "Policy")
        await may_change(admin, policy_id)
        columns, body = await content(await json_body(request), admin)
        before = await governance.get_policy(admin.workspace_id, policy_id)  # the version this one replaces
        row = await governance.update_policy(
            admin.workspace_id, policy_id, {**columns, "body": body}, desk.clock(), admin.token_id
        )
        if row is None:
            raise NotFound(f"Policy {policy_id!r} does not exist.", param="policy_id")
        gateway.invalidate_workspace(admin.workspace_id)
        view = _view(row)
        old = None if before is None else _view(before)
        describe(request, Change("policy.update", "policy", policy_id, before=old, after=view))
        return JSONResponse(view)

    async def list_policies(request: Request, admin: AdminPrincipal) -> Response:
        rows = await governance.list_policies(admin.workspace_id)
        if (reach := await scoping.reach(store, admin)) is not None:
            rows = [r for r in rows if reach.sees(r, workspace_wide=True)]
        await gateway.pipeline.flush()  # read your writes: the hits of calls already answered
        counts = await governance.policy_hit_counts(
            admin.workspace_id, policy_hits.windows(desk.clock()), admin.department_id
        )
        return JSONResponse({"data": [policy_hits.with_counts(_view(r), counts.get(r["id"])) for r in rows]})

    async def get_policy(request: Request, admin: AdminPrincipal) -> Response:
        policy_id = path_id(request, "policy_id", "Policy")
        row = await governance.get_policy(admin.workspace_id, policy_id)
        if row is None or not await readable(admin, row):
            raise NotFound(f"Policy {policy_id!r} does not exist.", param="policy_id")
        return JSONResponse(_view(row))

    async def delete_policy(request: Request, admin: AdminPrincipal) -> Response:
        policy_id = path_id(request, "policy_id", "Policy")
        await may_change(admin, policy_id)
        before = await governance.get_policy(admin.workspace_id, policy_id)
        if not await governance.delete_policy(admin.workspace_id, policy_id, desk.clock(), admin.token_id):
            raise NotFound(f"Policy {policy_id!r} does not exist.", param="policy_id")
        gateway.invalidate_workspace(admin.workspace_id)
        old = None if before is None else _view(before)
        describe(request, Change("policy.delete", "policy", policy_id, before=old))
        return JSONResponse({"id": policy_id, "deleted": True})

    async def versions(request: Request, admin: AdminPrincipal) -> Response:
        policy_id = path_id(request, "policy_id", "Policy")
        rows = await governance.policy_versions(admin.workspace_id, policy_id)
        if not rows or not await readable(admin, rows[0]):  # the newest version's scope decides
            raise NotFound(f"Policy {policy_id!r} does not exist.", param="policy_id")
        out = []
        for r in rows:
            row = {**r, "id": r["policy_id"]}
            out.append(
                {
                    "version": r["version"],
                    "change": r["change"],
                    **policy_json(policy_from_row(row)),
                    "created_at": r["created_at"],
                    "created_by": r["created_by"],
                }
            )
        return JSONResponse({"data": out})

    async def hits(request: Request, admin: AdminPrincipal) -> Response:
        """A page of the calls the policy decided, changed or alerted on, and those it would have decided
        otherwise in monitor mode, newest first; a deleted policy's too (they happened)."""
        policy_id = path_id(request, "policy_id", "Policy")
        flt = policy_hits.hit_filter(request, admin)
        latest = await governance.policy_versions(admin.workspace_id, policy_id, limit=1)
        if not latest or not await readable(admin, latest[0]):  # the newest version's scope decides, as for /versions
            raise NotFound(f"Policy {policy_id!r} does not exist.", param="policy_id")
        await gateway.pipeline.flush()
        rows = await governance.policy_hits(admin.workspace_id, policy_id, flt)
        return JSONResponse(policy_hits.page(rows, flt.limit))

    async def evaluate(request: Request, admin: AdminPrincipal) -> Response:
        """What a call would get: `virtual_key_id` (or `agent_id` / `department_id`) names who calls, `call` what
        it is (`kind`, `model`, `provider`, `name`, `max_tokens`, `amount_usd`, `headers`, `client_ip`,
        `prompt_id`, `properties`, `messages` to scan for PII). Nothing is forwarded, counted or recorded."""
        data = await json_body(request)
        ws = admin.workspace_id
        subject = await _subject_of(store, ws, data, admin.department_id)
        call = data.get("call", {})
        if not isinstance(call, dict):
            raise InvalidRequest("'call' must be an object.", param="call")
        kind = text_field(call.get("kind", "model_call"), "call.kind", limit=64, strip=True)
        headers = call.get("headers", [])
        if not isinstance(headers, list) or len(headers) > MAX_ATTRIBUTES_KEYS:
            raise InvalidRequest("'call.headers' must be a list of header names.", param="call.headers")
        headers = [text_field(h, "call.headers", limit=256) for h in headers]
        properties = call.get("properties", {})
        if not isinstance(properties, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in properties.items()
        ):
            raise InvalidRequest("'call.properties' must map names to strings.", param="call.properties")
        max_tokens = call.get("max_tokens")
        if max_tokens is not None and (not isinstance(max_tokens, int) or isinstance(max_tokens, bool)):
            raise InvalidRequest("'call.max_tokens' must be an integer.", param="call.max_tokens")
        payload: dict[str, Any] = {}
        if max_tokens is not None:
            payload["max_tokens"] = max_tokens
        messages = call.get("messages")
        if messages is not None:
            if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
                raise InvalidRequest("'call.messages' must be a list of messages (objects).", param="call.messages")
            payload["messages"] = messages
        subject = Subject(
            subject.workspace_id,
            subject.department_id,
            subject.agent_id,
            subject.virtual_key_id,
            properties={k.lower(): v for k, v in properties.items()},
        )
        review = await desk.review(
            subject,
            "chat",
            payload,
            kind=kind,
            model=_opt_text(call, "model"),
            provider=_opt_text(call, "provider"),
            name=_opt_text(call, "name"),
            cost_nanos=_amount(call.get("amount_usd")),
            client_ip=_opt_text(call, "client_ip"),
            header_names=frozenset(h.lower() for h in headers),
            prompt_id=_opt_text(call, "prompt_id"),
        )
        if review is None:
            return JSONResponse({"decision": "allowed", "reason": "no policy applies", "policies": []})
        record = review.verdict.as_record()
        record["changes"] = {**record["changes"], **review.changes}
        record["policies"] = [
            {"id": p.id, "version": p.version, "scope": p.scope.value, "mode": p.mode.value}
            for p in await desk.applicable_to(subject)
        ]
        return JSONResponse(record)

    async def check(request: Request) -> Response:
        """An agent's pre-check before a tool or API call: allowed (200), or the refusal in the API's error
        shape (403 policy_blocked, 403 approval_required, 429), recorded as a policy_check step of its run."""
        governed = Governed()
        try:
            principal = await gateway.authenticate(request.headers)
            data = await json_body(request)
            run_id = id_field(data["run_id"], "run_id") if data.get("run_id") is not None else None
            kind = text_field(data.get("kind", "tool_call"), "kind", limit=64, strip=True)
            name = text_field(data.get("name", kind), "name", limit=256, strip=True)
            amount = _amount(data.get("amount_usd"))
            attributes = data.get("attributes", {})
            if not isinstance(attributes, dict) or len(attributes) > MAX_ATTRIBUTES_KEYS:
                raise InvalidRequest(
                    f"'attributes' must be an object of at most {MAX_ATTRIBUTES_KEYS} keys.", param="attributes"
                )
            tracking = parse_tracking(request.scope["headers"])
            attribution = await gateway.attribute(principal, tracking)
            subject = Subject.of(attribution, run_id=run_id)
        except AgentLedgerError as exc:
            return error_response(exc)
        action = {"kind": kind, "name": name, "amount_usd": data.get("amount_usd"), "attributes": attributes}
        try:
            await desk.check_action(
                governed,
                subject,
                kind=kind,
                name=name,
                amount_nanos=amount,
                client_ip=desk.client_ip(request.client.host if request.client else None, request.headers),
                header_names=names_of(request.scope["headers"]),
                prompt_id=attribution.prompt_id,
                body=action,
            )
        except AgentLedgerError as exc:
            await record_check(governed, subject, action)
            return error_response(exc, headline(governed))
        await record_check(governed, subject, action)
        body = {"decision": governed.decision.value, "policy": governed.policy}
        return JSONResponse(body, headers=headline(governed))

    async def record_check(governed: Governed, subject: Subject, action: dict[str, Any]) -> None:
        name = f"check {action['kind']} {action['name']}"
        await gateway.record_check(governed, subject, {"action": action}, name=name, prefix="chk")

    g = auth.guard
    return [
        Route("/api/policies", g(list_policies), methods=["GET"]),
        Route("/api/policies", g(create_policy, write=True, audit=["policy.create"]), methods=["POST"]),
        Route("/api/policies/evaluate", g(evaluate), methods=["POST"]),
        Route("/api/policies/{policy_id:policy_id}", g(get_policy), methods=["GET"]),
        Route(
            "/api/policies/{policy_id:policy_id}",
            g(replace_policy, write=True, audit=["policy.update"]),
            methods=["PUT"],
        ),
        Route(
            "/api/policies/{policy_id:policy_id}",
            g(delete_policy, write=True, audit=["policy.delete"]),
            methods=["DELETE"],
        ),
        Route("/api/policies/{policy_id:policy_id}/versions", g(versions), methods=["GET"]),
        Route("/api/policies/{policy_id:policy_id}/hits", g(hits), methods=["GET"]),
        Route("/v1/policy/check", check, methods=["POST"]),
    ]


def _opt_text(data: dict[str, Any], key: str) -> str | None:
    value = data.get(key)
    return None if value is None else text_field(value, f"call.{key}", limit=1024)


async def _subject_of(store: Store, workspace_id: str, data: dict[str, Any], mine: str | None = None) -> Subject:
    """Who the evaluated call is from: a virtual key (its department and agent follow), or an agent and/or a
    department named directly. `mine`: a department admin's department; a key, agent or department outside it is a
    404 (as if it did not exist), and the subject is always of their department."""
    key_id = data.get("virtual_key_id")
    if key_id is not None:
        key_id = id_field(key_id, "virtual_key_id")
        keys = {k["id"]: k for k in await store.list_virtual_keys(workspace_id)}
        if key_id not in keys or (mine is not None and keys[key_id].get("department_id") != mine):
            raise NotFound(f"Virtual key {key_id!r} does not exist.", param="virtual_key_id")
        k = keys[key_id]
        return Subject(workspace_id, k.get("department_id"), k.get("agent_id"), key_id)
    agent_id = id_field(data["agent_id"], "agent_id") if data.get("agent_id") is not None else None
    department_id = id_field(data["department_id"], "department_id") if data.get("department_id") is not None else None
    if agent_id is not None:
        agent = await store.get_agent(workspace_id, agent_id)
        if agent is None or (mine is not None and agent["department_id"] != mine):
            raise NotFound(f"Agent {agent_id!r} does not exist.", param="agent_id")
    if mine is not None:
        if department_id not in (None, mine):
            raise NotFound(f"Department {department_id!r} does not exist.", param="department_id")
        return Subject(workspace_id, mine, agent_id, None)
    # Named on its own, a department must exist here too: another workspace's id is not evaluated as if it did.
    if department_id is not None and not any(
        d["id"] == department_id for d in await store.list_departments(workspace_id)
    ):
        raise NotFound(f"Department {department_id!r} does not exist.", param="department_id")
    return Subject(workspace_id, department_id, agent_id, None)

"""Payment signers: `/api/payment-signers` (admin token). A workspace's keys for the x402 payments the gateway makes
for its agents (POST /v1/x402/fetch). The private key is given (or generated) once, kept encrypted (secrets_box.py,
as provider keys), and never answered: every answer names the address only.

Reads take any admin token of the workspace, writes an admin's or owner's. Revoking stops a signer at once, on
every replica (signers are read from the store for every payment).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from agentledger.api.auth import AdminAuth, describe, json_body, path_id
from agentledger.audit.changes import Change
from agentledger.core.budget_config import dollars
from agentledger.core.errors import InvalidRequest, NotFound
from agentledger.core.fields import text_field
from agentledger.core.ids import new_id
from agentledger.core.model import AdminPrincipal
from agentledger.core.money import MAX_EVENT_COST_NANOS, format_usd, to_nanos
from agentledger.finance.signers import BadKey, key_address, networks_field, new_key
from agentledger.gateway.responses import JSONResponse
from agentledger.secrets_box import SecretBox
from agentledger.store.payment_signers import PaymentSignerStore

FIELDS = ("name", "private_key", "generate", "networks", "max_payment_usd")
_PUBLIC = ("id", "name", "address", "networks", "created_at", "revoked_at")


def signer_fields(data: dict[str, Any]) -> tuple[str, str | None, tuple[str, ...], int | None]:
    """(name, the private key or None to generate one, networks, max payment in nano-dollars or None), each
    checked, else a 400 naming the field."""
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise InvalidRequest(
            f"Unknown field {unknown[0]!r}: a payment signer takes {', '.join(FIELDS)}.", param=unknown[0]
        )
    if data.get("name") is None:
        raise InvalidRequest("'name' is required.", param="name")
    name = text_field(data["name"], "name", strip=True)
    generate = data.get("generate")
    if generate is not None and not isinstance(generate, bool):
        raise InvalidRequest("'generate' must be true or false.", param="generate")
    key = data.get("private_key")
    if key is not None and generate:
        raise InvalidRequest("Send 'private_key' or 'generate': true, not both.", param="private_key")
    if key is None and not generate:
        raise InvalidRequest("Send 'private_key' (32 bytes of hex) or 'generate': true.", param="private_key")
    try:
        networks = networks_field(data.get("networks"))
    except ValueError as exc:
        raise InvalidRequest(str(exc), param="networks") from None
    cap = None
    if data.get("max_payment_usd") is not None:
        amount = dollars(data["max_payment_usd"])
        if amount is None or amount <= 0 or to_nanos(amount) > MAX_EVENT_COST_NANOS:
            raise InvalidRequest(
                "'max_payment_usd' must be a positive decimal string of dollars (at most 1000000), such as \"0.50\".",
                param="max_payment_usd",
            )
        cap = to_nanos(amount)
    return name, key, networks, cap


def public(row: dict[str, Any]) -> dict[str, Any]:
    out = {k: row[k] for k in _PUBLIC}
    out["networks"] = list(row["networks"])
    cap = row.get("max_payment_nanos")
    out["max_payment_usd"] = format_usd(cap) if cap is not None else None
    out["revoked"] = row["revoked_at"] is not None
    return out


def payment_signer_routes(
    auth: AdminAuth,
    signers: PaymentSignerStore,
    box: SecretBox,
    *,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> list[Route]:
    async def create(request: Request, admin: AdminPrincipal) -> Response:
        name, given, networks, cap = signer_fields(await json_body(request))
        if given is None:
            key, address = new_key()
        else:
            try:
                key, address = key_address(given)
            except BadKey as exc:
                raise InvalidRequest(str(exc), param="private_key") from None
        row = {
            "workspace_id": admin.workspace_id,
            "id": new_id("psg"),
            "name": name,
            "address": address,
            "networks": list(networks),
            "key_encrypted": box.encrypt(key),
            "max_payment_nanos": cap,
            "created_at": clock(),
            "revoked_at": None,
        }
        await signers.create(row)
        describe(request, Change("payment_signer.create", "payment_signer", str(row["id"]), after=public(row)))
        return JSONResponse(public(row), status_code=201)

    async def found(request: Request, admin: AdminPrincipal) -> dict[str, Any]:
        signer_id = path_id(request, "signer_id", "Payment signer")
        row = await signers.get(admin.workspace_id, signer_id)
        if row is None:
            raise NotFound(f"Payment signer {signer_id!r} does not exist.", param="signer_id")
        return row

    async def list_signers(request: Request, admin: AdminPrincipal) -> Response:
        return JSONResponse({"data": [public(r) for r in await signers.list_signers(admin.workspace_id)]})

    async def get_signer(request: Request, admin: AdminPrincipal) -> Response:
        return JSONResponse(public(await found(request, admin)))

    async def revoke(request: Request, admin: AdminPrincipal) -> Response:
        row = await found(request, admin)
        describe(request)  # revoked already: nothing changes
        if row["revoked_at"] is None and await signers.revoke(admin.workspace_id, row["id"], clock()):
            before, row = row, await found(request, admin)
            change = Change(
                "payment_signer.revoke", "payment_signer", row["id"], before=public(before), after=public(row)
            )
            describe(request, change)
        return JSONResponse(public(row))

    g = auth.guard
    return [
        Route("/api/payment-signers", g(list_signers), methods=["GET"]),
        Route("/api/payment-signers", g(create, write=True, audit=["payment_signer.create"]), methods=["POST"]),
        Route("/api/payment-signers/{signer_id}", g(get_signer), methods=["GET"]),
        Route(
            "/api/payment-signers/{signer_id}",
            g(revoke, write=True, audit=["payment_signer.revoke"]),
            methods=["DELETE"],
        ),
    ]

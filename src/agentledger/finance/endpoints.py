"""Paid endpoints and workflow runtimes behind the management API, and the cached lookup the public route uses
(docs/paid-endpoints.md, "Set-up").

Secrets: a runtime's auth header value and an endpoint's scoped virtual key are kept Fernet-encrypted (the
SecretBox of provider keys) and decrypted only when an endpoint is loaded for a call; the API shows neither.

The public route finds an endpoint by (workspace, slug) in a TTLCache (gateway/cache.py: `cache_ttl`, stale through
a store outage for `stale_if_error`). A change made through this node drops the entry at once and, with Redis,
on every replica (kind `paid_endpoint` of the broadcast); a runtime's change drops every endpoint of its agent.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from jsonschema.protocols import Validator
from x402.mechanisms.evm.utils import normalize_address
from x402.schemas import PaymentRequirements

from agentledger.core.assets import KNOWN_ASSETS, AcceptedAsset
from agentledger.core.errors import InvalidRequest, NotFound
from agentledger.core.ids import new_id
from agentledger.core.keys import VIRTUAL_KEY_PREFIX, display_prefix, hash_secret, new_secret
from agentledger.core.paid_endpoints import (
    EndpointPolicy,
    EndpointRules,
    EndpointSpec,
    RuntimeSpec,
    endpoint_input,
    parse_endpoint,
    parse_runtime,
    patched,
    runtime_view,
    stored_percent,
)
from agentledger.finance import wire
from agentledger.finance.inputs import check_schema, compile_schema
from agentledger.gateway.cache import TTLCache
from agentledger.secrets_box import SecretBox
from agentledger.store.base import Store
from agentledger.store.paid_endpoints import PaidEndpointStore

log = logging.getLogger(__name__)
BROADCAST_KIND = "paid_endpoint"


class KeyInvalidation(Protocol):
    """What of the gateway this module uses: dropping a revoked key, telling the other replicas."""

    broadcast: Callable[[str, str], None] | None

    def invalidate_key(self, key_hash: str | None) -> None: ...


def endpoint_rules(assets: Sequence[AcceptedAsset], timeout_cap_s: float) -> EndpointRules:
    def schema_ok(schema: Any) -> None:
        check_schema(schema)

    return EndpointRules(
        assets=tuple(assets), timeout_cap_s=timeout_cap_s, checksum=normalize_address, check_schema=schema_ok
    )


def public_path(workspace_id: str, slug: str) -> str:
    return f"/x402/{workspace_id}/{slug}"


@dataclass(frozen=True, slots=True)
class LoadedEndpoint:
    """An enabled endpoint as a paid call needs it: settings, its agent's department, runtime and scoped key in
    plaintext, its input validator compiled, and its payment requirements built."""

    id: str
    workspace_id: str
    spec: EndpointSpec
    department_id: str
    virtual_key_id: str
    virtual_key: str
    runtime: RuntimeSpec | None  # None: the agent has no runtime (any more): the call is refused
    validator: Validator | None
    requirements: PaymentRequirements

    @property
    def slug(self) -> str:
        return self.spec.slug


def _asset_of(network: str, address: str, accepted: Sequence[AcceptedAsset]) -> AcceptedAsset | None:
    for asset in (*accepted, *KNOWN_ASSETS):
        if asset.matches(network, address):
            return asset
    return None


def spec_of(row: dict[str, Any], accepted: Sequence[AcceptedAsset]) -> EndpointSpec:
    """A stored endpoint back to its settings (checked when saved, so not checked again)."""
    asset = _asset_of(row["network"], row["asset"], accepted)
    if asset is None:
        raise LookupError(f"asset {row['asset']} on {row['network']} is not known")
    p = row["policy"] or {}
    payers = p.get("allowed_payers")
    return EndpointSpec(
        slug=row["slug"],
        agent_id=row["agent_id"],
        price_nanos=int(row["price_nanos"]),
        asset=asset,
        pay_to=row["pay_to"],
        fee_percent=stored_percent(row["fee_percent"]),
        fee_fixed_nanos=int(row["fee_fixed_nanos"]),
        description=row["description"],
        input_schema=row["input_schema"],
        timeout_s=float(row["timeout_s"]),
        max_timeout_s=int(row["max_timeout_s"]),
        policy=EndpointPolicy(
            max_price_nanos=p.get("max_price_nanos"),
            requests_per_minute=p.get("requests_per_minute"),
            concurrent=p.get("concurrent"),
            allowed_payers=None if payers is None else tuple(payers),
        ),
    )


def _spec_values(spec: EndpointSpec) -> dict[str, Any]:
    p = spec.policy
    return {
        "slug": spec.slug,
        "description": spec.description,
        "agent_id": spec.agent_id,
        "price_nanos": spec.price_nanos,
        "network": spec.asset.network,
        "asset": spec.asset.address,
        "pay_to": spec.pay_to,
        "fee_percent": f"{spec.fee_percent:f}",
        "fee_fixed_nanos": spec.fee_fixed_nanos,
        "input_schema": spec.input_schema,
        "timeout_s": spec.timeout_s,
        "max_timeout_s": spec.max_timeout_s,
        "policy": {
            "max_price_nanos": p.max_price_nanos,
            "requests_per_minute": p.requests_per_minute,
            "concurrent": p.concurrent,
            "allowed_payers": None if p.allowed_payers is None else list(p.allowed_payers),
        },
    }


def endpoint_view(row: dict[str, Any], spec: EndpointSpec) -> dict[str, Any]:
    """An endpoint as the API shows it: its settings in input form, its public URL (path), the scoped key's id
    (never the key), and whether it is enabled."""
    return {
        "id": row["id"],
        **endpoint_input(spec),
        "asset_amount": str(spec.asset_amount),
        "url": public_path(row["workspace_id"], spec.slug),
        "virtual_key_id": row["virtual_key_id"],
        "enabled": row["disabled_at"] is None,
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
        "disabled_at": row["disabled_at"],
    }


def stored_runtime(row: dict[str, Any], decrypt: Callable[[str], str] | None) -> RuntimeSpec:
    """A stored runtime; its secret decrypted only when `decrypt` is given (a call), never for a view."""
    secret = row.get("auth_value_encrypted")
    return RuntimeSpec(
        type=row["type"],
        url=row["url"],
        method=row["method"],
        auth_name=row.get("auth_name"),
        auth_value=decrypt(secret) if decrypt is not None and secret else None,
    )


class PaidEndpointAdmin:
    """The management side: runtimes of workflow agents, and paid endpoints with their scoped keys."""

    def __init__(
        self,
        store: Store,
        endpoints: PaidEndpointStore,
        box: SecretBox,
        gateway: KeyInvalidation,
        catalog: EndpointCatalog,
        rules: EndpointRules,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.store = store
        self.endpoints = endpoints
        self.box = box
        self.gateway = gateway
        self.catalog = catalog
        self.rules = rules
        self.clock = clock

    # -- runtimes (governance.AgentRuntimes, and PUT /api/agents/{id}/runtime) --------------------------------
    def _runtime_row(self, workspace_id: str, agent_id: str, spec: RuntimeSpec, now: datetime) -> dict[str, Any]:
        return {
            "workspace_id": workspace_id,
            "agent_id": agent_id,
            "type": spec.type,
            "url": spec.url,
            "method": spec.method,
            "auth_name": spec.auth_name,
            "auth_value_encrypted": self.box.encrypt(spec.auth_value) if spec.auth_value else None,
            "created_at": now,
            "updated_at": now,
        }

    async def create_with_agent(self, workspace_id: str, agent: dict[str, Any], runtime: Any) -> dict[str, Any]:
        """An agent and its runtime in one transaction (POST /api/agents with `runtime`)."""
        spec = parse_runtime(runtime)
        now = agent["created_at"]
        await self.endpoints.create_agent_with_runtime(agent, self._runtime_row(workspace_id, agent["id"], spec, now))
        return runtime_view(spec)

    async def set_runtime(self, workspace_id: str, agent_id: str, data: Any) -> dict[str, Any]:
        agent = await self._workflow_agent(workspace_id, agent_id, param="agent_id", missing=NotFound)
        spec = parse_runtime(data["runtime"] if _is_wrapped(data) else data)
        await self.endpoints.set_runtime(self._runtime_row(workspace_id, agent_id, spec, self.clock()))
        for slug in await self.endpoints.slugs_of_agent(workspace_id, agent_id):
            self.catalog.drop(workspace_id, slug, broadcast=True)
        return {**_agent_public(agent), "runtime": runtime_view(spec)}

    async def agent(self, workspace_id: str, agent_id: str) -> dict[str, Any]:
        agent = await self.store.get_agent(workspace_id, agent_id)
        if agent is None:
            raise NotFound(f"Agent {agent_id!r} does not exist.", param="agent_id")
        runtime = None
        if agent["kind"] == "workflow":
            row = await self.endpoints.get_runtime(workspace_id, agent_id)
            runtime = None if row is None else runtime_view(stored_runtime(row, None))
        return {**_agent_public(agent), "runtime": runtime}

    async def _workflow_agent(
        self, workspace_id: str, agent_id: str, *, param: str, missing: type[InvalidRequest] | type[NotFound]
    ) -> dict[str, Any]:
        agent = await self.store.get_agent(workspace_id, agent_id)
        if agent is None:
            raise missing(f"Agent {agent_id!r} does not exist.", param=param)
        if agent["kind"] != "workflow":
            raise InvalidRequest(
                f"Agent {agent_id!r} is an {agent['kind']!r} agent: only a 'workflow' agent has a runtime and can be "
                "sold as a paid endpoint.",
                param=param,
            )
        return agent

    # -- endpoints --------------------------------------------------------------------------------------------
    async def _check_agent(self, workspace_id: str, agent_id: str) -> dict[str, Any]:
        agent = await self._workflow_agent(workspace_id, agent_id, param="agent_id", missing=InvalidRequest)
        if await self.endpoints.get_runtime(workspace_id, agent_id) is None:
            raise InvalidRequest(
                f"Agent {agent_id!r} has no runtime: set one first (PUT /api/agents/{agent_id}/runtime).",
                param="agent_id",
            )
        return agent

    def _key_row(
        self, workspace_id: str, agent: dict[str, Any], slug: str, now: datetime
    ) -> tuple[dict[str, Any], str]:
        key = new_secret(VIRTUAL_KEY_PREFIX)
        row = {
            "workspace_id": workspace_id,
            "id": new_id("vkid"),
            "department_id": agent["department_id"],
            "agent_id": agent["id"],
            "name": f"paid endpoint {slug}",
            "key_hash": hash_secret(key),
            "key_prefix": display_prefix(key),
            "allowed_models": [],
            "created_at": now,
        }
        return row, key

    async def create(self, workspace_id: str, data: dict[str, Any]) -> dict[str, Any]:
        spec = parse_endpoint(data, self.rules)
        agent = await self._check_agent(workspace_id, spec.agent_id)
        now = self.clock()
        key_row, key = self._key_row(workspace_id, agent, spec.slug, now)
        row = {
            "workspace_id": workspace_id,
            "id": new_id("pe"),
            **_spec_values(spec),
            "virtual_key_id": key_row["id"],
            "virtual_key_encrypted": self.box.encrypt(key),
            "created_at": now,
            "updated_at": now,
            "disabled_at": None,
        }
        await self.endpoints.create_endpoint(key_row, row)
        self.catalog.drop(workspace_id, spec.slug, broadcast=True)  # a miss cached while it did not exist
        return endpoint_view(row, spec)

    async def list(self, workspace_id: str) -> list[dict[str, Any]]:
        return [self._view(row) for row in await self.endpoints.list_endpoints(workspace_id)]

    async def get(self, workspace_id: str, endpoint_id: str) -> dict[str, Any]:
        return self._view(await self._row(workspace_id, endpoint_id))

    async def patch(self, workspace_id: str, endpoint_id: str, changes: dict[str, Any]) -> dict[str, Any]:
        row = await self._row(workspace_id, endpoint_id)
        if row["disabled_at"] is not None:
            raise InvalidRequest(f"Paid endpoint {endpoint_id!r} is disabled: it cannot change.", param="endpoint_id")
        current = spec_of(row, self.rules.assets)
        spec = patched(current, changes, self.rules)
        now = self.clock()
        new_key = key = None
        if spec.agent_id != current.agent_id:  # the scoped key is the agent's: a new agent gets a new key
            agent = await self._check_agent(workspace_id, spec.agent_id)
            new_key, key = self._key_row(workspace_id, agent, spec.slug, now)
        values = _spec_values(spec)
        if key is not None:
            values["virtual_key_encrypted"] = self.box.encrypt(key)
        done = await self.endpoints.update_endpoint(workspace_id, endpoint_id, values, new_key=new_key, now=now)
        if done is None:
            raise NotFound(f"Paid endpoint {endpoint_id!r} does not exist.", param="endpoint_id")
        after, revoked = done
        self.gateway.invalidate_key(revoked)
        self.catalog.drop(workspace_id, spec.slug, broadcast=True)
        return endpoint_view(after, spec)

    async def disable(self, workspace_id: str, endpoint_id: str) -> dict[str, Any]:
        found, revoked = await self.endpoints.disable_endpoint(workspace_id, endpoint_id, self.clock())
        if not found:
            raise NotFound(f"Paid endpoint {endpoint_id!r} does not exist.", param="endpoint_id")
        self.gateway.invalidate_key(revoked)
        row = await self._row(workspace_id, endpoint_id)
        self.catalog.drop(workspace_id, row["slug"], broadcast=True)
        return self._view(row)

    async def _row(self, workspace_id: str, endpoint_id: str) -> dict[str, Any]:
        row = await self.endpoints.get_endpoint(workspace_id, endpoint_id)
        if row is None:
            raise NotFound(f"Paid endpoint {endpoint_id!r} does not exist.", param="endpoint_id")
        return row

    def _view(self, row: dict[str, Any]) -> dict[str, Any]:
        return endpoint_view(row, spec_of(row, self.rules.assets))


def _is_wrapped(data: Any) -> bool:
    """`PUT .../runtime` takes the runtime itself, or `{"runtime": {...}}` as POST /api/agents has it."""
    return isinstance(data, dict) and set(data) == {"runtime"}


def _agent_public(agent: dict[str, Any]) -> dict[str, Any]:
    return {k: agent[k] for k in ("id", "department_id", "name", "kind", "created_at")}


class EndpointCatalog:
    """Enabled endpoints by (workspace, slug) for the public route, cached (module docstring)."""

    def __init__(
        self,
        endpoints: PaidEndpointStore,
        decrypt: Callable[[str], str],
        accepted: Sequence[AcceptedAsset],
        *,
        ttl: float,
        stale_if_error: float,
    ) -> None:
        self.endpoints = endpoints
        self.decrypt = decrypt
        self.accepted = tuple(accepted)
        self.cache: TTLCache[tuple[str, str], LoadedEndpoint] = TTLCache(ttl, stale_if_error=stale_if_error)
        self.broadcast: Callable[[str, str], None] | None = None  # the gateway's, once the broadcast runs

    async def get(self, workspace_id: str, slug: str) -> LoadedEndpoint | None:
        return await self.cache.get((workspace_id, slug), lambda: self._load(workspace_id, slug))

    def drop(self, workspace_id: str, slug: str, *, broadcast: bool = False) -> None:
        self.cache.invalidate((workspace_id, slug))
        if broadcast and self.broadcast is not None:
            self.broadcast(BROADCAST_KIND, f"{workspace_id}/{slug}")

    def apply_invalidation(self, value: str) -> None:
        """Another replica changed an endpoint (`workspace/slug`: neither holds a '/')."""
        workspace_id, _, slug = value.partition("/")
        self.drop(workspace_id, slug)

    async def _load(self, workspace_id: str, slug: str) -> LoadedEndpoint | None:
        row = await self.endpoints.load(workspace_id, slug)
        if row is None or row["agent_kind"] != "workflow":
            return None
        try:
            spec = spec_of(row, self.accepted)
        except LookupError:
            log.warning("paid endpoint %s/%s: its asset is no longer known; it is not served", workspace_id, slug)
            return None
        if not any(a == spec.asset for a in self.accepted):
            log.warning("paid endpoint %s/%s: its network is no longer accepted; it is not served", workspace_id, slug)
            return None
        runtime = None
        if row["runtime_url"] is not None:
            runtime = stored_runtime(
                {
                    "type": row["runtime_type"],
                    "url": row["runtime_url"],
                    "method": row["runtime_method"],
                    "auth_name": row["runtime_auth_name"],
                    "auth_value_encrypted": row["runtime_auth_value_encrypted"],
                },
                self.decrypt,
            )
        return LoadedEndpoint(
            id=row["id"],
            workspace_id=workspace_id,
            spec=spec,
            department_id=row["agent_department_id"],
            virtual_key_id=row["virtual_key_id"],
            virtual_key=self.decrypt(row["virtual_key_encrypted"]),
            runtime=runtime,
            validator=None if spec.input_schema is None else compile_schema(spec.input_schema),
            requirements=wire.payment_requirements(
                spec.asset, amount_nanos=spec.price_nanos, pay_to=spec.pay_to, max_timeout_seconds=spec.max_timeout_s
            ),
        )

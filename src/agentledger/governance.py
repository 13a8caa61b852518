"""Creating the governed objects, shared by the CLI and the management API.

Secrets (virtual keys, admin tokens) are returned once, in plaintext, and stored only as hashes;
provider keys are encrypted before they reach the store.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any, Protocol

from agentledger.core.bounds import MAX_PRIORITY, MAX_RATE_DECIMALS, MAX_RATE_MTOK, MIN_PRIORITY
from agentledger.core.errors import Conflict, InvalidRequest, NotFound
from agentledger.core.fields import id_field, text_field, time_field
from agentledger.core.headers import has_control
from agentledger.core.ids import new_id
from agentledger.core.keys import ADMIN_TOKEN_PREFIX, VIRTUAL_KEY_PREFIX, display_prefix, hash_secret, new_secret
from agentledger.core.model import Role
from agentledger.core.route_config import parse_fallbacks, parse_options, parse_retry
from agentledger.formats import registry as formats_registry
from agentledger.secrets_box import SecretBox
from agentledger.store.base import Store

if TYPE_CHECKING:
    from agentledger.store.members import MemberStore

PROVIDER_KINDS = formats_registry.PROVIDER_KINDS


@dataclass(frozen=True, slots=True)
class Bootstrap:
    workspace_id: str
    department_id: str
    agent_id: str
    virtual_key: str
    admin_token: str


def _name(value: Any, what: str) -> str:
    """A label shown in listings, the CLI and logs: the step API's printable-text rule, trimmed."""
    return text_field(value, what, strip=True)


def _optional_id(value: Any, what: str, prefix: str) -> str:
    return new_id(prefix) if value is None else id_field(value, what)


def _patterns(value: Any, what: str, default: list[str]) -> list[str]:
    if value is None:
        return default
    if not isinstance(value, list) or not all(isinstance(v, str) and 0 < len(v) <= 256 for v in value):
        raise InvalidRequest(f"'{what}' must be an array of model names or glob patterns.", param=what)
    return list(value)


def _rate(value: Any, what: str, required: bool) -> str | None:
    """A price in dollars per million tokens → its exact decimal string (the column is VARCHAR(32))."""
    if value is None and not required:
        return None
    try:
        rate = Decimal(str(value)) if isinstance(value, str | int | float) and not isinstance(value, bool) else None
    except (InvalidOperation, ValueError):  # ValueError: an int too long for str()
        rate = None
    if (
        rate is None
        or not rate.is_finite()
        or not 0 <= rate <= MAX_RATE_MTOK
        or -rate.as_tuple().exponent > MAX_RATE_DECIMALS  # type: ignore[operator]  # finite: exponent is int
    ):
        raise InvalidRequest(
            f"'{what}' must be a decimal from 0 to {MAX_RATE_MTOK} (dollars per million tokens) "
            f"with at most {MAX_RATE_DECIMALS} decimal places.",
            param=what,
        )
    return f"{rate + 0:f}"  # fixed-point, never "1E+3" or "-0"


class AgentRuntimes(Protocol):
    """Where a workflow agent's runtime is kept (finance/endpoints.py): with the agent, in one transaction."""

    async def create_with_agent(self, workspace_id: str, agent: dict[str, Any], runtime: Any) -> dict[str, Any]:
        """Insert `agent` (an agents row) and its runtime; the runtime as the API shows it (no secret)."""
        ...


class Governance:
    def __init__(self, store: Store, box: SecretBox, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.store = store
        self.box = box
        self.clock = clock
        self.runtimes: AgentRuntimes | None = None  # set by the composition root (app.py)
        self.members: MemberStore | None = None  # a key's owning member (app.py); None: keys own no member

    async def create_workspace(self, name: str, *, workspace_id: str | None = None) -> tuple[str, str]:
        """A workspace and its first owner token (returned once)."""
        ws = _optional_id(workspace_id, "id", "ws")
        if await self.store.list_workspaces(ws):
            raise Conflict(f"Workspace {ws!r} already exists.", param="id")
        await self.store.create_workspace(ws, _name(name, "name"), self.clock())
        token = await self.create_admin_token(ws, "owner", Role.OWNER)
        return ws, token

    async def create_admin_token(self, workspace_id: str, name: str, role: Role) -> str:
        token = new_secret(ADMIN_TOKEN_PREFIX)
        await self.store.create_admin_token(
            dict(
                workspace_id=workspace_id,
                id=new_id("tok"),
                name=_name(name, "name"),
                role=role.value,
                token_hash=hash_secret(token),
                created_at=self.clock(),
            )
        )
        return token

    async def create_department(self, workspace_id: str, data: dict[str, Any]) -> dict[str, Any]:
        dep = _optional_id(data.get("id"), "id", "dep")
        name = _name(data.get("name"), "name")
        await self.store.create_department(workspace_id, dep, name, self.clock())
        return {"id": dep, "name": name}

    async def create_agent(self, workspace_id: str, data: dict[str, Any]) -> dict[str, Any]:
        agent = _optional_id(data.get("id"), "id", "agent")
        kind = data.get("kind", "ai")
        if kind not in ("ai", "workflow"):
            raise InvalidRequest("'kind' must be 'ai' or 'workflow'.", param="kind")
        dep = id_field(data.get("department_id"), "department_id")
        name = _name(data.get("name", agent), "name")
        runtime = data.get("runtime")
        if runtime is not None and (kind != "workflow" or self.runtimes is None):
            raise InvalidRequest("Only a 'workflow' agent has a runtime.", param="runtime")
        await self._require_department(workspace_id, dep)
        created = {"id": agent, "department_id": dep, "name": name, "kind": kind}
        if runtime is not None and self.runtimes is not None:
            row = {"workspace_id": workspace_id, **created, "created_at": self.clock()}
            return {**created, "runtime": await self.runtimes.create_with_agent(workspace_id, row, runtime)}
        await self.store.create_agent(workspace_id, agent, dep, name, kind, self.clock())
        return created

    async def create_virtual_key(self, workspace_id: str, data: dict[str, Any]) -> dict[str, Any]:
        """Returns the key's plaintext under "key": the only time it is ever shown."""
        key = new_secret(VIRTUAL_KEY_PREFIX)
        # Either may be left out (null), but a value given is an id: "" is refused, not read as absent.
        agent_id = data.get("agent_id")
        department_id = data.get("department_id")
        if agent_id is not None:
            agent_id = id_field(agent_id, "agent_id")
            agent = await self.store.get_agent(workspace_id, agent_id)
            if agent is None:
                raise InvalidRequest(f"Agent {agent_id!r} does not exist.", param="agent_id")
            # A key's spend is booked to its department: one other than its agent's would split the agent's.
            if department_id is not None and id_field(department_id, "department_id") != agent["department_id"]:
                raise InvalidRequest(
                    f"Agent {agent_id!r} belongs to department {agent['department_id']!r}, not {department_id!r}; "
                    "leave 'department_id' out to use the agent's.",
                    param="department_id",
                )
            department_id = agent["department_id"]
        else:
            department_id = id_field(department_id, "department_id")
            await self._require_department(workspace_id, department_id)
        owner = data.get("member_id")
        if owner is not None:
            owner = id_field(owner, "member_id")
            member = None if self.members is None else await self.members.get(workspace_id, owner)
            if member is None or member["status"] != "active":
                raise InvalidRequest(f"Member {owner!r} does not exist or is revoked.", param="member_id")
        row = dict(
            workspace_id=workspace_id,
            id=new_id("vkid"),
            department_id=department_id,
            agent_id=agent_id,
            name=_name(data.get("name", "key"), "name"),
            key_hash=hash_secret(key),
            key_prefix=display_prefix(key),
            allowed_models=_patterns(data.get("allowed_models"), "allowed_models", []),
            created_at=self.clock(),
            owner_member_id=owner,
        )
        await self.store.create_virtual_key(row)
        public = {k: v for k, v in row.items() if k != "key_hash"}
        return {**public, "key": key}

    async def create_provider_key(self, workspace_id: str, data: dict[str, Any]) -> dict[str, Any]:
        kind = data.get("kind", "openai")
        if kind not in PROVIDER_KINDS:
            raise InvalidRequest(f"'kind' must be one of {', '.join(PROVIDER_KINDS)}.", param="kind")
        base_url = data.get("base_url")
        if base_url is not None and (
            not isinstance(base_url, str)
            or not base_url.startswith(("http://", "https://"))
            or len(base_url) > 1024
            or has_control(base_url)  # PostgreSQL refuses NUL (a 500); no URL holds a control character
        ):
            raise InvalidRequest(
                "'base_url' must be an http(s) URL of at most 1024 characters, without control characters.",
                param="base_url",
            )
        if kind == "azure" and base_url is None:
            raise InvalidRequest("An azure key needs 'base_url': its resource endpoint.", param="base_url")
        api_key = data.get("api_key")
        if api_key is not None and (not isinstance(api_key, str) or not api_key):
            raise InvalidRequest("'api_key' must be a non-empty string.", param="api_key")
        # Recorded on every request (VARCHAR(64)): longer would be refused there.
        provider = text_field(data.get("provider", kind), "provider", limit=64, strip=True)
        priority = data.get("priority", 0)
        if isinstance(priority, bool) or not isinstance(priority, int) or not MIN_PRIORITY <= priority <= MAX_PRIORITY:
            raise InvalidRequest(
                f"'priority' must be an integer from {MIN_PRIORITY} to {MAX_PRIORITY}.", param="priority"
            )
        row = dict(
            workspace_id=workspace_id,
            id=new_id("pk"),
            name=_name(data.get("name", kind), "name"),
            provider=provider,
            kind=kind,
            base_url=base_url,
            api_key_encrypted=self.box.encrypt(api_key) if api_key else None,
            models=_patterns(data.get("models"), "models", ["*"]),
            priority=priority,
            created_at=self.clock(),
            fallbacks=parse_fallbacks(data.get("fallbacks")),
            retry=parse_retry(data.get("retry")),
            options=parse_options(kind, data.get("options")),
        )
        await self.store.create_provider_key(row)
        return {k: v for k, v in row.items() if k != "api_key_encrypted"}

    async def add_price_override(self, workspace_id: str, data: dict[str, Any]) -> dict[str, Any]:
        effective = data.get("effective_from")
        when = None if effective is None else time_field(str(effective), "effective_from")
        row = dict(
            workspace_id=workspace_id,
            id=new_id("price"),
            model=_name(data.get("model"), "model"),
            input_mtok=_rate(data.get("input_mtok"), "input_mtok", True),
            output_mtok=_rate(data.get("output_mtok"), "output_mtok", True),
            cached_input_mtok=_rate(data.get("cached_input_mtok"), "cached_input_mtok", False),
            cache_write_mtok=_rate(data.get("cache_write_mtok"), "cache_write_mtok", False),
            effective_from=when,
            created_at=self.clock(),
        )
        await self.store.add_price_override(row)
        return row

    async def bootstrap(self) -> Bootstrap:
        """First start: a workspace with a department, an agent, a demo key and the mock provider."""
        ws, token = await self.create_workspace("Default workspace", workspace_id="default")
        dep = await self.create_department(ws, {"id": "engineering", "name": "Engineering"})
        agent = await self.create_agent(ws, {"id": "demo-agent", "department_id": dep["id"], "name": "Demo agent"})
        await self.create_provider_key(
            ws, {"name": "mock", "kind": "mock", "provider": "mock", "models": ["*"], "priority": -100}
        )
        # Bound to the demo agent, so the demo's runs and requests show who made them.
        vk = await self.create_virtual_key(ws, {"name": "demo", "agent_id": agent["id"]})
        return Bootstrap(ws, dep["id"], agent["id"], vk["key"], token)

    async def _require_department(self, workspace_id: str, department_id: str) -> None:
        # Named here rather than left to the store's foreign key, whose 409 cannot say which reference failed.
        if not any(d["id"] == department_id for d in await self.store.list_departments(workspace_id)):
            raise InvalidRequest(f"Department {department_id!r} does not exist.", param="department_id")

    async def require_workspace(self, workspace_id: str) -> None:
        if not await self.store.list_workspaces(workspace_id):
            raise NotFound(f"Workspace {workspace_id!r} does not exist.", param="workspace")

    async def revoke_virtual_key(self, workspace_id: str, key_id: str) -> str:
        """Returns the key's hash, for cache invalidation. Revoking a revoked key changes nothing."""
        key_hash = await self.store.revoke_virtual_key(workspace_id, key_id, self.clock())
        if key_hash is None:
            raise NotFound(f"Virtual key {key_id!r} does not exist in workspace {workspace_id!r}.", param="key_id")
        return key_hash

    async def revoke_provider_key(self, workspace_id: str, key_id: str) -> None:
        if not await self.store.revoke_provider_key(workspace_id, key_id, self.clock()):
            raise NotFound(
                f"Provider key {key_id!r} does not exist in workspace {workspace_id!r} or is already revoked.",
                param="key_id",
            )

    async def revoke_admin_token(self, workspace_id: str, token_id: str) -> None:
        if not await self.store.revoke_admin_token(workspace_id, token_id, self.clock()):
            raise NotFound(
                f"Admin token {token_id!r} does not exist in workspace {workspace_id!r} or is already revoked.",
                param="token_id",
            )

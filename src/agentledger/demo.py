"""`agentledger demo`: a fresh instance filled with realistic traffic, through the running gateway over HTTP.

Everything goes through the public surfaces a user's agents and admins use (/api with an admin token, /v1 with
virtual keys, /x402 as an anonymous buyer), so what the dashboard then shows is what real traffic leaves behind,
decisions, rollups and audit events included. The set-up (departments, agents, policies, a budget, a rate limit,
a paid endpoint, a payment signer) is created once by fixed ids and found again on a second run; the traffic is
new each time, under a fresh tag, so running it twice doubles the books and breaks nothing.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from agentledger.demo_local import AUTH_NAME, LocalServices, buy

WORKSPACE = "default"
DEPARTMENTS = {"research": "Research", "support": "Customer support", "sales": "Sales"}
AGENTS = [  # id, name, department, kind
    ("trip-planner", "Trip planner", "research", "ai"),
    ("support-bot", "Support bot", "support", "ai"),
    ("shopper", "Shopper", "research", "ai"),
    ("summarizer-flow", "Summarizer (workflow)", "sales", "workflow"),
]
SLUG = "demo-summarize"
APPROVAL_WAIT_S = 3  # the escalation policy's own wait: the approved call is decided well within it
BACKFILL_DAYS = 13


def _clock(start: datetime, scale: int = 1) -> Callable[[int], str]:
    """Times after `start`, in milliseconds (or `scale` of them), as the step API takes them."""
    return lambda n: (start + timedelta(milliseconds=n * scale)).isoformat()


class DemoError(Exception):
    """A step of the demo the gateway refused: the message says which, and what it answered."""


@dataclass
class Report:
    url: str
    tag: str
    runs: list[str] = field(default_factory=list)
    sessions: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    outcomes: dict[str, int] = field(default_factory=dict)  # what each notable call answered
    approval_id: str | None = None
    pending_approval_id: str | None = None
    endpoint_url: str | None = None


def _expect(resp: httpx.Response, what: str, *ok: int) -> dict[str, Any]:
    if resp.status_code not in (ok or (200, 201)):
        raise DemoError(f"{what}: HTTP {resp.status_code}: {resp.text[:300]}")
    if not resp.headers.get("content-type", "").startswith("application/json"):
        return {}  # a stream
    data: dict[str, Any] = resp.json()
    return data


class Demo:
    def __init__(self, url: str, admin_token: str, say: Callable[[str], None] = print) -> None:
        self.url = url.rstrip("/")
        self.say = say
        self.tag = datetime.now(UTC).strftime("%H%M%S") + os.urandom(2).hex()
        self.report = Report(self.url, self.tag)
        self.http = httpx.AsyncClient(base_url=self.url, timeout=60, trust_env=False)
        self.admin = {"authorization": f"Bearer {admin_token}"}
        self.keys: dict[str, str] = {}  # agent id -> a virtual key made for this run of the demo

    # -- set-up through /api --------------------------------------------------------------------------------

    async def api(self, method: str, path: str, what: str, *ok: int, **kw: Any) -> dict[str, Any]:
        return _expect(await self.http.request(method, path, headers=self.admin, **kw), what, *ok)

    async def ensure(self, path: str, body: dict[str, Any], what: str) -> None:
        """Create by id; a 409 means an earlier demo made it, which is as good."""
        await self.api("POST", path, what, 200, 201, 409, json=body)

    async def setup(self, local: LocalServices) -> None:
        existing = {d["id"] for d in (await self.api("GET", "/api/departments", "list departments"))["data"]}
        for dep_id, name in DEPARTMENTS.items():
            if dep_id not in existing:
                await self.api("POST", "/api/departments", "create department", json={"id": dep_id, "name": name})
        agents = {a["id"] for a in (await self.api("GET", "/api/agents", "list agents"))["data"]}
        runtime = {"type": "webhook", "url": local.hook_url, "auth_header": {"name": AUTH_NAME, "value": local.secret}}
        for agent_id, name, dep, kind in AGENTS:
            if agent_id not in agents:
                body = {"id": agent_id, "name": name, "department_id": dep, "kind": kind}
                await self.api("POST", "/api/agents", f"create agent {agent_id}", json=body)
        # The webhook listens on a new port each run: point the workflow agent at this run's.
        await self.api("PUT", "/api/agents/summarizer-flow/runtime", "set the workflow's runtime", json=runtime)
        for agent_id, _, _, kind in AGENTS:
            if kind == "ai":
                made = await self.api(
                    "POST", "/api/virtual-keys", "create key", json={"name": f"demo {agent_id}", "agent_id": agent_id}
                )
                self.keys[agent_id] = made["key"]
        await self._flaky_provider(local)
        await self._governance()
        await self._selling()

    async def _flaky_provider(self, local: LocalServices) -> None:
        for key in (await self.api("GET", "/api/provider-keys", "list provider keys"))["data"]:
            if key["name"] == "demo-flaky" and not key.get("revoked_at"):
                await self.api("DELETE", f"/api/provider-keys/{key['id']}", "revoke the last demo's provider")
        body = {
            "name": "demo-flaky",
            "kind": "openai",
            "provider": "openai",
            "base_url": local.provider_url,
            "api_key": "sk-demo-local",
            "models": ["flaky-*"],
            "priority": 10,
            "retry": {"attempts": 3, "backoff_ms": 20, "max_backoff_ms": 100},
        }
        await self.api("POST", "/api/provider-keys", "add the flaky provider", json=body)
        price = {"model": "flaky-gpt", "input_mtok": "0.50", "output_mtok": "1.50"}
        await self.api("POST", "/api/prices", "price flaky-gpt", 200, 201, 409, json=price)

    async def _governance(self) -> None:
        budget = {
            "id": "demo-research-30d",
            "name": "Research, monthly",
            "scope": "department",
            "scope_value": "research",
            "limit_usd": "5.00",
            "period": "30d",
            "thresholds": [50, 80, 100],
        }
        await self.ensure("/api/budgets", budget, "create the budget")
        rate: dict[str, Any] = {"id": "demo-support-rpm", "name": "Support bot, per minute", "scope": "agent"}
        rate |= {"scope_value": "support-bot", "requests_per_minute": 300}
        await self.ensure("/api/rate-limits", rate, "create the rate limit")
        policies: list[dict[str, Any]] = [
            {
                "id": "demo-support-small-models",
                "name": "Support uses small models",
                "scope": "department",
                "scope_value": "support",
                "rules": [
                    {
                        "id": "no-gpt-4o",
                        "action": "block",
                        "when": {"models": ["gpt-4o"]},
                        "message": "support answers with small models",
                    }
                ],
            },
            {
                "id": "demo-opus-approval",
                "name": "Opus needs a human",
                "scope": "workspace",
                "settings": {"approval_wait_s": APPROVAL_WAIT_S},
                "rules": [{"id": "opus", "action": "escalate", "when": {"models": ["claude-opus-*"]}}],
            },
            {
                "id": "demo-long-outputs",
                "name": "Long outputs (trial)",
                "scope": "workspace",
                "mode": "monitor",
                "rules": [{"id": "max-2k", "action": "block", "when": {"max_tokens_over": 2000}}],
            },
        ]
        for policy in policies:
            await self.ensure("/api/policies", policy, f"create policy {policy['id']}")

    async def _selling(self) -> None:
        endpoints = (await self.api("GET", "/api/paid-endpoints", "list paid endpoints"))["data"]
        endpoint = next((e for e in endpoints if e["slug"] == SLUG), None)
        if endpoint is None:
            body = {
                "slug": SLUG,
                "description": "Summarize a text in one line",
                "agent_id": "summarizer-flow",
                "price_usd": "0.02",
                "pay_to": "0x" + "5a" * 20,
                "fee": {"percent": "2.5", "fixed_usd": "0.0005"},
                "input_schema": {
                    "type": "object",
                    "properties": {"text": {"type": "string", "minLength": 1}},
                    "required": ["text"],
                },
                "timeout_s": 20,
            }
            endpoint = await self.api("POST", "/api/paid-endpoints", "publish the paid endpoint", json=body)
        self.report.endpoint_url = self.url + endpoint["url"]
        signers = (await self.api("GET", "/api/payment-signers", "list payment signers"))["data"]
        if not any(s["name"] == "demo-wallet" and not s["revoked"] for s in signers):
            body = {"name": "demo-wallet", "generate": True, "networks": ["eip155:84532"], "max_payment_usd": "0.50"}
            await self.api("POST", "/api/payment-signers", "create the payment signer", json=body)

    # -- traffic through /v1 and /x402 ----------------------------------------------------------------------

    def _headers(self, agent: str, run: str, session: tuple[str, str, str] | None = None) -> dict[str, str]:
        h = {"authorization": f"Bearer {self.keys[agent]}", "alephant-run-id": run}
        if session is not None:
            sid, name, path = session
            h |= {"alephant-session-id": sid, "alephant-session-name": name, "alephant-session-path": path}
        return h

    def _run(self, name: str) -> str:
        run = f"{name}-{self.tag}"
        self.report.runs.append(run)
        return run

    async def chat(self, agent: str, run: str, text: str, model: str = "gpt-4o-mini", **kw: Any) -> httpx.Response:
        session = kw.pop("session", None)
        body = {"model": model, "messages": [{"role": "user", "content": text}], **kw}
        return await self.http.post("/v1/chat/completions", json=body, headers=self._headers(agent, run, session))

    async def messages(self, agent: str, run: str, text: str, model: str, **kw: Any) -> httpx.Response:
        session = kw.pop("session", None)
        headers = self._headers(agent, run, session)
        headers["x-api-key"] = headers.pop("authorization").removeprefix("Bearer ")
        body = {"model": model, "max_tokens": 256, "messages": [{"role": "user", "content": text}]}
        return await self.http.post("/v1/messages", json=body, headers=headers)

    async def steps(self, agent: str, run: str, steps: list[dict[str, Any]], **run_fields: Any) -> None:
        body: dict[str, Any] = {"steps": steps}
        if run_fields:
            body["run"] = run_fields
        resp = await self.http.post(f"/v1/runs/{run}/steps", json=body, headers=self._headers(agent, run))
        _expect(resp, f"steps of {run}", 201)

    async def end(self, agent: str, run: str, status: str = "succeeded", **kw: Any) -> None:
        body = {"status": status, **kw}
        resp = await self.http.post(f"/v1/runs/{run}/end", json=body, headers=self._headers(agent, run))
        _expect(resp, f"end of {run}", 200, 201)

    async def trip(self) -> None:
        """A planner's session with paths: chat and Messages calls, a tool call with an API call inside, a
        streamed answer, and a model call that waits for a human."""
        session = f"trip-{self.tag}"
        self.report.sessions.append(session)
        s = (session, "Lisbon trip", "/plan")
        plan = self._run("trip-plan")
        await self.http.post(
            "/v1/runs",
            json={"run_id": plan, "workflow": "trip-planning", "name": "plan Lisbon", "session_id": session},
            headers=self._headers("trip-planner", plan),
        )
        _expect(await self.chat("trip-planner", plan, "plan three days in Lisbon in May", session=s), "chat", 200)
        hotels = (session, "Lisbon trip", "/plan/hotels")
        resp = await self.messages("trip-planner", plan, "find a hotel in Alfama", "claude-sonnet-4-5", session=hotels)
        _expect(resp, "messages", 200)
        now = datetime.now(UTC)
        t = _clock(now)
        await self.steps(
            "trip-planner",
            plan,
            [
                {
                    "id": f"flights-{self.tag}",
                    "kind": "tool_call",
                    "name": "search_flights",
                    "started_at": t(0),
                    "ended_at": t(820),
                    "input": {"from": "CDG", "to": "LIS"},
                    "session_path": "/plan/flights",
                },
                {
                    "parent_id": f"flights-{self.tag}",
                    "kind": "api_call",
                    "name": "GET skyscanner /quotes",
                    "started_at": t(40),
                    "ended_at": t(610),
                    "cost_usd": "0.004",
                    "output": {"quotes": 12},
                },
                {
                    "parent_id": f"flights-{self.tag}",
                    "kind": "tool_call",
                    "name": "rank_quotes",
                    "started_at": t(620),
                    "ended_at": t(800),
                },
            ],
        )
        tools = [
            {
                "type": "function",
                "function": {
                    "name": "book_hotel",
                    "parameters": {
                        "type": "object",
                        "properties": {"hotel": {"type": "string"}},
                        "required": ["hotel"],
                    },
                },
            }
        ]
        book = (session, "Lisbon trip", "/book")
        _expect(await self.chat("trip-planner", plan, "book the best hotel", tools=tools, session=book), "tool", 200)
        streamed = await self.chat("trip-planner", plan, "write the itinerary as a list", stream=True, session=s)
        _expect(streamed, "streamed chat", 200)
        await self.end("trip-planner", plan, output={"days": 3})
        await self.escalations(session)

    async def escalations(self, session: str) -> None:
        """Two calls the opus policy escalates: one approved while it is held, one left pending for a human."""
        review = self._run("trip-review")
        s = (session, "Lisbon trip", "/review")
        ask = self.messages("trip-planner", review, "review the plan", "claude-opus-4-1", session=s)
        held = asyncio.create_task(ask)
        approval = await self._pending(review)
        self.report.approval_id = approval
        comment = {"comment": "fine for this trip"}
        await self.api("POST", f"/api/approvals/{approval}/approve", "approve", json=comment)
        self.report.outcomes["escalated_then_approved"] = (await held).status_code
        await self.end("trip-planner", review)
        waiting = self._run("trip-audit")
        resp = await self.messages("trip-planner", waiting, "audit every booking", "claude-opus-4-1", session=s)
        self.report.outcomes["escalated_pending"] = resp.status_code
        if resp.status_code == 403:
            self.report.pending_approval_id = resp.json()["error"].get("approval_id")

    async def _pending(self, run: str) -> str:
        for _ in range(200):
            for a in (await self.api("GET", "/api/approvals", "list approvals", params={"status": "pending"}))["data"]:
                if a.get("run_id") == run:
                    return str(a["id"])
            await asyncio.sleep(0.02)
        raise DemoError(f"no approval was opened for run {run}")

    async def support(self) -> None:
        """Tickets: small-model answers, a retried provider error, a failed call, a blocked model, a monitor hit,
        and a refund workflow reported step by step with its branches."""
        for n, question in enumerate(["where is my order", "change my address", "cancel my subscription"], 1):
            run = self._run(f"ticket-{n}")
            session = (f"support-{self.tag}", "Support queue", f"/tickets/{n}")
            _expect(await self.chat("support-bot", run, question, session=session), "ticket", 200)
            if n == 1:
                resp = await self.chat("support-bot", run, f"FAIL:once500 lookup {self.tag}", model="flaky-gpt")
                self.report.outcomes["retried"] = resp.status_code
                resp = await self.chat("support-bot", run, "FAIL:400 bad lookup", model="flaky-gpt")
                self.report.outcomes["provider_error"] = resp.status_code
            if n == 2:
                resp = await self.chat("support-bot", run, "escalate to a big model", model="gpt-4o", session=session)
                self.report.outcomes["blocked"] = resp.status_code
            if n == 3:
                resp = await self.chat("support-bot", run, "write the full letter", max_tokens=4096)
                self.report.outcomes["monitor_hit"] = resp.status_code
            await self.end("support-bot", run, **({"status": "failed", "error": "lookup failed"} if n == 1 else {}))
        self.report.sessions.append(f"support-{self.tag}")
        await self.refund_workflow()

    async def refund_workflow(self) -> None:
        run = self._run("refund")
        now = datetime.now(UTC)
        t = _clock(now)
        root = f"refund-{self.tag}"
        await self.steps(
            "support-bot",
            run,
            [
                {"id": root, "kind": "workflow_step", "name": "refund request", "started_at": t(0), "ended_at": t(900)},
                {
                    "id": f"{root}-c",
                    "parent_id": root,
                    "kind": "workflow_step",
                    "name": "classify",
                    "branch": "refund",
                    "started_at": t(10),
                    "ended_at": t(200),
                },
                {
                    "parent_id": root,
                    "kind": "workflow_step",
                    "name": "amount under $50?",
                    "branch": "yes",
                    "started_at": t(210),
                    "ended_at": t(230),
                },
                {
                    "parent_id": root,
                    "kind": "api_call",
                    "name": "POST payments /refunds",
                    "started_at": t(240),
                    "ended_at": t(700),
                    "attempt": 1,
                    "status": "error",
                    "error": "timeout",
                },
                {
                    "parent_id": root,
                    "kind": "api_call",
                    "name": "POST payments /refunds",
                    "started_at": t(710),
                    "ended_at": t(880),
                    "attempt": 2,
                    "cost_usd": "0.001",
                },
            ],
            workflow="refunds",
            name="refund order 1042",
        )
        await self.end("support-bot", run)

    async def market(self) -> None:
        """A sale to an anonymous x402 buyer, then the shopper agent buying the same service through the
        gateway's outbound payments (the gateway's own endpoint, on loopback)."""
        assert self.report.endpoint_url is not None
        headers = {"alephant-session-id": f"market-{self.tag}", "alephant-session-name": "Marketplace"}
        resp = await buy(self.http, self.report.endpoint_url, {"text": "quarterly report, 40 pages"}, headers)
        self.report.outcomes["sale"] = resp.status_code
        run = self._run("shop")
        body = {
            "url": self.report.endpoint_url,
            "method": "POST",
            "body": {"text": "competitor pricing page"},
            "max_amount_usd": "0.05",
            "run_id": run,
        }
        resp = await self.http.post("/v1/x402/fetch", json=body, headers=self._headers("shopper", run))
        self.report.outcomes["purchase"] = resp.status_code
        if resp.status_code == 403 and resp.json()["error"].get("code") == "address_refused":
            self.report.notes.append(
                "outbound payment skipped: the gateway refuses loopback sellers; start it with "
                "--set x402_fetch_allow_hosts=127.0.0.1 to see an agent buy from this gateway's own endpoint"
            )
        _expect(resp, "outbound purchase", 200, 403)
        if resp.status_code == 200:  # a refused fetch made no run to end
            await self.end("shopper", run)

    async def backfill(self) -> None:
        """Two weeks of earlier nightly runs, reported through the step API with their own times, so the cost
        charts have a history."""
        today = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
        for day in range(1, BACKFILL_DAYS + 1):
            run = self._run(f"nightly-{day:02d}")
            start = today - timedelta(days=day, hours=day % 5)
            t = _clock(start, 1000)
            usage = {"input_tokens": 2000 + 400 * (day % 4), "output_tokens": 300 + 50 * (day % 3)}
            await self.steps(
                "trip-planner",
                run,
                [
                    {
                        "kind": "model_call",
                        "name": "summarize news",
                        "model": "gpt-4o-mini",
                        "provider": "openai",
                        "usage": usage,
                        "started_at": t(0),
                        "ended_at": t(3),
                    },
                    {
                        "kind": "tool_call",
                        "name": "fetch_feeds",
                        "started_at": t(3),
                        "ended_at": t(5),
                        "cost_usd": "0.002",
                    },
                ],
                workflow="nightly-digest",
            )
            await self.end("trip-planner", run, ended_at=t(6))

    async def run(self) -> Report:
        with LocalServices(self.url) as local:
            try:
                await self.setup(local)
                await asyncio.gather(self.trip(), self.support(), self.market(), self.backfill())
            finally:
                await self.http.aclose()
        return self.report


def run_demo(url: str, admin_token: str) -> Report:
    return asyncio.run(Demo(url, admin_token).run())


def describe(report: Report) -> list[str]:
    out = [
        f"agentledger demo: done (tag {report.tag}); {len(report.runs)} runs through {report.url}",
        "",
        f"  open the dashboard   {report.url}/   (sign in with the admin token the first start printed,",
        "                       or one from `agentledger admin-token create`)",
        f"  a run, step by step  {report.url}/runs/trip-plan-{report.tag}",
        f"  a session's runs     {report.url}/runs?session=trip-{report.tag}",
        f"  what stopped a call  {report.url}/runs/ticket-2-{report.tag} (gpt-4o is blocked for support)",
        f"  waiting for you      {report.url}/approvals (an Opus call held for a human)",
        f"  money                {report.url}/finance (a sale of demo-summarize, the shopper's purchase)",
        f"  budget left          {report.url}/budgets (Research, monthly)",
        f"  who changed what     {report.url}/audit",
    ]
    out += [f"  note: {n}" for n in report.notes]
    return out

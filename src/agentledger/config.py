"""Every setting declared once: name, type, default, environment variable, help.

The frozen `Settings`, the CLI's `--set NAME=VALUE` and docs/configuration.md all come from `SETTINGS`
(a test fails when the docs miss one). Precedence: CLI > environment > default.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from agentledger.core.assets import KNOWN_ASSETS, AcceptedAsset

# An escalated call holds its connection (and a worker's attention) while it waits: past 5 minutes, proxies and
# clients time out anyway, so a longer wait only hides the 403 that tells the agent to come back later.
MAX_APPROVAL_WAIT_S = 300.0
MAX_APPROVAL_TTL_S = 365 * 86400.0


@dataclass(frozen=True, slots=True)
class Setting:
    name: str
    type: type
    default: Any
    help: str

    @property
    def env(self) -> str:
        return "AGENTLEDGER_" + self.name.upper()


SETTINGS: tuple[Setting, ...] = (
    Setting("host", str, "127.0.0.1", "Interface to listen on."),
    Setting("port", int, 8080, "Port to listen on."),
    Setting("data_dir", str, ".agentledger", "Where the embedded database, secret key file and spool live."),
    Setting("db_url", str, "", "SQLAlchemy URL; empty means SQLite in data_dir. PostgreSQL: postgresql+psycopg://..."),
    Setting("secret_key", str, "", "Fernet key encrypting provider keys at rest; empty means data_dir/secret.key."),
    Setting("bootstrap", bool, True, "On first start, create a demo workspace, agent, mock provider and keys."),
    Setting(
        "cache_ttl",
        float,
        30.0,
        "Seconds a cached key, route or price lookup lives (changes via this node apply at once).",
    ),
    Setting(
        "stale_if_error",
        float,
        3600.0,
        "Seconds past cache_ttl a cached key, route, agent or price lookup is still served while the store is "
        "unavailable (0: never), so chat keeps serving known keys through a database outage.",
    ),
    Setting("connect_timeout", float, 5.0, "Seconds to connect to a provider."),
    Setting("read_timeout", float, 120.0, "Seconds a provider may stay silent in a non-streamed response."),
    Setting("first_token_timeout", float, 60.0, "Seconds a streamed response may take to start, and between chunks."),
    Setting("batch_size", int, 500, "Trace events written per store transaction at most."),
    Setting(
        "durability",
        str,
        "strict",
        "strict: a response is released once its record is durable (committed, or fsynced to the spool); "
        "batched: responses do not wait, a crash may lose about batch_interval_ms of records.",
    ),
    Setting(
        "batch_interval_ms",
        float,
        20.0,
        "batched mode, and the store behind the trace journal: how long the writer waits to fill a batch.",
    ),
    Setting(
        "trace_journal",
        bool,
        True,
        "strict mode on SQLite: a response waits for its records' append to a write-ahead journal beside the "
        "database (one small fdatasync), and the store is written behind it; false: for SQLite's own commit.",
    ),
    Setting(
        "workers",
        int,
        1,
        "Server worker processes. More than 1 makes each a replica: they need redis_url (budgets, rate limits and "
        "idempotency claims must be shared) and PostgreSQL.",
    ),
    Setting(
        "redis_url",
        str,
        "",
        "Redis for budget and rate-limit counters shared by replicas (redis://127.0.0.1:6379/0); empty means "
        "in-process counters (one node).",
    ),
    Setting(
        "budget_output_tokens",
        int,
        4096,
        "Output tokens a budget reservation assumes for a call that sets no max_tokens / max_output_tokens.",
    ),
    Setting(
        "reservation_ttl",
        float,
        900.0,
        "Seconds a budget reservation (a call in flight, a spend authorization) lives before it expires and is "
        "charged its estimate.",
    ),
    Setting(
        "run_pause_wait_s",
        float,
        10.0,
        "Seconds a call of a paused run waits for the run to be resumed before it is refused with 423 run_paused "
        "(0 to 300; 0: refused at once).",
    ),
    Setting(
        "client_ip_header",
        str,
        "",
        "Behind a trusted reverse proxy: the header it puts the caller's address in (x-forwarded-for, x-real-ip); "
        "policies' ip_allow and ip_in read the last address in it. Empty: the connection's peer address.",
    ),
    Setting("log_level", str, "info", "Log level: debug, info, warning, error."),
    Setting(
        "max_body_bytes",
        int,
        52_428_800,
        "Largest request body accepted on any route (50 MiB, OpenAI's own cap for a chat request with images); "
        "a larger one is refused with 413 request_too_large before it is read in full.",
    ),
    Setting(
        "x402_facilitator",
        str,
        "local",
        "Who verifies and settles the payments of paid endpoints: 'local' (built in, chain-free: it MOVES NO MONEY; "
        "docs/paid-endpoints.md) or the https URL of an x402 facilitator (http only to a loopback address). No "
        "public facilitator is ever used by default.",
    ),
    Setting(
        "x402_networks",
        str,
        "eip155:84532",
        "Comma-separated CAIP-2 networks whose USDC paid endpoints accept (eip155:84532 Base Sepolia, eip155:8453 "
        "Base); the first is an endpoint's default.",
    ),
    Setting(
        "workflow_timeout_cap_s",
        float,
        300.0,
        "The longest timeout_s a paid endpoint may give its workflow, in seconds (at most 3600).",
    ),
    Setting(
        "paid_endpoint_max_body_bytes",
        int,
        1_048_576,
        "Largest body a paid endpoint accepts (1 MiB); a larger one is refused with 413 before anyone pays.",
    ),
    Setting(
        "webhook_allow_hosts",
        str,
        "",
        "Comma-separated hostnames, addresses or CIDRs webhooks may be delivered to although private, loopback or "
        "link-local (the address guard refuses them otherwise; docs/alerts.md).",
    ),
    Setting("webhook_timeout", float, 10.0, "Seconds one webhook delivery attempt may take, connect to answer."),
    Setting("webhook_max_attempts", int, 8, "Attempts at a webhook delivery before it is failed."),
    Setting("webhook_backoff", float, 10.0, "Seconds before a delivery's second attempt; doubled for each after."),
    Setting("webhook_max_backoff", float, 3600.0, "Longest wait between two attempts of a delivery, in seconds."),
    Setting("webhook_poll_interval", float, 1.0, "Seconds between polls of the webhook outbox when it is idle."),
    Setting("alert_sweep_interval", float, 60.0, "Seconds between runs of the spend-anomaly and error-spike checks."),
    Setting(
        "anomaly_factor",
        float,
        3.0,
        "spend_anomaly: an agent's last full hour's spend over this many times its trailing 7-day hourly average.",
    ),
    Setting("anomaly_floor_usd", float, 1.0, "spend_anomaly: no alert for an hour's spend below this many dollars."),
    Setting(
        "margin_floor_usd",
        float,
        0.0,
        "margin_loss: a paid endpoint or selling agent whose known margin in the last full hour with revenue is "
        "below this many dollars (0: any loss) raises an alert.",
    ),
    Setting("error_spike_rate", float, 0.2, "error_spike: a workspace's error rate in the last 15 minutes above this."),
    Setting("error_spike_min_calls", int, 20, "error_spike: no alert with fewer calls than this in the 15 minutes."),
    Setting(
        "approval_wait_s",
        float,
        30.0,
        "Seconds an escalated call is held waiting for a human's decision (0 to 300) before it is answered 403 "
        "approval_required; a policy's own approval_wait_s wins.",
    ),
    Setting("approval_ttl_s", float, 86400.0, "Seconds an approval stays pending before it expires."),
    Setting(
        "x402_fetch_allow_hosts",
        str,
        "",
        "Comma-separated hostnames, addresses or CIDRs POST /v1/x402/fetch may reach although private, loopback or "
        "link-local (the address guard refuses them otherwise; docs/paid-endpoints.md, Outbound payments).",
    ),
    Setting("x402_fetch_timeout", float, 30.0, "Seconds one request of POST /v1/x402/fetch may take, connect to body."),
    Setting(
        "x402_fetch_max_response_bytes",
        int,
        10_485_760,
        "Largest answer body POST /v1/x402/fetch reads from a seller (10 MiB); a larger one is a 502.",
    ),
    Setting(
        "audit_checkpoint_events",
        int,
        1000,
        "Sign a checkpoint of a workspace's audit chain once this many events were appended since its last one.",
    ),
    Setting(
        "audit_checkpoint_interval_s",
        float,
        60.0,
        "Seconds after which every audit chain that moved gets a signed checkpoint, however few events it added.",
    ),
    Setting(
        "retention_interval",
        float,
        3600.0,
        "Seconds between sweeps of the retention job (PUT /api/retention; docs/retention.md); the first runs at "
        "start. 0: no sweeps on this node.",
    ),
    Setting(
        "retention_batch",
        int,
        1000,
        "Rows the retention job deletes or changes per transaction (1 to 100000); it pauses between batches at least "
        "as long as each took.",
    ),
)


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: str = ".agentledger"
    db_url: str = ""
    secret_key: str = ""
    bootstrap: bool = True
    cache_ttl: float = 30.0
    stale_if_error: float = 3600.0
    connect_timeout: float = 5.0
    read_timeout: float = 120.0
    first_token_timeout: float = 60.0
    batch_size: int = 500
    durability: str = "strict"
    batch_interval_ms: float = 20.0
    trace_journal: bool = True
    workers: int = 1
    redis_url: str = ""
    budget_output_tokens: int = 4096
    reservation_ttl: float = 900.0
    run_pause_wait_s: float = 10.0
    client_ip_header: str = ""
    log_level: str = "info"
    max_body_bytes: int = 52_428_800
    x402_facilitator: str = "local"
    x402_networks: str = "eip155:84532"
    workflow_timeout_cap_s: float = 300.0
    paid_endpoint_max_body_bytes: int = 1_048_576
    webhook_allow_hosts: str = ""
    webhook_timeout: float = 10.0
    webhook_max_attempts: int = 8
    webhook_backoff: float = 10.0
    webhook_max_backoff: float = 3600.0
    webhook_poll_interval: float = 1.0
    alert_sweep_interval: float = 60.0
    anomaly_factor: float = 3.0
    anomaly_floor_usd: float = 1.0
    margin_floor_usd: float = 0.0
    error_spike_rate: float = 0.2
    error_spike_min_calls: int = 20
    approval_wait_s: float = 30.0
    approval_ttl_s: float = 86400.0
    x402_fetch_allow_hosts: str = ""
    x402_fetch_timeout: float = 30.0
    x402_fetch_max_response_bytes: int = 10_485_760
    audit_checkpoint_events: int = 1000
    audit_checkpoint_interval_s: float = 60.0
    retention_interval: float = 3600.0
    retention_batch: int = 1000

    @property
    def database_url(self) -> str:
        return self.db_url or f"sqlite:///{Path(self.data_dir).resolve() / 'agentledger.db'}"


def _coerce(setting: Setting, raw: Any) -> Any:
    if setting.type is bool and isinstance(raw, str):
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{setting.name}: expected true/false, got {raw!r}")
    try:
        return setting.type(raw)
    except (TypeError, ValueError):
        raise ValueError(f"{setting.name}: expected {setting.type.__name__}, got {raw!r}") from None


def accepted_assets(networks: str) -> tuple[AcceptedAsset, ...]:
    """The known assets (core/assets.py) on the networks named, in the order named."""
    chosen = [n.strip() for n in networks.split(",") if n.strip()]
    known = {a.network: a for a in KNOWN_ASSETS}
    unknown = [n for n in chosen if n not in known]
    if not chosen or unknown:
        raise ValueError(f"x402_networks: expected some of {', '.join(known)}, got {networks!r}")
    return tuple(known[n] for n in dict.fromkeys(chosen))


def _check_paid_endpoints(values: Mapping[str, Any]) -> None:
    facilitator = values.get("x402_facilitator", "local")
    if facilitator != "local":
        parts = urlsplit(facilitator)
        loopback = parts.hostname in ("127.0.0.1", "localhost", "::1")
        if not parts.hostname or not (parts.scheme == "https" or (parts.scheme == "http" and loopback)):
            raise ValueError(
                f"x402_facilitator: expected 'local' or an https URL (http only to a loopback address), got "
                f"{facilitator!r}"
            )
    accepted_assets(values.get("x402_networks", "eip155:84532"))
    cap = values.get("workflow_timeout_cap_s", 300.0)
    if not 0 < cap <= 3600:
        raise ValueError(f"workflow_timeout_cap_s: expected 0 < seconds <= 3600, got {cap!r}")
    if values.get("paid_endpoint_max_body_bytes", 1) <= 0:
        raise ValueError("paid_endpoint_max_body_bytes: expected a positive number of bytes")


def load_settings(overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for s in SETTINGS:
        if s.env in env:
            values[s.name] = _coerce(s, env[s.env])
    by_name = {s.name: s for s in SETTINGS}
    for name, raw in (overrides or {}).items():
        if name not in by_name:
            raise ValueError(f"unknown setting {name!r}")
        if raw is not None:
            values[name] = _coerce(by_name[name], raw)
    _check_paid_endpoints(values)
    if values.get("durability", "strict") not in ("strict", "batched"):
        raise ValueError(f"durability: expected strict or batched, got {values['durability']!r}")
    # A held call keeps its connection open: the SDKs' own timeouts (600 s) must not end it first.
    if not 0 <= values.get("run_pause_wait_s", 10.0) <= 300:
        raise ValueError(f"run_pause_wait_s: expected 0 to 300 seconds, got {values['run_pause_wait_s']!r}")
    wait, ttl = values.get("approval_wait_s", 0.0), values.get("approval_ttl_s", 1.0)
    if not 0 <= wait <= MAX_APPROVAL_WAIT_S:  # NaN fails too
        raise ValueError(f"approval_wait_s: expected 0 to {MAX_APPROVAL_WAIT_S:g} seconds, got {wait!r}")
    if not 0 < ttl <= MAX_APPROVAL_TTL_S:
        raise ValueError(f"approval_ttl_s: expected 0 < seconds <= {MAX_APPROVAL_TTL_S:g}, got {ttl!r}")
    fetch_timeout, fetch_bytes = values.get("x402_fetch_timeout", 30.0), values.get("x402_fetch_max_response_bytes", 1)
    if not 0 < fetch_timeout <= 600:  # a paid fetch holds a budget reservation and the agent's connection
        raise ValueError(f"x402_fetch_timeout: expected 0 < seconds <= 600, got {fetch_timeout!r}")
    if fetch_bytes <= 0:
        raise ValueError(f"x402_fetch_max_response_bytes: expected a positive number of bytes, got {fetch_bytes!r}")
    if values.get("audit_checkpoint_events", 1) < 1:
        raise ValueError(f"audit_checkpoint_events: expected 1 or more, got {values['audit_checkpoint_events']!r}")
    every = values.get("audit_checkpoint_interval_s", 60.0)
    if not 0 < every < float("inf"):  # NaN fails too
        raise ValueError(f"audit_checkpoint_interval_s: expected a positive number of seconds, got {every!r}")
    _check_retention(values)
    return Settings(**values)


def _check_retention(values: Mapping[str, Any]) -> None:
    every, batch = values.get("retention_interval", 3600.0), values.get("retention_batch", 1000)
    if not 0 <= every < float("inf"):  # NaN fails too
        raise ValueError(f"retention_interval: expected 0 or more seconds, got {every!r}")
    if not 1 <= batch <= 100_000:
        raise ValueError(f"retention_batch: expected 1 to 100000 rows, got {batch!r}")


assert [f.name for f in fields(Settings)] == [s.name for s in SETTINGS], "Settings and SETTINGS must agree"

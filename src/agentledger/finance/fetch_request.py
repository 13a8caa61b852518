"""What an agent asks POST /v1/x402/fetch for, checked field by field (a 400 naming the field), and how a seller's
answer is shown back to it.

The headers an agent may send are the seller's business, with exceptions the gateway owns: hop-by-hop and framing
headers (a request-smuggling tool: the gateway frames the request), credentials and forwarding headers (a request
the gateway makes, and pays for, carries no identity but the workspace's payment; Authorization and Cookie would
make the gateway a proxy for other accounts, X-Forwarded-For a liar about who asks), and the x402 headers (only
the gateway signs a payment). What comes back is a safe subset of the seller's headers: no cookies, no framing.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson

from agentledger.core.budget_config import dollars
from agentledger.core.errors import InvalidRequest
from agentledger.core.fields import id_field, text_field
from agentledger.core.money import MAX_EVENT_COST_NANOS, to_nanos
from agentledger.gateway.bodies import storable_json

MAX_URL_LEN = 2048
MAX_HEADERS = 64
MAX_HEADER_NAME = 256
MAX_HEADER_VALUE = 8192
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
FIELDS = ("url", "method", "headers", "body", "max_amount_usd", "run_id", "signer")
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")  # RFC 9110 field-name
_VALUE_BAD = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # controls but tab: CR/LF would split the header
REFUSED_HEADERS = frozenset(
    {
        # hop-by-hop and framing: the gateway frames the request it sends
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "host",
        "expect",
        # credentials and forwarded identity
        "authorization",
        "proxy-authorization",
        "cookie",
        "x-api-key",
        "forwarded",
        "x-real-ip",
        # x402: the gateway signs and reads these itself
        "payment-signature",
        "x-payment",
        "payment-required",
        "payment-response",
        "x-payment-response",
    }
)
REFUSED_PREFIXES = ("x-forwarded-", "proxy-")
# The seller's answer headers an agent sees (lowercase).
SAFE_HEADERS = (
    "content-type",
    "content-language",
    "cache-control",
    "etag",
    "expires",
    "last-modified",
    "location",
    "retry-after",
    "link",
    "payment-required",
    "payment-response",
)


@dataclass(frozen=True, slots=True)
class FetchAsk:
    url: str
    method: str
    headers: dict[str, str]
    body: bytes | None
    max_nanos: int
    run_id: str | None
    signer: str | None

    @property
    def fingerprint(self) -> str:
        """What makes two fetches under one x-request-id the same request (a different one is refused, 409)."""
        parts = [self.url, self.method, sorted(self.headers.items()), self.max_nanos, self.signer]
        head = json.dumps(parts, separators=(",", ":")).encode()
        return hashlib.sha256(head + b"\0" + (self.body or b"")).hexdigest()

    @property
    def shown_url(self) -> str:
        """The URL as the trace keeps it: without query or fragment, which may carry secrets."""
        parts = urlsplit(self.url)
        return urlunsplit((parts.scheme, parts.netloc, parts.path or "/", "", ""))


def parse_fetch(data: dict[str, Any], header_run_id: str | None) -> FetchAsk:
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise InvalidRequest(f"Unknown field {unknown[0]!r}: a fetch takes {', '.join(FIELDS)}.", param=unknown[0])
    url = url_field(data.get("url"))
    method = _method(data.get("method"))
    headers = _headers(data.get("headers"))
    body = _body(data.get("body"), method, headers)
    max_nanos = _max_amount(data.get("max_amount_usd"))
    run_id = id_field(data["run_id"], "run_id") if data.get("run_id") is not None else None
    if run_id is not None and header_run_id is not None and run_id != header_run_id:
        raise InvalidRequest(
            f"'run_id' ({run_id!r}) and the Alephant-Run-Id header ({header_run_id!r}) name different runs.",
            param="run_id",
        )
    signer = text_field(data["signer"], "signer") if data.get("signer") is not None else None
    return FetchAsk(url, method, headers, body, max_nanos, run_id or header_run_id, signer)


def url_field(value: Any) -> str:
    if value is None:
        raise InvalidRequest("'url' is required.", param="url")
    url = text_field(value, "url", limit=MAX_URL_LEN)
    bad = InvalidRequest(
        "'url' must be an absolute http or https URL with a host (no credentials, no spaces).", param="url"
    )
    if any(ch.isspace() for ch in url):
        raise bad
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (a port past 65535 or not a number raises here)
    except ValueError:
        raise bad from None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username is not None:
        raise bad
    return url


def _method(value: Any) -> str:
    if value is None:
        return "GET"
    if not isinstance(value, str) or value not in METHODS:
        raise InvalidRequest(f"'method' must be one of {', '.join(METHODS)}.", param="method")
    return value


def _headers(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidRequest("'headers' must be an object of header names to string values.", param="headers")
    if len(value) > MAX_HEADERS:
        raise InvalidRequest(f"'headers' may name at most {MAX_HEADERS} headers.", param="headers")
    out: dict[str, str] = {}
    for name, raw in value.items():
        if not _TOKEN.fullmatch(name) or len(name) > MAX_HEADER_NAME:
            raise InvalidRequest(f"'headers' has an invalid header name {name[:64]!r}.", param="headers")
        lower = name.lower()
        if lower in REFUSED_HEADERS or lower.startswith(REFUSED_PREFIXES):
            raise InvalidRequest(
                f"'headers' may not set {name!r}: hop-by-hop, framing, credential, forwarding and x402 headers are "
                "the gateway's.",
                param="headers",
            )
        if lower in out:
            raise InvalidRequest(f"'headers' names {name!r} twice.", param="headers")
        if not isinstance(raw, str) or len(raw) > MAX_HEADER_VALUE or _VALUE_BAD.search(raw):
            raise InvalidRequest(
                f"'headers' value of {name!r} must be a string of at most {MAX_HEADER_VALUE} characters without "
                "control characters.",
                param="headers",
            )
        out[lower] = raw
    return out


def _body(value: Any, method: str, headers: dict[str, str]) -> bytes | None:
    if value is None:
        return None
    if method == "GET":
        raise InvalidRequest("'body' cannot be sent with GET; use POST, PUT or PATCH.", param="body")
    storable_json(value, "body")  # the same bounds as any JSON value the gateway takes
    if isinstance(value, str):
        headers.setdefault("content-type", "text/plain; charset=utf-8")
        try:
            return value.encode()
        except UnicodeEncodeError:  # a lone surrogate, which JSON's \u escapes can spell
            raise InvalidRequest("'body' is not valid Unicode (a lone surrogate).", param="body") from None
    headers.setdefault("content-type", "application/json")
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:
        raise InvalidRequest(
            "'body' cannot be sent as JSON (integers past 64 bits, lone surrogates).", param="body"
        ) from None


def _max_amount(value: Any) -> int:
    amount = dollars(value)
    if amount is None or amount <= 0:
        raise InvalidRequest(
            "'max_amount_usd' is required: a positive decimal string of dollars, such as \"0.05\", the most this "
            "fetch may pay.",
            param="max_amount_usd",
        )
    nanos = to_nanos(amount)
    if nanos > MAX_EVENT_COST_NANOS:
        raise InvalidRequest("'max_amount_usd' is past the per-event bound of $1,000,000.", param="max_amount_usd")
    return nanos


def answer_view(status: int, headers: Any, body: bytes) -> dict[str, Any]:
    """A seller's answer as the agent sees it: status, the safe headers, and the body as JSON when it says it is
    JSON, else text when it is UTF-8, else base64 (`body_encoding` says which; `none` for an empty body)."""
    shown = {name: headers[name] for name in SAFE_HEADERS if name in headers}
    content_type = str(headers.get("content-type", "")).split(";")[0].strip().lower()
    out: dict[str, Any] = {"status": status, "headers": shown}
    if not body:
        return {**out, "body": None, "body_encoding": "none"}
    if content_type == "application/json" or content_type.endswith("+json"):
        try:
            return {**out, "body": orjson.loads(body), "body_encoding": "json"}
        except orjson.JSONDecodeError:
            pass
    try:
        return {**out, "body": body.decode("utf-8"), "body_encoding": "text"}
    except UnicodeDecodeError:
        return {**out, "body": base64.b64encode(body).decode(), "body_encoding": "base64"}

"""Translate transport and provider failures into core.errors at the boundary (always `raise ... from`)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import aiohttp
import orjson

from agentledger.core.errors import (
    UpstreamBadResponse,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)


@contextmanager
def map_transport_errors(provider: str, *, mid_stream: bool = False) -> Iterator[None]:
    """aiohttp failures → UpstreamTimeout / UpstreamUnavailable / UpstreamBadResponse."""
    try:
        yield
    except TimeoutError as exc:  # aiohttp's ServerTimeoutError and ConnectionTimeoutError are TimeoutErrors
        what = "stalled mid-stream" if mid_stream else f"did not answer in time ({type(exc).__name__})"
        raise UpstreamTimeout(f"Provider {provider!r} {what}.") from exc
    except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, ConnectionError) as exc:
        what = "dropped the stream" if mid_stream else "could not be reached or dropped the connection"
        raise UpstreamUnavailable(f"Provider {provider!r} {what}.") from exc
    except (aiohttp.ClientError, ValueError) as exc:  # ValueError: an SSE line over the read buffer
        raise UpstreamBadResponse(f"Provider {provider!r} failed: {type(exc).__name__}.") from exc


def _provider_message(body: bytes) -> str:
    try:
        data = orjson.loads(body)
        err = data.get("error") if isinstance(data, dict) else None
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return str(err["message"])[:500]
        if isinstance(err, str):
            return err[:500]
        if isinstance(data, dict) and isinstance(data.get("message"), str):  # Azure, some proxies
            return str(data["message"])[:500]
    except orjson.JSONDecodeError:
        pass
    return body[:200].decode("utf-8", "replace")


def retry_after(headers: Mapping[str, str] | None) -> float | None:
    """The wait a provider asked for, in seconds: OpenAI's `retry-after-ms`, else `Retry-After` in seconds
    (an HTTP-date is read as no advice: the backoff decides)."""
    if not headers:
        return None
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) / scale
        except ValueError:
            continue
        if seconds == seconds and 0 <= seconds < 86_400:  # not NaN, not negative, not absurd
            return seconds
    return None


def error_for_status(
    provider: str, status: int, body: bytes, headers: Mapping[str, str] | None = None, *, secret: str | None = None
) -> UpstreamError:
    """`secret`: the provider key the call was sent with. Some providers quote the key they were given ("Incorrect API
    key provided: sk-…"); the message reaches the client and the store, which must see neither."""
    said = _provider_message(body)
    if secret and secret in said:
        said = said.replace(secret, "[provider key redacted]")
    message = f"Provider {provider!r} answered {status}: {said}"
    if status == 429:
        exc: UpstreamError = UpstreamRateLimited(message)
    elif status >= 500:
        exc = UpstreamBadResponse(message)
    else:
        exc = UpstreamRejected(message, status=status)
    exc.provider_status = status
    exc.wait = retry_after(headers)
    if exc.wait is not None:  # passed on to the client when this is the call's last error, as the SDKs read it
        exc.retry_after = max(1, math.ceil(exc.wait))  # type: ignore[misc]
    return exc

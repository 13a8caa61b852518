"""Translate transport and provider failures into core.errors at the boundary (always `raise ... from`)."""

from __future__ import annotations

from collections.abc import Iterator
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
    except orjson.JSONDecodeError:
        pass
    return body[:200].decode("utf-8", "replace")


def error_for_status(provider: str, status: int, body: bytes) -> UpstreamError:
    message = f"Provider {provider!r} answered {status}: {_provider_message(body)}"
    if status == 429:
        return UpstreamRateLimited(message)
    if status >= 500:
        return UpstreamBadResponse(message)
    return UpstreamRejected(message, status=status)

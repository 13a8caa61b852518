"""The HTTP side of POST /v1/x402/fetch: a request to a seller, through the address guard, bounded.

Why the webhooks' guard (webhooks/guard.py) and not a check of our own: the danger is the same (an agent making the
gateway reach its own network: SSRF into a database, the cloud metadata service) and so is the cure: every address
the host resolves to must be public unless `x402_fetch_allow_hosts` names it, and the connection goes to exactly
the addresses checked (`PinnedResolver`), so DNS answering otherwise a moment later (rebinding) reaches nothing. The
paid retry goes to the same checked addresses. Redirects are never followed: a 3xx is the seller's answer, relayed.

Every request has a deadline (`x402_fetch_timeout`, connect to last byte) and its answer a size bound
(`x402_fetch_max_response_bytes`), read no further than one byte past it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp
from multidict import CIMultiDictProxy

from agentledger.core.errors import UpstreamBadResponse, UpstreamTimeout, UpstreamUnavailable
from agentledger.finance.buying import AddressRefused
from agentledger.webhooks import guard
from agentledger.webhooks.guard import AllowList, Lookup, PinnedResolver, Target, system_lookup

SETTING = "x402_fetch_allow_hosts"
USER_AGENT = "agentledger-x402-fetch"


class ResponseTooLarge(UpstreamBadResponse):
    code = "response_too_large"


class NotSent(UpstreamUnavailable):
    """The seller could not be connected to: the request (and any payment in it) never left."""


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes
    too_large: bool = False  # the body passed the bound: not kept (the headers still say what a payment did)

    def check_size(self, max_bytes: int) -> None:
        if self.too_large:
            raise ResponseTooLarge(f"The seller's answer is larger than {max_bytes} bytes.")

    def header(self, name: str) -> str | None:
        return self.headers.get(name)


class Outbound:
    def __init__(self, allow: AllowList, *, timeout: float, max_bytes: int, lookup: Lookup = system_lookup) -> None:
        self.allow = allow
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.lookup = lookup

    async def target(self, url: str) -> Target:
        """The URL's checked addresses, or a 403 `address_refused` saying why."""
        try:
            return await guard.check(url, self.allow, self.lookup, setting=SETTING)
        except guard.AddressRefused as exc:
            raise AddressRefused(f"The URL is refused: {exc}.", param="url") from None

    async def send(self, target: Target, method: str, headers: Mapping[str, str], body: bytes | None) -> Answer:
        """One request to `target`'s checked addresses. NotSent (502) when no connection was made, UpstreamTimeout
        (504) past the deadline, UpstreamUnavailable (502) when the seller hung up. An answer past the size bound
        comes back `too_large`, without its body, for the caller to read its headers first."""
        connector = aiohttp.TCPConnector(resolver=PinnedResolver(target), force_close=True, use_dns_cache=False)
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        out = {"user-agent": USER_AGENT, **headers}
        try:
            async with (
                aiohttp.ClientSession(connector=connector, timeout=timeout, cookie_jar=aiohttp.DummyCookieJar()) as s,
                s.request(method, target.url, data=body, headers=out, allow_redirects=False) as resp,
            ):
                data = await resp.content.read(self.max_bytes + 1)
                if len(data) > self.max_bytes:
                    return Answer(resp.status, resp.headers, b"", too_large=True)
                return Answer(resp.status, resp.headers, data)
        except TimeoutError:
            raise UpstreamTimeout(f"The seller did not answer within {self.timeout:g} s.") from None
        except aiohttp.ClientConnectorError as exc:
            raise NotSent(f"The seller could not be reached: {exc.os_error or exc}.") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise UpstreamUnavailable(f"The seller's answer failed: {type(exc).__name__}.") from None

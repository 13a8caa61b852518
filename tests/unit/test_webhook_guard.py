"""webhooks/guard.py and the worker's retry maths: which addresses a webhook may reach, and when it retries."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from agentledger.webhooks.guard import AddressRefused, AllowList, PinnedResolver, check
from agentledger.webhooks.worker import DeliveryPolicy, backoff_delay, retry_after, retryable

NONE = AllowList()


def lookup_to(*ips: str):  # type: ignore[no-untyped-def]
    async def lookup(host: str, port: int) -> list[str]:
        return list(ips)

    return lookup


def refused(url: str, allow: AllowList = NONE, *ips: str) -> str:
    with pytest.raises(AddressRefused) as info:
        asyncio.run(check(url, allow, lookup_to(*(ips or ("93.184.215.14",)))))
    return str(info.value)


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://10.0.0.1/hook", "private"),
        ("http://169.254.169.254/latest/meta-data", "metadata"),
        ("http://[fd00:ec2::254]/", "metadata"),
        ("http://[::1]:8080/", "loopback"),
        ("http://127.0.0.1/", "loopback"),
        ("http://0.0.0.0/", "unspecified"),
        ("http://224.0.0.1/", "multicast"),
        ("http://[fe80::1]/", "link-local"),
        ("http://[fc00::1]/", "private"),
        ("http://[::ffff:10.0.0.1]/", "private"),
        ("http://100.64.0.1/", "public"),  # shared address space (CGNAT): not global
    ],
)
def test_non_public_addresses_are_refused(url: str, why: str) -> None:
    assert why in refused(url)


@pytest.mark.parametrize("url", ["ftp://example.com/", "file:///etc/passwd", "gopher://example.com", "example.com"])
def test_schemes_other_than_http_are_refused(url: str) -> None:
    assert "scheme" in refused(url)


def test_a_hostname_resolving_to_loopback_is_refused_unless_allowed() -> None:
    assert "'hooks.example' resolves to 127.0.0.1" in refused("https://hooks.example/x", NONE, "127.0.0.1")
    # One bad address among good ones is enough (the connection might pick it).
    assert "10.1.2.3" in refused("https://hooks.example/x", NONE, "93.184.215.14", "10.1.2.3")
    by_name = asyncio.run(check("https://hooks.example/x", AllowList.parse(["hooks.example"]), lookup_to("127.0.0.1")))
    assert by_name.ips == ("127.0.0.1",) and by_name.port == 443
    by_net = asyncio.run(check("http://hooks.example:81/", AllowList.parse([" 127.0.0.0/8 "]), lookup_to("127.0.0.1")))
    assert by_net.port == 81


def test_the_allow_list_takes_addresses_and_networks() -> None:
    allow = AllowList.parse(["127.0.0.1", "10.0.0.0/8", "[::1]", ""])
    for url in ("http://127.0.0.1:9/", "http://10.9.9.9/", "http://[::1]/"):
        assert asyncio.run(check(url, allow, lookup_to())).ips
    assert "private" in refused("http://192.168.1.1/", allow)


def test_public_addresses_pass_and_credentials_do_not() -> None:
    target = asyncio.run(check("https://hooks.example/x", NONE, lookup_to("93.184.215.14", "2606:2800:21f:cb07::1")))
    assert target.ips == ("93.184.215.14", "2606:2800:21f:cb07::1")
    assert "credentials" in refused("https://user:pw@hooks.example/")
    with pytest.raises(AddressRefused, match="does not resolve"):
        asyncio.run(check("https://nothing.example/", NONE, lookup_to()))


def test_the_pinned_resolver_answers_only_the_checked_addresses() -> None:
    target = asyncio.run(check("https://hooks.example/x", NONE, lookup_to("93.184.215.14")))
    resolver = PinnedResolver(target)
    (got,) = asyncio.run(resolver.resolve("hooks.example", 443))
    assert (got["host"], got["port"], got["hostname"]) == ("93.184.215.14", 443, "hooks.example")
    with pytest.raises(OSError):
        asyncio.run(resolver.resolve("elsewhere.example", 443))


def test_retries_back_off_with_jitter_and_honour_retry_after() -> None:
    policy = DeliveryPolicy(backoff=10.0, max_backoff=3600.0)
    assert backoff_delay(1, policy, None, 0.0) == 5.0 and backoff_delay(1, policy, None, 1.0) == 10.0
    assert backoff_delay(3, policy, None, 1.0) == 40.0
    assert backoff_delay(30, policy, None, 1.0) == 3600.0
    assert backoff_delay(1, policy, 120.0, 0.0) == 120.0  # the receiver asked for longer
    assert backoff_delay(1, policy, 99_999.0, 0.0) == 3600.0  # but not past the cap
    assert [retryable(s) for s in (408, 429, 500, 503, 400, 404, 410)] == [True] * 4 + [False] * 3


def test_retry_after_takes_seconds_and_dates() -> None:
    now = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
    assert retry_after("7", now) == 7.0
    assert retry_after("Thu, 26 Nov 2026 12:01:00 GMT", now) == 60.0
    assert retry_after("soon", now) is None and retry_after(None, now) is None

"""The webhook SSRF guard against each trick, at both of its layers: the URL check when a subscription
is saved, and the delivery-time guard that resolves the host itself, checks every address and
connects only to an address it checked. tests/unit/test_webhooks.py covers the common forms (private
ranges, legacy IPv4 spellings, IPv4-mapped and 6to4, mixed answers, rebinding); this adds the rest of
the usual list and the redirect case at the transport level.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import httpcore
import httpx
import pytest

from app.settings import Settings
from app.webhooks import BlockedAddress, InvalidSubscription, blocked_reason, check_url
from consumers.base import Backoff
from consumers.notify import GuardedBackend, Notifier, PinnedTransport

# Addresses that carry or reach a non-public target, each a known bypass of naive checks.
TRICKS = {
    "NAT64 of loopback": "64:ff9b::7f00:1",
    "NAT64 of a private address": "64:ff9b::a00:1",
    "local-use NAT64": "64:ff9b:1::7f00:1",
    "Teredo": "2001:0:4136:e378:8000:63bf:80ff:fffe",
    "IPv4-compatible (deprecated) loopback": "::127.0.0.1",
    "IPv4-translated (SIIT)": "::ffff:0:7f00:1",
    "IPv4-mapped public (still not a plain address)": "::ffff:8.8.8.8",
    "link-local with a zone id": "fe80::1%eth0",
    "discard-only prefix": "100::1",
    "documentation range": "2001:db8::1",
    "AWS metadata over IPv6": "fd00:ec2::254",
    "ECS task metadata": "169.254.170.2",
    "benchmarking range": "198.18.0.1",
    "IETF protocol assignments": "192.0.0.1",
    "this network": "0.1.2.3",
    "broadcast": "255.255.255.255",
}
URL_TRICKS = [
    "http://[::127.0.0.1]/", "http://[64:ff9b::7f00:1]/", "http://[fe80::1%25eth0]/", "http://127.0.0.1./",
    "http://0/", "http://0x0/", "http://127.000.000.001/", "http://017700000001/",
    "http://localhost./hook", "http://a.b.localhost/",
]
MALFORMED = [
    ("http://evil.example\\@127.0.0.1/", "credentials"),  # parsers disagree on the backslash; refused either way
    ("http://127.0.0.1:80@evil.example/", "credentials"),
    ("http://\uff11\uff12\uff17.\uff10.\uff10.\uff11/", "not a valid host name"),  # full-width 127.0.0.1
    ("http://\u24db\u24de\u24d2\u24d0\u24db\u24d7\u24de\u24e2\u24e3/", "not a valid host name"),  # circled
    ("http://localhost%00.evil.example/", "not a valid host name"),
    ("gopher://127.0.0.1:6379/_INFO", "http:// or https://"),
    ("http://[::1/", "not a valid URL"),  # urlsplit raises on it: a 500 before
]


@pytest.mark.parametrize("address", TRICKS.values(), ids=TRICKS.keys())
def test_each_address_trick_is_blocked(address: str) -> None:
    assert blocked_reason(address) is not None


@pytest.mark.parametrize("url", URL_TRICKS)
def test_literal_tricks_are_refused_when_the_subscription_is_saved(url: str) -> None:
    with pytest.raises(InvalidSubscription, match="refused"):
        check_url(url, allow_private=False)


@pytest.mark.parametrize(("url", "reason"), MALFORMED)
def test_confusing_urls_are_refused_when_the_subscription_is_saved(url: str, reason: str) -> None:
    with pytest.raises(InvalidSubscription) as caught:
        check_url(url, allow_private=True)  # refused even where private targets are allowed
    assert reason in caught.value.detail


class Recorder(httpcore.AsyncNetworkBackend):
    """Records connections; answers each with `reply`."""

    def __init__(self, reply: bytes) -> None:
        self.reply = reply
        self.connects: list[tuple[str, int]] = []

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: Iterable[Any] | None = None) -> httpcore.AsyncNetworkStream:
        self.connects.append((host, port))
        return httpcore.AsyncMockStream([self.reply])


def answering(*addresses: str) -> Any:
    async def resolve(host: str, port: int) -> list[str]:
        return list(addresses)

    return resolve


@pytest.mark.parametrize("address", TRICKS.values(), ids=TRICKS.keys())
async def test_a_name_resolving_to_a_trick_address_is_never_connected(address: str) -> None:
    inner = Recorder(b"HTTP/1.1 204 No Content\r\n\r\n")
    backend = GuardedBackend(allow_private=False, resolve=answering("93.184.216.34", address), inner=inner)
    async with httpx.AsyncClient(transport=PinnedTransport(backend, httpx.Limits())) as client:
        with pytest.raises(BlockedAddress):
            await client.post("https://hooks.example.com/in", content=b"{}")
    assert inner.connects == []  # one bad answer refuses the host, even next to a public one


async def test_a_redirect_to_a_private_address_is_not_followed() -> None:
    # The notify client never follows redirects, so an allowed host cannot bounce a delivery inward.
    inner = Recorder(b"HTTP/1.1 307 Temporary Redirect\r\nLocation: http://169.254.169.254/latest\r\n"
                     b"Content-Length: 0\r\n\r\n")
    notifier = Notifier(webhooks=None, settings=Settings(), timeout_s=1.0, backoff=Backoff(),  # type: ignore[arg-type]
                        resolve=answering("93.184.216.34"))
    notifier.client._transport = PinnedTransport(  # the same guarded transport, on the recording backend
        GuardedBackend(allow_private=False, resolve=answering("93.184.216.34"), inner=inner), httpx.Limits())
    try:
        assert notifier.client.follow_redirects is False
        status, _ = await notifier._post("https://hooks.example.com/in", b"{}", {})
    finally:
        await notifier.aclose()
    assert status == 307
    assert inner.connects == [("93.184.216.34", 443)]  # only the checked address, once

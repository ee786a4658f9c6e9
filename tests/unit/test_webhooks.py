"""Webhook signing, URL validation and the SSRF guard (no network: resolvers and sockets are faked)."""

from __future__ import annotations

import base64
import datetime as dt
import email.utils
import json
import ssl
import time
from collections.abc import Iterable
from typing import Any

import httpcore
import httpx
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from app.settings import Settings
from app.web.problems import field_problem
from app.webhooks import (
    BlockedAddress,
    InvalidSubscription,
    Subscription,
    blocked_reason,
    check_types,
    check_url,
    new_secret,
    signature_headers,
)
from consumers.notify import GuardedBackend, PinnedTransport, parse_retry_after, system_resolve

BODY = b'{"specversion":"1.0","id":"evt-1","type":"order.created","source":"shop","data":{"n":1}}'


# -- secrets and signatures ----------------------------------------------------------------------


def test_new_secret_is_whsec_and_32_random_bytes() -> None:
    secret = new_secret()
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"), validate=True)) == 32
    assert new_secret() != secret


def test_signature_verifies_with_the_standardwebhooks_package() -> None:
    secret = new_secret()
    headers = signature_headers([secret], "evt-1", int(time.time()), BODY)
    assert headers["webhook-id"] == "evt-1"
    assert headers["webhook-signature"].startswith("v1,")
    assert Webhook(secret).verify(BODY, headers) == json.loads(BODY)


def test_signature_fails_for_a_changed_body_id_or_secret() -> None:
    secret = new_secret()
    headers = signature_headers([secret], "evt-1", int(time.time()), BODY)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY.replace(b"1}", b"2}"), headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY, {**headers, "webhook-id": "evt-2"})
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(BODY, headers)


def test_after_rotation_both_secrets_verify_during_the_grace_period() -> None:
    now_ms = int(time.time() * 1000)
    old, new = new_secret(), new_secret()
    sub = Subscription(id="wh_1", url="https://example.com/", types=["*"], secret=new, created_ms=0,
                       old_secret=old, old_secret_until_ms=now_ms + 60_000)
    headers = signature_headers(sub.signing_secrets(now_ms), "evt-1", now_ms // 1000, BODY)
    assert len(headers["webhook-signature"].split(" ")) == 2
    Webhook(old).verify(BODY, headers)
    Webhook(new).verify(BODY, headers)
    assert sub.signing_secrets(now_ms + 61_000) == [new]


@pytest.mark.parametrize(("event_type", "expected"), [
    ("order.created", True), ("order.shipped", True), ("user.created", True), ("user.deleted", False),
    ("orders.created", False),
])
def test_subscription_matches_exact_names_and_globs(event_type: str, expected: bool) -> None:
    sub = Subscription(id="wh_1", url="https://example.com/", types=["order.*", "user.created"],
                       secret=new_secret(), created_ms=0)
    assert sub.matches(event_type) is expected


def test_check_types_needs_at_least_one_pattern_without_spaces() -> None:
    assert check_types(["a.*", "a.*", "b"]) == ["a.*", "b"]
    for bad in ([], ["ok", ""], ["has space"]):
        with pytest.raises(InvalidSubscription):
            check_types(bad)


# -- URL validation at create time ---------------------------------------------------------------


@pytest.mark.parametrize("url", [
    "https://hooks.example.com/eventflow", "http://example.com:8080/in?x=1", "https://8.8.8.8/hook",
    "https://[2606:4700:4700::1111]/hook", "https://bücher.example/hook", "https://xn--bcher-kva.example/hook",
    "https://" + "a" * 63 + ".example.com/", "https://3com.example/hook", "https://example.com:65535/",
])
def test_public_http_urls_are_accepted(url: str) -> None:
    assert check_url(url, allow_private=False) == url


@pytest.mark.parametrize(("url", "reason"), [
    ("ftp://example.com/", "http:// or https://"),
    ("file:///etc/passwd", "http:// or https://"),
    ("example.com/hook", "http:// or https://"),
    ("http://", "must name a host"),
    ("http:///path", "must name a host"),
    ("https://user:pw@example.com/", "credentials"),
    ("https://example.com:99999/", "invalid port"),
    ("https://exa mple.com/", "spaces"),
    ("https://example.com/#frag", "fragment"),
    ("https://exa$mple.com/", "not a valid host name"),
    ("https://999999999999/", "neither a host name nor an IP address"),
    ("https://example.com/" + "a" * 2048, "longer than"),
    # Accepted once, though no delivery could ever reach them (httpx refuses them at send time):
    ("https://example.com:0/", "invalid port"),
    ("https://[v1.x]/", "not a valid IPv6 address"),
    ("https://[example.com]/", "not a valid"),  # newer Pythons refuse it in urlsplit already
    ("https://" + "a" * 64 + ".example.com/", "not a valid host name"),
    ("https://xn--a.example.com/", "not a valid host name"),
    ("https://1.2.3.4.5/", "neither a host name nor an IP address"),
    ("https://hooks.example.123/", "neither a host name nor an IP address"),
])
def test_malformed_urls_are_refused_with_a_reason(url: str, reason: str) -> None:
    with pytest.raises(InvalidSubscription) as caught:
        check_url(url, allow_private=True)
    assert reason in caught.value.detail
    assert caught.value.problems[0].pointer == "/url"


@pytest.mark.parametrize("url", [
    "http://127.0.0.1/", "http://127.0.0.1:8080/hook", "http://localhost/", "http://LOCALHOST./",
    "http://api.localhost/", "http://[::1]/", "http://[::ffff:127.0.0.1]/", "http://[::ffff:7f00:1]/",
    "http://169.254.169.254/latest/meta-data/", "http://10.0.0.1/", "http://10.255.255.255/",
    "http://172.16.0.1/", "http://192.168.1.1/", "http://100.64.0.1/", "http://0.0.0.0/", "http://[::]/",
    "http://[fe80::1]/", "http://[fc00::1]/", "http://224.0.0.1/", "http://[2002:7f00:1::]/",
    # Legacy IPv4 forms that the C resolver reads as 127.0.0.1:
    "http://2130706433/", "http://0x7f000001/", "http://0x7f.0.0.1/", "http://0177.0.0.1/", "http://127.1/",
])
def test_literal_private_addresses_are_refused_unless_allowed(url: str) -> None:
    with pytest.raises(InvalidSubscription) as caught:
        check_url(url, allow_private=False)
    assert "refused" in caught.value.detail
    assert "EVENTFLOW_ALLOW_PRIVATE_WEBHOOKS" in caught.value.detail
    assert check_url(url, allow_private=True) == url


@pytest.mark.parametrize(("address", "reason"), [
    ("127.0.0.1", "loopback"), ("::1", "loopback"), ("::ffff:127.0.0.1", "loopback"),
    ("169.254.169.254", "link-local"), ("fe80::1", "link-local"), ("10.1.2.3", "private"),
    ("192.168.0.10", "private"), ("fd12:3456::1", "private"), ("0.0.0.0", "unspecified"), ("::", "unspecified"),
    ("224.0.0.251", "multicast"), ("ff02::1", "multicast"), ("240.0.0.1", "private"),
    ("100.64.0.1", "not a public"), ("::ffff:10.0.0.1", "private"), ("2002:a00:1::", "private"),
])
def test_blocked_reason_names_the_kind_of_address(address: str, reason: str) -> None:
    found = blocked_reason(address)
    assert found is not None
    assert reason in found


@pytest.mark.parametrize("address", ["8.8.8.8", "93.184.216.34", "2606:4700:4700::1111", "2002:808:808::1"])
def test_public_addresses_are_not_blocked(address: str) -> None:
    assert blocked_reason(address) is None


# -- the guard at delivery time: resolve, check every address, connect to the checked one --------


class RecordingStream(httpcore.AsyncMockStream):
    def __init__(self, buffer: list[bytes], log: dict[str, Any]) -> None:
        super().__init__(buffer)
        self.log = log

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self.log.setdefault("sent", b"")
        self.log["sent"] += buffer

    async def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                        timeout: float | None = None) -> httpcore.AsyncNetworkStream:
        self.log["sni"] = server_hostname
        return self


class RecordingBackend(httpcore.AsyncNetworkBackend):
    """Stands in for real sockets: records where it was asked to connect, answers 204."""

    def __init__(self, refuse: Iterable[str] = ()) -> None:
        self.connects: list[tuple[str, int]] = []
        self.refuse = set(refuse)
        self.log: dict[str, Any] = {}

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: Iterable[Any] | None = None) -> httpcore.AsyncNetworkStream:
        self.connects.append((host, port))
        if host in self.refuse:
            raise httpcore.ConnectError("refused")
        return RecordingStream([b"HTTP/1.1 204 No Content\r\n\r\n"], self.log)


def resolver(*answers: list[str]) -> Any:
    """A fake resolver giving each answer in turn (the last one repeats), counting the calls."""
    calls: list[str] = []

    async def resolve(host: str, port: int) -> list[str]:
        calls.append(host)
        return answers[min(len(calls), len(answers)) - 1]

    resolve.calls = calls  # type: ignore[attr-defined]
    return resolve


async def test_a_host_name_resolving_to_a_private_address_is_refused() -> None:
    inner = RecordingBackend()
    backend = GuardedBackend(allow_private=False, resolve=resolver(["10.0.0.7"]), inner=inner)
    with pytest.raises(BlockedAddress, match=r"internal\.example\.com resolves to 10\.0\.0\.7 is a private"):
        await backend.connect_tcp("internal.example.com", 443)
    assert inner.connects == []


async def test_one_private_address_among_public_ones_refuses_the_host() -> None:
    inner = RecordingBackend()
    backend = GuardedBackend(allow_private=False, resolve=resolver(["93.184.216.34", "::1"]), inner=inner)
    with pytest.raises(BlockedAddress, match="loopback"):
        await backend.connect_tcp("mixed.example.com", 443)
    assert inner.connects == []


async def test_a_dns_answer_that_changes_after_the_check_is_never_used() -> None:
    # DNS rebinding: the first answer is public, later ones point at loopback. The guard resolves
    # once and connects to the address it checked, so the second answer is never asked for.
    resolve = resolver(["93.184.216.34"], ["127.0.0.1"])
    inner = RecordingBackend()
    backend = GuardedBackend(allow_private=False, resolve=resolve, inner=inner)
    await backend.connect_tcp("rebind.example.com", 443)
    assert inner.connects == [("93.184.216.34", 443)]
    assert resolve.calls == ["rebind.example.com"]
    with pytest.raises(BlockedAddress):  # a new connection resolves again, and is checked again
        await backend.connect_tcp("rebind.example.com", 443)
    assert inner.connects == [("93.184.216.34", 443)]


async def test_the_next_checked_address_is_tried_when_one_does_not_connect() -> None:
    inner = RecordingBackend(refuse=["2606:4700:4700::1111"])
    backend = GuardedBackend(allow_private=False, resolve=resolver(["2606:4700:4700::1111", "1.1.1.1"]), inner=inner)
    await backend.connect_tcp("dual.example.com", 443)
    assert inner.connects == [("2606:4700:4700::1111", 443), ("1.1.1.1", 443)]


async def test_allow_private_still_connects_only_to_the_resolved_address() -> None:
    inner = RecordingBackend()
    backend = GuardedBackend(allow_private=True, resolve=resolver(["127.0.0.1"], ["10.9.9.9"]), inner=inner)
    await backend.connect_tcp("dev.example.com", 8080)
    assert inner.connects == [("127.0.0.1", 8080)]


@pytest.mark.parametrize("host", ["localhost", "2130706433", "0x7f000001", "127.1", "::ffff:127.0.0.1"])
async def test_the_system_resolver_path_refuses_loopback_tricks(host: str) -> None:
    # Numeric forms and /etc/hosts names resolve without network I/O.
    inner = RecordingBackend()
    backend = GuardedBackend(allow_private=False, resolve=system_resolve, inner=inner)
    with pytest.raises(BlockedAddress):
        await backend.connect_tcp(host, 80)
    assert inner.connects == []


async def test_unix_sockets_are_refused() -> None:
    with pytest.raises(BlockedAddress):
        await GuardedBackend(allow_private=True).connect_unix_socket("/var/run/docker.sock")


async def test_pinned_transport_keeps_host_header_and_tls_server_name() -> None:
    inner = RecordingBackend()
    backend = GuardedBackend(allow_private=False, resolve=resolver(["93.184.216.34"]), inner=inner)
    transport = PinnedTransport(backend, httpx.Limits())
    async with httpx.AsyncClient(transport=transport) as client:
        response = await client.post("https://hooks.example.com/in", content=b"{}")
    assert response.status_code == 204
    assert inner.connects == [("93.184.216.34", 443)]
    assert inner.log["sni"] == "hooks.example.com"
    assert b"\r\nHost: hooks.example.com\r\n" in inner.log["sent"]


async def test_pinned_transport_refuses_before_sending_anything() -> None:
    inner = RecordingBackend()
    backend = GuardedBackend(allow_private=False, resolve=resolver(["169.254.169.254"]), inner=inner)
    async with httpx.AsyncClient(transport=PinnedTransport(backend, httpx.Limits())) as client:
        with pytest.raises(BlockedAddress, match="link-local"):
            await client.post("http://metadata.example.com/latest", content=b"{}")
    assert inner.connects == []


# -- Retry-After and API decoding ----------------------------------------------------------------


def test_retry_after_reads_seconds_and_http_dates() -> None:
    assert parse_retry_after("1") == 1.0
    assert parse_retry_after(" 120 ") == 120.0
    later = email.utils.format_datetime(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=30), usegmt=True)
    assert 28 <= (parse_retry_after(later) or 0) <= 30
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after("²") is None  # was a ValueError out of the handler: the delivery became a plain retry
    assert parse_retry_after("١٢") is None  # delay-seconds are ASCII digits
    assert parse_retry_after(None) is None


@pytest.mark.parametrize(("message", "pointer"), [
    ("Expected `str`, got `int` - at `$.types[0]`", "/types/0"),
    ("Expected `str`, got `int` - at `$.url`", "/url"),
    ("Object missing required field `url`", "/url"),
    ("Object contains unknown field `secret`", "/secret"),
    ("Expected `object`, got `array`", "/"),
])
def test_body_validation_errors_point_at_the_field(message: str, pointer: str) -> None:
    assert field_problem(message).pointer == pointer


def test_settings_default_refuses_private_webhooks() -> None:
    assert Settings().allow_private_webhooks is False

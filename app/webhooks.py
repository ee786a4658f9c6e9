"""Webhook subscriptions: their records, signing secrets, Standard Webhooks signatures, and the URL
and address checks that keep deliveries away from private networks (the SSRF guard).

A subscription's secret is stored as is (signing needs it; a hash would not do), in the same Redis
as the producers. The guard has two layers: at create/update time URLs with a literal private
address or a `localhost` name are refused (a clear 422); at delivery time the notify consumer resolves
the host, checks every address with `blocked_reason`, and connects only to an address it checked.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import hmac
import ipaddress
import re
import secrets
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

import idna
import msgspec
from redis import exceptions as rx
from redis.asyncio import Redis

from app.connections import redis_errors, transaction
from app.errors import Conflict, FieldProblem, InvalidEvent, NotFound
from app.keys import Keys
from app.settings import Settings

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32  # Standard Webhooks asks for 24-64 random bytes
ROTATION_GRACE_S = 24 * 3600  # after a rotation, deliveries carry a signature with the old secret too
CACHE_S = 1.0  # how long the notify consumer reuses the subscription list
MAX_URL = 2048
MAX_PATTERNS = 50
MAX_DESCRIPTION = 500

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class InvalidSubscription(InvalidEvent):
    """422: the subscription's fields are wrong (same problem list as an invalid event)."""

    title = "Invalid webhook subscription"


class BlockedAddress(Exception):
    """A delivery would reach a private, loopback or otherwise non-public address."""


# -- records -------------------------------------------------------------------------------------


class Subscription(msgspec.Struct, kw_only=True):
    """A subscription as stored (secret included; never returned by the API after creation)."""

    id: str
    url: str
    types: list[str]
    secret: str
    description: str = ""
    enabled: bool = True
    created_ms: int
    updated_ms: int | None = None
    old_secret: str | None = None  # the secret before the last rotation, still signed with until...
    old_secret_until_ms: int | None = None

    def matches(self, event_type: str) -> bool:
        return any(fnmatch.fnmatchcase(event_type, pattern) for pattern in self.types)

    def signing_secrets(self, now_ms: int) -> list[str]:
        """The secrets to sign with now: the current one, plus the previous one during its grace."""
        if self.old_secret and self.old_secret_until_ms and now_ms < self.old_secret_until_ms:
            return [self.secret, self.old_secret]
        return [self.secret]


class LastDelivery(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The outcome of the latest delivery attempt to one subscription."""

    at_ms: int
    event_id: str
    attempt: int
    ok: bool
    latency_ms: float
    status: int | None = None  # None when no response came (timeout, refused, blocked)
    error: str | None = None


class SubscriptionView(msgspec.Struct, kw_only=True):
    """A subscription as the API and CLI show it (no secret)."""

    id: str
    url: str
    types: list[str]
    description: str
    enabled: bool
    created_ms: int
    updated_ms: int | None
    last_delivery: LastDelivery | None = None


class IssuedSecret(msgspec.Struct, kw_only=True):
    """A created subscription or a rotated secret: the only time the secret is shown."""

    id: str
    secret: str
    subscription: SubscriptionView


class SubscriptionIn(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    url: str
    types: list[str]
    description: str = ""
    enabled: bool = True


class SubscriptionPatch(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    url: str | msgspec.UnsetType = msgspec.UNSET
    types: list[str] | msgspec.UnsetType = msgspec.UNSET
    description: str | msgspec.UnsetType = msgspec.UNSET
    enabled: bool | msgspec.UnsetType = msgspec.UNSET


# -- secrets and signatures ----------------------------------------------------------------------


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """One Standard Webhooks signature: `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def signature_headers(secrets_: Sequence[str], msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers; several secrets give space-separated signatures."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(sign(s, msg_id, timestamp, body) for s in secrets_),
    }


# -- URL validation and the address policy -------------------------------------------------------

# Forms the C resolver reads as IPv4 although `ipaddress` does not: 2130706433, 0x7f000001, 0177.1, 127.1
_LEGACY_IPV4 = re.compile(r"(0x[0-9a-f]*|[0-9]+)(\.(0x[0-9a-f]*|[0-9]+)){0,3}\.?", re.IGNORECASE)
_LAST_LABEL_NUMERIC = re.compile(r"(^|\.)([0-9]+|0x[0-9a-f]*)\.?$", re.IGNORECASE)
_HOST = re.compile(r"[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*\.?", re.IGNORECASE)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_CHECKS = (
    ("is_unspecified", "an unspecified"), ("is_loopback", "a loopback"), ("is_link_local", "a link-local"),
    ("is_multicast", "a multicast"), ("is_private", "a private"), ("is_reserved", "a reserved"),
)


def blocked_reason(address: str | IPAddress) -> str | None:
    """Why a delivery must not go to this address, or None when it is a public unicast address.

    IPv6 forms that carry an IPv4 address (IPv4-mapped, 6to4, Teredo, NAT64) are judged by that
    IPv4 address too, so `::ffff:127.0.0.1` is loopback."""
    ip = ipaddress.ip_address(address) if isinstance(address, str) else address
    for candidate in (*_embedded_ipv4(ip), ip):  # the embedded IPv4 first: it names the real target
        for attribute, reason in _CHECKS:
            if getattr(candidate, attribute):
                return f"{ip} is {reason} address"
        if not candidate.is_global:
            return f"{ip} is not a public address"
    return None


def _embedded_ipv4(ip: IPAddress) -> list[ipaddress.IPv4Address]:
    if not isinstance(ip, ipaddress.IPv6Address):
        return []
    found = [ip.ipv4_mapped, ip.sixtofour, *(ip.teredo or ())]
    if ip in _NAT64:
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return [a for a in found if a is not None]


def literal_address(host: str) -> IPAddress | None:
    """The address a host names literally, including the legacy IPv4 forms resolvers accept."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if _LEGACY_IPV4.fullmatch(host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host.rstrip(".")))
        except OSError:
            raise ValueError(f"{host!r} is neither a host name nor an IP address") from None
    return None


def check_url(url: str, *, allow_private: bool, pointer: str = "/url") -> str:
    """A webhook URL fit to store: http(s), a host, no credentials; no literal private address
    or localhost unless `allow_private`. Raises InvalidSubscription with a clear reason."""
    problem = _shape_problem(url)
    if problem is None:
        problem = _host_problem(urlsplit(url).hostname or "", allow_private)
    if problem is not None:
        raise InvalidSubscription([FieldProblem(pointer, problem)])
    return url


def _shape_problem(url: str) -> str | None:
    if len(url) > MAX_URL:
        return f"longer than {MAX_URL} characters"
    if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in url):
        return "must not contain spaces or control characters"
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unclosed "[" (urlsplit raises; it was a 500)
        return "is not a valid URL"
    if parts.scheme.lower() not in ("http", "https"):
        return "must be an http:// or https:// URL"
    try:
        port = parts.port  # raises ValueError on a port out of range
    except ValueError:
        return "has an invalid port"
    if port == 0:
        return "has an invalid port"
    if not parts.hostname:
        return "must name a host"
    if "[" in parts.netloc and not _is_ipv6(parts.hostname):
        return f"[{parts.hostname}] is not a valid IPv6 address"
    if parts.username is not None or parts.password is not None:
        return "must not carry credentials (user:password@); the signature authenticates deliveries"
    if parts.fragment:
        return "must not have a #fragment"
    return None


def _host_problem(host: str, allow_private: bool) -> str | None:
    try:
        address = literal_address(host)
    except ValueError as exc:
        return str(exc)
    if address is None and _LAST_LABEL_NUMERIC.search(host):
        # An IPv4 address to URL parsers, and no top-level domain is all digits (RFC 3696).
        return f"{host!r} is neither a host name nor an IP address"
    if address is None and not _valid_host_name(host):
        return f"{host!r} is not a valid host name"
    if allow_private:
        return None
    reason = blocked_reason(address) if address is not None else _local_name(host)
    if reason:
        return f"refused: {reason} (private and loopback targets need EVENTFLOW_ALLOW_PRIVATE_WEBHOOKS=true)"
    return None


def _valid_host_name(host: str) -> bool:
    # IDNA 2008 as httpx applies it at delivery (the `idna` package): Python's own "idna" codec
    # (IDNA 2003) maps full-width digits and circled letters to ASCII, so a full-width 127.0.0.1 or
    # a circled "localhost" passed as names here and were stored, though no delivery could use them.
    try:
        ascii_host = idna.encode(host.lower()).decode() if not host.isascii() else host
    except idna.IDNAError:
        return False
    if len(ascii_host) > 253 or _HOST.fullmatch(ascii_host) is None:
        return False
    labels = ascii_host.rstrip(".").split(".")
    return all(len(label) <= 63 and _punycode_ok(label) for label in labels)


def _punycode_ok(label: str) -> bool:
    """An "xn--" label must decode (a bad one fails at delivery, in httpx's IDNA step)."""
    if not label.lower().startswith("xn--"):
        return True
    try:
        idna.decode(label)
    except (idna.IDNAError, UnicodeError):
        return False
    return True


def _is_ipv6(host: str) -> bool:
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        return False
    return True


def _local_name(host: str) -> str | None:
    name = host.rstrip(".").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return f"{host} is a loopback name"
    return None


def check_types(types: Sequence[str], pointer: str = "/types") -> list[str]:
    if not types:
        raise InvalidSubscription([FieldProblem(pointer, "at least one event type or glob pattern (e.g. order.*)")])
    if len(types) > MAX_PATTERNS:
        raise InvalidSubscription([FieldProblem(pointer, f"at most {MAX_PATTERNS} patterns")])
    for n, pattern in enumerate(types):
        if not pattern or len(pattern) > 200 or any(c.isspace() for c in pattern):
            raise InvalidSubscription([FieldProblem(f"{pointer}/{n}", "1-200 characters without spaces")])
    return list(dict.fromkeys(types))


def check_description(description: str) -> str:
    if len(description) > MAX_DESCRIPTION:
        raise InvalidSubscription([FieldProblem("/description", f"at most {MAX_DESCRIPTION} characters")])
    return description


# -- the service ---------------------------------------------------------------------------------


class Webhooks:
    """Create, list, change, rotate and delete subscriptions; record deliveries."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.redis = redis
        self.settings = settings
        self.keys = Keys(settings.prefix, settings.partitions)
        self._cached: tuple[float, list[Subscription]] | None = None

    async def create(self, data: SubscriptionIn) -> IssuedSecret:
        record = Subscription(
            id="wh_" + secrets.token_hex(8), secret=new_secret(), created_ms=_now_ms(),
            url=check_url(data.url, allow_private=self.settings.allow_private_webhooks),
            types=check_types(data.types), description=check_description(data.description),
            enabled=data.enabled,
        )
        async with redis_errors(self.settings):
            if not await self.redis.hsetnx(self.keys.webhooks, record.id, msgspec.json.encode(record)):
                raise Conflict(f"subscription id {record.id} is taken; try again")  # 64 random bits
        return IssuedSecret(id=record.id, secret=record.secret, subscription=_view(record, None))

    async def list(self) -> list[SubscriptionView]:
        async with redis_errors(self.settings):
            raw = await self.redis.hgetall(self.keys.webhooks)
            last = await self.redis.hgetall(self.keys.webhook_deliveries)
        records = sorted((_decode(v) for v in raw.values()), key=lambda s: (s.created_ms, s.id))
        return [_view(r, last.get(r.id.encode())) for r in records]

    async def get(self, ident: str) -> SubscriptionView:
        async with redis_errors(self.settings):
            raw = await self.redis.hget(self.keys.webhooks, ident)
            last = await self.redis.hget(self.keys.webhook_deliveries, ident)
        if raw is None:
            raise NotFound(f"no webhook subscription {ident!r}")
        return _view(_decode(raw), last)

    async def update(self, ident: str, patch: SubscriptionPatch) -> SubscriptionView:
        changes: dict[str, Any] = {}
        if patch.url is not msgspec.UNSET:
            changes["url"] = check_url(patch.url, allow_private=self.settings.allow_private_webhooks)
        if patch.types is not msgspec.UNSET:
            changes["types"] = check_types(patch.types)
        if patch.description is not msgspec.UNSET:
            changes["description"] = check_description(patch.description)
        if patch.enabled is not msgspec.UNSET:
            changes["enabled"] = patch.enabled
        await self._modify(ident, lambda _record: changes)
        return await self.get(ident)

    async def set_enabled(self, ident: str, enabled: bool) -> SubscriptionView:
        return await self.update(ident, SubscriptionPatch(enabled=enabled))

    async def rotate_secret(self, ident: str) -> IssuedSecret:
        """A new secret; the old one keeps signing deliveries (as a second signature) for a day."""
        secret = new_secret()

        def rotate(record: Subscription) -> dict[str, Any]:
            return {"secret": secret, "old_secret": record.secret,
                    "old_secret_until_ms": _now_ms() + ROTATION_GRACE_S * 1000}

        await self._modify(ident, rotate)
        return IssuedSecret(id=ident, secret=secret, subscription=await self.get(ident))

    async def delete(self, ident: str) -> SubscriptionView:
        view = await self.get(ident)
        async with redis_errors(self.settings):
            pipe = transaction(self.redis)
            pipe.hdel(self.keys.webhooks, ident)
            pipe.hdel(self.keys.webhook_deliveries, ident)
            await pipe.execute()
        return view

    async def _modify(self, ident: str, changes: Callable[[Subscription], dict[str, Any]]) -> None:
        """Read-modify-write one record under WATCH, so concurrent changes are not lost."""
        key = self.keys.webhooks
        async with redis_errors(self.settings), transaction(self.redis) as pipe:
            for _ in range(10):
                try:
                    await pipe.watch(key)
                    raw = await pipe.hget(key, ident)
                    if raw is None:
                        raise NotFound(f"no webhook subscription {ident!r}")
                    record = _decode(raw)
                    updated = msgspec.structs.replace(record, **changes(record), updated_ms=_now_ms())
                    pipe.multi()
                    pipe.hset(key, ident, msgspec.json.encode(updated))
                    await pipe.execute()
                    return
                except rx.WatchError:
                    continue
        raise Conflict(f"webhook subscription {ident!r} is being changed concurrently; try again")

    # -- used by the notify consumer -------------------------------------------------------------
    async def active(self) -> list[Subscription]:
        """Enabled subscriptions, cached in-process for CACHE_S (changes apply within a second)."""
        now = time.monotonic()
        if self._cached is not None and self._cached[0] > now:
            return self._cached[1]
        raw = await self.redis.hgetall(self.keys.webhooks)
        found = [s for s in map(_decode, raw.values()) if s.enabled]
        self._cached = (now + CACHE_S, found)
        return found

    async def already_sent(self, partition: int, delivery: str) -> set[str]:
        members = await self.redis.smembers(self.keys.webhook_sent(partition, delivery))
        return {m.decode() for m in members}

    async def record(
        self, partition: int, delivery: str, outcomes: Sequence[tuple[str, LastDelivery]]
    ) -> None:
        """Store each subscription's last delivery and remember which ones this delivery reached."""
        if not outcomes:
            return
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(self.keys.webhook_deliveries, mapping={i: msgspec.json.encode(o) for i, o in outcomes})
        reached = [i for i, o in outcomes if o.ok]
        if reached:
            sent = self.keys.webhook_sent(partition, delivery)
            pipe.sadd(sent, *reached)
            pipe.expire(sent, self.settings.attempts_ttl_s)
        await pipe.execute()


def _decode(raw: bytes) -> Subscription:
    return msgspec.json.decode(raw, type=Subscription)


def _view(record: Subscription, last: bytes | None) -> SubscriptionView:
    return SubscriptionView(
        id=record.id, url=record.url, types=record.types, description=record.description,
        enabled=record.enabled, created_ms=record.created_ms, updated_ms=record.updated_ms,
        last_delivery=msgspec.json.decode(last, type=LastDelivery) if last else None,
    )


def _now_ms() -> int:
    return time.time_ns() // 1_000_000

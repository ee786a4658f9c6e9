"""The notify consumer: delivers each event to the webhook subscriptions whose patterns match its type.

Deliveries are the CloudEvent in structured mode, signed per Standard Webhooks (`webhook-id` is the
event id, stable across retries). The subscriptions of one event are called concurrently, each within
TIMEOUT_S. Any failure makes the handler raise, so the dispatcher retries the event with its backoff
(or after the receiver's `Retry-After`); subscriptions this delivery already reached are remembered in
Redis and skipped on the retry. Redirects are not followed: a 3xx is a failed delivery.

The SSRF guard sits in the transport: `GuardedBackend` resolves the host itself, refuses the
connection if any address is not public (unless EVENTFLOW_ALLOW_PRIVATE_WEBHOOKS), and connects to
the very address it checked, so a DNS answer that changes between check and connect gains nothing.
TLS and the Host header still use the URL's host name, because httpcore passes it separately.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import httpcore
import httpx
import msgspec
from redis.asyncio import Redis

from app import __version__
from app.events import CE_JSON
from app.metrics import default_metrics
from app.settings import Settings
from app.webhooks import (
    BlockedAddress,
    InvalidSubscription,
    LastDelivery,
    Subscription,
    Webhooks,
    blocked_reason,
    check_url,
    signature_headers,
)
from consumers.base import Backoff, Consumer, Delivery, Permanent, Retry

log = logging.getLogger("eventflow.notify")

TIMEOUT_S = 10.0  # per delivery: resolve, connect, send, and read the response (a module constant by design)
MAX_RETRY_AFTER_S = 3600.0  # a receiver cannot park an event for longer than this
MAX_RESPONSE_BYTES = 64 * 1024  # read at most this much of a response (enough to reuse the connection)
CONTENT_TYPE = f"{CE_JSON}; charset=utf-8"
USER_AGENT = f"EventFlow-Webhooks/{__version__}"

Resolver = Callable[[str, int], Awaitable[list[str]]]
_encode = msgspec.json.Encoder().encode


class DeliveryFailed(Exception):
    """At least one subscription did not take the event (retried with the dispatcher's backoff)."""


async def system_resolve(host: str, port: int) -> list[str]:
    """Every address the system resolver gives for `host`, in its order, without duplicates."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore network backend that connects only to addresses it resolved and checked itself."""

    def __init__(self, *, allow_private: bool, resolve: Resolver = system_resolve,
                 inner: httpcore.AsyncNetworkBackend | None = None) -> None:
        self.allow_private = allow_private
        self.resolve = resolve
        self.inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: Iterable[Any] | None = None) -> httpcore.AsyncNetworkStream:
        addresses = await self.checked_addresses(host, port)
        error: Exception | None = None
        for address in addresses:  # all checked; try them in the resolver's order
            try:
                return await self.inner.connect_tcp(address, port, timeout=timeout, local_address=local_address,
                                                    socket_options=socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        raise error or httpcore.ConnectError(f"{host} has no address")

    async def checked_addresses(self, host: str, port: int) -> list[str]:
        """Resolve once and check every answer: one private address refuses the whole host."""
        try:
            addresses = await self.resolve(host, port)
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        if not addresses:
            raise httpcore.ConnectError(f"{host} has no address")
        if not self.allow_private:
            for address in addresses:
                reason = blocked_reason(address)
                if reason:
                    raise BlockedAddress(f"{host} resolves to {reason}")
        return addresses

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Iterable[Any] | None = None) -> httpcore.AsyncNetworkStream:
        raise BlockedAddress("unix sockets are not webhook targets")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


class PinnedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport with its connection pool built on `GuardedBackend` and no proxy.

    httpx 0.28 has no public hook for the network backend, so the pool is replaced with one made
    from the same arguments httpx would use plus `network_backend` (pyproject pins httpx < 1)."""

    def __init__(self, backend: GuardedBackend, limits: httpx.Limits) -> None:
        super().__init__(trust_env=False, limits=limits)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=backend,
        )


@dataclass(frozen=True, slots=True)
class Outcome:
    subscription: Subscription
    last: LastDelivery
    retry_after_s: float | None = None
    permanent: bool = False  # refused by the guard: retrying cannot help


class Notifier:
    """The handler's state: the subscription cache and one pooled HTTP client."""

    def __init__(self, webhooks: Webhooks, settings: Settings, *, timeout_s: float, backoff: Backoff,
                 resolve: Resolver = system_resolve) -> None:
        self.webhooks = webhooks
        self.settings = settings
        self.timeout_s = timeout_s
        self.backoff = backoff
        backend = GuardedBackend(allow_private=settings.allow_private_webhooks, resolve=resolve)
        # No connection cap: the runner's lanes bound concurrency, and a cap would let one slow
        # receiver hold every connection and time out deliveries to the others.
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
        self.client = httpx.AsyncClient(
            transport=PinnedTransport(backend, limits), timeout=timeout_s, follow_redirects=False,
            trust_env=False, headers={"user-agent": USER_AGENT},
        )

    async def handle(self, delivery: Delivery) -> None:
        subscriptions = [s for s in await self.webhooks.active() if s.matches(delivery.type)]
        ref = delivery.pending.member  # this delivery (a replay is a new one and reaches everyone again)
        if subscriptions and (delivery.attempt > 1 or delivery.pending.deliveries > 1):
            done = await self.webhooks.already_sent(delivery.partition, ref)
            subscriptions = [s for s in subscriptions if s.id not in done]
        if not subscriptions:
            return
        body = _encode(delivery.event)
        outcomes = await asyncio.gather(*(self._send(s, delivery, body) for s in subscriptions))
        await self.webhooks.record(delivery.partition, ref, [(o.subscription.id, o.last) for o in outcomes])
        failed = [o for o in outcomes if not o.last.ok]
        if failed:
            raise self._failure(delivery, failed, len(outcomes))

    async def _send(self, subscription: Subscription, delivery: Delivery, body: bytes) -> Outcome:
        now_ms = time.time_ns() // 1_000_000
        headers = signature_headers(subscription.signing_secrets(now_ms), delivery.id, now_ms // 1000, body)
        headers["content-type"] = CONTENT_TYPE
        started = time.perf_counter()

        def outcome(status: int | None, error: str | None, **extra: Any) -> Outcome:
            elapsed = time.perf_counter() - started
            default_metrics().webhook(status, elapsed, error)  # latency by status class
            last = LastDelivery(at_ms=now_ms, event_id=delivery.id, attempt=delivery.attempt, ok=error is None,
                                latency_ms=round(elapsed * 1000, 1), status=status, error=error)
            return Outcome(subscription, last, **extra)

        try:
            # Stored URLs were checked at creation; check again in case the setting or record changed.
            check_url(subscription.url, allow_private=self.settings.allow_private_webhooks)
            async with asyncio.timeout(self.timeout_s):
                status, retry_after = await self._post(subscription.url, body, headers)
        except (BlockedAddress, InvalidSubscription) as exc:
            return outcome(None, f"refused: {getattr(exc, 'detail', exc)}", permanent=True)
        except TimeoutError:
            return outcome(None, f"timed out after {self.timeout_s:g} s")
        except httpx.HTTPError as exc:
            return outcome(None, f"{type(exc).__name__}: {exc}"[:500])
        except Exception as exc:  # logged (BLE allows it): one surprise must not lose the others' outcomes
            log.exception("unexpected webhook delivery error", extra={"subscription": subscription.id})
            return outcome(None, f"{type(exc).__name__}: {exc}"[:500])
        if 200 <= status < 300:
            return outcome(status, None)
        note = " (redirects are not followed)" if 300 <= status < 400 else ""
        return outcome(status, f"HTTP {status}{note}", retry_after_s=retry_after)

    async def _post(self, url: str, body: bytes, headers: dict[str, str]) -> tuple[int, float | None]:
        async with self.client.stream("POST", url, content=body, headers=headers) as response:
            read = 0
            async for chunk in response.aiter_raw():  # drain a small body so the connection is reused
                read += len(chunk)
                if read > MAX_RESPONSE_BYTES:
                    break
            return response.status_code, parse_retry_after(response.headers.get("retry-after"))

    def _failure(self, delivery: Delivery, failed: list[Outcome], attempted: int) -> Exception:
        """The exception that tells the runner what to do: dead-letter, retry after, or back off."""
        summary = "; ".join(f"{o.subscription.id}: {o.last.error}" for o in failed)
        message = f"{len(failed)} of {attempted} webhook deliveries failed: {summary}"
        if all(o.permanent for o in failed):
            return Permanent(message)
        asked = [o.retry_after_s for o in failed if o.retry_after_s is not None]
        if not asked:
            return DeliveryFailed(message)
        delay_s = max(asked)
        if any(o.retry_after_s is None and not o.permanent for o in failed):
            delay_s = max(delay_s, self.backoff.delay_s(delivery.attempt))  # the others still need their backoff
        return Retry(delay_s=min(delay_s, MAX_RETRY_AFTER_S), reason=message)

    async def aclose(self) -> None:
        await self.client.aclose()


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a `Retry-After` header (delay-seconds or an HTTP date); None if absent or bad."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # str.isdigit() alone also takes "²", which float() refuses
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, (when - dt.datetime.now(dt.UTC)).total_seconds())


def make(settings: Settings, redis: Redis, *, timeout_s: float = TIMEOUT_S, backoff: Backoff | None = None,
         resolve: Resolver = system_resolve, **options: Any) -> Consumer:
    """The notify consumer with its knobs exposed (tests use a short timeout and a fast backoff)."""
    backoff = backoff or Backoff()
    notifier = Notifier(Webhooks(redis, settings), settings, timeout_s=timeout_s, backoff=backoff, resolve=resolve)
    return Consumer(
        name="notify", handler=notifier.handle, types=("*",), backoff=backoff, close=notifier.aclose,
        description="webhook deliveries, signed per Standard Webhooks", **options,
    )


def build(settings: Settings, redis: Redis) -> Consumer:
    """The built-in notify consumer (`eventflow consume notify`)."""
    return make(settings, redis)

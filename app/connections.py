"""Connecting to Redis, checking what the server can promise, and mapping its failures."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from hiredis import pack_command
from redis import exceptions as rx
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from app.errors import ConfigError, Unavailable
from app.settings import Durability, Settings

log = logging.getLogger("eventflow.redis")

# Failures that mean "Redis cannot take this write now": the caller gets 503 + Retry-After.
UNAVAILABLE_ERRORS = (rx.ConnectionError, rx.TimeoutError, rx.BusyLoadingError, rx.ReadOnlyError)


def connect(settings: Settings, **overrides: Any) -> Redis:
    """A client for `REDIS_URL` with bounded timeouts, so a stalled server turns into a 503."""
    if not settings.redis_url:
        raise ConfigError("REDIS_URL is not set (the dev command starts an embedded server instead)")
    options: dict[str, Any] = {
        "socket_timeout": settings.redis_timeout_s,
        "socket_connect_timeout": settings.redis_timeout_s,
        # A connection idle for over a second is PINGed before use, so one that died while Redis
        # restarted is replaced before a command (an append above all) is sent on it.
        "health_check_interval": 1,
        "client_name": "eventflow",
        # A burst wider than the pool waits for a connection (up to the timeout) instead of failing.
        "max_connections": settings.redis_max_connections,
        "timeout": settings.redis_timeout_s,
        # The health check's PING may find a dead connection: reconnect once. (Commands sent through
        # execute_packed are never resent, so a lost reply can never append an event twice.)
        "retry": Retry(NoBackoff(), 1),
        "retry_on_error": [rx.ConnectionError],
    }
    options.update(overrides)
    return Redis.from_pool(BlockingConnectionPool.from_url(settings.redis_url, **options))  # owns and closes it


async def execute_packed(redis: Redis, commands: list[tuple[Any, ...]]) -> list[Any]:
    """Send commands as one pipeline, packed by hiredis (redis-py's asyncio packer is pure Python and
    was 60% of a batch append's client time); errors come back as values, like a pipeline's."""
    pool = redis.connection_pool
    conn = await pool.get_connection()
    try:
        await conn.send_packed_command(b"".join(map(pack_command, commands)))
        results: list[Any] = []
        for _ in commands:
            try:
                results.append(await conn.read_response())
            except rx.ResponseError as exc:
                results.append(exc)
        return results
    except BaseException:
        await conn.disconnect()  # a half-read reply must never be read by the next user
        raise
    finally:
        await pool.release(conn)


def unavailable(exc: BaseException, settings: Settings) -> Unavailable:
    """Translate a Redis failure into the 503 the producer sees."""
    if is_full(exc):
        detail = "the event store is full (Redis maxmemory reached); nothing was stored"
    elif isinstance(exc, rx.BusyLoadingError):
        detail = "the event store is loading its data after a restart"
    elif isinstance(exc, rx.ReadOnlyError):
        detail = "the event store is read-only (a replica or a failover in progress)"
    else:
        detail = "the event store (Redis) is unreachable"
    return Unavailable(detail, retry_after_s=settings.retry_after_s)


def is_unavailable(exc: BaseException) -> bool:
    return isinstance(exc, UNAVAILABLE_ERRORS) or is_full(exc)


def is_full(exc: BaseException) -> bool:
    """Redis refused a write at `maxmemory`. redis-py raises OutOfMemoryError with the `OOM` code cut
    off the message (from a script too); other paths may still carry it as a plain ResponseError."""
    return isinstance(exc, rx.OutOfMemoryError) or (isinstance(exc, rx.ResponseError) and str(exc).startswith("OOM"))


@contextlib.asynccontextmanager
async def redis_errors(settings: Settings) -> AsyncIterator[None]:
    """Turn Redis outages inside the block into `Unavailable`."""
    try:
        yield
    except Exception as exc:
        if is_unavailable(exc):
            raise unavailable(exc, settings) from exc
        raise


async def check_server(redis: Redis, settings: Settings) -> None:
    """Fail at start-up when the server cannot honour EVENTFLOW_DURABILITY."""
    if settings.durability is Durability.FAST:
        return
    if settings.durability is Durability.FSYNC:
        config = await _config(redis, "appendonly", "appendfsync")
        if config.get("appendonly") != "yes" or config.get("appendfsync") != "always":
            raise ConfigError(
                "EVENTFLOW_DURABILITY=fsync needs a server with `appendonly yes` and "
                f"`appendfsync always` (this one has appendonly={config.get('appendonly')}, "
                f"appendfsync={config.get('appendfsync')}). WAITAOF alone is not trusted: some "
                "servers answer it before the fsync under everysec (redis/redis#13793)."
            )
        return
    info = await redis.info("replication")
    if int(info.get("connected_slaves", 0)) < 1:
        raise ConfigError(
            "EVENTFLOW_DURABILITY=replica needs a primary with at least one connected replica "
            f"(this server reports {info.get('connected_slaves', 0)})"
        )


async def _config(redis: Redis, *names: str) -> dict[str, str]:
    try:
        out: dict[str, str] = {}
        for name in names:
            got = await redis.config_get(name)
            out.update({_s(k): _s(v) for k, v in got.items()})
        return out
    except rx.ResponseError as exc:
        raise ConfigError(
            f"EVENTFLOW_DURABILITY={{fsync}} cannot be verified: CONFIG GET is refused ({exc})"
        ) from None


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value

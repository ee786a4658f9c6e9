"""Connecting to Redis, checking what the server can promise, and mapping its failures."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import weakref
from collections.abc import AsyncIterator
from typing import Any

from hiredis import pack_command
from redis import exceptions as rx
from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.client import EMPTY_RESPONSE, NEVER_DECODE
from redis.commands import AsyncCoreCommands

from app.errors import ConfigError, Unavailable
from app.settings import Durability, Settings

try:  # redis-py's own parts that execute_packed reads replies with (5.2 to 8.x keep them here)
    from redis._parsers import _AsyncHiredisParser
    from redis._parsers.hiredis import NOT_ENOUGH_DATA
except ImportError:  # another layout: execute_packed uses redis-py's send and reads instead
    _AsyncHiredisParser = NOT_ENOUGH_DATA = None  # type: ignore[assignment,misc]

log = logging.getLogger("eventflow.redis")

# Failures that mean "Redis cannot take this write now": the caller gets 503 + Retry-After.
# (On a cluster: a slot whose primary is down or unknown, or the cluster reconfiguring.)
UNAVAILABLE_ERRORS = (rx.ConnectionError, rx.TimeoutError, rx.BusyLoadingError, rx.ReadOnlyError,
                      rx.ClusterError, rx.SlotNotCoveredError, rx.TryAgainError)

# Where the first key of a command sent through execute_packed sits (1 unless listed).
_KEY_AT = {"EVALSHA": 3, "EVAL": 3}


class _Cluster(RedisCluster):
    """redis-py's cluster client, but a timeout is not retried: a stalled node is waited for once,
    then the caller answers 503 (only a dropped connection, or a cluster reconfiguring, is retried)."""

    ERRORS_ALLOW_RETRY = (rx.ConnectionError, rx.ClusterDownError, rx.SlotNotCoveredError)


def connect(settings: Settings, **overrides: Any) -> Redis:
    """A client for `REDIS_URL` with bounded timeouts, so a stalled server turns into a 503.

    With a cluster URL (`redis+cluster://`, or EVENTFLOW_REDIS_CLUSTER) it is redis-py's
    `RedisCluster`, which speaks the same commands; every key EventFlow uses together shares a slot."""
    if not settings.redis_url:
        raise ConfigError("REDIS_URL is not set: point it at your Redis or Valkey (`python3 run.py dev` "
                          "prints the one of its embedded server)")
    options: dict[str, Any] = {
        "socket_timeout": settings.redis_timeout_s,
        "socket_connect_timeout": settings.redis_timeout_s,
        # A connection idle for over a second is PINGed before use, so one that died while Redis
        # restarted is replaced before a command (an append above all) is sent on it.
        "health_check_interval": 1,
        "client_name": "eventflow",
        "max_connections": settings.redis_max_connections,
        # A dropped connection is retried once; a timeout is not (a stalled server would be waited
        # for twice before the 503). Commands sent through execute_packed are never resent, so a
        # lost reply can never append an event twice.
        "retry": Retry(NoBackoff(), 1, supported_errors=(rx.ConnectionError,)),
    }
    if settings.cluster:
        options.update(overrides)
        return _connect_cluster(settings.redis_cluster_url() or "", options)  # type: ignore[return-value]
    # A burst wider than the pool waits for a connection (up to the timeout) instead of failing.
    options.update(timeout=settings.redis_timeout_s, retry_on_error=[rx.ConnectionError], **overrides)
    return Redis.from_pool(BlockingConnectionPool.from_url(settings.redis_url, **options))  # owns and closes it


def _connect_cluster(url: str, options: dict[str, Any]) -> RedisCluster:
    """`redis+cluster://[user:password@]host:port[,host:port...][/0]`: every listed node is a seed."""
    scheme, _, rest = url.partition("+cluster://")
    credentials, at, hosts = rest.rpartition("@")
    hosts, sep, tail = hosts.partition("/")
    seeds = [seed.rpartition(":") for seed in hosts.split(",")]
    first = f"{scheme}://{credentials}{at}{seeds[0][0]}:{seeds[0][2] or 6379}{sep}{tail}"
    others = [ClusterNode(host, int(port or 6379)) for host, _, port in seeds[1:]]
    # Slots of a primary that is down are simply unavailable; the others keep working.
    return _Cluster.from_url(first, startup_nodes=others, require_full_coverage=False, **options)


def _is_cluster(redis: Any) -> bool:
    """isinstance(redis, RedisCluster), answered per class: RedisCluster's metaclass is typing's
    Protocol one, whose check costs ~1.2 µs, and every append and worker read asks."""
    return _cluster_class(type(redis))


@functools.cache
def _cluster_class(kind: type) -> bool:
    return issubclass(kind, RedisCluster)


async def execute_packed(redis: Redis, commands: list[tuple[Any, ...]]) -> list[Any]:
    """Send commands as one pipeline, packed by hiredis (redis-py's asyncio packer is pure Python and
    was 60% of a batch append's client time); errors come back as values, like a pipeline's.

    On a cluster the commands are split by the node that holds each one's key (all of a command's
    keys must share a slot), one pipeline per node, sent concurrently; a node that fails turns its
    commands' results into that error, the other nodes' results are unaffected."""
    if _is_cluster(redis):
        return (await _packed_on_nodes(redis, commands, None))[0]
    return await _packed_on(redis.connection_pool, commands)


async def execute_waited(
    redis: Redis, commands: list[tuple[Any, ...]], wait: tuple[Any, ...]
) -> tuple[list[Any], list[Any]]:
    """`execute_packed`, then `wait` (WAIT or WAITAOF) on the same connection of every node the
    commands went to, so it waits for exactly those writes. Returns the results, and for each
    command the reply of the wait on its node."""
    if _is_cluster(redis):
        return await _packed_on_nodes(redis, commands, wait)
    results = await _packed_on(redis.connection_pool, [*commands, wait])
    return results[:-1], [results[-1]] * len(commands)


# Connections execute_packed keeps for itself, per pool: a round trip on one costs a third of
# what a checkout from redis-py's pool and a client-level command cost (the pool's lock, timeout
# and checks were most of a low-load append's client time). One is taken from the pool only when
# none is free, and at most this many are kept (the rest go back).
_KEEP = 4
_kept: weakref.WeakKeyDictionary[Any, list[Any]] = weakref.WeakKeyDictionary()


async def _packed_on(pool: Any, commands: list[tuple[Any, ...]]) -> list[Any]:
    """One pipeline on one connection of a pool (a Redis pool or a cluster node)."""
    cluster_node = isinstance(pool, ClusterNode)
    if cluster_node:
        conn = pool.acquire_connection()
    else:
        kept = _kept.get(pool)
        if kept is None:
            kept = _kept[pool] = []
        conn = kept.pop() if kept else await pool.get_connection()
    try:
        data = b"".join(map(pack_command, commands))
        if _plain(conn):
            return await _exchange(conn, data, len(commands))
        await conn.send_packed_command(data)
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
        if cluster_node:
            pool.release(conn)
        elif len(kept) < _KEEP:
            kept.append(conn)  # every reply was read (or it is disconnected and reconnects on use)
        else:
            await pool.release(conn)


def _plain(conn: Any) -> bool:
    """A redis-py connection that reads with hiredis and does its I/O as redis-py does (a test double
    such as fakeredis's overrides the reads)."""
    return _plain_classes(type(conn), type(conn._parser))


@functools.cache
def _plain_classes(cls: type, parser: type) -> bool:
    return (_AsyncHiredisParser is not None and issubclass(parser, _AsyncHiredisParser)
            and callable(getattr(parser, "read_from_socket", None))
            and cls.read_response is AbstractConnection.read_response
            and cls.send_packed_command is AbstractConnection.send_packed_command)


async def _exchange(conn: Any, data: bytes, replies: int) -> list[Any]:
    """Write `data`, then read `replies` replies: what `send_packed_command` and one `read_response`
    per reply do, in one timeout. redis-py's write runs in a task of its own (`asyncio.wait_for`), and
    each read sets up a timeout: at one event per append that was 70 of a flush's ~250 µs of CPU.

    Reads with the connection's own hiredis reader (redis-py 5.2 to 8 keep it in the same place), so
    error replies come back as redis-py's exception classes, as values, in RESP2 and RESP3 alike."""
    loop = asyncio.get_running_loop()
    # The default health check: a connection idle for over health_check_interval is PINGed first,
    # so one that died with a restarted server is replaced before an append goes out.
    if not conn.is_connected:
        await conn.connect()
    elif conn.health_check_interval and loop.time() > conn.next_health_check:
        await conn.check_health()
    parser = conn._parser
    reader = parser._reader
    push = getattr(parser, "_hiredis_PushNotificationType", None)  # RESP3 (redis-py 6+)
    results: list[Any] = []
    try:
        async with asyncio.timeout(conn.socket_timeout):
            conn._writer.writelines((data,))
            await conn._writer.drain()
            while len(results) < replies:
                reply = reader.gets()
                if reply is NOT_ENOUGH_DATA:
                    await parser.read_from_socket()
                elif isinstance(reply, rx.ConnectionError):
                    raise reply
                elif push is not None and isinstance(reply, push):
                    await parser.handle_push_response(reply)  # not a reply: handled as redis-py does
                else:
                    results.append(reply)
    except TimeoutError:
        raise rx.TimeoutError(f"Timeout reading from {conn._host_error()}") from None
    except OSError as exc:
        raise rx.ConnectionError(f"Error {exc.errno} while talking to {conn._host_error()}: {exc}") from exc
    if conn.health_check_interval:
        conn.next_health_check = loop.time() + conn.health_check_interval
    return results


async def _packed_on_nodes(
    redis: RedisCluster, commands: list[tuple[Any, ...]], wait: tuple[Any, ...] | None
) -> tuple[list[Any], list[Any]]:
    results: list[Any] = [None] * len(commands)
    waits: list[Any] = [None] * len(commands)
    todo = list(range(len(commands)))
    for _attempt in range(3):
        await redis.initialize()  # a no-op unless the client saw the cluster change
        by_node: dict[ClusterNode, list[int]] = {}
        for i in todo:
            try:
                by_node.setdefault(redis.get_node_from_key(_key_of(commands[i])), []).append(i)
            except rx.SlotNotCoveredError as exc:
                results[i] = waits[i] = exc
        nodes = list(by_node)
        replies = await asyncio.gather(
            *(_packed_on(node, [commands[i] for i in by_node[node]] + ([wait] if wait else [])) for node in nodes),
            return_exceptions=True,
        )
        moved: list[int] = []
        for node, reply in zip(nodes, replies, strict=True):
            indexes = by_node[node]
            if isinstance(reply, BaseException):
                if not isinstance(reply, Exception):
                    raise reply
                for i in indexes:
                    results[i] = waits[i] = reply
                continue
            for i, result in zip(indexes, reply, strict=False):
                results[i], waits[i] = result, reply[-1] if wait else None
                if isinstance(result, rx.AskError):  # MOVED or ASK: it did not run; send it again
                    moved.append(i)
        if not moved:
            break
        await redis.aclose()  # re-read the slot table on the next initialize()
        todo = moved
    return results, waits


async def cancel_and_wait(*tasks: asyncio.Task[Any] | None) -> None:
    """Cancel the tasks and wait until each has ended, cancelling again any still running a second
    later (time enough for the cleanup a cancellation starts).

    redis-py can lose a cancellation: on Python 3.11 a task cancelled just as its reply arrived got
    the reply back from `xread` (tests/integration/test_live.py's teardown hung in about 1 run of 4
    on `task.cancel(); await task` for the live reader), and a task that loops then runs on. What
    the tasks raised is left unreported, as `gather(..., return_exceptions=True)` leaves it."""
    given = [task for task in tasks if task is not None]
    pending = set(given)
    while pending:
        for task in pending:
            task.cancel()
        _done, pending = await asyncio.wait(pending, timeout=1.0)
    await asyncio.gather(*given, return_exceptions=True)


def pairs(flat: list[Any]) -> dict[Any, Any]:
    """A stream entry's flat field list (a raw reply) as a dict (an odd count is a ValueError)."""
    fields = iter(flat)  # one iterator twice: names and values in turn, without two slices (-40%)
    return dict(zip(fields, fields, strict=True))


def _key_of(command: tuple[Any, ...]) -> Any:
    name = command[0].upper() if isinstance(command[0], str) else command[0].decode().upper()
    if name in ("XREAD", "XREADGROUP"):
        return command[[str(arg).upper() for arg in command].index("STREAMS") + 1]
    return command[_KEY_AT.get(name, 1)]


def transaction(redis: Redis) -> Any:
    """A MULTI/EXEC pipeline: `pipe = transaction(redis); pipe.hset(...); await pipe.execute()`.

    It also takes redis-py's optimistic-locking form, for keys of one slot: `await pipe.watch(key)`,
    reads awaited at once (`await pipe.hget(...)`), `pipe.multi()`, queued writes, `await
    pipe.execute()` (WatchError when a watched key changed); `async with` releases it.

    On one server, redis-py's own. On a cluster, a `ClusterTransaction`: redis-py 8's cluster
    transaction runs every queued or watched command in a thread with an event loop of its own (and
    initializes the client in that loop), which blocks the caller's loop and breaks a fresh client."""
    return ClusterTransaction(redis) if isinstance(redis, RedisCluster) else redis.pipeline(transaction=True)


class ClusterTransaction(AsyncCoreCommands):  # type: ignore[misc]
    """Queued commands sent as MULTI ... EXEC to the node of their slot, on one connection, replies
    parsed as redis-py parses them. Commands whose keys span slots cannot share a MULTI on a cluster:
    they are sent as a plain cluster pipeline instead (only metadata does that; see README).

    After `watch(...)` the transaction holds a connection to the watched keys' node: until `multi()`,
    commands run at once on it (so they see what WATCH guards), and EXEC goes on the same connection;
    every command must then be in the watched slot."""

    def __init__(self, redis: RedisCluster) -> None:
        self.redis = redis
        self.commands: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
        self._slot: int | None = None  # the watched slot
        self._node: ClusterNode | None = None
        self._conn: Any = None  # the watched connection
        self._queueing = True

    def execute_command(self, *args: Any, **options: Any) -> Any:
        if self._conn is not None and not self._queueing:
            return self._immediate(args, options)
        self.commands.append((args, options))
        return self

    async def __aenter__(self) -> ClusterTransaction:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.reset()

    async def watch(self, *names: Any) -> None:
        """WATCH keys of one slot on a connection of their node; later commands run at once until `multi()`."""
        redis = self.redis
        await redis.initialize()
        slot = await redis._determine_slot("WATCH", *names)
        if self._slot is not None and slot != self._slot:
            raise rx.CrossSlotTransactionError("cannot watch keys of two slots in one transaction")
        if self._conn is None:
            self._slot, self._node = slot, redis.nodes_manager.get_node_from_slot(slot)
            self._conn = self._node.acquire_connection()
        self._queueing = False
        await self._immediate(("WATCH", *names), {})

    def multi(self) -> None:
        """Start queueing: the commands from here on run in the MULTI/EXEC."""
        self._queueing = True

    async def _immediate(self, args: tuple[Any, ...], options: dict[str, Any]) -> Any:
        if args[0] != "WATCH" and await self.redis._determine_slot(*args) != self._slot:
            raise rx.CrossSlotTransactionError("a watched transaction stays in the watched slot")
        try:
            await self._conn.send_packed_command(pack_command(args))
            reply = await self._conn.read_response()
        except rx.ResponseError:
            raise
        except BaseException:
            await self._drop()
            raise
        return self._parse(args, options, reply)

    async def reset(self) -> None:
        """Forget queued commands and give the watched connection back (UNWATCHed)."""
        self.commands.clear()
        self._queueing = True
        if self._conn is None:
            return
        try:
            await self._conn.send_packed_command(pack_command(("UNWATCH",)))
            await self._conn.read_response()
        except BaseException:
            await self._drop()
            raise
        self._release()

    async def _drop(self) -> None:
        """A connection in an unknown state (half-read reply, WATCH pending) is never reused."""
        conn = self._conn
        self._release()
        if conn is not None:
            await conn.disconnect()

    def _release(self) -> None:
        if self._conn is not None and self._node is not None:
            self._node.release(self._conn)
        self._conn = self._node = self._slot = None

    async def execute(self) -> list[Any]:
        commands, self.commands = self.commands, []
        self._queueing = True
        if self._conn is not None:
            return await self._execute_watched(commands)
        if not commands:
            return []
        redis = self.redis
        await redis.initialize()
        try:
            slots = {await redis._determine_slot(*args) for args, _ in commands}
        except rx.RedisClusterException:
            slots = set()
        if len(slots) != 1:
            pipe = redis.pipeline(transaction=False)
            for args, options in commands:
                pipe.execute_command(*args, **options)
            return await pipe.execute()  # type: ignore[no-any-return]
        node = redis.nodes_manager.get_node_from_slot(slots.pop())
        packed = [("MULTI",), *(args for args, _ in commands), ("EXEC",)]
        return self._results(commands, await _packed_on(node, packed))

    async def _execute_watched(self, commands: list[tuple[tuple[Any, ...], dict[str, Any]]]) -> list[Any]:
        """MULTI ... EXEC on the watched connection; EXEC also ends the WATCH, so it is released."""
        try:
            for args, _ in commands:
                if await self.redis._determine_slot(*args) != self._slot:
                    raise rx.CrossSlotTransactionError("a watched transaction stays in the watched slot")
            packed = [("MULTI",), *(args for args, _ in commands), ("EXEC",)]
            await self._conn.send_packed_command(b"".join(map(pack_command, packed)))
            replies: list[Any] = []
            for _ in packed:
                try:
                    replies.append(await self._conn.read_response())
                except rx.ResponseError as exc:
                    replies.append(exc)
        except BaseException:
            await self._drop()
            raise
        self._release()
        return self._results(commands, replies)

    def _results(self, commands: list[tuple[tuple[Any, ...], dict[str, Any]]], replies: list[Any]) -> list[Any]:
        for reply in replies[:-1]:
            if isinstance(reply, Exception):
                raise reply
        if isinstance(replies[-1], Exception):
            raise replies[-1]
        if replies[-1] is None:
            raise rx.WatchError("the transaction was aborted")
        return [self._parse(args, options, reply) for (args, options), reply in zip(commands, replies[-1], strict=True)]

    def _parse(self, args: tuple[Any, ...], options: dict[str, Any], reply: Any) -> Any:
        if isinstance(reply, Exception):
            raise reply
        options = {k: v for k, v in options.items() if k not in ("keys", NEVER_DECODE, EMPTY_RESPONSE)}
        callback = self.redis.response_callbacks.get(args[0]) or self.redis.response_callbacks.get(str(args[0]).upper())
        return callback(reply, **options) if callback else reply


def unavailable(exc: BaseException, settings: Settings) -> Unavailable:
    """Translate a Redis failure into the 503 the producer sees."""
    if is_full(exc):
        detail = "the event store is full (Redis maxmemory reached); nothing was stored"
    elif isinstance(exc, rx.BusyLoadingError):
        detail = "the event store is loading its data after a restart"
    elif isinstance(exc, rx.ReadOnlyError):
        detail = "the event store is read-only (a replica or a failover in progress)"
    elif is_exhausted(exc):
        detail = ("the log cannot take more entries: an entry written straight into it has the largest "
                  "possible id (an XADD with an explicit id, not *), and Redis refuses every later append")
    else:
        detail = "the event store (Redis) is unreachable"
    return Unavailable(detail, retry_after_s=settings.retry_after_s)


def is_unavailable(exc: BaseException) -> bool:
    return isinstance(exc, UNAVAILABLE_ERRORS) or is_full(exc) or is_exhausted(exc)


def is_exhausted(exc: BaseException) -> bool:
    """A stream's newest entry has the largest possible id (18446744073709551615-18446744073709551615,
    XADDed by hand): Redis refuses every `XADD *` after it."""
    return isinstance(exc, rx.ResponseError) and "exhausted the last possible ID" in str(exc)


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
    """Fail at start-up when the server (on a cluster: every primary) cannot honour EVENTFLOW_DURABILITY;
    warn when it may evict keys."""
    for node in _primaries(redis):
        await _warn_if_evicting(redis, node)
    if settings.durability is Durability.FAST:
        return
    for node in _primaries(redis):
        if settings.durability is Durability.FSYNC:
            config = await _config(redis, node, "appendonly", "appendfsync")
            if config.get("appendonly") != "yes" or config.get("appendfsync") != "always":
                raise ConfigError(
                    "EVENTFLOW_DURABILITY=fsync needs a server with `appendonly yes` and "
                    f"`appendfsync always` ({_where(node)}has appendonly={config.get('appendonly')}, "
                    f"appendfsync={config.get('appendfsync')}). WAITAOF alone is not trusted: some "
                    "servers answer it before the fsync under everysec (redis/redis#13793)."
                )
            continue
        info = await _on(redis, node, "INFO", "replication")
        if int(info.get("connected_slaves", 0)) < 1:
            raise ConfigError(
                "EVENTFLOW_DURABILITY=replica needs a primary with at least one connected replica "
                f"({_where(node)}reports {info.get('connected_slaves', 0)})"
            )


async def _warn_if_evicting(redis: Redis, node: ClusterNode | None) -> None:
    """A server that evicts keys at `maxmemory` can drop the log itself (allkeys-*), or the keys that
    make repeats idempotent and the delivery records (volatile-*). A warning, not a refusal: some
    managed servers refuse CONFIG, and their operators may know the memory never runs out."""
    try:
        got = await _on(redis, node, "CONFIG GET", "maxmemory-policy")
        policy = {_s(k): _s(v) for k, v in got.items()}.get("maxmemory-policy", "")
    except rx.ResponseError:
        return  # CONFIG is refused (some managed servers): nothing to read
    if policy and policy != "noeviction":
        log.warning(
            "%shas maxmemory-policy %s: at maxmemory it deletes keys to make room, and an evicted "
            "stream key loses the events in it. Set `maxmemory-policy noeviction` (EventFlow then "
            "answers 503 while the server is full, and nothing is lost).", _where(node), policy)


def _primaries(redis: Redis) -> list[ClusterNode | None]:
    """Where to check the server's configuration: every primary of a cluster, or the one server."""
    return list(redis.get_primaries()) if isinstance(redis, RedisCluster) else [None]


async def _on(redis: Redis, node: ClusterNode | None, *command: Any) -> Any:
    if node is None:
        return await redis.execute_command(*command)
    return await redis.execute_command(*command, target_nodes=node)  # type: ignore[call-arg]


def _where(node: ClusterNode | None) -> str:
    return "this server " if node is None else f"the cluster primary {node.name} "


async def _config(redis: Redis, node: ClusterNode | None, *names: str) -> dict[str, str]:
    try:
        out: dict[str, str] = {}
        for name in names:
            got = await _on(redis, node, "CONFIG GET", name)
            out.update({_s(k): _s(v) for k, v in got.items()})
        return out
    except rx.ResponseError as exc:
        raise ConfigError(
            f"EVENTFLOW_DURABILITY={{fsync}} cannot be verified: CONFIG GET is refused ({exc})"
        ) from None


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value

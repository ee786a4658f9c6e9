"""Consumer groups as a whole: which exist, whether a live worker runs them, and retiring one.

A group that no worker runs any more (its consumer removed from the code, renamed, an experiment)
still holds retention back, since a pass never trims what a group has not processed, and it stays
in the dashboard, the metrics and the alerts. `Groups.delete` retires it: on every partition the
group is destroyed on the log (its pending list goes with it) and its replay stream, retry schedule,
seats and attempt records are deleted; its published settings and its worker membership go too.
Dead letters of the group are kept unless asked for.

Attempt records and seats are keyed by entry id and seat number, so they can only be found by SCAN;
the scan matches keys of this deployment's partitions only, on every primary of a cluster.
"""

from __future__ import annotations

import difflib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
from redis.asyncio import Redis, RedisCluster
from redis.exceptions import ResponseError

from app.deadletters import DeadLetters, Filter
from app.errors import Conflict, NotFound
from app.ids import is_entry_id
from app.keys import Keys
from app.lifecycle import Lifecycle, groups_of
from app.metrics import RedisGauges
from app.settings import Settings

_SCAN_COUNT = 1000
_DELETE_CHUNK = 500

Progress = Callable[[str], None]


class GroupSummary(msgspec.Struct, kw_only=True):
    """One consumer group: its backlog, who runs it, and its dead letters."""

    name: str
    pending: int  # delivered and not yet acknowledged, over every partition's log
    lag: int | None  # entries not yet delivered (None: Redis cannot tell after deletions)
    partitions: int  # partitions whose log has the group
    consumers: list[str]  # consumer names the group knows (live or not)
    live_workers: list[str]  # worker processes with a live heartbeat that run the group
    running: bool
    dead_letters: int
    spec: dict[str, Any] | None = None  # its published settings (None: no worker published any)


class Removed(msgspec.Struct, kw_only=True):
    """What `Groups.delete` removed."""

    group: str
    log_groups: int  # partitions whose log had the group (destroyed there)
    pending_dropped: int  # entries its pending lists held, dropped with them
    replay_streams: int
    retry_schedules: int
    seats: int
    attempt_records: int
    spec: bool  # its published settings were removed
    members: bool  # its worker-membership record was removed
    dead_letters_discarded: int
    dead_letters_kept: int
    live_workers: list[str]  # live workers running it anyway (with force): they make it again


class GroupRunning(Conflict):
    """Live workers run the group: deleting it now would not retire it (they make it again)."""

    def __init__(self, group: str, workers: list[str]) -> None:
        self.group, self.workers = group, workers
        super().__init__(f"consumer group {group!r} is run by live worker(s) {', '.join(workers)}: stop them "
                         "first (a running worker makes the group again, from where it had read)")


class Groups:
    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.redis = redis
        self.settings = settings
        self.keys = Keys(settings.prefix, settings.partitions)
        self.lifecycle = Lifecycle(redis, settings)
        self.dead_letters = DeadLetters(redis, settings)

    async def live_workers(self) -> dict[str, list[str]]:
        """Group -> the live worker processes running it (their heartbeats list their consumers)."""
        now = time.time_ns() // 1_000_000
        since = now - RedisGauges.HEARTBEAT_S * 1000  # live by the metrics' own rule
        alive = [_s(w) for w in await self.redis.zrangebyscore(self.keys.workers, since, "+inf")]
        if not alive:
            return {}
        heartbeats = [self.keys.heartbeat(w) for w in alive]
        # Heartbeat keys have no hash tag: on a cluster they sit in many slots, read slot by slot.
        bodies = await (self.redis.mget_nonatomic(heartbeats) if isinstance(self.redis, RedisCluster)
                        else self.redis.mget(heartbeats))
        out: dict[str, list[str]] = {}
        for worker, body in zip(alive, bodies, strict=True):
            if not body:  # given back at a graceful stop, or lapsed
                continue
            try:
                consumers = msgspec.json.decode(body).get("consumers", [])
            except (msgspec.DecodeError, AttributeError):
                continue
            for group in consumers if isinstance(consumers, list) else []:
                out.setdefault(str(group), []).append(worker)
        return {g: sorted(set(ws)) for g, ws in out.items()}

    async def list(self) -> list[GroupSummary]:
        """Every consumer group on the log, and every group whose settings a worker published (a group
        that exists nowhere on the log shows with 0 partitions)."""
        infos = {g.name: g for g in await self.lifecycle.groups()}
        specs = await self.lifecycle.specs()
        live = await self.live_workers()
        dead = await self.dead_letters.count()
        out = []
        for name in sorted(set(infos) | set(specs)):
            info = infos.get(name)
            workers = live.get(name, [])
            out.append(GroupSummary(
                name=name, pending=info.pending if info else 0, lag=info.lag if info else None,
                partitions=len(info.last_delivered) if info else 0,
                consumers=sorted({c["name"] for c in info.consumers}) if info else [],
                live_workers=workers, running=bool(workers), dead_letters=dead.get(name, 0),
                spec=specs.get(name)))
        return out

    async def _did_you_mean(self, name: str) -> str:
        """A typo'd name's nearest group, to say with the refusal ('' when none is near)."""
        names = {g.name for g in await self.lifecycle.groups()} | set(await self.lifecycle.specs())
        close = difflib.get_close_matches(name, sorted(names), n=1)
        return f" (did you mean {close[0]!r}?)" if close else ""

    async def exists(self, name: str) -> bool:
        """Whether anything of the group is left: on a log or replay stream, or its published settings."""
        if await self.redis.hexists(self.keys.consumers, name):
            return True
        for p in range(self.keys.partitions):
            for stream in (self.keys.stream(p), self.keys.replay(p, name)):
                if any(_s(g["name"]) == name for g in await groups_of(self.redis, stream)):
                    return True
        return False

    async def check(self, name: str, *, force: bool = False) -> list[str]:
        """The live workers running the group; NotFound when there is no such group, Conflict when
        live workers run it (unless `force`)."""
        if not await self.exists(name):
            raise NotFound(f"no consumer group {name!r}{await self._did_you_mean(name)}")
        workers = (await self.live_workers()).get(name, [])
        if workers and not force:
            raise GroupRunning(name, workers)
        return workers

    async def delete(self, name: str, *, force: bool = False, dead_letters: bool = False,
                     progress: Progress | None = None) -> Removed:
        """Retire a group everywhere (see the module's doc). Refused (Conflict) while a live worker runs
        it, unless `force`: that worker would make the group again, from where it had read."""
        say = progress or (lambda _message: None)
        workers = await self.check(name, force=force)
        out = Removed(group=name, log_groups=0, pending_dropped=0, replay_streams=0, retry_schedules=0, seats=0,
                      attempt_records=0, spec=False, members=False, dead_letters_discarded=0,
                      dead_letters_kept=0, live_workers=workers)
        partitions = self.keys.partitions
        for p in range(partitions):
            await self._delete_in_partition(name, p, out)
            say(f"partition {p + 1}/{partitions}: group destroyed, replay stream and retry schedule deleted")
        found: dict[int, list[str]] = {}
        async for partition, kind, key in self._scan_tagged(name, say):
            found.setdefault(partition, []).append(key)
            if kind == "att":
                out.attempt_records += 1
            else:
                out.seats += 1
        for keys in found.values():  # one partition's keys share a slot: one DEL per chunk
            for i in range(0, len(keys), _DELETE_CHUNK):
                await self.redis.delete(*keys[i : i + _DELETE_CHUNK])
        out.members = bool(await self.redis.delete(self.keys.group_members(name)))
        out.spec = bool(await self.redis.hdel(self.keys.consumers, name))
        ids = await self.dead_letters.matching_ids(Filter(group=name))
        if dead_letters:
            out.dead_letters_discarded = await self.dead_letters.discard(ids) if ids else 0
        else:
            out.dead_letters_kept = len(ids)
        return out

    async def _delete_in_partition(self, name: str, partition: int, out: Removed) -> None:
        stream = self.keys.stream(partition)
        for g in await groups_of(self.redis, stream):
            if _s(g["name"]) == name:
                out.pending_dropped += int(g["pending"])
        try:
            out.log_groups += int(await self.redis.xgroup_destroy(stream, name))
        except ResponseError as exc:
            if "requires the key to exist" not in str(exc) and "no such key" not in str(exc):
                raise
        out.replay_streams += int(await self.redis.delete(self.keys.replay(partition, name)))
        out.retry_schedules += int(await self.redis.delete(self.keys.retry_schedule(partition, name)))

    async def _scan_tagged(self, name: str, say: Progress) -> AsyncIterator[tuple[int, str, str]]:
        """(partition, "att" | "seat", key) of every attempt record and seat of the group."""
        bases = {self.keys.base(p): p for p in range(self.keys.partitions)}
        tag = _glob(self.keys.prefix) if self.keys.partitions == 1 else _glob(self.keys.prefix) + ":*"
        match = "{" + tag + "}:*:" + _glob(name) + ":*"
        att, seat = f"att:{name}:", f"seat:{name}:"
        scans = 0
        nodes: list[Any] = list(self.redis.get_primaries()) if isinstance(self.redis, RedisCluster) else [None]
        for n, node in enumerate(nodes):
            cursor = 0
            while True:
                if node is None:
                    cursor, keys = await self.redis.scan(cursor, match=match, count=_SCAN_COUNT)
                else:
                    cursors, keys = await self.redis.scan(cursor, match=match, count=_SCAN_COUNT,
                                                          target_nodes=node)  # type: ignore[call-arg]
                    cursor = cursors[node.name]
                for raw in keys:
                    key = _s(raw)
                    end = key.find("}:") + 2
                    partition = bases.get(key[:end]) if end > 1 else None
                    if partition is None:
                        continue  # another deployment's prefix that the pattern also matched
                    rest = key[end:]
                    if rest.startswith(att) and is_entry_id(rest[len(att):]):
                        yield partition, "att", key
                    elif rest.startswith(seat) and rest[len(seat):].isascii() and rest[len(seat):].isdigit():
                        yield partition, "seat", key
                scans += 1
                if scans % 10 == 0:
                    where = f" (node {n + 1}/{len(nodes)})" if len(nodes) > 1 else ""
                    say(f"looking for attempt records and seats{where}: about {scans * _SCAN_COUNT} keys read")
                if int(cursor) == 0:
                    break


def _glob(text: str) -> str:
    """`text` matched literally in a Redis glob pattern."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value

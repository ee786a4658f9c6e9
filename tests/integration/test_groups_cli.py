"""`eventflow groups list` and `eventflow groups delete`: retiring a consumer group no worker runs any
more, with every key it had, so that retention stops waiting for it."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from app.dispatch import Dispatch
from app.events import parse_batch
from app.keys import Keys
from app.service import Services
from app.settings import Settings
from consumers.base import Consumer, Delivery, Permanent, Retry
from tests.integration.helpers import consuming, wait_for

KEY = "groups"  # every event posted here shares this partition key: one partition, `home(settings)`


def home(settings: Settings) -> int:
    return Keys(settings.prefix, settings.partitions).partition_of(KEY)


async def ingest(services: Services, n: int) -> list[str]:
    body = json.dumps([{"type": "order.created", "data": {"n": i}, "partitionkey": KEY} for i in range(n)]).encode()
    return [a.entry_id for a in await services.ingest(parse_batch(body, "application/json"), "billing", {})]


async def cli(settings: Settings, *args: str) -> tuple[int, str, str]:
    """`eventflow ARGS` (standard input not a terminal): exit code, stdout, stderr."""
    env = {**os.environ, "REDIS_URL": settings.redis_url or "", "EVENTFLOW_PREFIX": settings.prefix,
           "EVENTFLOW_PARTITIONS": str(settings.partitions)}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "app.cli", *args, env=env,
                                                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def cli_json(settings: Settings, *args: str) -> Any:
    code, out, err = await cli(settings, *args)
    assert code == 0, err
    return json.loads(out)


async def all_keys(redis: Redis, settings: Settings) -> set[str]:
    """Every key of this test's prefix (`prefix:...` and `{prefix...}:...`), on every primary."""
    found: set[str] = set()
    for match in (f"{settings.prefix}:*", f"{{{settings.prefix}*"):
        found |= {k.decode() async for k in redis.scan_iter(match=match, count=1000)}
    return found


def of_group(keys: set[str], group: str) -> set[str]:
    return {k for k in keys if f":{group}:" in k or k.endswith(f":{group}")}


async def groups_on_logs(redis: Redis, settings: Settings) -> set[str]:
    keys = Keys(settings.prefix, settings.partitions)
    names: set[str] = set()
    for p in range(keys.partitions):
        if await redis.exists(keys.stream(p)):
            names |= {g["name"].decode() for g in await redis.xinfo_groups(keys.stream(p))}
    return names


async def leave_behind(redis: Redis, settings: Settings, services: Services, *groups: str) -> None:
    """Run each group once in a worker that then stops, leaving what a retired consumer leaves: an
    event waiting for its retry (pending, scheduled, attempt record), a dead letter, a replay queued,
    a stale seat (a worker killed, not stopped), and events it never read (lag)."""

    async def handler(delivery: Delivery) -> None:
        if delivery.data["n"] == 0:
            raise Retry(delay_s=600)
        if delivery.data["n"] == 1:
            raise Permanent("no good")

    dispatch, keys = Dispatch(redis, settings), Keys(settings.prefix, settings.partitions)
    await ingest(services, 4)
    async with consuming(redis, settings, *(Consumer(g, handler) for g in groups), name="w-old"):
        async def settled() -> bool:
            for g in groups:
                if not await redis.zcard(keys.retry_schedule(home(settings), g)):
                    return False
                if len(await services.dead_letters.matching_ids(_filter(g))) != 1:
                    return False
                if (await redis.xpending(keys.stream(home(settings)), g))["pending"] != 1:
                    return False  # the successes are acknowledged: only the scheduled retry is pending
            return True

        await wait_for(settled, 20)
    for g in groups:
        await redis.set(keys.seat(home(settings), g, 0), "a-killed-worker", px=60_000)
        await services.dead_letters.replay_history(g, 0, None)  # queued again for this group only
        assert await dispatch.redis.xlen(keys.replay(home(settings), g)) == 4
    await ingest(services, 3)  # never read: lag


def _filter(group: str) -> Any:
    from app.deadletters import Filter

    return Filter(group=group)


async def test_list_shows_every_group_with_pending_lag_and_who_runs_it(
    redis: Redis, settings: Settings, services: Services
) -> None:
    await leave_behind(redis, settings, services, "retired")
    await Dispatch(redis, settings).ensure_groups("idle")  # made at deploy time, never run
    seen = {g["name"]: g for g in await cli_json(settings, "groups", "list")}
    assert set(seen) == {"retired", "idle"}
    retired, idle = seen["retired"], seen["idle"]
    assert (retired["pending"], retired["lag"], retired["running"], retired["live_workers"]) == (1, 3, False, [])
    assert (retired["dead_letters"], retired["consumers"], retired["partitions"]) == (1, ["w-old"], settings.partitions)
    assert retired["spec"]["types"] == ["*"]
    assert (idle["pending"], idle["lag"], idle["consumers"], idle["spec"]) == (0, 7, [], None)

    async def handler(delivery: Delivery) -> None:
        pass

    async with consuming(redis, settings, Consumer("idle", handler), name="w-live"):
        async def running() -> bool:
            listed = {g["name"]: g for g in await cli_json(settings, "groups", "list")}
            return listed["idle"]["live_workers"] == ["w-live"] and listed["idle"]["running"]

        await wait_for(running, 20)
        assert not {g["name"]: g for g in await cli_json(settings, "groups", "list")}["retired"]["running"]


@pytest.mark.parametrize("discard", [False, True], ids=["dead-letters-kept", "dead-letters-discarded"])
async def test_delete_removes_every_key_of_the_group_and_leaves_the_others_untouched(
    redis: Redis, settings: Settings, services: Services, discard: bool
) -> None:
    await leave_behind(redis, settings, services, "retired", "kept")
    keys = Keys(settings.prefix, settings.partitions)
    before = await all_keys(redis, settings)
    gone = of_group(before, "retired")
    assert {keys.retry_schedule(home(settings), "retired"), keys.replay(home(settings), "retired"),
            keys.seat(home(settings), "retired", 0)} <= gone
    assert any(":att:retired:" in k for k in gone)
    kept_before = {k: await redis.type(k) for k in of_group(before, "kept")}
    assert any(":att:kept:" in k for k in kept_before)

    removed = await cli_json(settings, "groups", "delete", "retired", "--yes",
                             *(["--dead-letters"] if discard else []))

    after = await all_keys(redis, settings)
    assert of_group(after, "retired") == set()
    assert after == before - gone
    assert "retired" not in await groups_on_logs(redis, settings)
    assert "kept" in await groups_on_logs(redis, settings)
    assert not await redis.hexists(keys.consumers, "retired") and await redis.hexists(keys.consumers, "kept")
    assert {k: await redis.type(k) for k in of_group(after, "kept")} == kept_before
    dead = {g: len(await services.dead_letters.matching_ids(_filter(g))) for g in ("retired", "kept")}
    assert dead == {"retired": 0 if discard else 1, "kept": 1}
    assert removed["group"] == "retired"
    assert (removed["log_groups"], removed["pending_dropped"]) == (settings.partitions, 1)
    assert (removed["replay_streams"], removed["retry_schedules"], removed["seats"]) == (settings.partitions, 1, 1)
    assert removed["attempt_records"] == sum(":att:retired:" in k for k in gone) >= 2
    assert (removed["spec"], removed["members"], removed["live_workers"]) == (True, False, [])
    assert (removed["dead_letters_discarded"], removed["dead_letters_kept"]) == ((1, 0) if discard else (0, 1))
    kept = {g["name"]: g for g in await cli_json(settings, "groups", "list")}
    assert list(kept) == ["kept"] and (kept["kept"]["pending"], kept["kept"]["lag"]) == (1, 3)

    code, out, err = await cli(settings, "groups", "delete", "retired", "--yes")  # nothing left of it now
    assert (code, out, err) == (1, "", "eventflow: no consumer group 'retired'\n")


async def test_delete_is_refused_while_a_live_worker_runs_the_group_unless_forced(
    redis: Redis, settings: Settings, services: Services
) -> None:
    async def handler(delivery: Delivery) -> None:
        pass

    keys = Keys(settings.prefix, settings.partitions)
    async with consuming(redis, settings, Consumer("busy", handler), name="w-live"):
        async def beating() -> bool:
            return bool(await redis.exists(keys.heartbeat("w-live"))) and bool(
                await redis.zscore(keys.workers, "w-live"))

        await wait_for(beating, 20)
        code, out, err = await cli(settings, "groups", "delete", "busy", "--yes")
        assert (code, out) == (1, "")
        assert err.count("\n") == 1 and err.startswith("eventflow: ") and "w-live" in err and "--force" in err
        assert "busy" in await groups_on_logs(redis, settings)

        removed = await cli_json(settings, "groups", "delete", "busy", "--yes", "--force")
        assert removed["live_workers"] == ["w-live"] and removed["log_groups"] == settings.partitions


async def test_after_delete_retention_trims_what_the_group_held_back(
    redis: Redis, settings: Settings, tmp_path: Path
) -> None:
    settings = settings.replace(archive_path=str(tmp_path / "archive"), retention_max_entries=5)
    services = Services(redis, settings)
    await Dispatch(redis, settings).ensure_groups("stale")  # its consumer was removed from the code
    await ingest(services, 20)
    report = await services.retention.run_pass()
    assert (report.trimmed, report.partitions[home(settings)].held_by) == (0, "stale")
    [held] = (await services.retention.status()).held_back
    assert held.group == "stale"

    await cli_json(settings, "groups", "delete", "stale", "--yes")

    report = await services.retention.run_pass()
    assert (report.archived, report.trimmed, report.partitions[home(settings)].held_by) == (15, 15, None)
    assert await redis.xlen(services.log.keys.stream(home(settings))) == 5
    assert (await services.retention.status()).held_back == []


async def test_an_unknown_group_is_a_one_line_error(settings: Settings) -> None:
    code, out, err = await cli(settings, "groups", "delete", "nope", "--yes")
    assert (code, out, err) == (1, "", "eventflow: no consumer group 'nope'\n")


async def test_the_kept_dead_letters_of_a_deleted_group_are_not_replayed_into_nothing(
    redis: Redis, settings: Settings, services: Services
) -> None:
    # Walking `groups delete`: its dead letters are kept, and `dlq replay` of one answered
    # "replayed": 1 while moving it to a replay stream nothing reads; it was gone from every list.
    await leave_behind(redis, settings, services, "retired", "kept")
    await cli_json(settings, "groups", "delete", "retired", "--yes")
    [letter] = await services.dead_letters.matching_ids(_filter("retired"))
    [other] = await services.dead_letters.matching_ids(_filter("kept"))
    for args in (("dlq", "replay", "--all", "--group", "retired"), ("dlq", "replay", letter, other)):
        code, out, err = await cli(settings, *args)
        assert (code, out) == (1, ""), err
        assert err.count("\n") == 1 and err.startswith("eventflow: no consumer group 'retired' on the log"), err
        assert "Nothing was replayed" in err
    assert await services.dead_letters.matching_ids(_filter("retired")) == [letter]  # kept, not lost
    assert await services.dead_letters.matching_ids(_filter("kept")) == [other]
    keys = Keys(settings.prefix, settings.partitions)
    assert not await redis.exists(keys.replay(home(settings), "retired"))
    assert await cli_json(settings, "dlq", "replay", other) == {"selected": 1, "replayed": 1}  # a live group's


async def test_a_typo_in_a_group_name_is_refused_with_the_nearest_group(redis: Redis, settings: Settings) -> None:
    # Walking the feature: `groups delete wlak` said only that there is no such group.
    await Dispatch(redis, settings).ensure_groups("shipping")
    code, out, err = await cli(settings, "groups", "delete", "shiping", "--yes")
    assert (code, out, err) == (1, "", "eventflow: no consumer group 'shiping' (did you mean 'shipping'?)\n")
    assert "shipping" in await groups_on_logs(redis, settings)


async def test_delete_asks_for_confirmation_without_yes(redis: Redis, settings: Settings) -> None:
    await Dispatch(redis, settings).ensure_groups("asked")
    code, out, err = await cli(settings, "groups", "delete", "asked")  # standard input is no terminal
    assert (code, out) == (1, "") and err.count("\n") == 1 and "--yes" in err
    assert "asked" in await groups_on_logs(redis, settings)


async def test_a_group_known_only_by_its_published_settings_is_listed_and_deleted(
    redis: Redis, settings: Settings
) -> None:
    from app.groups import Groups

    keys = Keys(settings.prefix, settings.partitions)
    await redis.hset(keys.consumers, "renamed", json.dumps({"types": ["*"]}))  # its streams were deleted by hand
    [listed] = await cli_json(settings, "groups", "list")
    assert (listed["name"], listed["partitions"], listed["pending"], listed["lag"]) == ("renamed", 0, 0, None)
    said: list[str] = []
    removed = await Groups(redis, settings).delete("renamed", progress=said.append)
    assert (removed.spec, removed.log_groups) == (True, 0)
    assert said[0] == f"partition 1/{settings.partitions}: group destroyed, replay stream and retry schedule deleted"
    assert await cli_json(settings, "groups", "list") == []


async def test_another_deployment_under_a_longer_prefix_keeps_its_keys(redis: Redis, settings: Settings) -> None:
    other = settings.replace(prefix=settings.prefix + ":other")  # its tags also start with this prefix
    planted: list[str] = []
    for s in (settings, other):
        await Dispatch(redis, s).ensure_groups("g")
        keys = Keys(s.prefix, s.partitions)
        for p in range(s.partitions):
            planted += [keys.attempts(p, "g", "1-0"), keys.seat(p, "g", 0)]
            await redis.rpush(planted[-2], "{}")
            await redis.set(planted[-1], "w")
    await cli_json(settings, "groups", "delete", "g", "--yes")
    mine = Keys(settings.prefix, settings.partitions)
    left = [k for k in planted if await redis.exists(k)]
    assert left == [k for k in planted if not any(k.startswith(mine.base(p)) for p in range(settings.partitions))]
    assert len(left) == 2 * settings.partitions
    assert "g" in await groups_on_logs(redis, other)

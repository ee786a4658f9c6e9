"""The dispatcher against the real server: retries with backoff, dead letters, replay, lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec
import pytest
from redis.asyncio import Redis

from app.deadletters import Filter
from app.dispatch import LOG, Attempt, Dispatch, Pending
from app.events import parse_request
from app.keys import Keys
from app.service import Services
from app.settings import Settings
from consumers.base import Backoff, Consumer, Delivery, Permanent, Retry
from consumers.runner import Runner
from tests.integration.helpers import consuming, home_partition, home_stream, wait_for

Handler = Callable[[Delivery], Awaitable[Any]]


async def post(services: Services, body: bytes, source: str = "billing") -> str:
    events, _ = parse_request(body, "application/json", {})
    return (await services.ingest(events, source, {}))[0].entry_id


@pytest.fixture
async def run_consumers(redis: Redis, settings: Settings) -> AsyncIterator[Callable[..., Runner]]:
    runners: list[tuple[Runner, asyncio.Task[None]]] = []

    def start(*consumers: Consumer, name: str = "w1") -> Runner:
        runner = Runner(list(consumers), redis, settings, name)
        runners.append((runner, asyncio.create_task(runner.run())))
        return runner

    yield start
    for runner, task in runners:
        runner.stop.set()
        await asyncio.wait_for(task, 10)



async def test_poison_event_is_dead_lettered_after_max_attempts_on_the_backoff_schedule(
    services: Services, run_consumers: Callable[..., Runner]
) -> None:
    starts: list[float] = []

    async def always_fails(delivery: Delivery) -> None:
        starts.append(time.monotonic())
        raise ValueError("boom")

    backoff = Backoff(base_s=0.2, factor=2.0, cap_s=5.0, jitter=0.0)
    run_consumers(Consumer("poison", always_fails, max_attempts=4, backoff=backoff))
    entry_id = await post(services, b'{"type":"order.created","data":1}')

    async def dead() -> bool:
        return bool(await services.dead_letters.list(Filter(group="poison")))

    await wait_for(dead)
    assert len(starts) == 4
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    for gap, expected in zip(gaps, [0.2, 0.4, 0.8], strict=True):
        assert expected - 0.01 <= gap <= expected + 0.12, gaps
    [letter] = await services.dead_letters.list(Filter(group="poison"))
    assert letter.reason == "max-attempts"
    assert letter.attempts == 4
    assert letter.error == "ValueError: boom"
    assert letter.entry_id == entry_id
    assert letter.event["data"] == 1 or bytes(letter.event["data"]) == b"1"


async def test_permanent_error_dead_letters_at_once_and_retry_honours_its_delay(
    services: Services, run_consumers: Callable[..., Runner]
) -> None:
    seen: dict[str, list[float]] = {}

    async def handler(delivery: Delivery) -> None:
        seen.setdefault(delivery.data, []).append(time.monotonic())
        if delivery.data == "perm":
            raise Permanent("cannot ever work")
        if delivery.data == "later" and delivery.attempt == 1:
            raise Retry(delay_s=0.5)

    run_consumers(Consumer("outcomes", handler, backoff=Backoff(base_s=0.05, jitter=0)))
    await post(services, b'{"type":"t","data":"perm"}')
    await post(services, b'{"type":"t","data":"later"}')

    async def done() -> bool:
        return len(seen.get("later", [])) == 2 and bool(await services.dead_letters.list(Filter()))

    await wait_for(done)
    assert len(seen["perm"]) == 1
    later = seen["later"]
    assert 0.49 <= later[1] - later[0] <= 0.65
    [letter] = await services.dead_letters.list(Filter())
    assert (letter.reason, letter.attempts) == ("permanent", 1)


async def test_types_filter_skips_other_events_without_calling_the_handler(
    services: Services, run_consumers: Callable[..., Runner], redis: Redis, settings: Settings
) -> None:
    got: list[str] = []

    async def handler(delivery: Delivery) -> None:
        got.append(delivery.type)

    run_consumers(Consumer("orders", handler, types=("order.*", "refund.issued")))
    for t in ("order.created", "user.signup", "refund.issued", "refund.denied", "order.paid"):
        await post(services, f'{{"type":"{t}"}}'.encode())

    async def drained() -> bool:
        info = await redis.xinfo_groups(home_stream(settings))
        return bool(info) and info[0]["pending"] == 0 and info[0]["lag"] == 0

    await wait_for(drained)
    assert got == ["order.created", "refund.issued", "order.paid"]


async def test_replay_from_dead_letters_goes_to_the_failed_group_only(
    services: Services, run_consumers: Callable[..., Runner]
) -> None:
    calls: dict[str, int] = {"flaky": 0, "steady": 0}
    broken = {"flaky": True}

    async def flaky(delivery: Delivery) -> None:
        calls["flaky"] += 1
        if broken["flaky"]:
            raise Permanent("downstream is down")

    async def steady(delivery: Delivery) -> None:
        calls["steady"] += 1

    run_consumers(Consumer("flaky", flaky), Consumer("steady", steady))
    entry_id = await post(services, b'{"type":"t","id":"e-1"}')

    async def settled() -> bool:  # the handlers ran and their outcomes are recorded (acks follow closely)
        detail = await services.get_event("e-1", None)
        return calls["steady"] == 1 and all(d.state not in ("pending", "in-progress") for d in detail.deliveries)

    await wait_for(settled)
    detail = await services.get_event("e-1", None)
    states = {d.group: d.state for d in detail.deliveries}
    assert states == {"flaky": "dead-lettered", "steady": "succeeded"}

    broken["flaky"] = False
    [letter] = await services.dead_letters.list(Filter(group="flaky"))
    assert await services.dead_letters.replay([letter.id]) == 1

    async def replayed() -> bool:  # handled again, and its success recorded (it follows the handler)
        detail = await services.get_event("e-1", None)
        return calls["flaky"] == 2 and {d.group: d.state for d in detail.deliveries}["flaky"] == "succeeded"

    await wait_for(replayed)
    await asyncio.sleep(0.3)  # give a wrong delivery to "steady" time to happen
    assert calls == {"flaky": 2, "steady": 1}
    assert await services.dead_letters.list(Filter()) == []
    detail = await services.get_event(entry_id, None)
    flaky_state = next(d for d in detail.deliveries if d.group == "flaky")
    assert flaky_state.state == "succeeded"
    assert [a.outcome for a in flaky_state.attempts] == ["dead-lettered", "replayed", "succeeded"]


async def test_history_replay_redelivers_a_time_range_to_one_group(
    services: Services, run_consumers: Callable[..., Runner]
) -> None:
    seen: dict[str, list[str]] = {"a": [], "b": []}

    def recorder(group: str) -> Handler:
        async def handle(delivery: Delivery) -> None:
            seen[group].append(delivery.entry_id)
        return handle

    run_consumers(Consumer("a", recorder("a")), Consumer("b", recorder("b")))
    ids = []
    for _ in range(5):
        ids.append(await post(services, b'{"type":"t"}'))
        await asyncio.sleep(0.003)  # one event per millisecond: the range is given in ms

    async def both() -> bool:
        return len(seen["a"]) == 5 and len(seen["b"]) == 5

    await wait_for(both)
    since = int(ids[1].split("-")[0])
    until = int(ids[3].split("-")[0]) + 1
    queued = await services.dead_letters.replay_history("a", since, until)
    assert queued == 3

    async def again() -> bool:
        return len(seen["a"]) == 8

    await wait_for(again)
    await asyncio.sleep(0.2)
    assert seen["a"][5:] == ids[1:4]
    assert len(seen["b"]) == 5


async def test_invalid_direct_entry_is_dead_lettered_at_once_and_does_not_block_the_group(
    services: Services, run_consumers: Callable[..., Runner], redis: Redis, settings: Settings
) -> None:
    got: list[Any] = []

    async def handler(delivery: Delivery) -> None:
        got.append(delivery.data)

    run_consumers(Consumer("direct", handler))
    stream = home_stream(settings)
    await redis.xadd(stream, {"type": "x", "source": "ext", "data": "{not json"})
    await redis.xadd(stream, {"type": "x", "source": "ext", "data": '{"ok": true}'})

    async def done() -> bool:
        return got == [{"ok": True}] and bool(await services.dead_letters.list(Filter()))

    await wait_for(done)
    [letter] = await services.dead_letters.list(Filter())
    assert letter.reason == "invalid"
    assert "data is not valid JSON" in letter.error


async def test_entries_deleted_while_pending_are_counted_lost_and_the_loop_goes_on(
    services: Services, run_consumers: Callable[..., Runner], redis: Redis, settings: Settings
) -> None:
    attempts: list[str] = []

    async def fails_once(delivery: Delivery) -> None:
        attempts.append(delivery.entry_id)
        if delivery.data == "doomed":
            raise Retry(delay_s=0.3)

    runner = run_consumers(Consumer("lossy", fails_once))
    doomed = await post(services, b'{"type":"t","data":"doomed"}')
    await wait_for(lambda: _true(attempts == [doomed]))
    await redis.xdel(home_stream(settings), doomed)  # trimmed while waiting for its retry
    ok = await post(services, b'{"type":"t","data":"fine"}')
    await wait_for(lambda: _true(ok in attempts and sum(loop.lost for loop in runner.loops) == 1))
    assert attempts.count(doomed) == 1


async def _true(value: bool) -> bool:
    return value


async def test_a_handler_longer_than_the_lease_keeps_its_entry(
    services: Services, run_consumers: Callable[..., Runner]
) -> None:
    runs: list[str] = []

    async def slow(delivery: Delivery) -> None:
        runs.append(delivery.entry_id)
        await asyncio.sleep(2.0)

    slow_consumer = Consumer("slow", slow, lease_s=0.6, concurrency=1)
    run_consumers(slow_consumer, name="w1")
    await post(services, b'{"type":"t"}')
    await wait_for(lambda: _true(len(runs) == 1))
    run_consumers(slow_consumer, name="w2")  # would take it over after 0.6 s without renewal
    await asyncio.sleep(2.5)
    assert len(runs) == 1


async def test_the_runner_waits_out_a_redis_outage_and_logs_it_once(
    tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from app.connections import connect
    from app.embedded import EmbeddedServer

    caplog.set_level(logging.INFO, logger="eventflow")
    server = EmbeddedServer(tmp_path / "outage").start()
    settings = Settings(redis_url=server.url, prefix="outage", redis_timeout_s=0.5)
    redis = connect(settings)
    got: list[str] = []

    async def handler(delivery: Delivery) -> None:
        got.append(delivery.entry_id)

    runner = Runner([Consumer("o", handler)], redis, settings, "w1")
    task = asyncio.create_task(runner.run())
    try:
        services = Services(redis, settings)
        first = await post(services, b'{"type":"t"}')
        await wait_for(lambda: _true(got == [first]))
        server.stop()
        await asyncio.sleep(2.0)
        server.start()
        second = await post(services, b'{"type":"t"}')
        await wait_for(lambda: _true(got == [first, second]), timeout_s=15)
        outages = [r for r in caplog.records if "Redis unavailable" in r.getMessage()]
        assert len(outages) == 1, [r.getMessage() for r in outages]
        assert any("Redis is back" in r.getMessage() for r in caplog.records)
    finally:
        runner.stop.set()
        await asyncio.wait_for(task, 10)
        await redis.aclose()
        server.stop()


async def _retries_ahead(services: Services, settings: Settings, redis: Redis, n: int) -> None:
    """`n` events that worker w1 retries only in two minutes: pending, scheduled, soon idle past a lease."""
    async def later(delivery: Delivery) -> None:
        raise Retry(120, "not yet")

    keys = Keys(settings.prefix, settings.partitions)
    schedule = keys.retry_schedule(keys.partition_of("billing\n"), "slow")

    async def all_scheduled() -> bool:
        return await redis.zcard(schedule) == n

    async with consuming(redis, settings, Consumer("slow", later)):
        for n_ in range(n):
            await post(services, b'{"type":"later","data":%d}' % n_)
        await wait_for(all_scheduled, timeout_s=20)


@pytest.mark.parametrize("crashed", ["another worker", "this worker before a restart"])
async def test_entries_a_crashed_worker_held_are_not_hidden_by_scheduled_retries_ahead_of_them(
    services: Services, settings: Settings, redis: Redis, crashed: str
) -> None:
    await _retries_ahead(services, settings, redis, 150)  # more than a batch (100)
    await asyncio.sleep(1.1)  # the retries are idle past the lease below before anything else is
    entries = [await post(services, b'{"type":"now","data":%d}' % n) for n in range(5)]
    holder = "w0" if crashed == "another worker" else "w1"
    # The holder read them and died before handling them.
    got = await redis.xreadgroup("slow", holder, {home_stream(settings): ">"}, count=5)
    assert [e.decode() for e, _ in got[0][1]] == entries

    handled: list[str] = []

    async def handler(delivery: Delivery) -> None:
        if delivery.type == "now":
            handled.append(delivery.entry_id)
        else:
            raise Retry(120, "not yet")

    # w1 comes back (its own pending entries, read at start-up), or w2 takes over w0's after the lease.
    lease_s, name = (1.0, "w2") if crashed == "another worker" else (60.0, "w1")
    async with consuming(redis, settings, Consumer("slow", handler, lease_s=lease_s), name=name):
        await wait_for(lambda: sorted(handled) == sorted(entries), timeout_s=10)


@pytest.mark.parametrize("removal", ["destroy group", "delete log", "delete replay stream"])
async def test_a_group_or_stream_removed_by_hand_is_created_again_and_delivery_goes_on(
    services: Services, run_consumers: Callable[..., Runner], redis: Redis, settings: Settings, removal: str
) -> None:
    # An operator runs XGROUP DESTROY on the log, or DELs the log or the group's replay stream, while
    # the worker reads: its reads then fail with NOGROUP; the worker must make the group again rather
    # than fail every read (and leave every later event undelivered) until someone restarts it.
    seen: list[Any] = []

    async def handler(delivery: Delivery) -> None:
        seen.append(delivery.data)

    run_consumers(Consumer("mended", handler))
    await post(services, b'{"type":"t","data":"before"}')
    await wait_for(lambda: _true(seen == ["before"]))
    keys = Keys(settings.prefix, settings.partitions)
    if removal == "destroy group":
        assert await redis.xgroup_destroy(keys.stream(home_partition(settings)), "mended")
    elif removal == "delete log":
        assert await redis.delete(keys.stream(home_partition(settings)))
    else:
        assert await redis.delete(keys.replay(home_partition(settings), "mended"))
    await post(services, b'{"type":"t","data":"after"}')
    await wait_for(lambda: _true("after" in seen))
    assert seen.count("after") == 1
    # Made again after the newest entry the worker had read: the log is not handed over once more.
    assert seen.count("before") == 1


async def test_a_dead_letter_replayed_after_its_replay_stream_was_deleted_is_delivered(
    services: Services, run_consumers: Callable[..., Runner], redis: Redis, settings: Settings
) -> None:
    # Deleting a group's replay stream by hand and replaying a dead letter afterwards recreates the
    # stream (XADD) without the group; the worker must make the group again and deliver the replay.
    calls: list[int] = []

    async def first_fails(delivery: Delivery) -> None:
        calls.append(delivery.attempt)
        if len(calls) == 1:
            raise Permanent("not yet")

    run_consumers(Consumer("again", first_fails))
    await post(services, b'{"type":"t"}')
    await wait_for(lambda: _true(len(calls) == 1))
    await wait_for(lambda: services.dead_letters.list(Filter(group="again")))
    await redis.delete(Keys(settings.prefix, settings.partitions).replay(home_partition(settings), "again"))
    [letter] = await services.dead_letters.list(Filter(group="again"))
    assert await services.dead_letters.replay([letter.id]) == 1
    await wait_for(lambda: _true(len(calls) == 2))
    later = await post(services, b'{"type":"t","data":"later"}')
    await wait_for(lambda: _true(len(calls) == 3))
    assert later


async def test_a_retry_schedule_deleted_by_hand_still_retries_its_deliveries(
    services: Services, run_consumers: Callable[..., Runner], redis: Redis, settings: Settings
) -> None:
    # The schedule only says when; the delivery itself stays pending, so after the lease another
    # look (reclaim) must take it over rather than leave it pending forever.
    calls: list[float] = []

    async def fails_once(delivery: Delivery) -> None:
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise Retry(delay_s=600)

    run_consumers(Consumer("unscheduled", fails_once, lease_s=1.0))
    await post(services, b'{"type":"t"}')
    await wait_for(lambda: _true(len(calls) == 1))
    schedule = Keys(settings.prefix, settings.partitions).retry_schedule(home_partition(settings), "unscheduled")
    await wait_for(lambda: redis.exists(schedule))
    assert await redis.delete(schedule)
    await wait_for(lambda: _true(len(calls) == 2), timeout_s=5)
    await wait_for(lambda: _nothing_pending(redis, settings, "unscheduled"), timeout_s=5)


async def _nothing_pending(redis: Redis, settings: Settings, group: str) -> bool:
    stream = home_stream(settings)
    return not (await redis.xpending(stream, group))["pending"]


@pytest.mark.parametrize("ordered", [False, True])
async def test_entries_a_dead_worker_left_pending_and_an_operator_deleted_are_settled_and_counted_lost(
    services: Services, run_consumers: Callable[..., Runner], redis: Redis, settings: Settings, ordered: bool
) -> None:
    # A worker died holding two entries; an operator then trimmed one (XDEL). Whoever takes its
    # entries over (reclaim after the lease; an ordered consumer's new reader at once, XAUTOCLAIM)
    # must deliver the other, leave nothing pending, and count the deleted one as lost.
    group = "ordered-heir" if ordered else "heir"
    stream = home_stream(settings)
    doomed = await post(services, b'{"type":"t","data":"doomed"}')
    kept = await post(services, b'{"type":"t","data":"kept"}')
    await redis.xgroup_create(stream, group, id="0", mkstream=True)
    assert len((await redis.xreadgroup(group, "dead-worker", {stream: ">"}))[0][1]) == 2
    await redis.xdel(stream, doomed)
    seen: list[str] = []

    async def handler(delivery: Delivery) -> None:
        seen.append(delivery.entry_id)

    runner = run_consumers(Consumer(group, handler, lease_s=0.5, ordered=ordered))
    await wait_for(lambda: _true(seen == [kept]))
    await wait_for(lambda: _nothing_pending(redis, settings, group))
    await wait_for(lambda: _true(sum(loop.lost for loop in runner.loops) == 1))


async def test_an_event_s_lifecycle_leaves_out_a_group_destroyed_while_it_is_read(
    services: Services, redis: Redis, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An operator's XGROUP DESTROY lands between the lifecycle's XINFO GROUPS and its XPENDING: the
    # event page shows the groups that are left, not a 500.
    entry_id = await post(services, b'{"type":"t"}')
    await _destroy_gone_once_listed(services, redis, settings, monkeypatch)
    detail = await services.get_event(entry_id, None)
    assert [d.group for d in detail.deliveries] == ["kept"]


async def test_the_group_list_leaves_out_a_group_destroyed_while_it_is_read(
    services: Services, redis: Redis, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The same race on the consumers page and /v1/consumers: XGROUP DESTROY between XINFO GROUPS
    # and XINFO CONSUMERS.
    await post(services, b'{"type":"t"}')
    await _destroy_gone_once_listed(services, redis, settings, monkeypatch)
    assert [g.name for g in await services.lifecycle.groups()] == ["kept"]


async def _destroy_gone_once_listed(
    services: Services, redis: Redis, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Groups "kept" and "gone" on the home stream; "gone" is destroyed (as by an operator) right
    after the lifecycle's XINFO GROUPS has listed it, before the lifecycle reads it any further."""
    stream = home_stream(settings)
    for group in ("kept", "gone"):
        await redis.xgroup_create(stream, group, id="0")
    listed = services.lifecycle.redis.xinfo_groups

    async def destroyed_meanwhile(name: str) -> Any:
        groups = await listed(name)
        if name == stream:
            await redis.xgroup_destroy(stream, "gone")
        return groups

    monkeypatch.setattr(services.lifecycle.redis, "xinfo_groups", destroyed_meanwhile)


async def test_the_lifecycle_shows_pending_in_progress_and_retrying_with_its_attempt_and_next_time(
    services: Services, run_consumers: Callable[..., Runner], redis: Redis, settings: Settings
) -> None:
    # GET /v1/events/{id} names each group's state; a retrying one carries its attempt number and when
    # the next attempt is due, and the failed attempt's record (number, error type and message, time).
    release = asyncio.Event()

    async def slow(delivery: Delivery) -> None:
        await release.wait()

    async def failing(delivery: Delivery) -> None:
        raise ValueError("gateway said 503")

    await redis.xgroup_create(home_stream(settings), "idle", id="$", mkstream=True)  # nobody reads it
    run_consumers(Consumer("slow", slow), Consumer("failing", failing, backoff=Backoff(base_s=60, jitter=0)))
    await post(services, b'{"type":"t","id":"e-1"}')

    async def states() -> dict[str, Any]:
        return {d.group: d for d in (await services.get_event("e-1", None)).deliveries}

    async def settled() -> bool:
        found = await states()
        return {g: found[g].state for g in found} == {"idle": "pending", "slow": "in-progress", "failing": "retrying"}

    try:
        await wait_for(settled)
        found = await states()
        assert found["slow"].consumer == "w1"
        retrying = found["failing"]
        [failed] = retrying.attempts
        assert (retrying.attempt, failed.attempt, failed.outcome) == (1, 1, "failed")
        assert (failed.error_type, failed.error) == ("ValueError", "gateway said 503")
        assert failed.duration_ms is not None and abs(failed.at_ms - time.time() * 1000) < 30_000
        assert retrying.next_attempt_at_ms == failed.next_at_ms
        assert 59_000 <= retrying.next_attempt_at_ms - failed.at_ms <= 61_000
    finally:
        release.set()


async def test_failed_attempt_records_are_bounded(redis: Redis, settings: Settings, services: Services) -> None:
    # Every failed attempt is recorded, but an event that fails for ever keeps only its newest 50.
    entry_id = await post(services, b'{"type":"t"}')
    dispatch = Dispatch(redis, settings)
    entry = Pending(kind=LOG, stream_id=entry_id, entry_id=entry_id, partition=home_partition(settings), fields={})
    for n in range(1, 61):
        await dispatch.record("stubborn", entry, Attempt(attempt=n, outcome="failed", at_ms=n, error="boom"))
    kept = await dispatch.attempts("stubborn", home_partition(settings), entry_id)
    assert [a.attempt for a in kept] == list(range(11, 61))


async def test_a_group_that_starts_now_skips_the_events_already_in_the_log(
    services: Services, run_consumers: Callable[..., Runner]
) -> None:
    seen: dict[str, list[str]] = {"all": [], "fresh": []}

    def recorder(group: str) -> Handler:
        async def handle(delivery: Delivery) -> None:
            seen[group].append(delivery.entry_id)
        return handle

    before = [await post(services, b'{"type":"t"}') for _ in range(3)]
    runner = run_consumers(Consumer("all", recorder("all")), Consumer("fresh", recorder("fresh"), start="now"))
    await wait_for(lambda: _true(len(seen["all"]) == 3))
    await wait_for(lambda: _true(set(runner.reading["fresh"]) != set()))  # its group exists now
    after = [await post(services, b'{"type":"t"}') for _ in range(2)]
    await wait_for(lambda: _true(len(seen["all"]) == 5 and len(seen["fresh"]) == 2))
    await asyncio.sleep(0.2)
    assert seen["fresh"] == after
    assert seen["all"] == before + after


class _Escaped(BaseException):
    """Not an Exception: what a library's own control flow (a timeout, a greenlet exit) may raise."""


class _Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("str() of this exception fails")


class _UnprintablePermanent(Permanent):
    def __str__(self) -> str:
        raise RuntimeError("str() of this exception fails")


async def _settles(services: Services, make: Callable[[], BaseException], ordered: bool,
                   run_consumers: Callable[..., Runner]) -> list[Any]:
    """Run a consumer whose handler raises `make()` for one event; the next event must still be
    handled and the bad one dead-lettered, well within the 30 s lease. Returns its dead letters."""
    handled: list[Any] = []

    async def handler(delivery: Delivery) -> None:
        if delivery.data == "bad":
            raise make()
        handled.append(delivery.data)

    run_consumers(Consumer("odd", handler, max_attempts=2, concurrency=1, ordered=ordered,
                           backoff=Backoff(base_s=0.05, jitter=0)))
    await post(services, b'{"type":"t","data":"bad"}')
    await post(services, b'{"type":"t","data":"good"}')

    async def settled() -> bool:
        return handled == ["good"] and bool(await services.dead_letters.list(Filter(group="odd")))

    await wait_for(settled, 5)
    return await services.dead_letters.list(Filter(group="odd"))


@pytest.mark.parametrize("ordered", [False, True], ids=["unordered", "ordered"])
@pytest.mark.parametrize("make", [lambda: _Escaped("escaped"), lambda: asyncio.CancelledError("inner"),
                                  lambda: SystemExit(3), lambda: KeyboardInterrupt()],
                         ids=["BaseException", "CancelledError", "SystemExit", "KeyboardInterrupt"])
async def test_a_handler_raising_a_base_exception_is_retried_and_dead_lettered_not_stuck(
    services: Services, run_consumers: Callable[..., Runner], make: Callable[[], BaseException], ordered: bool
) -> None:
    # It escaped `except Exception`: the lane died with the event in hand, its lease renewed for ever
    # (SystemExit and KeyboardInterrupt went on out of the event loop: the worker exited).
    [letter] = await _settles(services, make, ordered, run_consumers)
    assert (letter.reason, letter.attempts) == ("max-attempts", 2)
    assert letter.error.startswith(type(make()).__name__)


@pytest.mark.parametrize("ordered", [False, True], ids=["unordered", "ordered"])
@pytest.mark.parametrize(("make", "reason"), [(_Unprintable, "max-attempts"), (_UnprintablePermanent, "permanent")],
                         ids=["transient", "permanent"])
async def test_an_exception_whose_str_fails_is_still_retried_and_dead_lettered(
    services: Services, run_consumers: Callable[..., Runner], make: Callable[[], BaseException], reason: str,
    ordered: bool,
) -> None:
    # Recording its message raised: never scheduled, never dead-lettered, redelivered for ever.
    [letter] = await _settles(services, make, ordered, run_consumers)
    assert letter.reason == reason
    assert letter.error.startswith(f"{make.__name__}: <unprintable")


@pytest.mark.parametrize("ordered", [False, True], ids=["unordered", "ordered"])
@pytest.mark.parametrize("delay_s", [math.nan, math.inf, -math.inf, "5", None], ids=repr)
async def test_a_retry_with_a_delay_that_is_no_number_of_seconds_gets_the_backoff(
    services: Services, run_consumers: Callable[..., Runner], delay_s: Any, ordered: bool
) -> None:
    # NaN or infinity failed to become a due time: unrecorded, so an ordered consumer ran it in a tight
    # loop and an unordered one waited out the lease each time.
    [letter] = await _settles(services, lambda: Retry(delay_s=delay_s), ordered, run_consumers)
    assert (letter.reason, letter.attempts) == ("max-attempts", 2)


@pytest.mark.parametrize("ordered", [False, True], ids=["unordered", "ordered"])
async def test_a_retry_delay_is_cut_to_how_long_attempt_records_are_kept(
    redis: Redis, settings: Settings, ordered: bool
) -> None:
    # Retry(1e300) parked the event for ever; any delay past EVENTFLOW_ATTEMPTS_TTL_S outlived the
    # attempt count, so an event that always asks for a long retry was never dead-lettered.
    settings = msgspec.structs.replace(settings, attempts_ttl_s=1)
    services = Services(redis, settings)
    runners: list[Runner] = []
    tasks: list[asyncio.Task[None]] = []

    def start(*consumers: Consumer, name: str = "w1") -> Runner:
        runners.append(Runner(list(consumers), redis, settings, name))
        tasks.append(asyncio.create_task(runners[-1].run()))
        return runners[-1]

    try:
        [letter] = await _settles(services, lambda: Retry(delay_s=1e300), ordered, start)
    finally:
        for runner in runners:
            runner.stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 10)
    assert (letter.reason, letter.attempts) == ("max-attempts", 2)


async def test_an_entry_with_more_fields_than_a_script_call_takes_is_still_dead_lettered(
    services: Services, run_consumers: Callable[..., Runner], redis: Redis, settings: Settings
) -> None:
    # Written straight into the stream with 5,000 fields (valid extension names): the dead-letter
    # script failed on them (Lua takes about 8,000 values a call), so the entry was redelivered after
    # every lease and never dead-lettered.
    calls: list[str] = []

    async def refuses(delivery: Delivery) -> None:
        calls.append(delivery.entry_id)
        raise Permanent("not here")

    run_consumers(Consumer("wide", refuses))
    fields = {"type": "t", "source": "ext", **{f"f{n}": str(n) for n in range(5000)}}
    entry_id = (await redis.xadd(home_stream(settings), fields)).decode()  # type: ignore[arg-type]

    async def dead() -> bool:
        return bool(await services.dead_letters.list(Filter(group="wide")))

    await wait_for(dead, 5)
    [letter] = await services.dead_letters.list(Filter(group="wide"))
    assert (letter.reason, letter.entry_id, calls) == ("permanent", entry_id, [entry_id])
    assert letter.event["f4999"] == "4999"
    assert (await redis.xinfo_groups(home_stream(settings)))[0]["pending"] == 0


async def test_a_dead_letter_with_more_fields_than_a_script_call_takes_is_replayed(
    services: Services, run_consumers: Callable[..., Runner], redis: Redis, settings: Settings
) -> None:
    # The replay script failed on it ("too many results to unpack") after replaying the ids before it
    # in the same call: a 500 for a replay that was half done.
    seen: list[tuple[str, bool]] = []

    async def refuses_first(delivery: Delivery) -> None:
        seen.append((delivery.entry_id, delivery.replay))
        if not delivery.replay:
            raise Permanent("not yet")

    run_consumers(Consumer("wide", refuses_first))
    narrow = (await redis.xadd(home_stream(settings), {"type": "t", "source": "ext"})).decode()
    fields = {"type": "t", "source": "ext", **{f"f{n}": str(n) for n in range(5000)}}
    wide = (await redis.xadd(home_stream(settings), fields)).decode()  # type: ignore[arg-type]

    async def dead() -> bool:
        return len(await services.dead_letters.list(Filter(group="wide"))) == 2

    await wait_for(dead, 5)
    letters = await services.dead_letters.list(Filter(group="wide"))
    assert await services.dead_letters.replay(sorted(dl.id for dl in letters)) == 2
    everything = sorted([(narrow, False), (wide, False), (narrow, True), (wide, True)])
    await wait_for(lambda: _true(sorted(seen) == everything))
    assert await services.dead_letters.list(Filter()) == []
    replayed = await Dispatch(redis, settings).attempts("wide", home_partition(settings), wide)
    assert [a.outcome for a in replayed] == ["dead-lettered", "replayed", "succeeded"]


@pytest.mark.parametrize("ordered", [False, True], ids=["unordered", "ordered"])
@pytest.mark.parametrize("swallows", [False, True], ids=["hangs", "swallows-the-cancel"])
async def test_a_handler_running_past_its_timeout_is_stopped_and_retried(
    services: Services, run_consumers: Callable[..., Runner], ordered: bool, swallows: bool,
) -> None:
    # A hung handler kept its event in hand, its lease renewed, for ever: nothing else ever took it.
    runs: list[int] = []
    others: list[str] = []

    async def handle(delivery: Delivery) -> None:
        if delivery.data != "stuck":
            others.append(delivery.data)
            return
        runs.append(delivery.attempt)
        if delivery.attempt == 1:
            try:
                await asyncio.Event().wait()  # never set
            except asyncio.CancelledError:
                if not swallows:
                    raise
                await asyncio.sleep(0.05)  # a handler that takes the cancellation for a hiccup

    run_consumers(Consumer("hung", handle, timeout_s=0.3, ordered=ordered, concurrency=2,
                           backoff=Backoff(base_s=0.05, jitter=0)))
    entry_id = await post(services, b'{"type":"t","data":"stuck"}')
    await post(services, b'{"type":"t","data":"next"}')

    async def succeeded() -> bool:
        [state] = (await services.get_event(entry_id, None)).deliveries
        return state.state == "succeeded"

    started = time.monotonic()
    await wait_for(succeeded, 10)  # without a timeout: never
    assert time.monotonic() - started < 5, "stopped long after its timeout"
    assert runs == [1, 2]
    assert others == ["next"]
    [state] = (await services.get_event(entry_id, None)).deliveries
    first = state.attempts[0]
    assert (first.attempt, first.outcome, first.error_type) == (1, "failed", "HandlerTimeout")
    assert "timeout_s (0.3 s)" in (first.error or "")


async def test_a_handler_that_ignores_its_timeout_cancellation_is_reported_once(
    services: Services, run_consumers: Callable[..., Runner], caplog: pytest.LogCaptureFixture,
) -> None:
    # Found walking the feature: a handler that catches every CancelledError runs on after the
    # watchdog's cancel, its event in hand and its lease renewed, and the worker said nothing at all.
    release = asyncio.Event()

    async def handle(delivery: Delivery) -> None:
        while not release.is_set():
            with contextlib.suppress(asyncio.CancelledError):  # swallowed, again and again
                await release.wait()

    caplog.set_level(logging.ERROR, logger="eventflow.consumers")
    run_consumers(Consumer("deaf", handle, timeout_s=0.3, backoff=Backoff(base_s=0.05, jitter=0)))
    await post(services, b'{"type":"t","data":"deaf"}')

    def reported() -> list[logging.LogRecord]:
        return [r for r in caplog.records if "ignores its cancellation" in r.getMessage()]

    await wait_for(lambda: _true(bool(reported())), 10)
    await asyncio.sleep(1.5)  # a few more looks of the watchdog: still one line
    [record] = reported()
    assert record.levelno == logging.ERROR and "timeout_s (0.3 s)" in record.getMessage()
    assert getattr(record, "group", None) == "deaf" and getattr(record, "event_type", None) == "t"
    release.set()

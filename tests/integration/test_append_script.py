"""append.lua on the real server (its cmsgpack reads the packed events): the rare paths of the script."""

from __future__ import annotations

import json
from typing import Any

from redis.asyncio import Redis

from app.events import Incoming, parse_request
from app.service import Services


def events(*bodies: dict[str, Any]) -> list[Incoming]:
    return [parse_request(json.dumps(b).encode(), "application/json", {})[0][0] for b in bodies]


def ms(entry_id: str) -> int:
    return int(entry_id.split("-")[0])


async def test_after_a_direct_entry_was_added_and_deleted_appends_take_later_ids_and_stay_findable(
    services: Services, redis: Redis
) -> None:
    # The stream's last id is then past the log's tip, so the script's own entry id is refused and
    # the server picks one; the event id the script made no longer encodes the entry, so it gets a
    # lookup key like a producer's id.
    stream = services.log.keys.stream(0)
    [first] = await services.ingest(events({"type": "t"}), "billing", {})
    ahead = f"{ms(first.entry_id) + 3_600_000}-5"
    await redis.xadd(stream, {"type": "t", "source": "direct"}, id=ahead)
    await redis.xdel(stream, ahead)

    got = await services.ingest(events({"type": "t"}, {"type": "t", "id": "p-1"}, {"type": "t"}), "billing", {})

    assert [ms(g.entry_id) for g in got] == [ms(ahead)] * 3
    assert [int(g.entry_id.split("-")[1]) for g in got] == [6, 7, 8]
    for appended in got:
        record = await services.get_event(appended.id, None)
        assert record.entry_id == appended.entry_id
        assert record.event["id"] == appended.id
    again = await services.ingest(events({"type": "t", "id": "p-1"}), "billing", {})
    assert again[0].duplicate and again[0].entry_id == got[1].entry_id


async def test_big_batches_and_long_texts_reach_the_log_whole(services: Services, redis: Redis) -> None:
    texts = ["", "é" * 40, "x" * 300, "y" * 70_000] + [f"n{n}" for n in range(996)]
    got = await services.ingest(events(*({"type": "t", "data": t} for t in texts)), "billing", {})
    entries = await redis.xrange(services.log.keys.stream(0))
    assert [json.loads(fields[b"data"]) for _, fields in entries] == texts
    assert [e.decode() for e, _ in entries] == [g.entry_id for g in got]
    assert [f[b"id"].decode() for _, f in entries] == [g.id for g in got]

"""The live feed's fan-out without Redis: one batch per filter per read, encoded once for every
subscriber, and a bounded backlog per subscriber."""

from __future__ import annotations

from typing import Any

from app.events import Record
from app.live import LiveHub, Message, Subscriber
from app.settings import Settings
from app.web import sse
from app.web.dashboard.render import event_row_fields


def _hub(**kwargs: Any) -> LiveHub:
    return LiveHub(None, Settings(redis_url="redis://unused"), **kwargs)  # type: ignore[arg-type]


def _reply(*types: str, start: int = 1) -> list[Any]:
    entries = [(f"{start + n}-0".encode(), {b"type": t.encode(), b"source": b"s", b"data": b"{}"})
               for n, t in enumerate(types)]
    return [(b"{eventflow}:events", entries)]


def _subscribe(hub: LiveHub, match: Any) -> Subscriber:
    """What `LiveHub.subscribe` registers, without waiting for the reader."""
    sub = Subscriber(hub, list(hub.positions), match, hub.queue_size)
    hub.subscribers.add(sub)
    hub._groups.setdefault(match, set()).add(sub)
    return sub


def test_one_read_is_filtered_once_per_filter_and_shared_by_its_subscribers() -> None:
    hub = _hub()
    calls: list[str] = []

    def only_a(record: Record) -> bool:
        calls.append(record.entry_id)
        return record.event.get("type") == "a"

    first, second = _subscribe(hub, only_a), _subscribe(hub, only_a)
    everything = _subscribe(hub, lambda r: True)
    assert hub._deliver(_reply("a", "b", "a")) == 3
    assert calls == ["1-0", "2-0", "3-0"]  # not once per subscriber
    assert first.pending == second.pending and first.pending[0] is second.pending[0]
    assert [m.entry_id for m in first.pending[0].messages] == ["1-0", "3-0"]
    assert [m.entry_id for m in everything.pending[0].messages] == ["1-0", "2-0", "3-0"]
    assert hub.positions == ["3-0"]


def test_a_batch_is_encoded_once_whoever_sends_it() -> None:
    hub = _hub()
    everything = sse._matcher(None, None)
    a, b = _subscribe(hub, everything), _subscribe(hub, everything)
    hub._deliver(_reply("a", "a"))
    encoded: list[str] = []

    def encode(message: Message) -> bytes:
        encoded.append(message.entry_id)
        return message.ident.encode() + b";"

    assert a.pending[0].wire(encode) is b.pending[0].wire(encode)
    assert a.pending[0].wire(encode) == b"1-0;2-0;"
    assert encoded == ["1-0", "2-0"]


def test_the_sse_frame_carries_the_cursor_as_id_and_the_row_as_one_line_of_json() -> None:
    hub = _hub(render=lambda record: {"entry_id": record.entry_id, "subject": "two\nlines"})
    message = Message(0, "7-1", {b"type": b"a", b"source": b"s"}, hub.render)
    message.ident = "7-1,5-0"
    assert sse._frame(message) == (
        b'id: 7-1,5-0\nevent: event\ndata: {"entry_id":"7-1","subject":"two\\nlines"}\n\n')


def test_the_feed_sends_a_row_s_fields_and_flags_an_entry_that_is_no_valid_event() -> None:
    good = Record.from_entry("7-1", 0, {b"_v": b"1", b"id": b"e-1", b"type": b"order.created", b"source": b"shop",
                                        b"subject": b"<b>o-1</b>", b"time": b"2026-11-27T06:00:00Z"})
    assert event_row_fields(good) == {"entry_id": "7-1", "type": "order.created", "source": "shop",
                                      "subject": "<b>o-1</b>", "id": "e-1", "invalid": False}
    direct = Record.from_entry("7-2", 0, {b"type": b"order.created"})  # XADDed without a source
    assert event_row_fields(direct)["invalid"] is True


def test_a_subscriber_that_falls_behind_drops_its_backlog_and_takes_no_more_until_it_catches_up() -> None:
    hub = _hub(queue_size=4)
    slow = _subscribe(hub, lambda r: True)
    hub._deliver(_reply("a", "a", "a"))
    assert slow.pending_count == 3 and not slow.behind
    hub._deliver(_reply("a", "a", start=4))  # 5 > 4: the whole backlog goes
    assert slow.behind and slow.pending == [] and slow.pending_count == 0
    assert slow.dropped == 5
    hub._deliver(_reply("a", start=6))  # read back from the log by the catch-up instead
    assert slow.pending == [] and slow.dropped == 6


def test_the_flush_interval_grows_with_the_subscribers_within_bounds() -> None:
    hub = _hub(flush_per_subscriber_s=50e-6)
    assert hub.flush_s == 0.005
    for _ in range(400):
        _subscribe(hub, lambda r: True)
    assert hub.flush_s == 0.02
    for _ in range(2000):
        _subscribe(hub, lambda r: True)
    assert hub.flush_s == 0.05


def test_the_same_filter_gets_the_same_matcher() -> None:
    assert sse._matcher("a", None) is sse._matcher("a", None)
    assert sse._matcher("a", None) is not sse._matcher(None, "a")

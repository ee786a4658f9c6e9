"""Query: the opaque cursor and the XRANGE bounds it gives each partition."""

from __future__ import annotations

import base64

import pytest

from app.errors import InvalidEvent
from app.store import Query


def cursor(entry_id: str, partition: int | str) -> str:
    return base64.urlsafe_b64encode(f"{entry_id}/{partition}".encode()).decode().rstrip("=")


def test_no_filters_means_the_whole_stream() -> None:
    assert Query().bounds(0) == ("+", "-")


def test_since_is_inclusive_and_until_is_exclusive() -> None:
    assert Query(since_ms=1000, until_ms=2000).bounds(0) == ("(2000-0", "1000-0")


def test_the_cursor_round_trips_its_position() -> None:
    assert Query(cursor=cursor("1700000000000-3", 2)).after() == (1_700_000_000_000, 3, 2)
    assert Query().after() is None


@pytest.mark.parametrize("bad", ["", "???", "bm90LWEtY3Vyc29y", cursor("abc-1", 0), cursor("12-1", "x")])
def test_a_foreign_cursor_is_refused_naming_the_parameter(bad: str) -> None:
    with pytest.raises(InvalidEvent) as info:
        Query(cursor=bad).after()
    assert [p.pointer for p in info.value.problems] == ["/cursor"]


def test_newest_first_cursor_excludes_the_last_entry_in_its_partition_and_later_ones() -> None:
    q = Query(cursor=cursor("500-2", 1), newest_first=True)
    # Order is (entry id, partition) descending: in partitions after the cursor's the same entry id was
    # already served; in partitions before it, it was not.
    assert q.bounds(0) == ("500-2", "-")
    assert q.bounds(1) == ("(500-2", "-")
    assert q.bounds(2) == ("(500-2", "-")


def test_oldest_first_cursor_moves_the_lower_bound_the_other_way() -> None:
    q = Query(cursor=cursor("500-2", 1), newest_first=False)
    assert q.bounds(0) == ("+", "(500-2")
    assert q.bounds(1) == ("+", "(500-2")
    assert q.bounds(2) == ("+", "500-2")


def test_the_tighter_of_time_range_and_cursor_wins() -> None:
    inside = Query(until_ms=1000, cursor=cursor("500-0", 0))
    assert inside.bounds(0) == ("(500-0", "-")
    beyond = Query(until_ms=400, cursor=cursor("500-0", 0))
    assert beyond.bounds(0) == ("(400-0", "-")
    asc = Query(since_ms=600, cursor=cursor("500-0", 0), newest_first=False)
    assert asc.bounds(0) == ("+", "600-0")


def test_an_exclusive_bound_beats_an_inclusive_one_at_the_same_id() -> None:
    # Partition 0 comes before the cursor's partition 1, so the cursor alone would include 500-0.
    q = Query(until_ms=500, cursor=cursor("500-0", 1))
    assert q.bounds(0) == ("(500-0", "-")
    assert Query(cursor=cursor("500-0", 1)).bounds(0) == ("500-0", "-")

"""The archive's files (atomic hour files, exact round trip, repeated entries) and the merge of an
archived page with a live one."""

from __future__ import annotations

import gzip
from pathlib import Path

from app.archive import HOUR_MS, Archive, encode_cursor, encode_line, entry_key, merge_pages
from app.events import Record
from app.store import Page, Query

T0 = 1_795_000_000_000 - 1_795_000_000_000 % HOUR_MS  # the start of an hour


def fields(n: int, kind: str = "a") -> dict[bytes, bytes]:
    return {b"_v": b"1", b"id": f"e{n}".encode(), b"type": kind.encode(), b"source": b"s", b"data": str(n).encode()}


def test_entries_round_trip_exactly_even_binary_values(tmp_path: Path) -> None:
    archive = Archive(tmp_path, "ef", 1)
    odd = {b"type": b"t", b"source": b"s", b"data_base64": b"AAE=", b"raw": b"\xff\xfe"}
    archive.write(0, T0, [encode_line(f"{T0}-0", fields(1)), encode_line(f"{T0 + 5}-2", odd)])
    [(_, first), (second_id, second)] = list(archive.entries(archive.path(0, T0)))
    assert first == fields(1)
    assert (second_id, second) == (f"{T0 + 5}-2", odd)


def test_files_are_per_partition_and_hour_and_no_temporary_file_remains(tmp_path: Path) -> None:
    archive = Archive(tmp_path, "ef", 2)
    archive.write(1, T0 + HOUR_MS, [encode_line(f"{T0 + HOUR_MS}-0", fields(1))])
    path = archive.path(1, T0 + HOUR_MS)
    assert path.relative_to(tmp_path).parts[:3] == ("ef", "p1", path.parent.name)
    assert path.name.endswith(".jsonl.gz")
    assert [p.name for p in path.parent.iterdir()] == [path.name]
    with gzip.open(path) as f:  # plain gzip JSON lines: readable with zcat
        assert f.read().startswith(b'{"id":')


def test_a_later_write_to_the_same_hour_appends(tmp_path: Path) -> None:
    archive = Archive(tmp_path, "ef", 1)
    archive.write(0, T0, [encode_line(f"{T0}-{n}", fields(n)) for n in range(3)])
    archive.write(0, T0, [encode_line(f"{T0}-{n}", fields(n)) for n in range(3, 5)])
    assert [e for e, _ in archive.entries(archive.path(0, T0))] == [f"{T0}-{n}" for n in range(5)]


def test_entries_archived_twice_are_read_once_in_order(tmp_path: Path) -> None:
    # A pass that stopped between archiving and trimming archives the same entries again.
    archive = Archive(tmp_path, "ef", 1)
    archive.write(0, T0, [encode_line(f"{T0}-{n}", fields(n)) for n in range(4)])
    archive.write(0, T0, [encode_line(f"{T0}-{n}", fields(n)) for n in range(2, 6)])
    assert [e for e, _ in archive.entries(archive.path(0, T0))] == [f"{T0}-{n}" for n in range(6)]


def test_find_reads_one_entry_by_its_id(tmp_path: Path) -> None:
    archive = Archive(tmp_path, "ef", 2)
    archive.write(1, T0, [encode_line(f"{T0 + 7}-0", fields(7))])
    found = archive.find(f"{T0 + 7}-0")
    assert found is not None and found.partition == 1 and found.event["id"] == "e7"
    assert archive.find(f"{T0 + 8}-0") is None


def test_a_scan_filters_by_type_and_stops_below_the_live_head(tmp_path: Path) -> None:
    archive = Archive(tmp_path, "ef", 1)
    for hour in range(3):
        start = T0 + hour * HOUR_MS
        archive.write(0, start, [encode_line(f"{start + n}-0", fields(n, "ab"[n % 2])) for n in range(10)])
    head = entry_key(f"{T0 + 2 * HOUR_MS + 5}-0")  # entries from here on are live
    records, horizon = archive.scan(Query(type="a", limit=100, newest_first=False), [head])
    assert horizon is None
    assert [r.entry_id for r in records] == [f"{T0 + h * HOUR_MS + n}-0" for h in range(3) for n in range(0, 10, 2)
                                             if (h, n) < (2, 5)]
    newest, horizon = archive.scan(Query(limit=3), [head])
    assert [r.entry_id for r in newest] == [f"{T0 + 2 * HOUR_MS + n}-0" for n in (4, 3, 2)]
    assert horizon == entry_key(newest[-1].entry_id)


def test_merged_pages_interleave_and_keep_one_cursor() -> None:
    def rec(ms: int, partition: int = 0) -> Record:
        return Record(entry_id=f"{ms}-0", partition=partition, direct=False, event={})

    q = Query(limit=3)
    live = Page([rec(50), rec(40), rec(30)], encode_cursor((30, 0, 0)))  # more live events below 30
    page = merge_pages(q, live, [rec(45, 1), rec(20, 1)], None)
    assert [(r.entry_id, r.partition) for r in page.events] == [("50-0", 0), ("45-0", 1), ("40-0", 0)]
    assert page.next_cursor == encode_cursor((40, 0, 0))
    done = merge_pages(q, Page([rec(10)], None), [rec(5, 1)], None)
    assert [r.entry_id for r in done.events] == ["10-0", "5-0"] and done.next_cursor is None

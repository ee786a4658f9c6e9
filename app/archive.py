"""The archive: log entries that retention trimmed, kept as gzip-compressed JSON lines.

One file per hour of the log (UTC, by entry id) and partition, under `EVENTFLOW_ARCHIVE_PATH`:

    <path>/<prefix>/p<partition>/<YYYY-MM-DD>/<HH>.jsonl.gz

A line is one entry exactly as the stream held it: `{"id": "<entry id>", "f": {field: value}}`
(a value that is not UTF-8 text is kept as `{"b64": "..."}`). A file is written atomically: a
temporary file in the same folder gets the old file's bytes plus a new gzip member, is fsynced and
renamed over the old one, then the folder is fsynced. Readers skip repeated entry ids: a retention
pass that stopped between archiving and trimming archives the same entries again on its next run.

Reading is file I/O and decompression, done in a worker thread; queries merge it with the live log
(`merge_pages`), so one cursor pages through both.
"""

from __future__ import annotations

import base64
import collections
import datetime as dt
import gzip
import heapq
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import msgspec

from app.events import Record
from app.store import Page, Query

HOUR_MS = 3_600_000
MAX_FILES_PER_CALL = 48  # hour files one query looks at per partition before it answers with a cursor

Key = tuple[int, int, int]  # (ms, seq, partition): the order of the log across partitions


class _Line(msgspec.Struct):
    id: str
    f: dict[str, str | dict[str, str]]


_line = msgspec.json.Decoder(_Line)
_encode = msgspec.json.Encoder().encode


def encode_line(entry_id: str, fields: Mapping[bytes, bytes]) -> bytes:
    out: dict[str, Any] = {}
    for name, value in fields.items():
        try:
            out[name.decode()] = value.decode()
        except UnicodeDecodeError:
            out[name.decode(errors="replace")] = {"b64": base64.b64encode(value).decode()}
    return _encode({"id": entry_id, "f": out}) + b"\n"


def decode_line(line: bytes) -> tuple[str, dict[bytes, bytes]]:
    parsed = _line.decode(line)
    fields = {k.encode(): (v.encode() if isinstance(v, str) else base64.b64decode(v["b64"]))
              for k, v in parsed.f.items()}
    return parsed.id, fields


def entry_key(entry_id: str, partition: int = 0) -> Key:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0), partition


def hour_of(ms: int) -> int:
    return ms - ms % HOUR_MS


class Archive:
    """The archive folder of one deployment (prefix)."""

    def __init__(self, root: str | os.PathLike[str], prefix: str, partitions: int) -> None:
        self.root = Path(root) / prefix
        self.partitions = partitions

    def path(self, partition: int, hour_ms: int) -> Path:
        start = dt.datetime.fromtimestamp(hour_ms / 1000, dt.UTC)
        return self.root / f"p{partition}" / start.strftime("%Y-%m-%d") / start.strftime("%H.jsonl.gz")

    def exists(self) -> bool:
        return self.root.is_dir()

    # -- writing --------------------------------------------------------------------------------
    def write(self, partition: int, hour_ms: int, lines: Iterable[bytes]) -> Path:
        """Add lines to an hour's file, atomically and durably (see the module docstring)."""
        target = self.path(partition, hour_ms)
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        with temp.open("wb") as out:
            if target.exists():
                with target.open("rb") as old:
                    while chunk := old.read(1 << 20):
                        out.write(chunk)
            with gzip.GzipFile(filename="", fileobj=out, mode="wb", compresslevel=6, mtime=0) as member:
                for line in lines:
                    member.write(line)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, target)
        _fsync_dir(target.parent)
        return target

    # -- reading --------------------------------------------------------------------------------
    def hours(self, partition: int, lo_ms: int | None = None, hi_ms: int | None = None) -> list[tuple[int, Path]]:
        """(hour start ms, file) of a partition's hour files that may hold entries in [lo_ms, hi_ms], oldest first."""
        folder = self.root / f"p{partition}"
        if not folder.is_dir():
            return []
        found = []
        for day in sorted(folder.iterdir()):
            for file in sorted(day.glob("[0-9][0-9].jsonl.gz")):
                try:
                    start = dt.datetime.strptime(f"{day.name} {file.name[:2]}", "%Y-%m-%d %H").replace(tzinfo=dt.UTC)
                except ValueError:
                    continue
                hour_ms = int(start.timestamp()) * 1000
                if (lo_ms is None or hour_ms + HOUR_MS > lo_ms) and (hi_ms is None or hour_ms <= hi_ms):
                    found.append((hour_ms, file))
        return found

    def entries(self, file: Path) -> Iterator[tuple[str, dict[bytes, bytes]]]:
        """A file's entries in log order, each once."""
        last: Key | None = None
        disordered = False
        with gzip.open(file, "rb") as lines:
            for line in lines:
                entry_id, fields = decode_line(line)
                key = entry_key(entry_id)
                if last is not None and key <= last:
                    disordered = True  # a repeated pass appended entries already here: sort below
                    break
                last = key
                yield entry_id, fields
        if disordered:
            yield from self._sorted_after(file, last)

    def _sorted_after(self, file: Path, after: Key | None) -> Iterator[tuple[str, dict[bytes, bytes]]]:
        unique: dict[Key, tuple[str, dict[bytes, bytes]]] = {}
        with gzip.open(file, "rb") as lines:
            for line in lines:
                entry_id, fields = decode_line(line)
                key = entry_key(entry_id)
                if after is None or key > after:
                    unique[key] = (entry_id, fields)
        for key in sorted(unique):
            yield unique[key]

    def find(self, entry_id: str) -> Record | None:
        """One archived entry by its entry id (any partition)."""
        ms = entry_key(entry_id)[0]
        for partition in range(self.partitions):
            file = self.path(partition, hour_of(ms))
            if file.exists():
                for found, fields in self.entries(file):
                    if found == entry_id:
                        return Record.from_entry(found, partition, fields)
        return None

    def file_range(self, file: Path, partition: int, since_ms: int, until_ms: int | None,
                   before: Key | None = None) -> list[tuple[str, dict[bytes, bytes]]]:
        """A file's entries with since_ms <= ms < until_ms, oldest first, stopping at `before` (the live head)."""
        out = []
        for entry_id, fields in self.entries(file):
            key = entry_key(entry_id, partition)
            if before is not None and key[:2] >= before[:2]:
                break
            if key[0] >= since_ms and (until_ms is None or key[0] < until_ms):
                out.append((entry_id, fields))
        return out

    def scan(self, q: Query, heads: list[Key | None]) -> tuple[list[Record], Key | None]:
        """A page of archived records for a query, in its order; and the key down (or up) to which the
        archive was examined when it stopped early (None: nothing more in the archive)."""
        found: list[list[Record]] = []
        horizons: list[Key] = []
        for partition in range(self.partitions):
            records, horizon = self._scan_partition(q, partition, heads[partition])
            found.append(records)
            if horizon is not None:
                horizons.append(horizon)

        def key(record: Record) -> Key:
            return entry_key(record.entry_id, record.partition)

        merged = list(heapq.merge(*found, key=key, reverse=q.newest_first))
        horizon = (max(horizons) if q.newest_first else min(horizons)) if horizons else None
        return merged, horizon

    def _scan_partition(self, q: Query, partition: int, head: Key | None) -> tuple[list[Record], Key | None]:
        lo, hi = bounds(q, partition, head)
        files = self.hours(partition, lo[0] if lo else None, hi[0] if hi else None)
        if q.newest_first:
            files.reverse()
        out: list[Record] = []
        edge: Key | None = None  # the farthest key examined, in scan order
        looked = 0
        for _hour, file in files:
            if looked >= MAX_FILES_PER_CALL:
                return out, edge
            wanted = q.limit - len(out)
            matches: collections.deque[Record] | list[Record] = (
                collections.deque(maxlen=wanted) if q.newest_first else [])
            seen = False
            for entry_id, fields in self.entries(file):
                k = entry_key(entry_id, partition)
                if (lo is not None and k[:2] < lo[:2]) or (hi is not None and k[:2] > hi[:2]):
                    continue
                # the farthest key examined: the smallest going newest first, the largest oldest first
                edge = (k if edge is None or k < edge else edge) if q.newest_first else k
                seen = True
                if _matches(q, fields):
                    matches.append(Record.from_entry(entry_id, partition, fields))
                    if not q.newest_first and len(matches) >= wanted:
                        break
            looked += seen
            out += reversed(matches) if q.newest_first else matches
            if len(out) >= q.limit:
                return out, entry_key(out[-1].entry_id, partition)
        return out, None


def merge_pages(q: Query, live: Page, archived: list[Record], horizon: Key | None) -> Page:
    """One page from the live log's page and the archive's, in the query's order, with one cursor.

    Each side is complete only down (newest first) or up to a horizon: its cursor position when it has
    more. Records beyond the nearer horizon wait for the next page."""
    desc = q.newest_first
    horizons = [h for h in (_cursor_key(live.next_cursor), horizon) if h is not None]
    nearest = (max(horizons) if desc else min(horizons)) if horizons else None

    def key(record: Record) -> Key:
        return entry_key(record.entry_id, record.partition)

    merged = sorted([*live.events, *archived], key=key, reverse=desc)
    if nearest is not None:
        merged = [r for r in merged if (key(r) >= nearest if desc else key(r) <= nearest)]
    page = merged[: q.limit]
    more = len(merged) > q.limit or nearest is not None
    if not more:
        return Page(page, None)
    last = key(page[-1]) if page else nearest
    assert last is not None
    return Page(page, encode_cursor(last))


def encode_cursor(key: Key) -> str:
    ms, seq, partition = key
    return base64.urlsafe_b64encode(f"{ms}-{seq}/{partition}".encode()).decode().rstrip("=")


def _cursor_key(cursor: str | None) -> Key | None:
    if cursor is None:
        return None
    return Query(cursor=cursor).after()


def bounds(q: Query, partition: int, head: Key | None) -> tuple[Key | None, Key | None]:
    """Inclusive (lowest, highest) (ms, seq) an archived entry of this partition may have for the query."""
    hi_s, lo_s = q.bounds(partition)
    lo = None if lo_s == "-" else _bound(lo_s, upper=False)
    hi = None if hi_s == "+" else _bound(hi_s, upper=True)
    if head is not None:  # entries from the head on are in the live log (and may be in the archive too)
        below = _step(head, -1)
        hi = below if hi is None or below < hi else hi
    return lo, hi


def _bound(bound: str, *, upper: bool) -> Key:
    exclusive = bound.startswith("(")
    key = entry_key(bound.lstrip("("))
    return _step(key, -1 if upper else 1) if exclusive else key


def _step(key: Key, by: int) -> Key:
    ms, seq, partition = key
    if seq + by < 0:
        return ms - 1, 2**64 - 1, partition
    return ms, seq + by, partition


def _matches(q: Query, fields: Mapping[bytes, bytes]) -> bool:
    if q.type is not None and fields.get(b"type", b"").decode(errors="replace") != q.type:
        return False
    return q.source is None or fields.get(b"source", b"").decode(errors="replace") == q.source


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

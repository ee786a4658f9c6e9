"""The audit log: append-only, hash-chained JSON lines in rotated files, its writer and its verifier.

Format. Files `audit-000001.jsonl`, `audit-000002.jsonl`, ... in one folder, one JSON object per line,
fields in this order (`subject`, `data`, `data_base64` and `replay` only when present):

    {"seq":1,"entry":"1700000000000-0","partition":0,"id":"...","type":"...","source":"...",
     "time":"...","received":"...","logged":"...","data":{...},"prev":"000...000","hash":"9f2c..."}

`hash` is the SHA-256 (hex) of the line's own bytes with its final `,"hash":"..."` member cut off,
that is of `{..."prev":"..."}`: checking it needs no canonical-JSON rules, only the bytes. `prev` is the
hash of the line before (64 zeros on the first line of the log) and `seq` counts lines from 1; both run
on across files, so the first line of a new file carries the hash of the previous file's last line.
`received` is when EventFlow stored the event (its entry id), `logged` when this line was written.

What the chain catches: a changed line (its hash), a deleted, inserted or moved line or file (the `prev`
or `seq` of the first line after it). What it cannot catch alone: lines cut off the end (what remains is a
valid shorter chain) or a log rewritten with every hash recomputed. Copy the head that `verify` prints
(last seq and hash) somewhere the writer cannot change, and compare.

Durability and what a crash costs (`AuditWriter`): appends made while a write is in progress are
written and fsynced together (group commit) and each `write` returns only once its line is on disk; the
audit consumer acknowledges the event only then. A crash before the fsync may lose or tear the last
lines, but those events were never acknowledged, so they are delivered again (a torn last line is cut
off when the writer opens the log). A crash after the fsync but before the acknowledgement delivers
an event that is already in the log: the writer remembers the entries of the last `recent` lines
(reloaded from the end of the log when it opens) and skips it. Nothing is lost and nothing doubled,
except that an event delivered again after more than `recent` newer lines (a history replay into the
audit group) is written again, as a new line with the same `entry`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import fcntl
import hashlib
import logging
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import msgspec

from app.errors import EventFlowError
from app.events import Record, now_rfc3339

log = logging.getLogger("eventflow.audit")

GENESIS = "0" * 64  # the `prev` of the first line of a log
FILE_NAME = re.compile(r"^audit-(\d{6,})\.jsonl$")
LOCK_NAME = ".lock"
_HASH_MEMBER = b',"hash":"'
_SUFFIX_LEN = len(_HASH_MEMBER) + 64 + 2  # ,"hash":"<64 hex>"}
_HEX = frozenset(b"0123456789abcdef")
_encode = msgspec.json.Encoder().encode
_decode_any = msgspec.json.Decoder().decode


class AuditError(EventFlowError):
    """The audit log cannot be written or read as it is (damaged tail, locked, missing)."""

    title = "Audit log error"


class Line(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One audit line before sealing (field order is the line's order)."""

    seq: int
    entry: str
    partition: int
    id: str
    type: str
    source: str
    time: str | None = None
    subject: str | None = None
    received: str
    logged: str
    data: msgspec.Raw | None = None
    data_base64: str | None = None
    replay: str | None = None
    prev: str


# -- sealing and checking one line -------------------------------------------------------------


def seal(body: bytes) -> tuple[bytes, str]:
    """Append the hash member to an encoded `{...,"prev":"..."}` object: (line with newline, hash)."""
    digest = hashlib.sha256(body).hexdigest()
    return body[:-1] + _HASH_MEMBER + digest.encode() + b'"}\n', digest


def unseal(line: bytes) -> tuple[bytes, str] | None:
    """(the hashed body, the hash it claims) of one line without its newline, or None if unsealed."""
    if len(line) < _SUFFIX_LEN + 2 or not line.endswith(b'"}'):
        return None
    cut = len(line) - _SUFFIX_LEN
    claimed = line[cut + len(_HASH_MEMBER):-2]
    if line[cut:cut + len(_HASH_MEMBER)] != _HASH_MEMBER or not _HEX.issuperset(claimed):
        return None
    return line[:cut] + b"}", claimed.decode()


class _Bad(Exception):
    """One line breaks the chain; the message says how."""


def check_line(line: bytes, prev: str | None, seq: int | None) -> tuple[str, int, dict[str, Any]]:
    """Check one line (without newline) against the chain so far; (its hash, its seq, its fields).

    `prev`/`seq` None means "whatever this line says" (the first line of a single file checked alone)."""
    parts = unseal(line)
    if parts is None:
        raise _Bad("not a sealed audit line (no hash member at its end)")
    body, claimed = parts
    if hashlib.sha256(body).hexdigest() != claimed:
        raise _Bad("hash mismatch: the line was changed after it was written")
    try:
        fields = _chain_fields(body)
    except msgspec.DecodeError:
        raise _Bad("not valid JSON") from None
    if not isinstance(fields, dict) or not isinstance(fields.get("seq"), int) or not isinstance(
            fields.get("prev"), str):
        raise _Bad("not an audit line (no seq or prev)")
    if prev is not None and fields["prev"] != prev:
        where = "the log's first line must have prev = 64 zeros" if prev == GENESIS else \
            "prev is not the previous line's hash"
        raise _Bad(f"{where} (a line or file before it was deleted, inserted or moved)")
    if seq is not None and fields["seq"] != seq:
        raise _Bad(f"seq {fields['seq']}, expected {seq}")
    return claimed, fields["seq"], fields


def _chain_fields(body: bytes) -> Any:
    """A sealed line's JSON. Event data is copied verbatim, and a direct XADD (or an ingest that let it
    through) may carry bytes that are not UTF-8, numbers beyond int64/double, or nesting deeper than
    the decoder goes: the hash already vouches for the bytes, so read the chain's own fields past such
    data instead of calling the line damaged (which also stopped the writer from reopening the log)."""
    try:
        return _decode_any(body)
    except (UnicodeDecodeError, RecursionError, msgspec.ValidationError):  # ValidationError: number range
        head, prev = _CHAIN_HEAD.match(body), _CHAIN_TAIL.search(body)
        if head is None or prev is None:
            raise msgspec.DecodeError("not valid UTF-8 JSON") from None
        return {"seq": int(head[1]), "entry": head[2].decode(), "partition": int(head[3]), "prev": prev[1].decode()}


_CHAIN_HEAD = re.compile(rb'^\{"seq":(\d+),"entry":"([0-9-]+)","partition":(\d+),')
_CHAIN_TAIL = re.compile(rb',"prev":"([0-9a-f]{64})"\}$')


def body_of(seq: int, prev: str, partition: int, entry_id: str, fields: Mapping[bytes, bytes], logged: str) -> bytes:
    """The unsealed line for one log entry."""
    event = Record.from_entry(entry_id, partition, fields).event
    data = event.get("data")
    if isinstance(data, msgspec.Raw):
        # Producers' JSON is stored verbatim and may be pretty-printed; a JSON line must not break.
        raw = bytes(data)
        if b"\n" in raw or b"\r" in raw:
            data = msgspec.Raw(_encode(_decode_any(raw)))
    elif data is not None:
        data = msgspec.Raw(_encode(data))  # data of a direct XADD that is not JSON, kept as a string
    replay = fields.get(b"_replay")
    line = Line(
        seq=seq, entry=entry_id, partition=partition, id=str(event.get("id", entry_id)),
        type=str(event.get("type", "")), source=str(event.get("source", "")), time=_opt(event, "time"),
        subject=_opt(event, "subject"), received=_entry_time(entry_id), logged=logged, data=data,
        data_base64=_opt(event, "data_base64"), replay=replay.decode() if replay else None, prev=prev,
    )
    return _encode(line)


def _opt(event: Mapping[str, Any], name: str) -> str | None:
    value = event.get(name)
    return None if value is None else str(value)


def _entry_time(entry_id: str) -> str:
    ms = int(entry_id.partition("-")[0] or 0)
    moment = dt.datetime.fromtimestamp(ms / 1000, dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


# -- files ---------------------------------------------------------------------------------------


def log_files(folder: Path) -> list[Path]:
    """The log's files in chain order."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := FILE_NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def file_name(number: int) -> str:
    return f"audit-{number:06d}.jsonl"


def file_number(path: Path) -> int:
    match = FILE_NAME.match(path.name)
    return int(match.group(1)) if match else 0


def tail_lines(path: Path, count: int) -> list[bytes]:
    """The last `count` complete lines of a file (without newlines), read backwards in blocks."""
    with path.open("rb") as f:
        pos = f.seek(0, os.SEEK_END)
        buf = b""
        while pos > 0 and buf.count(b"\n") <= count:
            step = min(1 << 16, pos)
            pos -= step
            f.seek(pos)
            buf = f.read(step) + buf
    lines = buf.split(b"\n")[:-1]  # the part after the last newline is empty or torn
    if pos > 0:
        lines = lines[1:]  # the first piece may start mid-line
    return lines[-count:] if count else []


def cut_torn_tail(path: Path) -> int:
    """Cut an unterminated last line (a crash during a write) off a file; the bytes dropped."""
    with path.open("r+b") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return 0
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return 0
        pos, keep = size, 0
        while pos > 0 and not keep:
            step = min(1 << 16, pos)
            pos -= step
            f.seek(pos)
            newline = f.read(step).rfind(b"\n")
            if newline >= 0:
                keep = pos + newline + 1
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())
        return size - keep


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- verifying -----------------------------------------------------------------------------------


class Break(msgspec.Struct):
    """Where the chain first breaks: file, 1-based line number, and why."""

    file: str
    line: int
    reason: str


class Report(msgspec.Struct):
    """What `verify` found; `broken` is None when the whole chain holds."""

    path: str
    files: int
    lines: int
    last_seq: int
    last_hash: str
    broken: Break | None = None

    @property
    def ok(self) -> bool:
        return self.broken is None


def verify(path: str | Path) -> Report:
    """Check the whole chain of a log folder (from the genesis line, across files) or of one file
    (from whatever its first line claims); report the first broken line."""
    target = Path(path)
    if target.is_file():
        files, prev, seq = [target], None, None
    elif target.is_dir():
        files, prev, seq = log_files(target), GENESIS, 1
    else:
        raise AuditError(f"no audit log at {target}")
    report = Report(path=str(target), files=len(files), lines=0, last_seq=0, last_hash=prev or "")
    for file in files:
        for number, line, complete in _numbered_lines(file):
            try:
                if not complete:
                    raise _Bad("incomplete last line (a crash during a write; the writer cuts it off when it "
                               "next opens the log)")
                prev, got, _fields = check_line(line, prev, seq)
            except _Bad as exc:
                report.broken = Break(str(file), number, str(exc))
                return report
            seq = got + 1
            report.lines += 1
            report.last_seq, report.last_hash = got, prev
    return report


def _numbered_lines(path: Path) -> Iterator[tuple[int, bytes, bool]]:
    """(1-based number, line without newline, whether the newline was there) for each line."""
    with path.open("rb") as f:
        for number, raw in enumerate(f, 1):
            complete = raw.endswith(b"\n")
            yield number, raw[:-1] if complete else raw, complete


# -- writing -------------------------------------------------------------------------------------


class _Pending(msgspec.Struct):
    key: tuple[int, str]
    line: bytes
    done: asyncio.Future[None]


class AuditWriter:
    """The single writer of one log folder (an exclusive `flock` on `<folder>/.lock` while open).

    `write` is the whole API: it returns True once the entry's line is fsynced, False when the entry
    is already in the log (recently written or being written). See the module docstring for what a
    crash costs."""

    def __init__(self, folder: str | Path, rotate_bytes: int, *, recent: int = 10_000) -> None:
        self.folder = Path(folder)
        self.rotate_bytes = rotate_bytes
        self.recent = recent
        self.seq = 0  # the last line's seq (0: empty log)
        self.head = GENESIS  # the last line's hash
        self._seen: collections.OrderedDict[tuple[int, str], None] = collections.OrderedDict()
        self._unsynced: dict[tuple[int, str], asyncio.Future[None]] = {}
        self._queue: list[_Pending] = []
        self._flusher: asyncio.Task[None] | None = None
        self._lock: IO[bytes] | None = None
        self._file: IO[bytes] | None = None
        self._number = 0  # the current file's number (0: none yet)
        self._size = 0

    @property
    def is_open(self) -> bool:
        return self._lock is not None

    def open(self) -> None:
        """Lock the folder, cut a torn last line, and load the chain head and recent entries."""
        if self.is_open:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        lock = (self.folder / LOCK_NAME).open("ab")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise AuditError(f"another process is writing the audit log in {self.folder}") from None
        try:
            self._load()
        except BaseException:
            lock.close()
            raise
        self._lock = lock

    def _load(self) -> None:
        files = log_files(self.folder)
        self._file, self._seen = None, collections.OrderedDict()
        self.seq, self.head, self._number, self._size = 0, GENESIS, 0, 0
        if not files:
            return
        dropped = cut_torn_tail(files[-1])
        if dropped:
            log.warning("cut a torn last line (%d bytes) off %s: a crash during a write; the event "
                        "was not acknowledged and will be written again", dropped, files[-1])
        self._number, self._size = file_number(files[-1]), files[-1].stat().st_size
        lines: list[bytes] = []
        for path in reversed(files):  # usually the current file alone holds enough lines
            lines = tail_lines(path, self.recent - len(lines)) + lines
            if len(lines) >= self.recent:
                break
        prev: str | None = None
        for line in lines:
            try:
                prev, self.seq, fields = check_line(line, prev, None if prev is None else self.seq + 1)
            except _Bad as exc:
                raise AuditError(f"the end of the audit log in {self.folder} is damaged ({exc}); "
                                 "run `eventflow audit verify` and move the damaged files away") from None
            self._remember((int(fields.get("partition", 0)), str(fields.get("entry"))))
        self.head = prev or GENESIS

    def _remember(self, key: tuple[int, str]) -> None:
        self._seen[key] = None
        if len(self._seen) > self.recent:
            self._seen.popitem(last=False)

    async def write(self, partition: int, entry_id: str, fields: Mapping[bytes, bytes]) -> bool:
        """Append one log entry's line unless it is already there; return when it is on disk."""
        key = (partition, entry_id)
        inflight = self._unsynced.get(key)
        if inflight is not None:  # the same entry handed over twice at once: wait for the first
            await asyncio.shield(inflight)
            return False
        self.open()  # after a failed write this reloads the head and recent entries from disk
        if key in self._seen:
            return False
        body = body_of(self.seq + 1, self.head, partition, entry_id, fields, now_rfc3339())
        line, self.head = seal(body)
        self.seq += 1
        self._remember(key)
        done = asyncio.get_running_loop().create_future()
        self._unsynced[key] = done
        self._queue.append(_Pending(key, line, done))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        await asyncio.shield(done)
        return True

    async def _flush(self) -> None:
        """Write and fsync what is queued, again and again until nothing is (one task at a time)."""
        while self._queue:
            batch, self._queue = self._queue, []
            try:
                await asyncio.to_thread(self._write_lines, [p.line for p in batch])
            except Exception as exc:  # noqa: BLE001 - handed to every waiter, whose delivery is retried
                self._failed(batch + self._queue, exc)
                return
            for p in batch:
                self._unsynced.pop(p.key, None)
                if not p.done.done():
                    p.done.set_result(None)

    def _failed(self, lost: list[_Pending], exc: Exception) -> None:
        """A write failed: the in-memory chain is ahead of the file, so reload it from disk."""
        log.error("audit write failed (%s); %d line(s) will be delivered again", exc, len(lost))
        self._queue = []
        for p in lost:
            self._unsynced.pop(p.key, None)
            if not p.done.done():
                p.done.set_exception(AuditError(f"audit write failed: {exc}"))
        self.close()  # the next write reopens: cuts a torn line, reloads head and recent entries

    def _write_lines(self, lines: list[bytes]) -> None:
        """Runs in a thread: write and fsync, starting a new file before any line that would go into
        a file already at `rotate_bytes` or more."""
        chunk: list[bytes] = []
        for line in lines:
            if self._file is None or self._size >= self.rotate_bytes:
                self._sync(chunk)
                chunk = []
                self._next_file()
            chunk.append(line)
            self._size += len(line)
        self._sync(chunk)

    def _sync(self, chunk: list[bytes]) -> None:
        if chunk and self._file is not None:
            self._file.write(b"".join(chunk))
            self._file.flush()
            os.fsync(self._file.fileno())

    def _next_file(self) -> None:
        if self._file is None and self._number and self._size < self.rotate_bytes:
            self._file = (self.folder / file_name(self._number)).open("ab")  # carry on in the last file
            return
        if self._file is not None:
            self._file.close()
        self._number += 1
        self._file = (self.folder / file_name(self._number)).open("xb")
        self._size = 0
        _fsync_dir(self.folder)  # the new file's name must survive a crash too

    async def aclose(self) -> None:
        """Finish queued writes (also those queued meanwhile), then close."""
        while self._flusher is not None and not self._flusher.done():
            with contextlib.suppress(Exception):
                await self._flusher
        self.close()

    def close(self) -> None:
        """Close the file and release the folder lock. Not while a write may be in flight: use `aclose`."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._lock is not None:
            self._lock.close()  # releases the flock
            self._lock = None

"""The audit log format: chain hashing, verification, rotation, torn tails and duplicate entries."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
from pathlib import Path

import pytest

from app.audit import GENESIS, AuditError, AuditWriter, log_files, verify
from app.cli import main


def entry(i: int, data: bytes | None = None) -> tuple[int, str, dict[bytes, bytes]]:
    fields = {
        b"_v": b"1", b"id": f"ev-{i}".encode(), b"type": b"order.created", b"source": b"billing",
        b"time": b"2024-05-01T12:00:00.000Z", b"data": data if data is not None else f'{{"n":{i}}}'.encode(),
    }
    return 0, f"{1_714_564_800_000 + i}-0", fields


async def write(folder: Path, numbers: range, rotate_bytes: int = 1 << 20) -> AuditWriter:
    writer = AuditWriter(folder, rotate_bytes)
    for i in numbers:
        assert await writer.write(*entry(i))
    await writer.aclose()
    return writer


def lines_of(folder: Path) -> list[bytes]:
    return [line for path in log_files(folder) for line in path.read_bytes().splitlines()]


def rewrite(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(line + b"\n" for line in lines))


async def test_each_line_hashes_its_own_bytes_and_carries_the_previous_hash(tmp_path: Path) -> None:
    await write(tmp_path, range(4))
    prev = GENESIS
    for seq, line in enumerate(lines_of(tmp_path), 1):
        obj = json.loads(line)
        assert list(obj)[:2] == ["seq", "entry"] and list(obj)[-2:] == ["prev", "hash"]
        # An independent check of the documented rule: sha256 over the line minus its hash member.
        body = line[: line.rindex(b',"hash":"')] + b"}"
        assert hashlib.sha256(body).hexdigest() == obj["hash"]
        assert (obj["seq"], obj["prev"]) == (seq, prev)
        assert obj["data"] == {"n": seq - 1} and obj["type"] == "order.created"
        prev = obj["hash"]


async def test_an_intact_log_verifies_with_a_summary(tmp_path: Path) -> None:
    await write(tmp_path, range(5))
    report = verify(tmp_path)
    assert report.ok and (report.files, report.lines, report.last_seq) == (1, 5, 5)
    assert report.last_hash == json.loads(lines_of(tmp_path)[-1])["hash"]


async def test_a_changed_line_is_named(tmp_path: Path) -> None:
    await write(tmp_path, range(5))
    path = log_files(tmp_path)[0]
    lines = lines_of(tmp_path)
    lines[2] = lines[2].replace(b'"n":2', b'"n":9')
    rewrite(path, lines)
    broken = verify(tmp_path).broken
    assert broken is not None and (broken.file, broken.line) == (str(path), 3)
    assert "hash mismatch" in broken.reason


async def test_a_changed_line_with_a_recomputed_hash_breaks_the_next_link(tmp_path: Path) -> None:
    await write(tmp_path, range(5))
    lines = lines_of(tmp_path)
    obj = json.loads(lines[2])
    obj["data"] = {"n": 9}
    del obj["hash"]
    body = json.dumps(obj, separators=(",", ":")).encode()
    lines[2] = body[:-1] + b',"hash":"' + hashlib.sha256(body).hexdigest().encode() + b'"}'
    rewrite(log_files(tmp_path)[0], lines)
    broken = verify(tmp_path).broken
    assert broken is not None and broken.line == 4 and "prev" in broken.reason


async def test_a_deleted_line_is_found_at_the_line_after_it(tmp_path: Path) -> None:
    await write(tmp_path, range(5))
    lines = lines_of(tmp_path)
    del lines[2]
    rewrite(log_files(tmp_path)[0], lines)
    broken = verify(tmp_path).broken
    assert broken is not None and broken.line == 3 and "prev" in broken.reason


async def test_reordered_lines_are_found(tmp_path: Path) -> None:
    await write(tmp_path, range(5))
    lines = lines_of(tmp_path)
    lines[1], lines[2] = lines[2], lines[1]
    rewrite(log_files(tmp_path)[0], lines)
    broken = verify(tmp_path).broken
    assert broken is not None and broken.line == 2


async def test_the_chain_runs_across_rotated_files(tmp_path: Path) -> None:
    await write(tmp_path, range(12), rotate_bytes=900)
    files = log_files(tmp_path)
    assert len(files) >= 3
    assert [f.name for f in files][:2] == ["audit-000001.jsonl", "audit-000002.jsonl"]
    for before, after in itertools.pairwise(files):
        last = json.loads(before.read_bytes().splitlines()[-1])
        first = json.loads(after.read_bytes().splitlines()[0])
        assert (first["prev"], first["seq"]) == (last["hash"], last["seq"] + 1)
    report = verify(tmp_path)
    assert report.ok and (report.files, report.lines, report.last_seq) == (len(files), 12, 12)


async def test_a_change_in_a_later_file_names_that_file_and_line(tmp_path: Path) -> None:
    await write(tmp_path, range(12), rotate_bytes=900)
    second = log_files(tmp_path)[1]
    lines = second.read_bytes().splitlines()
    lines[1] = lines[1].replace(b"billing", b"billinG")
    rewrite(second, lines)
    broken = verify(tmp_path).broken
    assert broken is not None and (broken.file, broken.line) == (str(second), 2)


async def test_a_removed_first_file_is_found(tmp_path: Path) -> None:
    await write(tmp_path, range(12), rotate_bytes=900)
    files = log_files(tmp_path)
    files[0].unlink()
    broken = verify(tmp_path).broken
    assert broken is not None and (broken.file, broken.line) == (str(files[1]), 1)
    assert "64 zeros" in broken.reason


async def test_one_file_checks_on_its_own(tmp_path: Path) -> None:
    await write(tmp_path, range(12), rotate_bytes=900)
    report = verify(log_files(tmp_path)[1])
    assert report.ok and report.files == 1 and report.lines > 0


async def test_a_torn_last_line_is_reported_and_cut_off_when_the_writer_opens(tmp_path: Path) -> None:
    await write(tmp_path, range(3))
    path = log_files(tmp_path)[0]
    with path.open("ab") as f:
        f.write(b'{"seq":4,"entry":"17145648')
    broken = verify(tmp_path).broken
    assert broken is not None and broken.line == 4 and "incomplete" in broken.reason
    await write(tmp_path, range(3, 5))
    report = verify(tmp_path)
    assert report.ok and report.lines == 5


async def test_the_same_entry_is_written_once(tmp_path: Path) -> None:
    writer = AuditWriter(tmp_path, 1 << 20)
    assert await writer.write(*entry(1))
    assert not await writer.write(*entry(1))
    assert list(await asyncio.gather(writer.write(*entry(2)), writer.write(*entry(2)))) == [True, False]
    await writer.aclose()
    assert len(lines_of(tmp_path)) == 2


async def test_a_reopened_writer_remembers_the_tail_and_continues_the_chain(tmp_path: Path) -> None:
    first = await write(tmp_path, range(5))
    writer = AuditWriter(tmp_path, 1 << 20)
    writer.open()
    assert (writer.seq, writer.head) == (first.seq, first.head)
    assert not await writer.write(*entry(3))  # redelivered after a crash between write and ack
    assert await writer.write(*entry(5))
    await writer.aclose()
    report = verify(tmp_path)
    assert report.ok and report.lines == 6


async def test_pretty_printed_data_stays_on_one_line(tmp_path: Path) -> None:
    writer = AuditWriter(tmp_path, 1 << 20)
    await writer.write(*entry(1, data=b'{\n  "a": [1,\r\n 2]\n}'))
    await writer.aclose()
    (line,) = lines_of(tmp_path)
    assert json.loads(line)["data"] == {"a": [1, 2]}
    assert verify(tmp_path).ok


async def test_a_damaged_tail_stops_the_writer(tmp_path: Path) -> None:
    await write(tmp_path, range(3))
    lines = lines_of(tmp_path)
    lines[-1] = lines[-1].replace(b"billing", b"hacked!")
    rewrite(log_files(tmp_path)[0], lines)
    with pytest.raises(AuditError, match="damaged"):
        AuditWriter(tmp_path, 1 << 20).open()


def test_only_one_writer_holds_a_folder(tmp_path: Path) -> None:
    first = AuditWriter(tmp_path, 1 << 20)
    first.open()
    with pytest.raises(AuditError, match="another process"):
        AuditWriter(tmp_path, 1 << 20).open()
    first.close()
    second = AuditWriter(tmp_path, 1 << 20)
    second.open()
    second.close()


async def test_cli_verify_prints_a_summary_or_names_the_broken_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await write(tmp_path, range(3))
    assert main(["audit", "verify", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "intact" in out and "lines: 3" in out and json.loads(lines_of(tmp_path)[-1])["hash"] in out
    lines = lines_of(tmp_path)
    del lines[1]
    rewrite(log_files(tmp_path)[0], lines)
    assert main(["audit", "verify", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "audit-000001.jsonl line 2" in err


async def test_a_failed_write_is_retried_and_the_chain_stays_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = AuditWriter(tmp_path, 1 << 20)
    assert await writer.write(*entry(0))

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("app.audit.os.fsync", disk_full)
    with pytest.raises(AuditError, match="No space left"):
        await writer.write(*entry(1))
    monkeypatch.undo()
    # Delivered again: the line may or may not have reached the file; either way it is there once.
    await writer.write(*entry(1))
    assert await writer.write(*entry(2))
    await writer.aclose()
    assert [json.loads(line)["id"] for line in lines_of(tmp_path)] == ["ev-0", "ev-1", "ev-2"]
    assert verify(tmp_path).ok

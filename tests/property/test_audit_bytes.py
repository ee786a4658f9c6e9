"""Whatever bytes an event's data holds (a direct XADD is not validated before the audit consumer sees
it), once the audit writer has written the line, `verify` reads the chain and the writer reopens the
log after a restart. Before the fix, one line with invalid UTF-8 made both raise UnicodeDecodeError:
`eventflow audit verify` crashed, and every audit delivery after the next restart failed."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from app.audit import AuditWriter, verify
from tests.property.conftest import PROFILE

DATA = st.binary(max_size=60) | st.sampled_from([
    b'"\xff\xfe"', b'{"\xc0\xaf":1}', b'"\xed\xa0\x80"', b"[" * 3000 + b"]" * 3000, b"9" * 5000, b"1e400",
])


async def write_reopen_verify(folder: Path, data: list[bytes]) -> int:
    written = 0
    writer = AuditWriter(folder, 1 << 20)
    for n, value in enumerate(data):
        fields = {b"type": b"t", b"source": b"direct", b"data": value}
        try:
            await writer.write(0, f"1700000000000-{n}", fields)
        except (ValueError, RecursionError):
            continue  # not written: the consumer retries it and dead-letters it (see consumers/audit.py)
        written += 1
    await writer.aclose()
    reopened = AuditWriter(folder, 1 << 20)  # a restarted audit consumer reads the tail back
    await reopened.write(0, "1700000000001-0", {b"type": b"t", b"source": b"s", b"data": b"1"})
    await reopened.aclose()
    return written + 1


@PROFILE
@given(data=st.lists(DATA, min_size=1, max_size=4))
def test_any_data_the_writer_wrote_verifies_and_reopens(data: list[bytes]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        lines = asyncio.run(write_reopen_verify(Path(folder), data))
        report = verify(folder)
    assert report.ok, report.broken
    assert report.lines == lines

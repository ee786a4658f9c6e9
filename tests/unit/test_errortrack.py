"""Error grouping: what varies between occurrences is masked, so one failure kind is one group."""

from __future__ import annotations

import pytest

from app.errortrack import ErrorTracker, fingerprint, normalize
from app.settings import Settings


@pytest.mark.parametrize(("message", "expected"), [
    ("HTTP 503 from https://hooks.example.com/x after 2.5 s", "HTTP <n> from https://hooks.example.com/x after <n> s"),
    ("no order 'A-1234' for customer \"bob\"", "no order '?' for customer '?'"),
    ("event 0192f1c2-7a3b-7c4d-8e5f-0123456789ab failed", "event <uuid> failed"),
    ("entry 1795706608611-0 missing", "entry <entry> missing"),
    ("connect to 10.1.2.3:6379 refused", "connect to <ip> refused"),
    ("digest deadbeef00112233 mismatch", "digest <id> mismatch"),
    ("key efk_AbC123-x rejected", "key <id> rejected"),
    ("1 of 1 webhook deliveries failed: wh_a0457b9d64bacd3d: ConnectError: All connection attempts failed",
     "<n> of <n> webhook deliveries failed: <id>: ConnectError: All connection attempts failed"),
    ("HTTP/1.1 503 utf-8 http2", "HTTP/<n> <n> utf-<n> http<n>"),
    ("  spaces\n\tcollapse  ", "spaces collapse"),
])
def test_normalize_masks_numbers_ids_and_quoted_values(message: str, expected: str) -> None:
    assert normalize(message) == expected


def test_the_same_failure_with_other_values_is_one_group_and_other_consumers_are_not() -> None:
    a = fingerprint("notify", "HTTPError", normalize("HTTP 500 for event 'e1' after 31 ms"))
    b = fingerprint("notify", "HTTPError", normalize("HTTP 502 for event 'e9' after 7 ms"))
    assert a == b
    assert fingerprint("audit", "HTTPError", normalize("HTTP 500 for event 'e1' after 31 ms")) != a
    assert fingerprint("notify", "TimeoutError", normalize("HTTP 500 for event 'e1' after 31 ms")) != a


def test_notes_tally_in_memory_with_the_latest_samples_first() -> None:
    tracker = ErrorTracker(redis=None, settings=Settings())  # type: ignore[arg-type]
    for n in range(7):
        fp = tracker.note("notify", "TimeoutError", f"timed out after {n} s", f"ev-{n}", dead=n == 6)
    tracker.note("notify", "TimeoutError", "timed out after 9 s", "ev-5")  # a retry: still one sample
    tally = tracker._pending[fp]
    assert (tally.count, tally.dead, tally.message) == (8, 1, "timed out after <n> s")
    assert tally.samples == ["ev-6", "ev-5", "ev-4", "ev-3", "ev-2"]
    assert tally.example == "timed out after 0 s"

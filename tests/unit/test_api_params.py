"""Query parameters of GET /v1/events: times as RFC 3339 or epoch milliseconds."""

from __future__ import annotations

import datetime as dt

import pytest

from app.errors import FieldProblem
from app.web.api import _time_ms


def parse(value: str | None) -> tuple[int | None, list[FieldProblem]]:
    problems: list[FieldProblem] = []
    return _time_ms(value, "since", problems), problems


@pytest.mark.parametrize(
    ("value", "ms"),
    [
        ("1714557600000", 1_714_557_600_000),
        ("2024-05-01T10:00:00Z", 1_714_557_600_000),
        ("2024-05-01T12:00:00+02:00", 1_714_557_600_000),
        ("2024-05-01T10:00:00.123Z", 1_714_557_600_123),
        ("2024-05-01T10:00:00", 1_714_557_600_000),  # no offset: taken as UTC
    ],
)
def test_times_are_read_as_epoch_milliseconds(value: str, ms: int) -> None:
    assert parse(value) == (ms, [])


def test_millisecond_fractions_are_exact() -> None:
    # Float seconds times 1000 lands just below the integer for some values (0.6% of all ms).
    assert parse("2038-10-11T21:07:51.969Z")[0] == 2_170_444_071_969
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    for ms in range(0, 5000, 7):
        moment = start + dt.timedelta(milliseconds=ms)
        text = moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        assert parse(text)[0] == int(start.timestamp() * 1000) + ms, text


@pytest.mark.parametrize("value", [None, ""])
def test_absent_times_mean_no_bound(value: str | None) -> None:
    assert parse(value) == (None, [])


@pytest.mark.parametrize("value", ["yesterday", "2024-13-01T00:00:00Z", "-5", "²", "\u0661\u0662", "\uff11\uff12"])
def test_unreadable_times_are_reported_by_parameter(value: str) -> None:
    ms, problems = parse(value)
    assert ms is None
    assert [p.pointer for p in problems] == ["/since"]

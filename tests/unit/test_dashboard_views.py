"""The dashboard's pure parts: display filters, the chart's geometry, form times, redirects, the
client address behind a proxy, the throughput estimate, retention hold-backs and event traces."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import msgspec
import pytest
from litestar.connection import ASGIConnection

from app.dispatch import Attempt
from app.events import Record
from app.lifecycle import GroupState
from app.lifecycle import _state as lifecycle_state
from app.overview import GroupStatus, Throughput
from app.retention import Holdback
from app.service import EventDetail
from app.settings import Settings
from app.web.dashboard.auth import safe_next
from app.web.dashboard.charts import _nice_ceiling, bar_chart
from app.web.dashboard.pages import form_time, held_groups, lifecycle_partial, retention_policy
from app.web.dashboard.render import ago, duration, fmt_time, minute_ago, number, period, pretty_data, render
from app.web.dashboard.trace import trace_of
from app.web.security import client_address, is_https, tokens_match

NOW = 1_790_000_000_000


def test_times_and_durations_read_naturally() -> None:
    assert fmt_time(0) == "—"
    assert fmt_time(NOW) == "2026-09-21 14:13:20 UTC"
    assert ago(NOW - 5_000, NOW) == "5 s ago"
    assert ago(NOW - 3 * 60_000, NOW) == "3 min ago"
    assert ago(NOW - 5 * 3_600_000, NOW) == "5 h ago"
    assert ago(NOW - 2 * 86_400_000, NOW) == "2 d ago"
    assert ago(None) == "never"
    assert [duration(v) for v in (None, 2.345, 42, 1500, 300_000)] == ["—", "2.3 ms", "42 ms", "1.5 s", "5 min"]
    assert number(1234567) == "1\u202f234\u202f567"
    assert [period(s) for s in (0, 59.9, 60, 3599, 3600, 7500, 86_400, 90_000 + 59)] == [
        "0 s", "59 s", "1 min", "59 min", "1 h", "2 h 5 min", "1 d", "1 d 1 h"]
    minute = NOW // 60_000 * 60_000
    assert minute_ago(minute, minute + 59_999) == "this minute"
    assert minute_ago(minute - 60_000, minute + 1_000) == "1 min ago"


def test_event_data_is_pretty_printed_as_text() -> None:
    assert pretty_data(msgspec.Raw(b'{"a":[1,2]}')) == '{\n  "a": [\n    1,\n    2\n  ]\n}'
    assert pretty_data("plain") == "plain"
    assert pretty_data(None) == ""
    row = render("_event_row.html", record=_record('{"x": "<script>alert(1)</script>"}'), fresh=True)
    assert "<script>" not in row


def _record(data: str) -> Any:
    from app.events import Record

    return Record(entry_id="1-0", partition=0, direct=False,
                  event={"type": "<b>t</b>", "source": "s", "id": "i", "data": msgspec.Raw(data.encode())})


def test_the_chart_scales_to_a_round_maximum_and_keeps_small_bars_visible() -> None:
    points = [(NOW + i * 60_000, c) for i, c in enumerate([0, 1, 37, 0])]
    chart = bar_chart(points, width=400, height=100)
    assert chart.bars[0].height == 0
    assert chart.bars[1].height >= 1.5
    assert chart.bars[2].height == pytest.approx(96 * 37 / 50)
    assert [label for _, label in chart.gridlines] == ["25", "50"]
    assert (chart.peak, chart.total, chart.last) == (37, 38, 37)
    assert chart.bars[3].x + chart.bars[3].width <= 400
    assert [_nice_ceiling(v) for v in (0, 1, 3, 7, 10, 11, 4200)] == [0, 1, 5, 10, 10, 20, 5000]
    assert bar_chart([]).bars == []


@pytest.mark.parametrize(("given", "ms"), [
    ("2026-09-21T14:13", NOW - 20_000), ("2026-09-21T14:13:20", NOW), ("2026-09-21T14:13:20Z", NOW),
    (str(NOW), NOW), ("", None), (None, None),
])
def test_form_times_are_utc(given: str | None, ms: int | None) -> None:
    problems: list[str] = []
    assert form_time(given, "since", problems) == ms
    assert problems == []


def test_a_bad_form_time_is_a_message_not_an_error() -> None:
    problems: list[str] = []
    assert form_time("yesterday", "since", problems) is None
    assert problems and "is not a time" in problems[0]


@pytest.mark.parametrize(("target", "safe"), [
    ("/events?type=a", "/events?type=a"), ("//evil.example", "/"), ("https://evil.example", "/"),
    ("/\\evil", "/"), (None, "/"), ("", "/"), ("events", "/"),
])
def test_only_local_redirects(target: str | None, safe: str) -> None:
    assert safe_next(target) == safe


def _conn(headers: dict[str, str], scheme: str = "http") -> ASGIConnection[Any, Any, Any, Any]:
    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    return ASGIConnection({"type": "http", "scheme": scheme, "headers": raw, "client": ("10.0.0.5", 1234),
                           "path": "/", "query_string": b""})  # type: ignore[arg-type]


def test_the_client_address_comes_from_the_proxy_only_when_trusted() -> None:
    forwarded = {"X-Forwarded-For": "6.6.6.6, 203.0.113.7", "X-Forwarded-Proto": "https"}
    plain, trusting = Settings(), Settings(trust_proxy=True)
    assert client_address(_conn(forwarded), plain) == "10.0.0.5"
    assert client_address(_conn(forwarded), trusting) == "203.0.113.7"  # the hop the proxy added
    assert client_address(_conn({}), trusting) == "10.0.0.5"
    assert not is_https(_conn(forwarded), plain)
    assert is_https(_conn(forwarded), trusting)
    assert is_https(_conn({}, scheme="https"), plain)


def test_tokens_match_only_exactly() -> None:
    assert tokens_match("abc", "abc")
    assert not tokens_match("abc", "abd")
    assert not tokens_match("abc", None)
    assert not tokens_match("", "")


def _groups(**delivered: int) -> list[GroupStatus]:
    return [GroupStatus(name=n, pending=0, lag=0, dead_letters=0, consumers=[], delivered=d)
            for n, d in delivered.items()]


def test_throughput_is_the_change_in_deliveries_per_minute() -> None:
    rate = Throughput(window_s=300, min_span_s=5)
    rate.add(_groups(a=100, b=0), now=0.0)
    rate.add(_groups(a=110, b=0), now=2.0)
    assert rate.per_minute() == {}  # too short a span to say
    rate.add(_groups(a=160, b=30, c=5), now=30.0)
    assert rate.per_minute() == {"a": 120.0, "b": 60.0}
    for t in range(31, 400, 10):
        rate.add(_groups(a=160, b=30), now=float(t))
    assert rate.per_minute() == {"a": 0.0, "b": 0.0}  # old samples fall out of the window


def _held(group: str, partition: int, overdue_s: float, excess: int, lag: int | None = 3) -> Holdback:
    return Holdback(partition=partition, group=group, safe_point="1-0", pending=1, lag=lag, overdue_s=overdue_s,
                    excess_entries=excess)


def test_hold_backs_are_summed_per_group_worst_first() -> None:
    held = held_groups([_held("slow", 0, 0.0, 10), _held("stuck", 0, 7200.0, 10), _held("slow", 1, 30.0, 5, None)])
    assert [(g.group, g.partitions, g.overdue_s, g.excess_entries, g.pending, g.lag) for g in held] == [
        ("stuck", [0], 7200.0, 10, 1, 3), ("slow", [0, 1], 30.0, 15, 2, None)]
    assert held_groups([]) == []
    assert retention_policy(Settings()) == ""
    assert retention_policy(Settings(retention_s=7 * 86_400, retention_max_entries=100_000)) == (
        "keep 7 d, at most 100\u202f000 entries per partition")


TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def _detail(traceparent: str | None, deliveries: list[GroupState]) -> EventDetail:
    event = {"type": "t", "source": "s", "id": "i"} | ({"traceparent": traceparent} if traceparent else {})
    return EventDetail(entry_id="1-0", partition=0, direct=False, event=event, deliveries=deliveries)


def test_the_trace_lists_each_recorded_attempt_under_the_event_s_parent_span() -> None:
    retried = GroupState(group="mail", state="succeeded", attempts=[
        Attempt(attempt=1, outcome="failed", at_ms=1, consumer="w1", duration_ms=2.0, span_id="a" * 16),
        Attempt(attempt=1, outcome="replayed", at_ms=2),  # a replay is not an attempt: no span
        Attempt(attempt=2, outcome="succeeded", at_ms=3, consumer="w2", duration_ms=1.0, span_id="b" * 16)])
    first_time = GroupState(group="ledger", state="succeeded")
    waiting = GroupState(group="slow", state="pending")
    trace = trace_of(_detail(TRACEPARENT, [first_time, retried, waiting]))
    assert trace is not None
    assert (trace.trace_id, trace.parent_span_id, trace.sampled) == (
        "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", True)
    assert [(s.span_id, s.group, s.attempt, s.outcome) for s in trace.spans] == [
        ("a" * 16, "mail", 1, "failed"), ("b" * 16, "mail", 2, "succeeded")]
    assert trace.unrecorded == ["ledger"]
    assert trace_of(_detail(None, [])) is None
    assert trace_of(_detail("00-not-a-trace", [])) is None


def test_no_dashboard_module_talks_to_redis_itself() -> None:
    """Pages read and change data through the service layer only (the public API's), never Redis."""
    web = Path(__file__).resolve().parents[2] / "app" / "web"
    for module in [*sorted((web / "dashboard").glob("*.py")), web / "sse.py"]:
        tree = ast.parse(module.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                assert not any(n.split(".")[0] == "redis" for n in names), f"{module.name} imports redis"
            if isinstance(node, ast.Attribute):
                assert node.attr not in ("redis", "execute_command", "pipeline"), f"{module.name}: .{node.attr}"


def test_an_attempt_whose_worker_stopped_shows_as_never_finished_and_finished_starts_are_folded() -> None:
    # Every attempt after the first is recorded as it starts (so one that kills its worker counts);
    # a start followed by its own outcome says nothing more, one followed by the next attempt never ended.
    records = [Attempt(attempt=2, outcome="started", at_ms=1, consumer="w1"),
               Attempt(attempt=3, outcome="started", at_ms=2, consumer="w1"),
               Attempt(attempt=3, outcome="failed", at_ms=3, consumer="w1", error="boom", next_at_ms=9),
               Attempt(attempt=4, outcome="started", at_ms=4, consumer="w2")]
    group = {"name": b"mail", "last-delivered-id": b"1-0"}
    record = Record(entry_id="1-0", partition=0, direct=False, event={"type": "t"})
    pel = [{"consumer": b"w2", "time_since_delivered": 1500}]
    state = lifecycle_state(record, group, None, records, pel)
    assert [(a.attempt, a.outcome) for a in state.attempts] == [(2, "started"), (3, "failed"), (4, "started")]
    assert (state.state, state.attempt, state.consumer, state.idle_ms) == ("in-progress", 4, "w2", 1500)
    html = lifecycle_partial(_detail(None, [state]))
    assert "Attempt 2 never finished: its worker stopped" in html
    # Attempt 1 keeps no record, so the timeline began at "Attempt 2": where did 1 go? Said, before 2.
    assert html.index("Attempt 1 left no record") < html.index("Attempt 2 never finished")
    assert "its worker stopped before it ended" in html
    assert "Attempt 3 failed" in html
    assert "Attempt 4 started" in html
    # The PEL's idle time restarts at every lease renewal (a third of lease_s): a handler hung for
    # minutes showed as "being handled for 1.0 s". Said for what it is.
    assert "being handled by w2; its lease taken or renewed 1.5 s ago" in html
    assert "for 1.5 s" not in html
    finished = lifecycle_state(record, group, None, [*records, Attempt(attempt=4, outcome="succeeded", at_ms=5)], [])
    assert [(a.attempt, a.outcome) for a in finished.attempts][-1] == (4, "succeeded")
    assert finished.state == "succeeded"
    failed_first = [Attempt(attempt=1, outcome="failed", at_ms=1, consumer="w1", error="boom", next_at_ms=2),
                    Attempt(attempt=2, outcome="started", at_ms=3, consumer="w1")]
    html = lifecycle_partial(_detail(None, [lifecycle_state(record, group, None, failed_first, pel)]))
    assert "Attempt 1 failed" in html and "left no record" not in html
    assert (4, "started") not in [(a.attempt, a.outcome) for a in finished.attempts]

"""Log lines: JSON with context fields, readable text in the dev command, and never a secret."""

from __future__ import annotations

import json
import logging

from app.logs import JsonFormatter, Redactor, TextFormatter, secret_values
from app.settings import Settings


def record(msg: str, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("eventflow.consumers", logging.WARNING, __file__, 1, msg, None, None)
    rec.__dict__.update(extra)
    return rec


def test_json_lines_carry_the_context_fields() -> None:
    line = JsonFormatter().format(record("delivery failed", event_id="e1", group="notify", attempt=2,
                                         trace_id="4bf92f3577b34da6a3ce929d0e0e4736", span_id=None))
    out = json.loads(line)
    assert (out["msg"], out["event_id"], out["group"], out["attempt"]) == ("delivery failed", "e1", "notify", 2)
    assert "span_id" not in out  # None is left out
    assert out["level"] == "warning" and out["ts"].endswith("Z")


def test_text_lines_are_readable_and_keep_the_context() -> None:
    line = TextFormatter().format(record("delivery failed", event_id="e1", group="notify"))
    assert "WARNING" in line and "eventflow.consumers: delivery failed  event_id=e1 group=notify" in line


def test_secrets_are_scrubbed_by_pattern_and_by_value() -> None:
    settings = Settings(api_token="op-canary-token-0001", metrics_token="metrics-canary-0002",
                        redis_url="redis://default:redis-canary-0003@db:6379/0", sentry_dsn="https://k@s.io/1")
    redact = Redactor(secret_values(settings))
    line = redact(
        "Authorization: Bearer abc.def.ghi, key efk_Secret123, redis://:pw-0004@h:1, password=hunter22 "
        '{"token": "tok-0005"} op-canary-token-0001 metrics-canary-0002 redis-canary-0003 https://k@s.io/1'
    )
    for leaked in ("abc.def.ghi", "efk_Secret123", "pw-0004", "hunter22", "tok-0005", "op-canary-token-0001",
                   "metrics-canary-0002", "redis-canary-0003", "https://k@s.io/1"):
        assert leaked not in line, leaked
    assert redact("no secrets in 12 tokens here") == "no secrets in 12 tokens here"

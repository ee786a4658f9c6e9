"""Trace context helpers, and OpenTelemetry/Sentry staying out of the process unless configured."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from app.settings import Settings
from app.tracing import child, from_settings, parse, trace_id_of

TP = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_parse_splits_a_valid_traceparent_and_refuses_others() -> None:
    ctx = parse(TP)
    assert ctx is not None
    assert (ctx.trace_id, ctx.span_id, ctx.sampled) == ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", True)
    assert parse(TP[:-2] + "00").sampled is False  # type: ignore[union-attr]
    for bad in (None, "", "garbage", "00-" + "0" * 32 + "-00f067aa0ba902b7-01", "ff" + TP[2:]):
        assert parse(bad) is None
    assert trace_id_of(TP) == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert trace_id_of("nope") is None


def test_child_keeps_the_trace_and_flags_and_swaps_the_span() -> None:
    assert child(TP, "1111111111111111") == "00-4bf92f3577b34da6a3ce929d0e0e4736-1111111111111111-01"


def test_without_an_endpoint_there_is_no_tracer() -> None:
    assert from_settings(Settings(), "web") is None


def test_the_core_runs_without_opentelemetry_or_sentry_installed() -> None:
    # The optional extras are hidden from this interpreter; everything must still import and build,
    # and setting their variables without the extras only logs a warning.
    script = """
import sys
class Hide:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("opentelemetry", "sentry_sdk"):
            raise ModuleNotFoundError(name)
sys.meta_path.insert(0, Hide())
from redis.asyncio import Redis
from app.dispatch import Dispatch
from app.settings import Settings
from app.tracing import from_settings
from app.errortrack import reporter_from_settings
from app.web import create_app
from consumers.runner import Observers
from consumers.cli import builtin
settings = Settings(redis_url="redis://127.0.0.1:1/0")
create_app(settings)
observers = Observers.from_settings(Dispatch(Redis.from_url(settings.redis_url), settings))
assert observers.tracer is None and observers.errors.reporter is None
wanted = settings.replace(otel_endpoint="http://127.0.0.1:4318", sentry_dsn="http://k@127.0.0.1:1/1")
assert from_settings(wanted, "web") is None and reporter_from_settings(wanted) is None
assert not [m for m in sys.modules if m.startswith(("opentelemetry", "sentry_sdk"))]
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stdout + done.stderr

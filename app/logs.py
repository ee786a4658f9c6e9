"""Logging: one JSON object per line in production, readable lines in the dev command.

Records carry their context as `extra=` fields (event_id, event_type, group, attempt, trace_id,
span_id in the runner; route, status, duration_ms in request logs). Secrets never reach the output:
every line is scrubbed of bearer tokens, producer keys, URL passwords, `password=`-style pairs and
the literal values of the secret settings (EVENTFLOW_API_TOKEN, EVENTFLOW_METRICS_TOKEN, the
password in REDIS_URL, SENTRY_DSN).
"""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

import msgspec

from app.settings import Settings

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}
_SECRET_PATTERNS = [
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{4,}"), r"\1 ***"),
    (re.compile(r"\befk_[A-Za-z0-9_-]+"), "efk_***"),
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^:/@\s\"']*):[^@/\s\"']+@"), r"\1:***@"),
    (re.compile(r"(?i)\b(password|passwd|secret|token|api[_-]?key|authorization|cookie)(\\?[\"']?\s*[:=]\s*\\?[\"']?)"
                r"(?!\*\*\*)[^\s\"',;&}\\]+"), r"\1\2***"),
]


class Redactor:
    """Scrubs secrets out of a formatted log line."""

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        self.secrets = sorted({s for s in secrets if s and len(s) >= 6}, key=len, reverse=True)

    def __call__(self, line: str) -> str:
        for secret in self.secrets:
            if secret in line:
                line = line.replace(secret, "***")
        for pattern, replacement in _SECRET_PATTERNS:
            line = pattern.sub(replacement, line)
        return line


def secret_values(settings: Settings) -> list[str | None]:
    """The literal values of the settings that are secrets."""
    password = urlsplit(settings.redis_url).password if settings.redis_url else None
    return [settings.api_token, settings.metrics_token, password, settings.sentry_dsn]


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_") and v is not None}


class JsonFormatter(logging.Formatter):
    """`{"ts", "level", "logger", "msg", ...extra}`; extras come from `log.info(..., extra={})`."""

    def __init__(self, redact: Redactor | None = None) -> None:
        super().__init__()
        self.redact = redact or Redactor()

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update(_extras(record))
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return self.redact(msgspec.json.encode(out, enc_hook=str).decode())


class TextFormatter(logging.Formatter):
    """`time level logger: message  key=value ...` for people (the dev command)."""

    def __init__(self, redact: Redactor | None = None) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
        self.redact = redact or Redactor()

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = _extras(record)
        if extras:
            context = "  " + " ".join(f"{k}={v}" for k, v in extras.items())
            head, sep, tail = line.partition("\n")  # keep a traceback below the context
            line = head + context + sep + tail
        return self.redact(line)


def configure_logging(settings: Settings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    redact = Redactor(secret_values(settings))
    handler.setFormatter(JsonFormatter(redact) if settings.log_format == "json" else TextFormatter(redact))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())

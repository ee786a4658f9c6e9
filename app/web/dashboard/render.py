"""Rendering: the Jinja environment (autoescaped), display filters, and the page and partial helpers.

Pages and their live partials render from the same context-building functions, so a row that
arrives over server-sent events looks exactly like one rendered with the page. We use a Jinja
environment of our own rather than Litestar's `Template` response because the live feed needs
partials as strings outside any request.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import time
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import jinja2
import msgspec
from litestar import Request, Response
from litestar.enums import MediaType

from app.events import Record

TEMPLATES = Path(__file__).resolve().parents[3] / "templates"
STATIC = Path(__file__).resolve().parents[2] / "static"

AnyRequest = Request[Any, Any, Any]


def fmt_time(ms: int | None) -> str:
    """Milliseconds since the epoch as `2026-11-26 15:31:38 UTC`."""
    if not ms:
        return "—"
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def iso(ms: int | None) -> str:
    """Machine-readable time for `<time datetime=...>`."""
    if not ms:
        return ""
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def picker_time(ms: int | None) -> str:
    """A time as `<input type=datetime-local>` takes it (UTC, to the millisecond when it has them):
    a filter given in RFC 3339 or ms shows in the picker, and the next Filter click keeps it."""
    if ms is None:
        return ""
    text = dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return text + (f".{ms % 1000:03d}" if ms % 1000 else "")


def ago(ms: int | None, now_ms: int | None = None) -> str:
    """`12 s ago`, `3 min ago`, `5 h ago`, `2 d ago`."""
    if not ms:
        return "never"
    delta_s = max(0, ((now_ms or time.time_ns() // 1_000_000) - ms) // 1000)
    for unit, size in (("d", 86_400), ("h", 3600), ("min", 60)):
        if delta_s >= size:
            return f"{delta_s // size} {unit} ago"
    return f"{delta_s} s ago"


def minute_ago(ms: int | None, now_ms: int | None = None) -> str:
    """When a per-minute count was last non-zero, to the minute: `this minute`, else like `ago`."""
    now = now_ms or time.time_ns() // 1_000_000
    if ms and ms // 60_000 == now // 60_000:
        return "this minute"
    return ago(ms, now)


def duration(ms: float | int | None) -> str:
    if ms is None:
        return "—"
    if ms < 1000:
        return f"{ms:.0f} ms" if ms >= 10 else f"{ms:.1f} ms"
    if ms < 120_000:
        return f"{ms / 1000:.1f} s"
    return f"{ms / 60_000:.0f} min"


def period(seconds: float | int) -> str:
    """A length of time, two units at most: `45 s`, `12 min`, `2 h 5 min`, `3 d 4 h`."""
    s = int(seconds)
    if s < 60:
        return f"{s} s"
    for unit, size, small, small_size in (("d", 86_400, "h", 3600), ("h", 3600, "min", 60)):
        if s >= size:
            rest = s % size // small_size
            return f"{s // size} {unit}" + (f" {rest} {small}" if rest else "")
    return f"{s // 60} min"


def entry_ms(entry_id: str) -> int:
    return int(entry_id.partition("-")[0] or 0)


def pretty_data(data: Any) -> str:
    """An event's data as indented JSON text (shown escaped, inside <pre>)."""
    if data is None:
        return ""
    if isinstance(data, msgspec.Raw):
        try:
            return msgspec.json.format(bytes(data), indent=2).decode()
        except msgspec.DecodeError:
            return bytes(data).decode(errors="replace")
    if isinstance(data, str):
        return data
    return msgspec.json.format(msgspec.json.encode(data), indent=2).decode()


def number(value: int | float | None) -> str:
    if value is None:
        return "—"
    return f"{value:,}".replace(",", "\u202f")  # a narrow no-break space groups thousands


def state_tone(state: str) -> str:
    """The badge colour of a lifecycle or status word."""
    return _TONES.get(state, "neutral")


_TONES = {
    "succeeded": "ok", "active": "ok", "enabled": "ok", "ok": "ok", "admin": "accent",
    "pending": "info", "in-progress": "info", "replayed": "info", "viewer": "neutral",
    "retrying": "warn", "failed": "warn", "max-attempts": "warn", "flagged": "warn", "warn": "warn",
    "enforce": "accent", "off": "muted", "rejected": "bad",
    "dead-lettered": "bad", "permanent": "bad", "invalid": "bad", "revoked": "bad", "disabled": "muted",
    "skipped": "muted",
}


@cache
def static_version(name: str) -> str:
    """A content hash for cache busting: `/static/app.css?v=1a2b3c4d`."""
    return hashlib.sha256((STATIC / name).read_bytes()).hexdigest()[:10]


def static_url(name: str) -> str:
    return f"/static/{name}?v={static_version(name)}"


def event_url(record_or_entry: Record | str) -> str:
    entry = record_or_entry if isinstance(record_or_entry, str) else record_or_entry.entry_id
    return "/events/" + quote(entry, safe="")


# The most of one field a refused form carries back in its redirect, in UTF-8 bytes: as much as any
# of the forms' fields accepts (a webhook URL; a 500-character description even of emoji), so what an
# operator typed comes back whole, while a forged megabyte does not make a Location no browser (and
# no server: granian answers an address over 64 kB with 414) would follow.
MAX_KEPT = 2048


def kept(value: object) -> str:
    """A form field's text as a refused form's redirect carries it back (at most MAX_KEPT bytes)."""
    return str(value or "").encode()[:MAX_KEPT].decode(errors="ignore")


def query_url(path: str, **params: Any) -> str:
    kept = {k: v for k, v in params.items() if v not in (None, "", [])}
    return f"{path}?{urlencode(kept, doseq=True)}" if kept else path


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,  # every value is text unless a template says otherwise (none does)
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(time=fmt_time, iso=iso, ago=ago, duration=duration, period=period, minute_ago=minute_ago,
                       entry_ms=entry_ms, pretty=pretty_data, number=number, tone=state_tone)
    env.globals.update(static_url=static_url, event_url=event_url, query_url=query_url, quote=quote)
    return env


ENV = _environment()


def render(template: str, **context: Any) -> str:
    return ENV.get_template(template).render(**context)


def page(request: AnyRequest, template: str, *, status: int = 200, headers: dict[str, str] | None = None,
         **context: Any) -> Response[str]:
    """A full page: the template plus what the layout needs (operator, CSRF token, notices)."""
    loaded = getattr(request.state, "operator", None)
    base = {
        "operator": loaded.session if loaded else None,
        "csrf_token": loaded.session.csrf if loaded else "",
        "flashes": loaded.flashes if loaded else [],
        "path": request.url.path,
    }
    html = render(template, **base, **context)
    # Operator data stays out of shared caches and the browser's disk cache (shared computers).
    return Response(html, status_code=status, media_type=MediaType.HTML,
                    headers={"Cache-Control": "no-store", **(headers or {})})


def event_row_fields(record: Record) -> dict[str, Any]:
    """What the live feed sends for one row of the events table: the page's script builds the row
    from these (the same markup as `_event_row.html`; tests/browser compares the two). About a third
    of the bytes of the rendered row, for every viewer: with 1,000 viewers at 1k events/s that is
    ~160 MB/s less to write, and the web process renders no template per entry."""
    event = record.event
    return {"entry_id": record.entry_id, "type": event.get("type", ""), "source": event.get("source", ""),
            "subject": event.get("subject"), "id": event.get("id", ""), "invalid": bool(record.problems)}

"""What a consumer is: a name (its consumer group), the event types it wants, an async handler, and
its delivery settings. Handler outcomes:

    return                     acknowledged
    raise Retry(delay_s=...)   retried after that delay (counts as an attempt)
    raise Permanent(...)       dead-lettered at once
    raise <anything else>      retried with exponential backoff and jitter, dead-lettered after
                               max_attempts
"""

from __future__ import annotations

import fnmatch
import math
import random
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

import msgspec

from app.dispatch import Pending
from app.errors import ConfigError
from app.events import Record
from app.ids import new_span_id


class Retry(Exception):
    """Ask for another attempt after `delay_s` seconds (a delay that is no finite number gets the
    backoff; one past EVENTFLOW_ATTEMPTS_TTL_S is cut to it, so the attempt count is not forgotten)."""

    def __init__(self, delay_s: float, reason: str = "retry requested") -> None:
        super().__init__(reason)
        self.delay_s = delay_s


class Permanent(Exception):
    """This event can never succeed here: dead-letter it now."""


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with proportional jitter and a cap: base * factor^(attempt-1), +-jitter."""

    base_s: float = 1.0
    factor: float = 2.0
    cap_s: float = 300.0
    jitter: float = 0.2

    def delay_s(self, attempt: int, rng: random.Random | None = None) -> float:
        """The wait before attempt `attempt + 1`, after attempt number `attempt` failed."""
        raw = min(self.cap_s, self.base_s * self.factor ** max(0, attempt - 1))
        spread = raw * self.jitter * (2 * (rng or random).random() - 1)
        return max(0.0, min(self.cap_s, raw + spread))


Handler = Callable[["Delivery"], Awaitable[Any]]


@dataclass(frozen=True)
class Consumer:
    """A consumer group and how its events are delivered."""

    name: str
    handler: Handler
    types: Sequence[str] = ("*",)
    max_attempts: int = 5
    backoff: Backoff = field(default_factory=Backoff)
    concurrency: int = 16
    batch_size: int = 100
    lease_s: float = 30.0
    # A handler running longer is stopped and the attempt fails (retried with the backoff); None: no
    # limit. Without one, a hung handler kept its event in hand, its lease renewed, for ever.
    timeout_s: float | None = 300.0
    start: Literal["beginning", "now"] = "beginning"
    # One partition key at a time, in log order: a later event runs only once the one before it
    # succeeded or was dead-lettered (its retries wait in place, holding up that key and its lane).
    ordered: bool = False
    description: str = ""
    close: Callable[[], Awaitable[None]] | None = None  # releases the handler's resources at shutdown

    def __post_init__(self) -> None:
        # Refused at start-up, before a message is read: a lease of 0 reclaimed every delivery while
        # it ran (dozens of deliveries a second of one event), a negative or NaN one read nothing, a
        # mistyped `start` began at the end of the log, and one string of types was its characters.
        problems = []
        if not (isinstance(self.lease_s, int | float) and 0 < self.lease_s < math.inf):
            problems.append(f"lease_s must be a positive number of seconds, not {self.lease_s!r}")
        timeout_s = self.timeout_s
        if timeout_s is not None and not (isinstance(timeout_s, int | float) and 0 < timeout_s < math.inf):
            problems.append(f"timeout_s must be a positive number of seconds or None, not {self.timeout_s!r}")
        if self.start not in ("beginning", "now"):
            problems.append(f"start must be 'beginning' or 'now', not {self.start!r}")
        if isinstance(self.types, str):
            problems.append(f"types is a list of type names or patterns: [{self.types!r}], not {self.types!r}")
        if problems:
            raise ConfigError(f"consumer {self.name!r}: {'; '.join(problems)}")

    @cached_property
    def _pattern(self) -> re.Pattern[str]:
        return re.compile("|".join(f"(?:{fnmatch.translate(t)})" for t in self.types) or "(?!)")

    def wants(self, event_type: str) -> bool:
        """True when the handler should see events of this type (exact names or glob patterns)."""
        return self._pattern.match(event_type) is not None

    def spec(self) -> dict[str, Any]:
        """What the dashboard and lifecycle views need to know about this consumer."""
        return {
            "name": self.name, "types": list(self.types), "max_attempts": self.max_attempts,
            "backoff": {"base_s": self.backoff.base_s, "factor": self.backoff.factor,
                        "cap_s": self.backoff.cap_s, "jitter": self.backoff.jitter},
            "concurrency": self.concurrency, "batch_size": self.batch_size, "lease_s": self.lease_s,
            "timeout_s": self.timeout_s,
            "start": self.start, "ordered": self.ordered, "description": self.description,
        }


def consumer(name: str, *, types: Sequence[str] = ("*",), **options: Any) -> Callable[[Handler], Consumer]:
    """Decorator: `@consumer("emails", types=["user.*"])` above an async handler makes a Consumer."""

    def wrap(handler: Handler) -> Consumer:
        # A lone string is left as it is, for Consumer to refuse (as a tuple it would be its characters).
        return Consumer(name=name, handler=handler, types=types if isinstance(types, str) else tuple(types), **options)

    return wrap


class Delivery:
    """One event handed to a handler: the CloudEvent, its place in the log, and the attempt."""

    __slots__ = ("__dict__", "attempt", "group", "pending")

    def __init__(self, pending: Pending, group: str, attempt: int) -> None:
        self.pending = pending
        self.group = group
        self.attempt = attempt

    @cached_property
    def span_id(self) -> str:
        """This attempt's span under the event's trace (made when first asked for)."""
        return new_span_id()

    @property
    def entry_id(self) -> str:
        return self.pending.entry_id

    @property
    def partition(self) -> int:
        return self.pending.partition

    @property
    def replay(self) -> bool:
        """True when this delivery comes from a dead-letter or history replay."""
        return self.pending.kind != "l"

    @cached_property
    def record(self) -> Record:
        return Record.from_entry(self.pending.entry_id, self.pending.partition, self.pending.fields)

    @property
    def event(self) -> dict[str, Any]:
        """The CloudEvent attributes (data still as raw JSON: use `.data`)."""
        return self.record.event

    @property
    def type(self) -> str:
        return self.pending.fields.get(b"type", b"").decode("utf-8", "replace")

    @property
    def id(self) -> str:
        return str(self.event.get("id", self.entry_id))

    @cached_property
    def data(self) -> Any:
        """The event's data, decoded from JSON (None when absent)."""
        raw = self.event.get("data")
        if isinstance(raw, msgspec.Raw):
            return msgspec.json.decode(raw)
        return raw

    @property
    def traceparent(self) -> str:
        """This attempt's trace context: the event's trace id with this attempt's span id."""
        parent = str(self.event.get("traceparent", ""))
        if len(parent) == 55:
            return f"{parent[:36]}{self.span_id}{parent[52:]}"
        return parent

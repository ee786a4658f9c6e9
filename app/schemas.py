"""Event types: a registry of types, each with versioned JSON Schemas (draft 2020-12) for its `data`.

An event of a registered type is checked against the type's current schema version at ingest
(`check_incoming`) and, for entries written straight into the stream, by the dispatcher
(`problems_of`). What a failing event gets depends on the type's mode:

    enforce   rejected at ingest (422, a JSON pointer and the failing keyword per problem);
              dead-lettered by the dispatcher when it was written directly
    warn      accepted, counted, and flagged with the extension attribute `schemaerrors`
    off       not checked

Checked events carry the version in CloudEvents `dataschema` (`urn:eventflow:schema:<type>:<n>`)
unless the producer set one. `EVENTFLOW_UNKNOWN_TYPES` says what happens to unregistered types.

Storage: see the "event types" keys in app/keys.py; they share one hash tag, so a new version is
saved by one script (type_version.lua). Versions are never changed or deleted.

Every process keeps compiled validators (jsonschema-rs) for each type's current version and polls
the registry's change counter at most once every `REFRESH_S`: no Redis round trip per event.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import logging
import time
import weakref
from collections.abc import Sequence
from typing import Any, NamedTuple
from urllib.parse import quote

import msgspec
from redis.asyncio import Redis

from app.connections import redis_errors, transaction
from app.errors import Conflict, FieldProblem, InvalidEvent, NotFound
from app.events import Incoming, Record
from app.keys import Keys
from app.metrics import default_metrics
from app.scripts import source
from app.settings import Settings
from app.store import EventLog, Query
from app.validation import (
    RecentCheck,
    check_records,
    compile_schema,
    flag_text,
    incoming_instance,
    problems,
    record_instance,
)

log = logging.getLogger("eventflow.schemas")

REFRESH_S = 1.0  # longest time a process validates with a schema that was replaced elsewhere
FLAG = "schemaerrors"  # extension attribute marking an event accepted in warn mode
RECENT_FAILURES = 20  # kept per type for the dashboard
_MAX_PENDING = 1000  # failure records waiting to be written (the oldest are dropped beyond)

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode
_NOT_LOADED = object()


class Mode(enum.StrEnum):
    ENFORCE = "enforce"
    WARN = "warn"
    OFF = "off"


# Free text kept with a type and its versions, in characters: a type's description (a paragraph), who
# owns it (a team, a person) and a version's note. Checked wherever it arrives (HTTP, the CLI), so no
# one stores a megabyte that every Types page then reads and shows.
MAX_TEXT = {"description": 2000, "owner": 200, "note": 2000}


def check_text(fields: dict[str, str | None], pointer: str = "/{}") -> None:
    """InvalidEvent naming every free-text field longer than its cap (`pointer` formats each field's
    name: `/description` over HTTP, `--description` on the command line)."""
    problems = [FieldProblem(pointer.format(name), f"at most {MAX_TEXT[name]} characters")
                for name, value in fields.items() if value is not None and len(value) > MAX_TEXT[name]]
    if problems:
        raise InvalidEvent(problems)


class EventType(msgspec.Struct, kw_only=True):
    """A registered event type; `version` is its current schema version (0: no schema yet)."""

    name: str
    description: str = ""
    owner: str = ""
    mode: Mode = Mode.ENFORCE
    version: int = 0
    dataschema: str | None = None
    created_ms: int = 0
    updated_ms: int = 0


class TypeChange(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Register or update a type: fields left out keep their value; a `schema` adds a version."""

    description: str | None = None
    owner: str | None = None
    mode: Mode | None = None
    schema: dict[str, Any] | bool | None = None
    force: bool = False
    note: str = ""


class SchemaVersion(msgspec.Struct, kw_only=True):
    type: str
    version: int
    schema: Any
    dataschema: str
    created_ms: int
    note: str = ""
    forced: bool = False
    recent_check: RecentCheck | None = None


class Failure(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One validation failure, kept for the dashboard's "recent validation failures"."""

    at_ms: int
    outcome: str  # rejected | flagged | dead-lettered
    version: int
    errors: list[dict[str, str]]
    source: str | None = None
    event_id: str | None = None


class Verdict(msgspec.Struct, kw_only=True):
    """A dry run: what ingest would do with a sample event."""

    type: str
    registered: bool
    outcome: str  # accepted | flagged | rejected | not-checked
    valid: bool
    mode: Mode | None = None
    version: int | None = None
    dataschema: str | None = None
    errors: list[dict[str, str]] = []


class SchemaConflict(Conflict):
    """A new version would reject recent events and `force` was not given (409, with the report)."""

    def __init__(self, detail: str, check: RecentCheck) -> None:
        super().__init__(detail)
        self.check = check


class _Compiled(NamedTuple):
    mode: Mode
    version: int
    validator: Any  # a jsonschema-rs validator; None when the type has no schema (not checked)
    dataschema: str | None


URN = "urn:eventflow:schema:"


def dataschema_uri(event_type: str, version: int) -> str:
    """The CloudEvents `dataschema` of a version (an absolute URI naming it; the API serves it at
    /v1/event-types/<type>/schemas/<version>)."""
    return f"{URN}{quote(event_type, safe='')}:{version}"


class Schemas:
    """The registry, plus this process's cache of compiled validators."""

    def __init__(self, redis: Redis, settings: Settings, event_log: EventLog | None = None) -> None:
        self.redis = redis
        self.settings = settings
        self.keys = Keys(settings.prefix, settings.partitions)
        self.event_log = event_log  # reads the recent events a new version is tested against
        self.reject_unknown = settings.unknown_types == "reject"
        self.totals: collections.Counter[tuple[str, str]] = collections.Counter()  # (type, outcome) here
        self._save = redis.register_script(source("type_version"))
        self._types: dict[str, _Compiled] = {}
        self._validators: dict[tuple[str, int], Any] = {}  # versions never change: compile once
        self._stamp: Any = _NOT_LOADED
        self._next_check = 0.0
        self._lock = asyncio.Lock()
        self._counts: collections.Counter[tuple[str, str]] = collections.Counter()  # not yet written
        self._pending: collections.deque[tuple[str, Failure]] = collections.deque(maxlen=_MAX_PENDING)
        self._noted: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._flush_timer: asyncio.TimerHandle | None = None
        self._flush_task: asyncio.Future[None] | None = None  # kept referenced until it is done

    # -- checking -------------------------------------------------------------------------------
    async def check_incoming(self, events: Sequence[Incoming], source: str) -> None:
        """Check events against their types' current schemas (all or nothing, like ingest).

        Sets `dataschema` on checked events (unless the producer gave a URI of its own), flags failures in warn mode
        (extension `schemaerrors`), and raises InvalidEvent for failures in enforce mode and for
        unregistered types when those are rejected."""
        if time.monotonic() >= self._next_check:
            await self.refresh()
        types = self._types
        if not types and not self.reject_unknown:
            return  # nothing registered: the common case costs one comparison
        rejected: list[FieldProblem] = []
        for n, event in enumerate(events):
            compiled = types.get(event.type)
            if compiled is None:
                if self.reject_unknown:
                    rejected.append(FieldProblem(_at(events, n) + "/type", f"event type {event.type!r} is not "
                                                 "registered (EVENTFLOW_UNKNOWN_TYPES=reject)"))
                continue
            validator = compiled.validator
            if validator is None or compiled.mode is Mode.OFF:
                continue
            if event.dataschema is None or event.dataschema.startswith(URN):
                # EventFlow's own names say what it checked: a producer's stale or made-up one is
                # replaced (a URI of the producer's own is kept).
                event.dataschema = compiled.dataschema
            # The hot path: is_valid is several times cheaper than collecting errors.
            if event.data_base64 is None and validator.is_valid(None if event.data is None else _decode(event.data)):
                continue
            rejected += self._failed(compiled, event, _at(events, n), source)
        if rejected or len(self._pending) >= 100:
            await self._flush_quietly()
        if rejected:
            raise InvalidEvent(rejected)

    def _failed(self, compiled: _Compiled, event: Incoming, prefix: str, source: str) -> list[FieldProblem]:
        """Why an event failed: returned to reject it (enforce), or flagged on it (warn); counted."""
        instance, unusable = incoming_instance(event)
        found = [unusable] if unusable else problems(compiled.validator, instance)
        if compiled.mode is Mode.WARN:
            event.extensions = {**event.extensions, FLAG: flag_text(found)}
            self._note(event.type, "flagged", compiled.version, found, source, event.id)
            return []
        self._note(event.type, "rejected", compiled.version, found, source, event.id)
        return [FieldProblem(prefix + p.pointer, p.message, p.keyword) for p in found]

    async def problems_of(self, record: Record) -> list[str]:
        """Why the dispatcher must dead-letter an entry written straight into the stream ([]: deliver it)."""
        if time.monotonic() >= self._next_check:
            await self.refresh()
        event_type = str(record.event.get("type", ""))
        compiled = self._types.get(event_type)
        if compiled is None:
            return [f"/type: event type {event_type!r} is not registered"] if self.reject_unknown else []
        if compiled.validator is None or compiled.mode is Mode.OFF:
            return []
        instance, unusable = record_instance(record)
        found = [unusable] if unusable else problems(compiled.validator, instance)
        if not found:
            return []
        enforce = compiled.mode is Mode.ENFORCE
        if record.entry_id not in self._noted:  # every group sees the entry: count it once
            self._noted[record.entry_id] = None
            if len(self._noted) > 10_000:
                self._noted.popitem(last=False)
            outcome = "dead-lettered" if enforce else "flagged"
            self._note(event_type, outcome, compiled.version, found, record.event.get("source"),
                       record.event.get("id"))
            await self._flush_quietly()
            if not enforce:
                log.warning("direct entry %s does not match schema v%d of %s (warn mode: delivered): %s",
                            record.entry_id, compiled.version, event_type, flag_text(found))
        if not enforce:
            return []
        return [f"{p.pointer}: {p.message} ({p.keyword or 'schema'}; schema v{compiled.version})" for p in found]

    async def dry_run(self, event: Incoming, version: int | None = None) -> Verdict:
        """What ingest would do with `event` (against `version`, default the current one); stores nothing."""
        if time.monotonic() >= self._next_check:
            await self.refresh()
        compiled = self._types.get(event.type)
        if compiled is None:
            outcome = "rejected" if self.reject_unknown else "accepted"
            errors = [{"pointer": "/type", "detail": "not registered"}] if self.reject_unknown else []
            return Verdict(type=event.type, registered=False, outcome=outcome, valid=not errors, errors=errors)
        number = version or compiled.version
        if not number:
            return Verdict(type=event.type, registered=True, outcome="not-checked", valid=True, mode=compiled.mode)
        validator = await self._validator(event.type, number)
        instance, unusable = incoming_instance(event)
        found = [unusable] if unusable else problems(validator, instance)
        outcome = "accepted"
        if compiled.mode is Mode.OFF and version is None:
            outcome = "not-checked"
        elif found:
            outcome = "rejected" if compiled.mode is Mode.ENFORCE else "flagged"
        return Verdict(type=event.type, registered=True, outcome=outcome, valid=not found, mode=compiled.mode,
                       version=number, dataschema=dataschema_uri(event.type, number),
                       errors=[p.to_dict() for p in found])

    # -- the cache ------------------------------------------------------------------------------
    async def refresh(self, *, force: bool = False) -> None:
        """Reload compiled validators when the registry changed (polled at most every REFRESH_S)."""
        async with self._lock:
            if not force and time.monotonic() < self._next_check:
                return  # another task refreshed while this one waited for the lock
            async with redis_errors(self.settings):
                await self.flush()
                stamp = await self.redis.get(self.keys.types_changed)
                if force or stamp != self._stamp:
                    await self._reload()
            self._next_check = time.monotonic() + REFRESH_S

    async def _reload(self) -> None:
        pipe = transaction(self.redis)
        pipe.get(self.keys.types_changed)
        pipe.hgetall(self.keys.event_types)
        pipe.hgetall(self.keys.type_versions)
        stamp, registry, current = await pipe.execute()
        types: dict[str, _Compiled] = {}
        for raw_name, raw in registry.items():
            name = raw_name.decode()
            record = msgspec.json.decode(raw, type=EventType)
            version = int(current.get(raw_name, 0))
            validator = None
            if version:
                try:
                    validator = await self._validator(name, version)
                except (InvalidEvent, NotFound) as exc:  # stored by another version of EventFlow?
                    log.error("schema v%d of %s cannot be used: %s", version, name, getattr(exc, "detail", exc))
            types[name] = _Compiled(record.mode, version, validator, dataschema_uri(name, version) if version else None)
        self._types, self._stamp = types, stamp

    async def _validator(self, name: str, version: int) -> Any:
        key = (name, version)
        if key not in self._validators:
            self._validators[key] = compile_schema((await self.version(name, version)).schema)
        return self._validators[key]

    def _changed_here(self) -> None:
        self._next_check = 0.0  # this process sees its own change on the next event

    # -- failures -------------------------------------------------------------------------------
    def _note(self, event_type: str, outcome: str, version: int, found: list[FieldProblem],
              source: str | None, event_id: str | None) -> None:
        self.totals[(event_type, outcome)] += 1
        default_metrics().schema_failures.labels(event_type, outcome).inc()  # failures are rare: no slot needed
        self._counts[(event_type, outcome)] += 1
        self._pending.append((event_type, Failure(at_ms=_now_ms(), outcome=outcome, version=version, source=source,
                                                  event_id=event_id, errors=[p.to_dict() for p in found])))
        if self._flush_timer is None:  # an idle process still writes them within REFRESH_S
            self._flush_timer = asyncio.get_running_loop().call_later(REFRESH_S, self._flush_later)

    def _flush_later(self) -> None:
        self._flush_timer = None
        self._flush_task = asyncio.ensure_future(self._flush_quietly())

    async def flush(self) -> None:
        """Write counted failures and the latest examples to Redis (batched; the dashboard reads them)."""
        if not self._counts and not self._pending:
            return
        counts, self._counts = self._counts, collections.Counter()
        pending, self._pending = self._pending, collections.deque(maxlen=_MAX_PENDING)
        pipe = self.redis.pipeline(transaction=False)
        for (event_type, outcome), n in counts.items():
            pipe.hincrby(self.keys.type_failure_counts, f"{event_type}\n{outcome}", n)
        for event_type, failure in pending:
            pipe.lpush(self.keys.type_recent_failures(event_type), _encode(failure))
        for event_type in {t for t, _ in pending}:
            pipe.ltrim(self.keys.type_recent_failures(event_type), 0, RECENT_FAILURES - 1)
        await pipe.execute()

    async def _flush_quietly(self) -> None:
        try:
            await self.flush()
        except Exception as exc:  # noqa: BLE001 - diagnostics must never fail an ingest or a delivery
            log.warning("could not record validation failures: %s", exc)

    # -- the registry ---------------------------------------------------------------------------
    async def register(self, name: str, change: TypeChange) -> tuple[EventType, SchemaVersion | None]:
        """Create or update a type; a `schema` in the change also saves a version (see `add_version`).

        Nothing changes when that schema is invalid, or would reject recent events without `force`."""
        check_type_name(name)
        check_text({"description": change.description, "owner": change.owner, "note": change.note})
        found = await self._find(name)
        plan = None
        if change.schema is not None:
            plan = await self._plan(name, change.schema, found.version if found else 0, change.force, change.note)
        now = _now_ms()
        record = found or EventType(name=name, created_ms=now)
        for field in ("description", "owner", "mode"):
            if (value := getattr(change, field)) is not None:
                setattr(record, field, value)
        record.updated_ms = now
        async with redis_errors(self.settings):
            pipe = transaction(self.redis)
            pipe.hset(self.keys.event_types, name, _encode(record))
            pipe.incr(self.keys.types_changed)
            await pipe.execute()
        self._changed_here()
        saved = await self._commit(name, *plan) if plan is not None else None
        return await self.get(name), saved

    async def add_version(self, name: str, schema: Any, *, force: bool = False, note: str = "") -> SchemaVersion:
        """Save `schema` as the type's next version, after testing it against recent stored events.

        Raises SchemaConflict when recent events would fail and `force` is false. The same schema as
        the current version saves nothing and returns the current version."""
        check_text({"note": note})
        current = (await self.get(name)).version
        return await self._commit(name, *await self._plan(name, schema, current, force, note))

    async def _plan(self, name: str, schema: Any, current: int, force: bool, note: str) -> tuple[SchemaVersion, Any]:
        """The version to save and its validator (None: `schema` is the current version already)."""
        validator = compile_schema(schema)
        if current and (existing := await self.version(name, current)).schema == schema:
            return existing, None
        check = await self._check_recent(name, validator)
        if check.failing and not force:
            raise SchemaConflict(
                f"{check.failing} of the {check.checked} most recent {name!r} events would fail this schema; "
                "send force=true to save it anyway", check)
        version = SchemaVersion(type=name, version=current + 1, schema=schema, note=note, forced=bool(check.failing),
                                dataschema=dataschema_uri(name, current + 1), created_ms=_now_ms(),
                                recent_check=check)
        return version, validator

    async def _commit(self, name: str, version: SchemaVersion, validator: Any) -> SchemaVersion:
        if validator is None:
            return version
        keys = [self.keys.type_schemas(name), self.keys.type_versions, self.keys.types_changed]
        current = version.version - 1
        async with redis_errors(self.settings):
            reply = await self._save(keys, [name, str(current), str(version.version), _encode(version)])
        if isinstance(reply, list):
            raise Conflict(f"version {int(reply[1])} of {name!r} was saved meanwhile; look at it and try again")
        self._validators[(name, version.version)] = validator
        self._changed_here()
        return version

    async def _check_recent(self, name: str, validator: Any) -> RecentCheck:
        wanted = self.settings.schema_check_recent
        if self.event_log is None or wanted == 0:
            return RecentCheck(checked=0, failing=0)
        page = await self.event_log.query(Query(type=name, limit=wanted))
        return check_records(validator, page.events)

    async def get(self, name: str) -> EventType:
        found = await self._find(name)
        if found is None:
            raise NotFound(f"no registered event type {name!r}")
        return found

    async def _find(self, name: str) -> EventType | None:
        async with redis_errors(self.settings):
            pipe = transaction(self.redis)
            pipe.hget(self.keys.event_types, name)
            pipe.hget(self.keys.type_versions, name)
            raw, version = await pipe.execute()
        return None if raw is None else _with_version(msgspec.json.decode(raw, type=EventType), version)

    async def registered(self) -> list[EventType]:
        async with redis_errors(self.settings):
            pipe = transaction(self.redis)
            pipe.hgetall(self.keys.event_types)
            pipe.hgetall(self.keys.type_versions)
            registry, current = await pipe.execute()
        types = [_with_version(msgspec.json.decode(raw, type=EventType), current.get(name)) for name, raw in
                 registry.items()]
        return sorted(types, key=lambda t: t.name)

    async def version(self, name: str, version: int) -> SchemaVersion:
        async with redis_errors(self.settings):
            raw = await self.redis.hget(self.keys.type_schemas(name), str(version))
        if raw is None:
            raise NotFound(f"event type {name!r} has no schema version {version}")
        return msgspec.json.decode(raw, type=SchemaVersion)

    async def versions(self, name: str) -> list[SchemaVersion]:
        await self.get(name)  # 404 for an unknown type rather than an empty list
        async with redis_errors(self.settings):
            raw = await self.redis.hvals(self.keys.type_schemas(name))
        return sorted((msgspec.json.decode(r, type=SchemaVersion) for r in raw), key=lambda v: v.version)

    async def failure_counts(self) -> dict[str, dict[str, int]]:
        """Validation failures per type and outcome, counted by every process since the start."""
        await self._flush_quietly()  # this process's own count is never a second late
        async with redis_errors(self.settings):
            raw = await self.redis.hgetall(self.keys.type_failure_counts)
        out: dict[str, dict[str, int]] = {}
        for field, n in raw.items():
            event_type, _, outcome = field.decode().rpartition("\n")
            out.setdefault(event_type, {})[outcome] = int(n)
        return out

    async def recent_failures(self, name: str, limit: int = RECENT_FAILURES) -> list[Failure]:
        await self._flush_quietly()
        async with redis_errors(self.settings):
            raw = await self.redis.lrange(self.keys.type_recent_failures(name), 0, limit - 1)
        return [msgspec.json.decode(r, type=Failure) for r in raw]


_SHARED: weakref.WeakKeyDictionary[Any, Schemas] = weakref.WeakKeyDictionary()


def schemas_for(owner: Any) -> Schemas:
    """One Schemas per owner with `redis` and `settings` (a runner's Dispatch), so that every loop of a
    worker shares one cache of validators and one poll of the registry."""
    found = _SHARED.get(owner)
    if found is None:
        found = _SHARED[owner] = Schemas(owner.redis, owner.settings)
    return found


def _at(events: Sequence[Incoming], n: int) -> str:
    """The pointer prefix of event `n` (ingest names batch items `/events/<n>`)."""
    return f"/events/{n}" if len(events) > 1 else ""


def check_type_name(name: str) -> None:
    if not name or len(name) > 200 or any(c.isspace() or c == "/" or not c.isprintable() for c in name):
        raise InvalidEvent([FieldProblem("/type", "an event type name is 1-200 printable characters, no spaces "
                                                  "or slashes")])


def _with_version(record: EventType, version: bytes | None) -> EventType:
    record.version = int(version or 0)
    record.dataschema = dataschema_uri(record.name, record.version) if record.version else None
    return record


def _now_ms() -> int:
    return time.time_ns() // 1_000_000

"""`eventflow types ...`, `eventflow retention ...` and `eventflow archive ...`: the event store's schemas,
retention and archive from the command line."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec

from app.errors import ConfigError, FieldProblem, InvalidEvent, MalformedBody
from app.events import parse_structured, parse_time
from app.settings import Settings

Action = Callable[[Any, argparse.Namespace], Awaitable[Any]]


def add_parsers(sub: Any) -> None:
    _types(sub)
    _retention(sub)
    _archive(sub)


def _types(sub: Any) -> None:
    types = sub.add_parser("types", help="event types and their versioned JSON Schemas",
                           description="Register event types and the JSON Schemas (draft 2020-12) their data is "
                           "checked against at ingest.")
    tsub = types.add_subparsers(title="type commands", metavar="ACTION")
    tsub.add_parser("list", help="registered types with their current version and mode").set_defaults(
        handler=_run(lambda svc, a: svc.schemas.registered()))
    show = tsub.add_parser("show", help="one type with its current schema")
    show.add_argument("name", help="the event type")
    show.set_defaults(handler=_run(_show))
    reg = tsub.add_parser("register", help="register or update a type (only the options given change)")
    reg.add_argument("name", help="the event type, e.g. order.created")
    reg.add_argument("--description", help="what an event of this type means (shown in the dashboard)")
    reg.add_argument("--owner", help="who answers for this type (a team, a person)")
    reg.add_argument("--mode", choices=["enforce", "warn", "off"], help="what a failing event gets (default enforce)")
    reg.add_argument("--schema", type=Path, help="a JSON Schema file: saved as a new version")
    _version_options(reg)
    reg.set_defaults(handler=_run(_register))
    add = tsub.add_parser("add-version", help="save a new schema version (tested first against recent events)")
    add.add_argument("name", help="the event type")
    add.add_argument("schema", type=Path, help="a JSON Schema file ('-' reads standard input)")
    _version_options(add)
    add.set_defaults(handler=_run(_add_version))
    versions = tsub.add_parser("versions", help="every schema version of a type")
    versions.add_argument("name", help="the event type")
    versions.set_defaults(handler=_run(lambda svc, a: svc.schemas.versions(a.name)))
    version = tsub.add_parser("version", help="one schema version")
    version.add_argument("name", help="the event type")
    version.add_argument("number", type=int, help="the version (1, 2, ...)")
    version.set_defaults(handler=_run(lambda svc, a: svc.schemas.version(a.name, a.number)))
    check = tsub.add_parser("validate", help="dry run: check a sample event (JSON file) without storing it",
                            description="Print what ingest would do with the sample, and exit 1 when it fails the "
                            "type's schema or would be rejected (0 otherwise), so a build can check samples.")
    check.add_argument("name", help="the event type")
    check.add_argument("event", type=Path, help="the event as it would be POSTed ('-' reads standard input)")
    check.add_argument("--version", type=int, help="check against this version (default: the current one)")
    check.set_defaults(handler=_run(_validate, failed=lambda v: v.outcome == "rejected" or not v.valid))
    types.set_defaults(handler=lambda a, s: (types.print_help(), 2)[1])


def _version_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--force", action="store_true", help="save it even if recent events would fail it")
    parser.add_argument("--note", default="", help="what changed, kept with the version")


def _retention(sub: Any) -> None:
    retention = sub.add_parser("retention", help="archive and trim the log by age and/or size",
                               description="Retention archives the oldest entries, then trims them from the log, "
                               "never past what a consumer group still needs (EVENTFLOW_RETENTION_S, "
                               "EVENTFLOW_RETENTION_MAX_ENTRIES, EVENTFLOW_ARCHIVE_PATH).")
    rsub = retention.add_subparsers(title="retention commands", metavar="ACTION")
    rsub.add_parser("run", help="one pass now, with progress (workers run one every interval)").set_defaults(
        handler=_run(_retention_run))
    rsub.add_parser("status", help="per partition: length, groups, and which group holds trimming back").set_defaults(
        handler=_run(lambda svc, a: svc.retention.status()))
    retention.set_defaults(handler=lambda a, s: (retention.print_help(), 2)[1])


def _archive(sub: Any) -> None:
    archive = sub.add_parser("archive", help="read the archive of trimmed events",
                             description="Archived events stay queryable through GET /v1/events; `replay` "
                             "delivers them again to one consumer group.")
    asub = archive.add_subparsers(title="archive commands", metavar="ACTION")
    replay = asub.add_parser("replay", help="deliver archived events of a time range again to one consumer group")
    replay.add_argument("--group", required=True, help="the consumer group to deliver to")
    replay.add_argument("--since", required=True, help="start (RFC 3339 or ms since the epoch)")
    replay.add_argument("--until", help="end, exclusive (default: the log's first live entry)")
    replay.set_defaults(handler=_run(_archive_replay))
    archive.set_defaults(handler=lambda a, s: (archive.print_help(), 2)[1])


async def _show(svc: Any, args: argparse.Namespace) -> Any:
    found = await svc.schemas.get(args.name)
    current = await svc.schemas.version(args.name, found.version) if found.version else None
    return {"type": found, "schema": current}


async def _register(svc: Any, args: argparse.Namespace) -> Any:
    from app.schemas import TypeChange, check_text

    check_text({"description": args.description, "owner": args.owner, "note": args.note}, "--{}")
    change = TypeChange(description=args.description, owner=args.owner, mode=args.mode,
                        schema=_read_json(args.schema) if args.schema else None, force=args.force, note=args.note)
    registered, version = await svc.schemas.register(args.name, change)
    return {"type": registered, "version": version}


async def _add_version(svc: Any, args: argparse.Namespace) -> Any:
    from app.schemas import check_text

    check_text({"note": args.note}, "--{}")
    return await svc.schemas.add_version(args.name, _read_json(args.schema), force=args.force, note=args.note)


async def _validate(svc: Any, args: argparse.Namespace) -> Any:
    sample = _read_json(args.event)
    if isinstance(sample, dict):
        sample.setdefault("type", args.name)
    event = parse_structured(msgspec.json.encode(sample))
    if event.type != args.name:
        raise InvalidEvent([FieldProblem("/type", f"the sample is of type {event.type!r}, not {args.name!r}")])
    return await svc.schemas.dry_run(event, args.version)


async def _retention_run(svc: Any, args: argparse.Namespace) -> Any:
    def progress(archived: int, trimmed: int) -> None:
        print(f"\rarchived {archived} and trimmed {trimmed} entries ...", end="", file=sys.stderr, flush=True)

    report = await svc.retention.run_pass(progress)
    print(file=sys.stderr)
    return report


async def _archive_replay(svc: Any, args: argparse.Namespace) -> Any:
    since = parse_time(args.since, "since")
    assert since is not None

    def progress(n: int) -> None:
        print(f"\rqueued {n} archived events ...", end="", file=sys.stderr, flush=True)

    queued = await svc.retention.replay(args.group, since, parse_time(args.until, "until"), progress)
    print(file=sys.stderr)
    return {"group": args.group, "queued": queued}


def _read_json(path: Path) -> Any:
    try:
        text = sys.stdin.buffer.read() if str(path) == "-" else path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        return msgspec.json.decode(text)
    except msgspec.DecodeError as exc:
        raise MalformedBody(f"{path} is not valid JSON: {exc}") from None


def _run(action: Action, failed: Callable[[Any], bool] | None = None) -> Callable[[argparse.Namespace, Settings], int]:
    """A command handler: run `action`, print its result as JSON; exit 1 when `failed(result)`."""

    def handler(args: argparse.Namespace, settings: Settings) -> int:
        from app.connections import connect  # local imports: keep `eventflow --help` fast
        from app.schemas import SchemaConflict
        from app.service import Services

        async def go() -> Any:
            redis = connect(settings)
            try:
                return await action(Services(redis, settings), args)
            finally:
                await redis.aclose()

        try:
            result = asyncio.run(go())
        except SchemaConflict as exc:
            print(_pretty(exc.check))
            # The detail speaks HTTP ("send force=true"); here the same is an option.
            print(f"eventflow: {exc.detail.replace('send force=true', 'give --force')}", file=sys.stderr)
            return 1
        print(_pretty(result))
        return 1 if failed is not None and failed(result) else 0

    return handler


def _pretty(value: Any) -> str:
    return msgspec.json.format(msgspec.json.encode(value), indent=2).decode()

"""`eventflow dlq ...` and `eventflow replay`: dead letters and replays from the command line."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import msgspec

from app.connections import connect
from app.deadletters import DeadLetters, Filter
from app.errors import FieldProblem, InvalidEvent
from app.events import parse_time
from app.settings import Settings


def at_least_one(text: str) -> int:
    """argparse type: a whole number of at least 1 (a limit of 0 or -5 listed nothing, silently)."""
    if not text.isascii() or not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return int(text)


def add_parsers(sub: Any) -> None:
    dlq = sub.add_parser("dlq", help="list, inspect, replay and discard dead letters",
                         description="Dead letters are deliveries that failed for good in one consumer group.")
    dsub = dlq.add_subparsers(title="dead-letter commands", metavar="ACTION")
    lst = dsub.add_parser("list", help="dead letters, newest first")
    _filters(lst)
    lst.add_argument("--limit", type=at_least_one, default=50, help="at most this many (default 50)")
    lst.set_defaults(handler=_run(_list))
    show = dsub.add_parser("show", help="one dead letter with its event and last error")
    show.add_argument("id", help="dead-letter id, as `dlq list` prints it (<partition>:<entry id>)")
    show.set_defaults(handler=_run(lambda dl, a: dl.get(a.id)))
    for action, text in (("replay", "deliver again to the group each failed in"), ("discard", "delete for good")):
        p = dsub.add_parser(action, help=f"{text}: ids, or --all with optional filters")
        p.add_argument("ids", nargs="*", help="dead-letter ids")
        p.add_argument("--all", action="store_true", help="every dead letter matching the filters")
        _filters(p)
        p.set_defaults(handler=_run(_bulk(action)))
    dlq.set_defaults(handler=lambda a, s: (dlq.print_help(), 2)[1])

    replay = sub.add_parser("replay", help="deliver a time range of the log again to one consumer group",
                            description="Queue events from the log for redelivery to one group only.")
    replay.add_argument("--group", required=True, help="the consumer group to deliver to")
    replay.add_argument("--since", required=True, help="start (RFC 3339 or ms since the epoch)")
    replay.add_argument("--until", help="end, exclusive (default: now)")
    replay.set_defaults(handler=_run(_replay))


def _filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--group", help="only this consumer group")
    parser.add_argument("--type", help="only this event type")
    parser.add_argument("--source", help="only this source")
    parser.add_argument("--since", help="dead-lettered at or after (RFC 3339 or ms)")
    parser.add_argument("--until", help="dead-lettered before (RFC 3339 or ms)")


def _filter(args: argparse.Namespace) -> Filter:
    return Filter(group=args.group, type=args.type, source=args.source,
                  since_ms=parse_time(args.since, "since"), until_ms=parse_time(args.until, "until"))


async def _list(dl: DeadLetters, args: argparse.Namespace) -> Any:
    return await dl.list(_filter(args), args.limit)


def _bulk(action: str) -> Any:
    async def go(dl: DeadLetters, args: argparse.Namespace) -> Any:
        if not args.ids and not args.all:
            raise InvalidEvent([FieldProblem("/ids", "give dead-letter ids, or --all (with filters)")])
        ids = args.ids or await dl.matching_ids(_filter(args))
        done = await (dl.replay(ids) if action == "replay" else dl.discard(ids))
        return {"selected": len(ids), action + "ed": done}

    return go


async def _replay(dl: DeadLetters, args: argparse.Namespace) -> Any:
    since = parse_time(args.since, "since")
    assert since is not None

    def progress(n: int) -> None:
        print(f"\rqueued {n} events ...", end="", file=sys.stderr, flush=True)

    queued = await dl.replay_history(args.group, since, parse_time(args.until, "until"), progress)
    print(file=sys.stderr)
    return {"group": args.group, "queued": queued}


def _run(action: Any) -> Any:
    def handler(args: argparse.Namespace, settings: Settings) -> int:
        async def go() -> Any:
            redis = connect(settings)
            try:
                return await action(DeadLetters(redis, settings), args)
            finally:
                await redis.aclose()

        print(msgspec.json.format(msgspec.json.encode(asyncio.run(go())), indent=2).decode())
        return 0

    return handler

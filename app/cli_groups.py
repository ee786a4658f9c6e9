"""`eventflow groups ...`: list consumer groups, and retire one that no worker runs any more.
The Redis work is app/groups.py's; this module only parses and prints."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

import msgspec

from app.settings import Settings

_DELETE_HELP = """\
Retire a consumer group that no worker runs any more. On every partition it destroys the group on
the log (its pending list goes with it) and deletes its replay stream, retry schedule, seats and
attempt records (found by SCAN, on every primary of a cluster); it removes the group's published
settings. From then on retention no longer waits for the group, and it leaves the dashboard and the
metrics. Its dead letters are kept unless --dead-letters is given.

Refused while a live worker runs the group: a running worker would make the group again, from where
it had read, and keep holding retention back. Stop (or redeploy without) its consumer first; --force
deletes anyway. Asks for confirmation unless --yes (needed when standard input is not a terminal).
"""


def add_parser(sub: Any) -> None:
    groups = sub.add_parser("groups", help="list consumer groups; delete one no worker runs any more",
                            description="Consumer groups are the dispatcher: one per consumer, on every "
                            "partition of the log.")
    gsub = groups.add_subparsers(title="group commands", metavar="ACTION")
    lst = gsub.add_parser("list", help="every group with pending, lag, dead letters and its live workers",
                          description="Every consumer group on the log (and every group whose settings a "
                          "worker published), with pending and lag summed over partitions, its dead letters, "
                          "and the live worker processes that run it (`running`).")
    lst.set_defaults(handler=_list)
    delete = gsub.add_parser("delete", help="retire a group: destroy it on every partition, with its keys",
                             description=_DELETE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    delete.add_argument("name", help="the consumer group (see `eventflow groups list`)")
    delete.add_argument("--dead-letters", action="store_true", help="discard the group's dead letters too "
                        "(default: keep them)")
    delete.add_argument("--force", action="store_true", help="delete even while a live worker runs the group "
                        "(it makes the group again, from where it had read)")
    delete.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    delete.set_defaults(handler=_delete)
    groups.set_defaults(handler=lambda a, s: (groups.print_help(), 2)[1])


def _list(args: argparse.Namespace, settings: Settings) -> int:
    from app.groups import Groups  # local import: keeps `eventflow --help` fast

    _print(_run(settings, lambda redis: Groups(redis, settings).list()))
    return 0


def _delete(args: argparse.Namespace, settings: Settings) -> int:
    from app.groups import GroupRunning, Groups

    async def go(redis: Any) -> Any:
        groups = Groups(redis, settings)
        try:
            workers = await groups.check(args.name, force=args.force)
        except GroupRunning as exc:
            print(f"eventflow: consumer group {exc.group!r} is run by live worker(s) {', '.join(exc.workers)}: "
                  "stop them first, or give --force (a running worker makes the group again)", file=sys.stderr)
            return None
        if not args.yes and not await _confirmed(groups, args, workers):
            return None
        progress = _Progress()
        try:
            return await groups.delete(args.name, force=args.force, dead_letters=args.dead_letters,
                                       progress=progress)
        finally:
            progress.done()

    removed = _run(settings, go)
    if removed is None:
        return 1
    _print(removed)
    return 0


async def _confirmed(groups: Any, args: argparse.Namespace, workers: list[str]) -> bool:
    if not sys.stdin.isatty():
        print(f"eventflow: deleting consumer group {args.name!r} needs confirmation: give --yes "
              "(standard input is not a terminal)", file=sys.stderr)
        return False
    summary = next((g for g in await groups.list() if g.name == args.name), None)
    about = "" if summary is None else (f" (pending {summary.pending}, lag {summary.lag}, on {summary.partitions} "
                                        f"partition(s), {summary.dead_letters} dead letter(s) "
                                        f"{'discarded' if args.dead_letters else 'kept'})")
    running = f"; live worker(s) {', '.join(workers)} will make it again" if workers else ""
    sys.stderr.write(f"delete consumer group {args.name!r}{about}{running}? [y/N] ")
    sys.stderr.flush()
    answer = await asyncio.to_thread(sys.stdin.readline)
    if answer.strip().lower() in ("y", "yes"):
        return True
    print("eventflow: not deleted", file=sys.stderr)
    return False


class _Progress:
    """Progress lines on stderr, once the work has taken more than a second (at most 5 a second)."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.shown = 0.0
        self.printed = False

    def __call__(self, message: str) -> None:
        now = time.monotonic()
        if now - self.started < 1.0 or now - self.shown < 0.2:
            return
        self.shown = now
        self.printed = True
        print(f"\r{message} ...\033[K", end="", file=sys.stderr, flush=True)

    def done(self) -> None:
        if self.printed:
            print(file=sys.stderr, flush=True)


def _run(settings: Settings, action: Any) -> Any:
    from app.connections import connect

    async def go() -> Any:
        redis = connect(settings)
        try:
            return await action(redis)
        finally:
            await redis.aclose()

    return asyncio.run(go())


def _print(result: Any) -> None:
    print(msgspec.json.format(msgspec.json.encode(result), indent=2).decode())

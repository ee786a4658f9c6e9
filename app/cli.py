"""The `eventflow` command line. Every subcommand has --help."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import msgspec

from app import __version__, cli_ops
from app.errors import EventFlowError
from app.settings import ENV_VARS, Settings

Handler = Callable[[argparse.Namespace, Settings], int]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help()
        return 2
    try:
        settings = Settings.from_env(os.environ)
        return int(args.handler(args, settings))
    except EventFlowError as exc:
        print(f"eventflow: {exc.detail}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eventflow",
        description="EventFlow: ingest, store and dispatch events on Redis Streams. "
        "Settings come from environment variables (see `eventflow config`).",
    )
    parser.add_argument("--version", action="version", version=f"eventflow {__version__}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    from app import devstack  # local import: keeps `eventflow --help` fast

    dev = sub.add_parser("dev", help="run the whole system locally (embedded Redis when REDIS_URL is unset)",
                         description=devstack.__doc__)
    dev.add_argument("--port", type=int, default=None, help="HTTP port (default: $PORT or 8000)")
    dev.add_argument("--data-dir", default=None, help="where the embedded server keeps its data "
                     "(default: $EVENTFLOW_DATA_DIR or .eventflow)")
    dev.add_argument("--no-consumers", action="store_true", help="run the web process only")
    dev.set_defaults(handler=devstack.run_dev)

    serve = sub.add_parser("serve", help="run the web process under granian (what the Procfile runs)")
    serve.add_argument("--port", type=int, default=None, help="HTTP port (default: $PORT or 8000)")
    serve.add_argument("--host", default="0.0.0.0", help="bind address (default: 0.0.0.0)")
    serve.set_defaults(handler=devstack.run_serve)

    embedded = sub.add_parser("embedded-redis", help="run only the embedded Valkey server (AOF on)")
    embedded.add_argument("--port", type=int, default=6379, help="port (default: 6379)")
    embedded.add_argument("--data-dir", default=None, help="data folder (default: $EVENTFLOW_DATA_DIR/redis)")
    embedded.add_argument("--appendfsync", choices=["always", "everysec", "no"], default="everysec",
                          help="AOF fsync policy (`always` for EVENTFLOW_DURABILITY=fsync)")
    embedded.set_defaults(handler=devstack.run_embedded)

    cfg = sub.add_parser("config", help="show every setting, its variable and its current value")
    cfg.set_defaults(handler=show_config)

    _producers(sub)
    cli_ops.add_parsers(sub)
    _consumers_cli(sub)
    return parser


def _consumers_cli(sub: Any) -> None:
    """The worker-side commands live in consumers/ (app/ never imports it at module level)."""
    try:
        consumers_cli = importlib.import_module("consumers.cli")
    except ImportError:  # an install without the consumers package: web only
        return
    consumers_cli.add_parser(sub)


def _producers(sub: Any) -> None:
    producers = sub.add_parser("producers", help="create, list, rotate and revoke producers",
                               description="Producers send events; the name becomes the events' source.")
    psub = producers.add_subparsers(title="producer commands", metavar="ACTION")
    create = psub.add_parser("create", help="register a producer and print its key (shown only once)")
    create.add_argument("name", help="the producer's name, used as the CloudEvents source")
    create.add_argument("--description", default="", help="free text shown in the dashboard")
    create.set_defaults(handler=_with_services(lambda svc, a: svc.producers.create(a.name, a.description)))
    for action, help_text in (("revoke", "revoke a producer's key at once"),
                              ("rotate", "issue a new key; the old one stops working at once")):
        p = psub.add_parser(action, help=help_text)
        p.add_argument("name")
        p.set_defaults(handler=_with_services(
            lambda svc, a, act=action: getattr(svc.producers, act)(a.name)))
    lst = psub.add_parser("list", help="list producers with their event counts and last-seen time")
    lst.set_defaults(handler=_with_services(lambda svc, a: svc.producers.list()))
    producers.set_defaults(handler=lambda a, s: (producers.print_help(), 2)[1])


def _with_services(action: Callable[[Any, argparse.Namespace], Awaitable[Any]]) -> Handler:
    def handler(args: argparse.Namespace, settings: Settings) -> int:
        from app.connections import connect
        from app.service import Services

        async def go() -> Any:
            redis = connect(settings)
            try:
                return await action(Services(redis, settings), args)
            finally:
                await redis.aclose()

        result = asyncio.run(go())
        print(msgspec.json.format(msgspec.json.encode(result), indent=2).decode())
        return 0

    return handler


def show_config(args: argparse.Namespace, settings: Settings) -> int:
    for var, field in ENV_VARS.items():
        value = getattr(settings, field)
        if var == "REDIS_URL" and value:
            value = _redact(value)
        print(f"{var:34} {value}")
    return 0


def _redact(url: str) -> str:
    """Hide a password in a URL (`redis://:secret@host` -> `redis://:***@host`)."""
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if not at:
        return url
    user = creds.split(":", 1)[0]
    return f"{scheme}{sep}{user}:***@{host}"


if __name__ == "__main__":
    raise SystemExit(main())

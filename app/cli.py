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

from app import __version__, cli_groups, cli_ops, cli_store, cli_users
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
        code = int(args.handler(args, settings))
        sys.stdout.flush()  # here, so that a reader gone away (`| head`) is met below, not at exit
        return code
    except BrokenPipeError:
        # Python's documented recipe: point stdout at devnull so the flush at exit cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except EventFlowError as exc:
        print(f"eventflow: {exc.detail}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        from app.connections import is_unavailable, unavailable  # local import: keeps `eventflow --help` fast

        if not is_unavailable(exc):
            raise
        # Some commands meet Redis's own error before a service turns it into ours: say it the same way.
        print(f"eventflow: {unavailable(exc, settings).detail}", file=sys.stderr)
        return 1


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
    dev.add_argument("--port", type=_port, default=None, help="HTTP port (default: $PORT or 8000)")
    dev.add_argument("--data-dir", default=None, help="where the embedded server keeps its data "
                     "(default: $EVENTFLOW_DATA_DIR or .eventflow)")
    dev.add_argument("--no-consumers", action="store_true", help="run the web process only")
    dev.set_defaults(handler=devstack.run_dev)

    serve = sub.add_parser("serve", help="run the web process under granian (what the Procfile runs)")
    serve.add_argument("--port", type=_port, default=None, help="HTTP port (default: $PORT or 8000)")
    serve.add_argument("--host", default="0.0.0.0", help="bind address (default: 0.0.0.0)")
    serve.set_defaults(handler=devstack.run_serve)

    embedded = sub.add_parser("embedded-redis", help="run only the embedded Valkey server (AOF on)")
    embedded.add_argument("--port", type=_port, default=6379, help="port (default: 6379)")
    embedded.add_argument("--data-dir", default=None, help="data folder (default: $EVENTFLOW_DATA_DIR/redis)")
    embedded.add_argument("--appendfsync", choices=["always", "everysec", "no"], default="everysec",
                          help="AOF fsync policy (`always` for EVENTFLOW_DURABILITY=fsync)")
    embedded.add_argument("--cluster", type=cli_ops.at_least_one, default=0, metavar="PRIMARIES",
                          help="form a Valkey Cluster of this many primaries instead (ports chosen freely)")
    embedded.set_defaults(handler=devstack.run_embedded)

    cfg = sub.add_parser("config", help="show every setting, its variable and its current value")
    cfg.set_defaults(handler=show_config)

    _producers(sub)
    _webhooks(sub)
    cli_ops.add_parsers(sub)
    cli_store.add_parsers(sub)
    cli_users.add_parser(sub)
    cli_groups.add_parser(sub)
    _audit(sub)
    _consumers_cli(sub)
    return parser


def _port(text: str) -> int:
    """argparse type: a TCP port (granian and Valkey fail on others with a traceback, not a message)."""
    if not text.isascii() or not text.isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (1 to 65535)")
    return int(text)


def _audit(sub: Any) -> None:
    audit = sub.add_parser("audit", help="check the hash-chained audit log",
                           description="The audit consumer writes every event to a hash-chained JSON-lines log.")
    asub = audit.add_subparsers(title="audit commands", metavar="ACTION")
    check = asub.add_parser("verify", help="check the chain across all files; name the first broken line",
                            description="Exit 0 and print a summary when the chain is intact, exit 1 naming "
                            "the first broken line otherwise.")
    check.add_argument("path", nargs="?", default=None,
                       help="the log folder, or one file (default: $EVENTFLOW_AUDIT_PATH)")
    check.set_defaults(handler=audit_verify)
    audit.set_defaults(handler=lambda a, s: (audit.print_help(), 2)[1])


def audit_verify(args: argparse.Namespace, settings: Settings) -> int:
    from app.audit import verify  # local import: keeps `eventflow --help` fast

    report = verify(args.path or settings.audit_path)
    if report.broken is not None:
        b = report.broken
        print(f"audit log BROKEN at {b.file} line {b.line}: {b.reason}\n"
              f"({report.lines} line(s) before it are intact)", file=sys.stderr)
        return 1
    print(f"audit log intact: {report.path}\n  files: {report.files}\n  lines: {report.lines}\n"
          f"  last seq: {report.last_seq}\n  last hash: {report.last_hash}")
    return 0


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
    create.add_argument("--types", nargs="+", default=[], metavar="TYPE",
                        help="event types (exact names or globs such as 'order.*') the key may send; default: any")
    create.set_defaults(handler=_with_services(_producer_create))
    limit = psub.add_parser("limit", help="limit a producer's key to some event types (none: any type)",
                            description="Takes effect at once in every web process; events of other types "
                                        "get 403.")
    limit.add_argument("name", help="the producer")
    limit.add_argument("types", nargs="*", metavar="TYPE", help="exact names or globs; give none to lift the limit")
    limit.set_defaults(handler=_with_services(lambda svc, a: svc.producers.limit_types(a.name, a.types)))
    for action, help_text in (("revoke", "revoke a producer's key at once"),
                              ("rotate", "issue a new key; the old one stops working at once")):
        p = psub.add_parser(action, help=help_text)
        p.add_argument("name", help="the producer")
        p.set_defaults(handler=_with_services(
            lambda svc, a, act=action: getattr(svc.producers, act)(a.name)))
    lst = psub.add_parser("list", help="list producers with their event counts and last-seen time")
    lst.set_defaults(handler=_with_services(lambda svc, a: svc.producers.list()))
    producers.set_defaults(handler=lambda a, s: (producers.print_help(), 2)[1])


def _webhooks(sub: Any) -> None:
    webhooks = sub.add_parser("webhooks", help="create, list, change, rotate and delete webhook subscriptions",
                              description="Subscriptions receive matching events as signed CloudEvents "
                              "(Standard Webhooks); the notify consumer delivers them.")
    wsub = webhooks.add_subparsers(title="webhook commands", metavar="ACTION")
    create = wsub.add_parser("create", help="add a subscription and print its signing secret (shown only once)")
    create.add_argument("url", help="http(s) URL that receives POSTs")
    create.add_argument("--type", "-t", dest="types", action="append", required=True, metavar="PATTERN",
                        help="event type or glob pattern, e.g. 'order.*' (repeat for several)")
    create.add_argument("--description", default="", help="free text")
    create.add_argument("--disabled", action="store_true", help="create it disabled")
    create.set_defaults(handler=_with_services(_webhook_create))
    wsub.add_parser("list", help="list subscriptions with their last delivery").set_defaults(
        handler=_with_services(lambda svc, a: _hooks(svc).list()))
    update = wsub.add_parser("update", help="change a subscription (only the options given)")
    update.add_argument("id", help="the subscription's id (see `eventflow webhooks list`)")
    update.add_argument("--url", help="a new http(s) URL that receives POSTs")
    update.add_argument("--type", "-t", dest="types", action="append", metavar="PATTERN",
                        help="replaces all patterns (repeat for several)")
    update.add_argument("--description", help="new free text shown in the dashboard")
    update.set_defaults(handler=_with_services(_webhook_update))
    for action, help_text in (("get", "show one subscription"), ("delete", "delete a subscription"),
                              ("enable", "resume deliveries"), ("disable", "pause deliveries"),
                              ("rotate-secret", "issue a new secret (the old one also signs for 24 hours)")):
        p = wsub.add_parser(action, help=help_text)
        p.add_argument("id", help="the subscription's id (see `eventflow webhooks list`)")
        p.set_defaults(handler=_with_services(lambda svc, a, act=action: _webhook_action(svc, act, a.id)))
    webhooks.set_defaults(handler=lambda a, s: (webhooks.print_help(), 2)[1])


async def _producer_create(svc: Any, args: argparse.Namespace) -> Any:
    from app.producers import check_description

    check_description(args.description, "--description")  # the option's name, as `types register` says it
    return await svc.producers.create(args.name, args.description, args.types)


def _hooks(svc: Any) -> Any:
    from app.webhooks import Webhooks  # local import: keeps `eventflow --help` fast

    return Webhooks(svc.redis, svc.settings)


async def _webhook_create(svc: Any, args: argparse.Namespace) -> Any:
    from app.webhooks import SubscriptionIn

    data = SubscriptionIn(url=args.url, types=args.types, description=args.description, enabled=not args.disabled)
    return await _hooks(svc).create(data)


async def _webhook_update(svc: Any, args: argparse.Namespace) -> Any:
    from app.webhooks import SubscriptionPatch

    given = {k: v for k in ("url", "types", "description") if (v := getattr(args, k)) is not None}
    return await _hooks(svc).update(args.id, SubscriptionPatch(**given))


async def _webhook_action(svc: Any, action: str, ident: str) -> Any:
    hooks = _hooks(svc)
    if action in ("enable", "disable"):
        return await hooks.set_enabled(ident, action == "enable")
    if action == "rotate-secret":
        return await hooks.rotate_secret(ident)
    return await getattr(hooks, action)(ident)


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
        elif var in _SECRET_VARS and value:
            value = "*** (set)"
        print(f"{var:34} {value}")
    return 0


_SECRET_VARS = {"EVENTFLOW_API_TOKEN", "EVENTFLOW_METRICS_TOKEN", "SENTRY_DSN"}


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

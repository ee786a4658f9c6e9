"""`eventflow consume`: run consumers in this process until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis

from app.connections import connect
from app.errors import ConfigError
from app.logs import configure_logging
from app.metrics import default_metrics, serve_process
from app.settings import Settings
from consumers.base import Consumer
from consumers.runner import Runner, consumer_id

log = logging.getLogger("eventflow.consumers")

Builder = Callable[[Settings, Redis], Consumer]


def builtin() -> dict[str, Builder]:
    """The built-in consumers by name (imported lazily so one broken consumer cannot stop the rest)."""
    from consumers import analytics, audit, notify

    return {"audit": audit.build, "notify": notify.build, "analytics": analytics.build}


def load(names: list[str], module: str | None, settings: Settings, redis: Redis) -> list[Consumer]:
    available: dict[str, Builder | Consumer] = {}
    if module:
        found = getattr(_import(module), "CONSUMERS", None)
        if found is None:
            raise ConfigError(f"module {module!r} has no CONSUMERS list")
        for item in found:
            available[item.name if isinstance(item, Consumer) else item.__name__] = item
    else:
        available.update(builtin())
    unknown = [n for n in names if n not in available]
    if unknown:
        raise ConfigError(f"unknown consumer(s) {', '.join(unknown)}; available: {', '.join(sorted(available))}")
    chosen = [available[n] for n in names] if names else list(available.values())
    return [c if isinstance(c, Consumer) else c(settings, redis) for c in chosen]


def _import(module: str) -> Any:
    """The user's module, looked for in the current folder too, as `python -m` would (the installed
    `eventflow` script has only its own folder and the packages on its path)."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is None or not (module == exc.name or module.startswith(exc.name + ".")):
            raise  # the module exists but imports something missing: its traceback says what
        raise ConfigError(f"no module {module!r} in {os.getcwd()} or the installed packages") from None


def run(args: argparse.Namespace, settings: Settings) -> int:
    configure_logging(settings)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(_main(args.names, args.module, settings))
    return 0


async def _main(names: list[str], module: str | None, settings: Settings) -> None:
    # In memory, never the web's PROMETHEUS_MULTIPROC_DIR files: a worker serves its own values.
    metrics = default_metrics()
    server = serve_process(settings.worker_metrics_port, metrics, asyncio.get_running_loop()) \
        if settings.worker_metrics_port else None
    redis = connect(settings)
    consumers = load(names, module, settings, redis)
    runner = Runner(consumers, redis, settings, consumer_id(settings, os.environ))
    loop = asyncio.get_running_loop()

    def stopping(sig: signal.Signals) -> None:
        # Said at once: until now the first word of a stop was "stopped", up to the whole grace later.
        if not runner.stop.is_set():
            log.info("%s: stopping; finishing what was read (EVENTFLOW_SHUTDOWN_GRACE_S: up to %g s)",
                     sig.name, settings.shutdown_grace_s)
        runner.stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping, sig)
    from app import retention  # imported once the signal handlers are in place: start-up stays short

    # Retention runs next to the consumers when a policy is set (one process at a time per partition).
    trimming = asyncio.create_task(retention.run_forever(redis, settings, runner.stop)) \
        if retention.enabled(settings) else None
    try:
        await runner.run()
    finally:
        if trimming is not None:
            trimming.cancel()  # a pass cut short is safe: archived entries not yet trimmed are archived again
            await asyncio.gather(trimming, return_exceptions=True)
        for c in consumers:
            if c.close is not None:
                await c.close()
        if server is not None:
            await asyncio.to_thread(server.shutdown)
        await redis.aclose()


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "consume", help="run consumers in this process (all built-in ones by default)",
        description="Run consumers until SIGTERM/SIGINT; in-flight deliveries finish within "
        "EVENTFLOW_SHUTDOWN_GRACE_S, the rest stay pending and are reclaimed after their lease. "
        "Built-in consumers: audit, notify, analytics.",
    )
    parser.add_argument("names", nargs="*", metavar="NAME", help="consumers to run (default: all)")
    parser.add_argument("--module", help="import consumers from this module's CONSUMERS instead of the built-ins")
    parser.set_defaults(handler=run)



"""`python -m ops.bench [all|ingest|dispatch] [--quick] ...`: run the benchmarks from the command line."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from ops.bench.config import RESULTS_DIR, BenchConfig

DEFAULTS = BenchConfig()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m ops.bench",
        description="Start EventFlow, naive baselines and embedded Valkey on loopback, drive load, and print "
        "a table of events/s and p50/p99 latency, with ratios against the baselines of the same run. "
        "A JSON file of results goes to ops/bench/results/.",
    )
    p.add_argument("benchmark", nargs="?", default="all", choices=["all", "ingest", "dispatch"],
                   help="what to measure: ingest (HTTP throughput, physical limits, end-to-end latency, live "
                   "updates, memory), dispatch (consumer throughput), or all of it (default; under 5 minutes)")
    p.add_argument("--events", type=int, help="dispatch: events in the log (default 200,000, or 100,000 as part "
                   "of all; quick 30,000)")
    p.add_argument("--quick", action="store_true", help="smoke test: 3 s per load run, 1 s warm-up, fewer events")
    p.add_argument("--duration", type=float, help=f"seconds per load run (default {DEFAULTS.duration_s:g}; quick 3)")
    p.add_argument("--warmup", type=float, help=f"seconds of warm-up before each run (default {DEFAULTS.warmup_s:g})")
    p.add_argument("--connections", type=int, help=f"connections, same for every row (default {DEFAULTS.connections})")
    p.add_argument("--threads", type=int, help=f"load generator threads (default {DEFAULTS.threads})")
    p.add_argument("--max-requests", type=int, help=f"cap on requests per load run (default {DEFAULTS.max_requests:,})")
    p.add_argument("--batch-size", type=int, help=f"events per batch request (default {DEFAULTS.batch_size})")
    p.add_argument("--memory-events", type=int, help=f"events for the index cost (default {DEFAULTS.memory_events:,})")
    p.add_argument("--loadgen", choices=["auto", "wrk", "python"], default="auto",
                   help="wrk (needs the wrk binary), python (asyncio + httpx), or auto: wrk when on PATH")
    p.add_argument("--profile", action="store_true",
                   help="record the EventFlow rows with py-spy and print hot spots (slows those rows down)")
    p.add_argument("--rounds", type=int, help="measure every scenario N times, interleaved, and report the median "
                   "round of each (steadier ratios on a busy machine; default 1)")
    p.add_argument("--wait-quiet", type=float, metavar="SECONDS",
                   help="before starting, wait up to SECONDS for other processes to leave the CPUs idle")
    p.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help="where the JSON goes (default %(default)s)")
    return p


def config_from(args: argparse.Namespace) -> BenchConfig:
    """The run's settings: defaults (or quick ones), then whatever the command line set."""
    given = {
        "duration_s": args.duration, "warmup_s": args.warmup, "connections": args.connections,
        "threads": args.threads, "max_requests": args.max_requests, "batch_size": args.batch_size,
        "memory_events": args.memory_events, "wait_quiet_s": args.wait_quiet, "rounds": args.rounds,
    }
    overrides = {k: v for k, v in given.items() if v is not None}
    overrides.update(loadgen=args.loadgen, profile=args.profile, results_dir=args.results_dir)
    return BenchConfig.quick_run(**overrides) if args.quick else BenchConfig(**overrides)


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)  # stop the servers and web processes we started
    from ops.bench import dispatch, ingest  # imported late: --help works even without the app installed

    try:
        config = config_from(args)
        if args.benchmark in ("ingest", "all"):
            ingest.run(config)
        if args.benchmark in ("dispatch", "all"):
            # As part of `all`, a smaller log keeps the whole command under five minutes.
            events = args.events or (30_000 if args.quick else 100_000 if args.benchmark == "all" else 200_000)
            dispatch.run(events, max(config.rounds, 3), config.results_dir)
    except (RuntimeError, KeyboardInterrupt) as exc:
        print(f"benchmark stopped: {exc or 'interrupted'}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

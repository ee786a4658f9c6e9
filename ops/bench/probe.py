"""The worker side of the end-to-end latency row: a consumer that notes when its handler starts.

Run by the harness as `eventflow consume probe --module ops.bench.probe` with BENCH_PROBE_OUT set:
the handler records (the event's `seq`, time.monotonic()) as its first step, and at shutdown the
consumer's `close` writes them to that file as JSON. time.monotonic() is one system-wide clock on
Linux, so it compares with the producer's send times in the harness process.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import msgspec

from consumers.base import Consumer, Delivery

EVENT_TYPE = "bench.probe"
_started: list[tuple[int, float]] = []


async def _handle(delivery: Delivery) -> None:
    at = time.monotonic()
    _started.append((delivery.data["seq"], at))


async def _write() -> None:
    Path(os.environ["BENCH_PROBE_OUT"]).write_bytes(msgspec.json.encode(_started))


# start="now": the log already holds the throughput rows' events; only the probe's matter here.
CONSUMERS = [Consumer("probe", _handle, types=(EVENT_TYPE,), start="now", close=_write)]

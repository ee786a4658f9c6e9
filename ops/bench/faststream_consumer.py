"""The FastStream baseline for dispatch: its Redis Streams consumer-group subscriber over the log.

Runs in the bench-only venv (see extras.py) as a script, so it imports nothing from EventFlow:

    python faststream_consumer.py REDIS_URL STREAM GROUP EVENTS TIMEOUT_S one|batch

The group must exist already (made at id 0 by the harness): FastStream creates groups at `$`, so on
its own it would never read what the log already holds. The handler takes the entry as a dict (what a
user would type it as) and does nothing; FastStream acknowledges each message (one mode) or each
batch of 100 (batch mode) after the handler returns. Its per-message log lines are turned off
(`logger=None`), as EventFlow's worker writes none either. Prints `RESULT {"events": n, "seconds": s}`.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

from faststream.redis import RedisBroker, StreamSub

BATCH = 100


async def main(url: str, stream: str, group: str, events: int, timeout_s: float, mode: str) -> None:
    broker = RedisBroker(url, logger=None)
    seen = 0
    first = last = 0.0
    done = asyncio.Event()

    def count(n: int) -> None:
        nonlocal seen, first, last
        if not seen:
            first = time.perf_counter()
        seen += n
        last = time.perf_counter()
        if seen >= events:
            done.set()

    sub = StreamSub(stream, group=group, consumer="bench", batch=mode == "batch", max_records=BATCH)
    if mode == "batch":
        @broker.subscriber(stream=sub)
        async def handle_batch(body: list[dict[str, Any]]) -> None:
            count(len(body))
    else:
        @broker.subscriber(stream=sub)
        async def handle_one(body: dict[str, Any]) -> None:
            count(1)

    await broker.start()
    try:
        await asyncio.wait_for(done.wait(), timeout_s)
    except TimeoutError:
        pass  # bounded in time: report what it did
    finally:
        await broker.stop()
    # From the first handler call to the last: start-up is not counted against FastStream.
    print("RESULT", json.dumps({"events": seen, "seconds": max(last - first, 1e-9)}))


if __name__ == "__main__":
    url, stream, group, events, timeout_s, mode = sys.argv[1:7]
    asyncio.run(main(url, stream, group, int(events), float(timeout_s), mode))

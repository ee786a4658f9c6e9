"""Live updates: many dashboard viewers on the SSE live tail while events arrive at a steady rate.

`clients` connections (one viewer session, as a browser would hold) stream `/live/events` from one
web process; a paced producer (paced.py) POSTs events meanwhile. Every connection is read to the end
(the web process must write to all of them), and every `SAMPLE_EVERY`th one also notes when each
event id arrived: delivery latency is that arrival time minus the POST's send time, per event per
sampled client. An event not seen by a sampled client by the end of the grace period counts as
missing. The peak RSS of the web process is sampled meanwhile.

`python -m ops.bench.live [--clients N] [--duration S] [--profile]` runs this row alone on its own
embedded Valkey and web process (the full harness runs it as part of `ingest`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import re
import resource
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from app.connections import connect
from app.service import Services
from app.settings import Settings
from app.web.dashboard.auth import SESSION_COOKIE
from ops.bench import hostload, paced, profile, stack
from ops.bench.report import progress

RATE_S = 1000.0
SAMPLE_EVERY = 20
GRACE_S = 2.0
EVENT_ID = re.compile(rb"id: ([0-9]+-[0-9]+)\nevent: event\n")


@dataclass(frozen=True, kw_only=True)
class LiveResult:
    clients: int
    connected: int
    rate_s: float
    offered: int  # POSTs the schedule held
    accepted: int
    sampled_clients: int
    deliveries: int  # (event, sampled client) pairs that arrived
    missing: int  # (event, sampled client) pairs that did not arrive in time
    resets: int  # "start over" messages (a client fell too far behind to catch up)
    p50_ms: float
    p99_ms: float
    max_ms: float
    received_mb: float  # what all clients together read
    web_rss_mb: float | None
    producer_errors: int
    producer_unsent: int  # POSTs the schedule held but never sent: ingest stopped answering in time


class _Viewer(asyncio.Protocol):
    """One SSE connection, read as fast as it comes; `arrivals` only when it is sampled."""

    def __init__(self, sampled: bool) -> None:
        self.sampled = sampled
        self.arrivals: dict[str, float] = {}
        self.received = 0
        self.resets = 0
        self.ready = asyncio.get_running_loop().create_future()
        self._tail = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        if not self.ready.done() and b"ping" in data:
            self.ready.set_result(None)
        if self.sampled:
            at = time.monotonic()
            chunk = self._tail + data
            for found in EVENT_ID.findall(chunk):
                self.arrivals.setdefault(found.decode(), at)
            self.resets += chunk.count(b"event: reset")
            self._tail = chunk[-80:]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"closed before the stream started: {exc}"))


def measure(url: str, headers: dict[str, str], web_pid: int, redis_url: str, prefix: str,
            *, clients: int, duration_s: float) -> LiveResult:
    _raise_fd_limit(clients * 2 + 256)
    cookie = asyncio.run(_viewer_session(redis_url, prefix))
    return asyncio.run(_measure(url, headers, web_pid, cookie, clients, duration_s))


async def _measure(url: str, headers: dict[str, str], web_pid: int, cookie: str, clients: int,
                   duration_s: float) -> LiveResult:
    progress(f"live: connecting {clients:,} SSE clients to /live/events")
    viewers = [_Viewer(sampled=n % SAMPLE_EVERY == 0) for n in range(clients)]
    target = urlsplit(url)
    request = (f"GET /live/events HTTP/1.1\r\nHost: {target.netloc}\r\nAccept: text/event-stream\r\n"
               f"Cookie: {SESSION_COOKIE}={cookie}\r\n\r\n").encode()
    loop = asyncio.get_running_loop()

    async def connect_one(viewer: _Viewer) -> None:
        transport, _ = await loop.create_connection(lambda: viewer, target.hostname, target.port)
        transport.write(request)  # type: ignore[attr-defined]
        await asyncio.wait_for(viewer.ready, 30)

    for start in range(0, clients, 100):  # in waves, as browsers would not all arrive in one tick
        await asyncio.gather(*(connect_one(v) for v in viewers[start:start + 100]), return_exceptions=True)
    connected = sum(1 for v in viewers if v.ready.done() and v.ready.exception() is None)
    progress(f"live: {connected:,} connected; {RATE_S:,.0f} events/s for {duration_s:g} s")
    try:
        with hostload.PeakRss({"web": web_pid}) as rss:
            sent = await paced.produce(url + "/v1/events", headers, _body, RATE_S, duration_s)
            await asyncio.sleep(GRACE_S)
    finally:
        for v in viewers:
            if hasattr(v, "transport"):
                v.transport.close()
    sampled = [v for v in viewers if v.sampled and v.ready.done() and v.ready.exception() is None]
    latencies = [v.arrivals[e] - sent.sent_at[n] for v in sampled for n, e in sent.entry_ids.items()
                 if e in v.arrivals]
    p50, p99, worst = paced.percentiles_ms(latencies)
    return LiveResult(
        clients=clients, connected=connected, rate_s=RATE_S, offered=sent.planned, accepted=sent.accepted,
        sampled_clients=len(sampled),
        deliveries=len(latencies), missing=len(sampled) * sent.accepted - len(latencies),
        resets=sum(v.resets for v in sampled), p50_ms=p50, p99_ms=p99, max_ms=worst,
        received_mb=sum(v.received for v in viewers) / 2**20, web_rss_mb=rss.peak_mb()["web"],
        producer_errors=sent.errors, producer_unsent=sent.unsent,
    )


def _body(n: int) -> bytes:
    return b'{"type":"bench.live","data":{"seq":%d,"amount":9.5,"currency":"EUR"}}' % n


async def _viewer_session(redis_url: str, prefix: str) -> str:
    """A viewer operator and a session for it: the cookie every SSE client sends."""
    settings = Settings(redis_url=redis_url, prefix=prefix)
    redis = connect(settings)
    try:
        services = Services(redis, settings)
        name = f"bench-viewer-{time.monotonic_ns()}"
        await services.users.create(name, "viewer", "bench-viewer-password-0123")
        token, _ = await services.sessions.start(await services.users.get(name))
        return token
    finally:
        await redis.aclose()


def _raise_fd_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))


def main(argv: list[str] | None = None) -> int:
    """The live row alone: a fresh server and web process, then `measure`, printed as JSON."""
    args = argparse.ArgumentParser(prog="python -m ops.bench.live", description=main.__doc__)
    args.add_argument("--clients", type=int, default=1000)
    args.add_argument("--duration", type=float, default=5.0)
    args.add_argument("--profile", action="store_true", help="py-spy the web process; print hot spots")
    opts = args.parse_args(argv)
    prefix = "bench"
    with tempfile.TemporaryDirectory(prefix="eventflow-live-") as tmp, contextlib.ExitStack() as scope:
        root = Path(tmp)
        server = scope.enter_context(stack.valkey(root / "valkey", "everysec"))
        web = scope.enter_context(stack.web("eventflow", stack.EVENTFLOW_FACTORY,
                                            stack.eventflow_env(server.url, prefix, "fast"), root))
        headers = {"Content-Type": "application/json",
                   "Authorization": f"Bearer {stack.create_producer(server.url, prefix)}"}
        raw = root / "live.pyspy"
        if opts.profile:
            scope.enter_context(profile.recording(web.pid, raw))
        before = hostload.sample()
        result, cores = hostload.core_pct({"web": web.pid}, lambda: measure(
            web.url, headers, web.pid, server.url, prefix, clients=opts.clients, duration_s=opts.duration))
        other = hostload.other_cpu_pct(before, hostload.sample())
        if opts.profile:
            scope.close()  # stop py-spy so it writes its output
            print(profile.render("hot spots by self time", profile.hot_spots(raw, 25)))
            print(profile.render("hot spots by total time", profile.hot_spots(raw, 25, by="total")))
    print(json.dumps({**dataclasses.asdict(result), "web_core_pct": cores["web"], "other_cpu_pct": other}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

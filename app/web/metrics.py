"""The web process's metrics: HTTP request metrics, `GET /metrics` behind a token, the internal port.

Where they are served:
  - `GET /metrics` on the API port answers only `Authorization: Bearer $EVENTFLOW_METRICS_TOKEN`
    (404 while that is unset), for a Prometheus outside the private network;
  - `EVENTFLOW_METRICS_PORT` (off by default; the image and fly.toml use 9091) serves the same text
    without a token on an internal port that is never published, for Fly's scraper or a sidecar.

Several granian workers: with PROMETHEUS_MULTIPROC_DIR set, every worker writes its values to its
own files there and any worker answers a scrape with the sum over all of them (prometheus_client's
multiprocess mode). Files left by an earlier run of the server are removed at start; those of a
worker that died in this run are kept, so counters never go backwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import hmac
import logging
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from litestar import Litestar, Request, Response, get
from litestar.exceptions import NotFoundException
from litestar.middleware import DefineMiddleware
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from redis.asyncio import Redis

from app.errors import Unauthorized
from app.keys import Keys
from app.metrics import Metrics, RedisGauges, is_multiprocess, serve
from app.settings import Settings
from app.tracing import from_settings, trace_id_of

log = logging.getLogger("eventflow.http")

AnyRequest = Request[Any, Any, Any]
INGEST_ROUTES = ("/v1/events", "/v1/events/batch")
_HEADERS_LOGGED = (b"fly-request-id", b"x-request-id", b"traceparent", b"user-agent")


class WebMetrics:
    """The web process's metrics state: request tallies, Redis gauges and the internal listener."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.gauges: RedisGauges | None = None
        self.extra = CollectorRegistry()  # what is read at scrape time rather than counted
        self._requests: dict[tuple[str | None, str, int], tuple[Any, Any]] = {}
        self._log_all = settings.access_log == "all"
        self._log_errors = settings.access_log != "off"
        self._server: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def middleware(self) -> DefineMiddleware:
        return DefineMiddleware(RequestMetrics, web=self)

    async def start(self, redis: Redis) -> None:
        self._loop = asyncio.get_running_loop()
        self.gauges = RedisGauges(redis, Keys(self.settings.prefix, self.settings.partitions),
                                  timeout_s=self.settings.redis_timeout_s)
        self.extra = CollectorRegistry()
        self.extra.register(self.gauges)  # type: ignore[arg-type]
        if is_multiprocess() and self.settings.metrics_dir:
            remove_stale_files(self.settings.metrics_dir)
        if self.settings.metrics_port:
            self._server = serve(self.settings.metrics_port, self._render_from_thread, reuse_port=True)

    async def stop(self) -> None:
        self.metrics.flush()
        if self._server is not None:
            await asyncio.to_thread(self._server.shutdown)
            self._server.server_close()
            self._server = None

    # -- recording --------------------------------------------------------------------------------
    def request(self, scope: dict[str, Any], status: int, elapsed_s: float) -> None:
        """One HTTP request, by route template (never the raw path), method and status."""
        template = scope.get("path_template")
        route = template or "unmatched"
        key = (template, scope["method"], status)
        slots = self._requests.get(key)
        if slots is None:
            slots = self._requests[key] = (
                self.metrics.count(self.metrics.http_requests, route, key[1], str(status)),
                self.metrics.timing(self.metrics.http_duration, route, key[1]),
            )
        slots[0].add()
        slots[1].observe(elapsed_s)
        self.metrics.touch()
        if self._log_all or (self._log_errors and status >= 400):
            _access_log(scope, route, status, elapsed_s)

    def problem(self, scope: dict[str, Any], status: int, problem_type: str) -> None:
        """An error answer: count a rejected ingest by reason; count requests the router refused."""
        template = scope.get("path_template")
        if scope.get("method") == "POST" and (template in INGEST_ROUTES or scope.get("path") in INGEST_ROUTES):
            self.metrics.count(self.metrics.events_rejected, problem_type.rpartition("/")[2]).add()
            self.metrics.touch()
        if template is None:  # 404/405 from the router: no route middleware saw it
            self.request(scope, status, 0.0)

    # -- scraping -----------------------------------------------------------------------------------
    async def render(self) -> bytes:
        """The exposition text (on the event loop: flush tallies, refresh the Redis gauges)."""
        await self._prepare()
        return await asyncio.to_thread(self._generate)

    async def _prepare(self) -> None:
        self.metrics.flush()
        if self.gauges is not None:
            await self.gauges.refresh()

    def _render_from_thread(self) -> bytes:
        # The internal listener's thread: the loop does the Redis I/O, this thread only waits.
        if self._loop is not None and not self._loop.is_closed():
            future = asyncio.run_coroutine_threadsafe(self._prepare(), self._loop)
            try:
                future.result(self.settings.redis_timeout_s + 1)
            except Exception as exc:  # noqa: BLE001 - serve what is there (redis_up says the rest)
                log.debug("metrics: preparing the scrape failed: %s", exc)
        return self._generate()

    def _generate(self) -> bytes:
        if is_multiprocess() and self.settings.metrics_dir:
            registry = CollectorRegistry()
            forget_dead_gauges(self.settings.metrics_dir)
            MultiProcessCollector(registry, path=self.settings.metrics_dir)
            return generate_latest(registry) + generate_latest(self.extra)
        return generate_latest(REGISTRY) + generate_latest(self.extra)


class RequestMetrics:
    """ASGI middleware: route template, method, status and latency of every routed request.

    Written for the ingest hot path (about 1 µs a request): one closure, two clock reads and two
    plain-Python tally bumps; everything else happens once per (route, method, status)."""

    def __init__(self, app: Any, web: WebMetrics) -> None:
        self.app = app
        self.web = web
        self.slots = web._requests
        self.metrics = web.metrics

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            elapsed = time.perf_counter() - started
            slots = self.slots.get((scope.get("path_template"), scope["method"], status))
            if slots is None or status >= 400 or self.web._log_all:
                self.web.request(scope, status, elapsed)  # first sight, or a line to log
            else:
                slots[0].n += 1
                slots[1].observe(elapsed)
                self.metrics.touch()


def lifespan(web: WebMetrics) -> Any:
    """The app's observability lifespan (after the services one): metrics, trace export, error flush."""

    @contextlib.asynccontextmanager
    async def observability(app: Litestar) -> AsyncIterator[None]:
        services = app.state.services
        services.tracer = from_settings(web.settings, "eventflow-web")
        await web.start(services.redis)
        try:
            yield
        finally:
            await web.stop()
            with contextlib.suppress(Exception):  # Redis may be gone at shutdown: lose a second of tallies
                await services.errors.flush()
            if services.tracer is not None:
                await asyncio.to_thread(services.tracer.shutdown)  # exports what is queued

    return observability


def note_problem(request: AnyRequest, status: int, problem_type: str) -> None:
    """Called by the problem+json handler for every error answer."""
    web = getattr(request.app.state, "web_metrics", None)
    if web is not None:
        web.problem(request.scope, status, problem_type)  # type: ignore[arg-type]


def _access_log(scope: dict[str, Any], route: str, status: int, elapsed_s: float) -> None:
    """One request log line: never the headers (keys, cookies), never the query string."""
    headers = {k: v for k, v in scope.get("headers", ()) if k in _HEADERS_LOGGED}
    extra: dict[str, Any] = {
        "http_method": scope["method"], "route": route, "path": scope.get("path", ""), "status": status,
        "duration_ms": round(elapsed_s * 1000, 2),
    }
    request_id = headers.get(b"fly-request-id") or headers.get(b"x-request-id")
    if request_id:
        extra["request_id"] = request_id.decode(errors="replace")[:100]
    trace = trace_id_of(headers.get(b"traceparent", b"").decode(errors="replace"))
    if trace:
        extra["trace_id"] = trace
    level = logging.ERROR if status >= 500 else logging.WARNING if status >= 400 else logging.INFO
    log.log(level, "%s %s %d", scope["method"], extra["path"], status, extra=extra)


@get("/metrics", summary="Prometheus metrics (needs EVENTFLOW_METRICS_TOKEN)", include_in_schema=False)
async def metrics_endpoint(request: AnyRequest) -> Response[bytes]:
    settings: Settings = request.app.state.settings
    token = settings.metrics_token
    if not token:
        raise NotFoundException("metrics are not served on this port (set EVENTFLOW_METRICS_TOKEN, or scrape "
                                "EVENTFLOW_METRICS_PORT)")
    given = request.headers.get("authorization", "")
    if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
        raise Unauthorized("GET /metrics needs Authorization: Bearer <EVENTFLOW_METRICS_TOKEN>")
    body = await request.app.state.web_metrics.render()
    return Response(body, media_type=CONTENT_TYPE_LATEST)


ROUTES = [metrics_endpoint]


# -- multiprocess files ---------------------------------------------------------------------------------
def _pid_of(path: str) -> int | None:
    try:
        return int(Path(path).stem.rpartition("_")[2])
    except ValueError:
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def forget_dead_gauges(path: str) -> None:
    """Drop the live-sum gauges (SSE clients) of workers that died; counters stay."""
    for name in glob.glob(os.path.join(path, "gauge_live*.db")):
        pid = _pid_of(name)
        if pid is not None and not _alive(pid):
            mark_process_dead(pid, path)


def remove_stale_files(path: str) -> None:
    """Remove metric files of dead processes written before this server (granian's parent) started."""
    started = _process_start(os.getppid())
    if started is None:
        return
    for name in glob.glob(os.path.join(path, "*.db")):
        pid = _pid_of(name)
        try:
            if pid is not None and not _alive(pid) and os.path.getmtime(name) < started:
                os.remove(name)
        except OSError:
            pass  # another worker removed it first


def _process_start(pid: int) -> float | None:
    """A process's start time (epoch seconds) from /proc; None where there is no /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime"))
        return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None

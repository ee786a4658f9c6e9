"""The stack under test, on loopback: embedded Valkey servers and granian web processes.

Web processes run the production command (`app.devstack.web_command`: granian, ASGI, uvloop, one
worker, no access log); a baseline app only swaps the `--factory` target, so every app under test
is served the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path

from app.connections import connect
from app.devstack import web_command
from app.embedded import EmbeddedServer, free_port
from app.service import Services
from app.settings import Settings

HOST = "127.0.0.1"
EVENTFLOW_FACTORY = "app.web:create_app_from_env"
BASELINE_FACTORY = "ops.bench.baselines:create_app_from_env"
# A fork for an AOF rewrite in the middle of a load run would blur whichever row it lands in.
SERVER_EXTRA = {"auto-aof-rewrite-percentage": "0"}


class WebProcess:
    """One granian process serving `factory` on a free loopback port; its output goes to a log file."""

    def __init__(self, name: str, factory: str, env: Mapping[str, str], log_dir: Path,
                 command: list[str] | None = None) -> None:
        self.name = name
        self.port = free_port()
        # `command` (with `{port}` in it) serves another framework the way its users would run it.
        self.command = [arg.replace("{port}", str(self.port)) for arg in command] if command else \
            granian_command(factory, self.port)
        self.env = {**os.environ, **env}
        self.log_path = log_dir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, timeout_s: float = 30.0) -> WebProcess:
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(self.command, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_http(self.url + "/", self.process, timeout_s)
        except RuntimeError as exc:
            self.stop()
            raise RuntimeError(f"{self.name}: {exc}\n{self.log_tail()}") from None
        return self

    def stop(self, grace_s: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(grace_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def log_tail(self, chars: int = 2000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""


def granian_command(factory: str, port: int) -> list[str]:
    """The production web command with another factory target (same flags, one worker)."""
    command = web_command(HOST, port, workers=1)
    if command[-1] != EVENTFLOW_FACTORY:
        raise RuntimeError(f"app.devstack.web_command changed shape: {command}")
    return [venv_bin(command[0]), *command[1:-1], factory]


def uvicorn_command(python: str) -> list[str]:
    """The FastAPI baseline under uvicorn (uvloop, httptools, one worker, no access log), run by the
    bench-only venv's interpreter; `{port}` is filled in by WebProcess."""
    return [python, "-m", "uvicorn", "fastapi_app:app", "--app-dir", str(Path(__file__).parent),
            "--host", HOST, "--port", "{port}", "--no-access-log", "--log-level", "warning",
            "--loop", "uvloop", "--http", "httptools"]


def venv_bin(name: str) -> str:
    """A console script next to this interpreter (the venv), else the name for PATH lookup."""
    candidate = Path(sys.executable).with_name(name)
    return str(candidate) if candidate.exists() else name


def wait_http(url: str, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    """Wait until `url` answers any HTTP status (a 404 or 405 still means the server is up)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"exited at start-up with code {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"did not answer {url} within {timeout_s:.0f} s")


@contextlib.contextmanager
def valkey(data_dir: Path, appendfsync: str) -> Iterator[EmbeddedServer]:
    """An embedded Valkey with AOF on and the given fsync policy, stopped on exit."""
    server = EmbeddedServer(data_dir, appendfsync=appendfsync, extra=SERVER_EXTRA).start()
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def web(
    name: str, factory: str, env: Mapping[str, str], log_dir: Path, command: list[str] | None = None
) -> Iterator[WebProcess]:
    """A started web process (granian unless `command` says otherwise), stopped on exit."""
    process = WebProcess(name, factory, env, log_dir, command).start()
    try:
        yield process
    finally:
        process.stop()


def eventflow_env(redis_url: str, prefix: str, durability: str) -> dict[str, str]:
    """The environment the Procfile's `web:` line would get in production."""
    return {
        "REDIS_URL": redis_url,
        "EVENTFLOW_PREFIX": prefix,
        "EVENTFLOW_DURABILITY": durability,
        "EVENTFLOW_LOG_FORMAT": "json",
        "EVENTFLOW_LOG_LEVEL": "WARNING",
    }


def baseline_env(redis_url: str, stream: str) -> dict[str, str]:
    return {"REDIS_URL": redis_url, "BENCH_NAIVE_STREAM": stream}


def create_producer(redis_url: str, prefix: str, name: str = "bench") -> str:
    """Register a producer under `prefix` and return its key (shown once, as in production)."""

    settings = Settings(redis_url=redis_url, prefix=prefix)

    async def create() -> str:
        redis = connect(settings)
        try:
            return (await Services(redis, settings).producers.create(name)).key
        finally:
            await redis.aclose()

    return asyncio.run(create())


def register_schema(redis_url: str, prefix: str, event_type: str, schema: dict[str, object]) -> None:
    """Register `event_type` with `schema` (enforce mode), then wait until web processes have polled it."""
    from app.schemas import REFRESH_S, TypeChange

    settings = Settings(redis_url=redis_url, prefix=prefix)

    async def register() -> None:
        redis = connect(settings)
        try:
            await Services(redis, settings).schemas.register(event_type, TypeChange(schema=schema, force=True))
        finally:
            await redis.aclose()

    asyncio.run(register())
    time.sleep(REFRESH_S + 0.2)


def post_once(url: str, body: bytes, headers: Mapping[str, str], timeout_s: float = 10.0) -> tuple[int, bytes]:
    """One POST (a smoke check before loading a target): (status, body)."""
    request = urllib.request.Request(url, data=body, headers=dict(headers), method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()

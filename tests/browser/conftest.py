"""The browser tests' world: the web process under granian and a worker process, both real
subprocesses on the session's embedded Valkey, and headless Chromium driven by Playwright.

Chromium is Debian's (`apt-get install chromium`, which .ci/run does); a missing browser fails
these tests rather than skipping them. Screenshots go to test-artifacts/ at the repository root.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis as redis_sync

from app.devstack import web_command
from app.embedded import EmbeddedServer, free_port
from app.keys import Keys

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]
ARTIFACTS = ROOT / "test-artifacts"
TIMEOUT_MS = 15_000
PASSWORDS = {"admin": "admin-pass-" + uuid.uuid4().hex[:8], "viewer": "viewer-pass-" + uuid.uuid4().hex[:8]}


@dataclass
class Stack:
    url: str
    prefix: str
    env: dict[str, str]
    logs: Path
    redis: redis_sync.Redis
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def key(self, name: str) -> str:
        """A switch the test consumers read (see stack_consumers.py)."""
        return f"{self.prefix}:test:{name}"

    @property
    def dead_letters(self) -> str:
        return Keys(self.prefix).dead_letters(0)

    def post_event(self, producer_key: str, body: dict[str, Any]) -> dict[str, Any]:
        resp = httpx.post(f"{self.url}/v1/events", json=body, timeout=10,
                          headers={"Authorization": f"Bearer {producer_key}"})
        assert resp.status_code == 202, resp.text
        return resp.json()  # type: ignore[no-any-return]

    def wait(self, check: Callable[[], bool], what: str, timeout_s: float = 15.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if check():
                return
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}; logs in {self.logs}")


def _run_cli(env: dict[str, str], *args: str, password: str | None = None) -> str:
    run_env = dict(env, EVENTFLOW_ADMIN_PASSWORD=password or "")
    done = subprocess.run([str(BIN / "eventflow"), *args], env=run_env, capture_output=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode()


@pytest.fixture(scope="session")
def stack(redis_server: EmbeddedServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Web + worker processes for one key prefix, and an admin and a viewer made with the CLI."""
    logs = tmp_path_factory.mktemp("browser-stack")
    prefix = f"b{uuid.uuid4().hex[:8]}"
    port = free_port()
    env = dict(os.environ, REDIS_URL=redis_server.url, EVENTFLOW_PREFIX=prefix, EVENTFLOW_LOG_FORMAT="text",
               EVENTFLOW_LOG_LEVEL="WARNING", EVENTFLOW_LIVE_PING_S="5", EVENTFLOW_SHUTDOWN_GRACE_S="3",
               EVENTFLOW_AUDIT_PATH=str(logs / "audit"), PYTHONPATH=str(ROOT))
    env.pop("EVENTFLOW_ADMIN_PASSWORD", None)
    for role, password in PASSWORDS.items():
        _run_cli(env, "users", "create", role, "--role", role, password=password)
    client = redis_sync.Redis.from_url(redis_server.url)
    stack = Stack(url=f"http://127.0.0.1:{port}", prefix=prefix, env=env, logs=logs, redis=client)
    web = web_command("127.0.0.1", port)
    web[0] = str(BIN / web[0])
    consume = [str(BIN / "eventflow"), "consume", "--module", "tests.browser.stack_consumers"]
    for name, cmd in (("web", web), ("worker", consume)):
        with (logs / f"{name}.log").open("wb") as out:  # the child keeps its own copy of the file
            # Its own process group: granian's worker is a child process, left running (an orphan
            # holding its port, after the suite ended) when only the parent was killed.
            stack.processes.append(subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                                    start_new_session=True))
    try:
        stack.wait(lambda: _answers(f"{stack.url}/healthz"), "the web process")
        stack.wait(lambda: client.hlen(f"{prefix}:consumers") == 3, "the worker's consumer groups")
        yield stack
    finally:
        for proc in stack.processes:
            proc.send_signal(signal.SIGTERM)
        for proc in stack.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(15)  # past granian's --workers-kill-timeout (10 s)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # whatever of the group is left
            proc.wait()
        client.close()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.fail("Chromium is missing: `apt-get install -y chromium` (.ci/run does it); "
                    "browser tests never download a browser")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=30_000)
        yield chromium
        chromium.close()


@pytest.fixture
def open_page(browser: Any, stack: Stack) -> Iterator[Callable[..., Any]]:
    """`open_page("admin")`: a fresh browser context logged in as that operator (or None: logged out)."""
    contexts: list[Any] = []

    def make(role: str | None = "admin", *, width: int = 1280, height: int = 860, javascript: bool = True) -> Any:
        context = browser.new_context(viewport={"width": width, "height": height}, base_url=stack.url,
                                      java_script_enabled=javascript)
        context.set_default_timeout(TIMEOUT_MS)
        contexts.append(context)
        page = context.new_page()
        if role is not None:
            login(page, role)
        return page

    yield make
    for context in contexts:
        context.close()


def login(page: Any, role: str) -> None:
    page.goto("/login")
    page.get_by_label("Name").fill(role)
    page.get_by_label("Password").fill(PASSWORDS[role])
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(re.compile(r"/$"))


def shot(page: Any, name: str) -> Path:
    """Save a full-page screenshot as test-artifacts/dashboard-<name>.png."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"dashboard-{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path

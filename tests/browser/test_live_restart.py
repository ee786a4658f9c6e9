"""A web process restarted under an open dashboard: it stops within granian's kill timeout (an open
live feed is a request that never ends by itself), and the page's feed comes back and shows what was
sent while the process was down, without a reload."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import expect

from app.devstack import web_command
from app.embedded import free_port
from tests.browser.conftest import BIN, ROOT, TIMEOUT_MS, Stack, _answers, login
from tests.browser.test_dashboard_flows import register_producer

STOP_S = 15.0  # the web command's --workers-kill-timeout (10 s) and some room


class WebProcess:
    """A second web process of the stack's (same Redis, prefix and operators), on a port of its own."""

    def __init__(self, stack: Stack) -> None:
        self.stack, self.port = stack, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        cmd = web_command("127.0.0.1", self.port)
        with (self.stack.logs / f"web-{self.port}.log").open("ab") as out:
            self.proc = subprocess.Popen([str(BIN / cmd[0]), *cmd[1:]], env=self.stack.env, cwd=ROOT, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)  # see conftest
        self.stack.wait(lambda: _answers(f"{self.url}/healthz"), "the second web process")

    def stop(self, timeout_s: float) -> float:
        """SIGTERM, and how long the process took to exit."""
        assert self.proc is not None
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout_s)
        return time.monotonic() - started

    def kill(self) -> None:
        """Kill what is left of it, granian's worker process included."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture
def web(stack: Stack) -> Iterator[WebProcess]:
    process = WebProcess(stack)
    process.start()
    yield process
    process.kill()


def test_a_restart_under_an_open_events_page_is_prompt_and_the_feed_misses_nothing(
    browser: Any, stack: Stack, web: WebProcess, open_page: Any
) -> None:
    key = register_producer(open_page("admin"), "restarted")
    context = browser.new_context(base_url=web.url)
    context.set_default_timeout(TIMEOUT_MS)
    try:
        page = context.new_page()
        login(page, "viewer")
        page.goto("/events?source=restarted")
        expect(page.locator("[data-live-status]")).to_have_attribute("data-state", "live")
        page.evaluate("window.__notReloaded = true")
        before = stack.post_event(key, {"type": "restart.before"})["entry_id"]
        expect(page.locator(f'tr[data-entry="{before}"]')).to_be_visible()

        try:
            took_s = web.stop(STOP_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the web process did not stop within {STOP_S} s of SIGTERM with a live feed open")
        assert took_s < STOP_S
        during = [stack.post_event(key, {"type": "restart.during", "data": n})["entry_id"] for n in range(3)]
        web.start()
        after = stack.post_event(key, {"type": "restart.after"})["entry_id"]
        for entry in (*during, after):
            expect(page.locator(f'tr[data-entry="{entry}"]')).to_be_visible()
        expect(page.locator("#event-rows tr")).to_have_count(5)  # once each
        assert page.evaluate("window.__notReloaded") is True
        expect(page.locator("[data-live-status]")).to_have_attribute("data-state", "live")
    finally:
        context.close()

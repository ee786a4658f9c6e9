"""The dashboard with unusual values an operator meets in practice: names and types long enough to
break a layout, and producer names holding the characters their rules allow."""

from __future__ import annotations

from typing import Any

from playwright.sync_api import expect

from tests.browser.conftest import Stack
from tests.browser.test_dashboard_flows import register_producer


def _overflow(page: Any) -> int:
    """How far the page scrolls sideways (0: it fits its viewport)."""
    return int(page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth"))


def test_an_event_with_a_very_long_type_and_source_fits_the_page(open_page: Any, stack: Stack) -> None:
    admin = open_page("admin")
    source = "s" * 200  # the longest producer name there can be
    key = register_producer(admin, source)
    posted = stack.post_event(key, {"type": "order." + "verylongtypename" * 12, "subject": "x" * 300})
    for width in (1280, 390):
        page = open_page("admin", width=width)
        page.goto(f"/events/{posted['entry_id']}")
        expect(page.locator("main h1")).to_contain_text("verylongtypename")
        assert _overflow(page) == 0, width

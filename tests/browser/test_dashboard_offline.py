"""The dashboard without JavaScript, and nothing fetched from another host (no CDN anywhere: the
pages and the API docs work offline)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from playwright.sync_api import expect

from tests.browser.conftest import Stack
from tests.browser.test_dashboard_flows import register_producer

# Not /types: the web process caches its counts for 30 s, and test_dashboard_pages (after this file,
# on the same stack) waits for counts to appear there.
PAGES = ("/", "/events", "/producers", "/consumers", "/dead-letters", "/webhooks", "/errors")


def test_with_javascript_off_an_operator_logs_in_registers_a_producer_and_follows_an_event(
    open_page: Any, stack: Stack
) -> None:
    page = open_page("admin", javascript=False)  # logs in through the plain form
    for path in PAGES:
        page.goto(path)
        expect(page.locator("main h1")).to_be_visible()
    key = register_producer(page, "no-script")
    posted = stack.post_event(key, {"type": "order.shipped", "subject": "order-7"})
    page.goto("/events")
    row = page.locator(f'tr[data-entry="{posted["entry_id"]}"]')
    expect(row).to_contain_text("order-7")
    row.get_by_role("link", name="order.shipped").click()
    expect(page.get_by_role("heading", name="order.shipped")).to_be_visible()
    expect(page.locator('[data-group="recorder"]')).to_be_visible()


def test_no_page_and_not_the_api_docs_fetch_anything_from_another_host(open_page: Any, stack: Stack) -> None:
    page = open_page("admin")
    here = urlsplit(stack.url).netloc
    elsewhere: list[str] = []

    def only_here(route: Any) -> None:
        if urlsplit(route.request.url).netloc == here:
            route.continue_()
        else:
            elsewhere.append(route.request.url)
            route.abort()

    page.route("**/*", only_here)
    for path in PAGES:
        page.goto(path)
        expect(page.locator("main h1")).to_be_visible()
    page.goto("/schema/swagger")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("EventFlow")
    expect(page.locator(".opblock-summary-path", has_text="/v1/events").first).to_be_visible()
    assert elsewhere == []

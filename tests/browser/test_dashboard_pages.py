"""Every page renders as a product: screenshots of each (desktop and phone width) under
test-artifacts/, and the overview, consumers and webhooks pages working end to end."""

from __future__ import annotations

from typing import Any

from playwright.sync_api import expect

from tests.browser.conftest import Stack, shot
from tests.browser.test_dashboard_flows import register_producer


def test_overview_shows_groups_rate_and_recent_errors(open_page: Any, stack: Stack) -> None:
    admin = open_page("admin")
    key = register_producer(admin, "warehouse")
    for n in range(12):
        stack.post_event(key, {"type": "stock.moved" if n % 3 else "stock.counted", "data": {"sku": n}})
    stack.redis.set(stack.key("broken"), "1")  # one failure, for the recent errors panel
    try:
        stack.post_event(key, {"type": "stock.reserved", "data": {"sku": 99}})
        stack.wait(lambda: stack.redis.xlen(stack.dead_letters) >= 1, "the dead letter")
    finally:
        stack.redis.delete(stack.key("broken"))
    page = open_page("admin")
    page.goto("/")
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    groups = page.locator("section", has=page.get_by_role("heading", name="Consumer groups"))
    for name in ("analytics", "flaky", "recorder"):
        expect(groups).to_contain_text(name)
    chart = page.locator("figure.chart svg[role=img]")
    expect(chart).to_be_visible()
    expect(page.locator("figure.chart rect.bar").first).to_be_attached()
    expect(page.locator("[data-live-status]")).to_have_attribute("data-state", "live")
    recent = page.locator("section", has=page.get_by_role("heading", name="Recent errors"))
    expect(recent).to_contain_text("stock.reserved")
    shot(page, "overview")


def test_consumers_page_lists_every_group_with_its_workers(open_page: Any) -> None:
    page = open_page("admin")
    page.goto("/consumers")
    for name in ("analytics", "flaky", "recorder"):
        card = page.locator("section.group-card", has=page.get_by_role("heading", name=name, exact=True))
        expect(card).to_contain_text("1 worker")
        expect(card.locator("table")).to_be_visible()
    expect(page.locator("[data-live-status]")).to_have_attribute("data-state", "live")
    shot(page, "consumers")


def test_webhooks_can_be_added_disabled_and_deleted(open_page: Any) -> None:
    page = open_page("admin")
    page.goto("/webhooks")
    page.get_by_label("URL").fill("https://hooks.example.com/eventflow")
    page.get_by_label("Event types").fill("order.* payment.captured")
    page.get_by_label("Description").fill("Order notifications for the CRM")
    page.get_by_role("button", name="Add subscription").click()
    expect(page.get_by_role("heading", name="Subscription added")).to_be_visible()
    assert page.locator("#webhook-secret").input_value().startswith("whsec_")
    shot(page, "webhook-secret")
    page.get_by_role("link", name="Done").click()
    row = page.locator("tr", has_text="hooks.example.com")
    expect(row).to_contain_text("enabled")
    row.get_by_role("button", name="Disable").click()
    expect(page.get_by_role("status")).to_contain_text("Disabled subscription")
    expect(page.locator("tr", has_text="hooks.example.com")).to_contain_text("disabled")
    page.locator("tr", has_text="hooks.example.com").get_by_role("link", name="Edit").click()
    page.get_by_label("Event types").fill("order.*")
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_role("status")).to_contain_text("Saved subscription")
    page.goto("/webhooks")
    page.get_by_label("URL").fill("https://audit.example.org/in")
    page.get_by_label("Event types").fill("*")
    page.get_by_role("button", name="Add subscription").click()
    page.goto("/webhooks")
    shot(page, "webhooks")
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator("tr", has_text="audit.example.org").get_by_role("button", name="Delete").click()
    expect(page.get_by_role("status")).to_contain_text("Deleted subscription")
    expect(page.locator("tr", has_text="audit.example.org")).to_have_count(0)


def test_pages_at_phone_width(open_page: Any) -> None:
    page = open_page("admin", width=390, height=844)
    for path, name in (("/", "overview"), ("/events", "events"), ("/producers", "producers")):
        page.goto(path)
        expect(page.locator("main h1")).to_be_visible()
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, (path, width)  # nothing overflows sideways
        shot(page, f"phone-{name}")
    page.goto("/producers")
    shot(page, "producers-phone")


def test_producers_page(open_page: Any) -> None:
    page = open_page("admin")
    page.goto("/producers")
    expect(page.locator('tr[data-producer="shop"]')).to_be_visible()
    shot(page, "producers")

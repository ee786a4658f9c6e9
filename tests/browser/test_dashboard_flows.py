"""The dashboard in a real browser: log in, register a producer, watch its events arrive live and
reach "succeeded" in every group, dead-letter one and replay it."""

from __future__ import annotations

import re
from typing import Any

from playwright.sync_api import expect

from app.keys import Keys
from tests.browser.conftest import Stack, shot

GROUPS = ("analytics", "flaky", "recorder")


def register_producer(page: Any, name: str) -> str:
    page.goto("/producers")
    page.get_by_label("Name", exact=True).fill(name)
    page.get_by_label("Description").fill(f"The {name} service")
    page.get_by_role("button", name="Register").click()
    key = page.locator("#producer-key").input_value()
    assert key.startswith("efk_")
    return key


def test_login_page_then_overview(open_page: Any) -> None:
    page = open_page(None)
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/login\?next=%2F$"))
    expect(page.get_by_role("heading", name="Sign in to the dashboard")).to_be_visible()
    shot(page, "login")
    page.get_by_label("Name").fill("admin")
    page.get_by_label("Password").fill("wrong password")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("alert")).to_have_text("Wrong name or password.")


def test_a_registered_producer_s_events_appear_live_and_succeed_in_every_group(
    open_page: Any, stack: Stack
) -> None:
    page = open_page("admin")
    key = register_producer(page, "shop")
    expect(page.get_by_text("Copy the key now.")).to_be_visible()
    assert key in page.locator("#sample-curl").inner_text()
    shot(page, "producer-key")

    page.goto("/events")
    expect(page.locator("[data-live-status]")).to_have_attribute("data-state", "live")
    page.evaluate("window.__notReloaded = true")
    # The recorder group holds the event until the key is deleted: we see it in progress, however
    # long the browser takes to get to its page (a fixed delay raced the page load on a slow box).
    stack.redis.set(stack.key("hold"), "1")
    try:
        posted = stack.post_event(key, {"type": "order.created", "subject": "order-1001",
                                        "data": {"order": 1001, "amount": 42.5, "currency": "EUR"}})
        row = page.locator(f'tr[data-entry="{posted["entry_id"]}"]')
        expect(row).to_be_visible()
        expect(row).to_contain_text("order.created")
        assert page.evaluate("window.__notReloaded") is True
        shot(page, "events")

        row.get_by_role("link", name="order.created").click()
        expect(page.get_by_role("heading", name="order.created")).to_be_visible()
        expect(page.locator("[data-live-status]")).to_have_attribute("data-state", "live")
        recorder = page.locator('[data-group="recorder"]')
        assert recorder.get_attribute("data-state") != "succeeded"
        page.evaluate("window.__notReloaded = true")
    finally:
        stack.redis.delete(stack.key("hold"))
    for group in GROUPS:
        expect(page.locator(f'[data-group="{group}"]')).to_have_attribute("data-state", "succeeded")
    assert page.evaluate("window.__notReloaded") is True
    expect(page.locator("pre.code")).to_contain_text('"currency": "EUR"')
    shot(page, "event")


# A row as the page shows it: tag, attributes (sorted) and text, whitespace between tags ignored.
# The "fresh" class is the live row's arrival highlight.
_ROW_SHAPE = """row => {
  const shape = node => node.nodeType === Node.TEXT_NODE ? node.textContent.trim() : [
    node.tagName, [...node.attributes].filter(a => !(a.name === "class" && a.value === "fresh"))
      .map(a => a.name + "=" + a.value).sort(), [...node.childNodes].map(shape).filter(c => c !== "")];
  return shape(row);
}"""


def test_a_row_that_arrives_live_is_the_row_the_page_renders(open_page: Any, stack: Stack) -> None:
    page = open_page("admin")
    key = register_producer(page, "rows")
    page.goto("/events")
    expect(page.locator("[data-live-status]")).to_have_attribute("data-state", "live")
    posted = stack.post_event(key, {"type": "row.checked", "subject": "<i>order & 1</i>", "id": "row-1"})
    # Written straight into the stream without a source: listed, and flagged invalid.
    direct = stack.redis.xadd(Keys(stack.prefix).stream(0), {"type": "row.direct", "id": "row-2"}).decode()
    live = {}
    for entry in (posted["entry_id"], direct):
        row = page.locator(f'tr[data-entry="{entry}"]')
        expect(row).to_have_class("fresh")  # built by the page's script, not loaded with the page
        live[entry] = row.evaluate(_ROW_SHAPE)
    assert "invalid" in page.locator(f'tr[data-entry="{direct}"]').inner_text()
    page.reload()
    for entry, shape in live.items():
        row = page.locator(f'tr[data-entry="{entry}"]')
        expect(row).not_to_have_class("fresh")
        assert row.evaluate(_ROW_SHAPE) == shape


def test_a_failing_consumer_dead_letters_and_a_replay_succeeds(open_page: Any, stack: Stack) -> None:
    page = open_page("admin")
    key = register_producer(page, "payments")
    stack.redis.set(stack.key("broken"), "1")
    try:
        posted = stack.post_event(key, {"type": "payment.captured", "data": {"payment": "pay_77", "cents": 1999}})
        stack.wait(lambda: any(f.get(b"id") == posted["id"].encode()
                               for _, f in stack.redis.xrevrange(stack.dead_letters, count=20)), "the dead letter")
    finally:
        stack.redis.delete(stack.key("broken"))
    page.goto("/dead-letters")
    row = page.locator("tr", has_text="payment.captured")
    expect(row).to_contain_text("flaky")
    expect(row).to_contain_text("payments API refused the request")
    shot(page, "dead-letters")

    row.get_by_role("link", name="Replay").click()
    expect(page.get_by_role("heading", name="Replay 1 dead letter?")).to_be_visible()
    shot(page, "dead-letters-confirm")
    page.get_by_role("button", name="Replay 1 dead letter").click()
    expect(page.get_by_role("status")).to_have_text("Replayed 1 of 1 selected dead letter.")
    expect(page.locator("tr", has_text="payment.captured")).to_have_count(0)

    page.goto(f"/events/{posted['entry_id']}")
    flaky = page.locator('[data-group="flaky"]')
    expect(flaky).to_have_attribute("data-state", "succeeded")
    expect(flaky).to_contain_text("Attempt 1 dead-lettered")
    expect(flaky).to_contain_text("Replayed")
    shot(page, "event-replayed")

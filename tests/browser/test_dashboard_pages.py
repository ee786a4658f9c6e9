"""Every page renders as a product: screenshots of each (desktop and phone width) under
test-artifacts/, and the overview, consumers, webhooks, types and errors pages working end to end."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from playwright.sync_api import expect

from app.keys import Keys
from app.stats import MINUTE_MS
from tests.browser.conftest import Stack, _run_cli, shot
from tests.browser.test_dashboard_flows import register_producer


def test_overview_shows_groups_rate_and_recent_errors(open_page: Any, stack: Stack) -> None:
    admin = open_page("admin")
    key = register_producer(admin, "warehouse")
    for n in range(12):
        stack.post_event(key, {"type": "stock.moved" if n % 3 else "stock.counted", "data": {"sku": n}})
    stack.redis.set(stack.key("broken"), "1")  # one failure, for the recent errors panel
    try:
        stack.post_event(key, {"type": "stock.reserved", "data": {"sku": 99}})
        # Earlier tests may have left dead letters: wait for this event's own.
        stack.wait(lambda: any(f.get(b"type") == b"stock.reserved" for _, f in stack.redis.xrange(stack.dead_letters)),
                   "the dead letter")
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
    register_producer(page, "catalog")  # its own producer: the test must not lean on another test's
    page.goto("/producers")
    expect(page.locator('tr[data-producer="catalog"]')).to_contain_text("The catalog service")
    shot(page, "producers")


INVOICE_V1 = {"type": "object", "required": ["amount"], "properties": {"amount": {"type": "number", "minimum": 0}}}
INVOICE_V2 = {**INVOICE_V1, "required": ["amount", "currency"],
              "properties": {**INVOICE_V1["properties"], "currency": {"type": "string", "pattern": "^[A-Z]{3}$"}}}


def _counted(stack: Stack, event_type: str) -> int:
    """Events of a type the analytics consumer has counted in the last two minutes."""
    minute = int(time.time() * 1000) // MINUTE_MS
    keys = Keys(stack.prefix)
    return sum(int(stack.redis.hget(keys.stats_minute(m), f"t:{event_type}") or 0) for m in (minute - 1, minute))


def _caught_up(stack: Stack, group: str) -> bool:
    groups = {g["name"].decode(): g for g in stack.redis.xinfo_groups(Keys(stack.prefix).stream(0))}
    return groups[group]["lag"] == 0 and groups[group]["pending"] == 0


def _dead_lettered(stack: Stack, event_id: str) -> bool:
    newest = stack.redis.xrevrange(stack.dead_letters, count=20)
    return any(fields.get(b"id") == event_id.encode() for _, fields in newest)


def _error_sampled(stack: Stack, consumer: str, event_id: str) -> bool:
    """The worker has written (it flushes within a second, app/errortrack.py) an error group of
    `consumer` whose newest sample is `event_id`: what the Errors page shows."""
    keys = Keys(stack.prefix)
    for raw in stack.redis.zrevrange(keys.error_groups, 0, -1):
        fp = raw.decode()
        if (stack.redis.hget(keys.error_group(fp), "consumer") == consumer.encode()
                and stack.redis.lindex(keys.error_samples(fp), 0) == event_id.encode()):
            return True
    return False


def test_types_errors_and_the_event_trace(open_page: Any, stack: Stack, tmp_path: Path) -> None:
    for version, schema in (("v1", INVOICE_V1), ("v2", INVOICE_V2)):
        (tmp_path / f"{version}.json").write_text(json.dumps(schema))
    _run_cli(stack.env, "types", "register", "invoice.paid", "--description", "An invoice was paid in full",
             "--owner", "billing-team", "--mode", "warn", "--schema", str(tmp_path / "v1.json"), "--note", "first cut")
    _run_cli(stack.env, "types", "add-version", "invoice.paid", str(tmp_path / "v2.json"),
             "--note", "currency is required (ISO 4217)")
    admin = open_page("admin")
    key = register_producer(admin, "invoicing")
    time.sleep(1.1)  # the web process picks up a changed registry within a second (app/schemas.py REFRESH_S)
    for n in range(5):
        stack.post_event(key, {"type": "invoice.paid", "data": {"amount": 100 + n, "currency": "EUR"}})
    stack.post_event(key, {"type": "invoice.paid", "id": "inv-bad-1", "data": {"amount": -3}})
    stack.wait(lambda: _caught_up(stack, "flaky"), "the flaky group to handle every event so far")
    stack.redis.set(stack.key("broken"), "1")  # one failure in the flaky group, for the Errors page
    try:
        failed = stack.post_event(key, {"type": "invoice.voided", "id": "inv-void-7", "data": {"invoice": 7}})
        stack.wait(lambda: _dead_lettered(stack, "inv-void-7"), "the dead letter")
    finally:
        stack.redis.delete(stack.key("broken"))
    # The worker notes the failure after the dead letter and writes its error group up to a second
    # later; the Errors page is not live, so wait for the group's newest sample before reading it.
    stack.wait(lambda: _error_sampled(stack, "flaky", "inv-void-7"), "the error group")
    # invoice.voided comes after the six invoice.paid in the log: wait for its count too, or the Types
    # page can be read before the analytics consumer has seen it (it lists types it has counted).
    stack.wait(lambda: _counted(stack, "invoice.paid") == 6 and _counted(stack, "invoice.voided") == 1,
               "the analytics counts")

    page = open_page("admin")
    page.goto("/types")
    expect(page.get_by_role("heading", name="Event types")).to_be_visible()
    row = page.locator('tr[data-type="invoice.paid"]')
    for text in ("An invoice was paid in full", "6", "v2", "2 versions", "warn", "flagged 1"):
        expect(row).to_contain_text(text)
    expect(page.locator('tr[data-type="invoice.voided"]')).to_contain_text("not registered")
    recent = page.locator("section", has=page.get_by_role("heading", name="Recent validation failures"))
    expect(recent).to_contain_text("/data/currency")
    shot(page, "types")
    row.get_by_role("link", name="invoice.paid").click()
    expect(page.get_by_role("heading", name="invoice.paid")).to_be_visible()
    expect(page.locator("details.version[open]")).to_contain_text('"currency"')
    expect(page.locator("details.version")).to_have_count(2)
    shot(page, "type")

    page.goto("/errors")
    expect(page.get_by_role("heading", name="Errors", exact=True)).to_be_visible()
    # The stack is shared: other tests' failures have groups of their own (an invalid entry's, say).
    group = page.locator("tr[data-error-group]", has_text="flaky").filter(has_text="payments API refused")
    expect(group).to_contain_text("payments API refused the request")
    expect(group.locator("a.sample").first).to_have_text("inv-void-7")
    shot(page, "errors")

    page.goto("/dead-letters?group=flaky&type=invoice.voided")  # replay it: the trace gets a second span
    page.locator("tr", has_text="invoice.voided").get_by_role("link", name="Replay").click()
    page.get_by_role("button", name="Replay 1 dead letter").click()
    page.goto("/errors")
    group.get_by_role("link", name="inv-void-7").click()
    expect(page.locator('[data-group="flaky"]')).to_have_attribute("data-state", "succeeded")
    trace = page.locator("section", has=page.get_by_role("heading", name="Trace"))
    [(_, fields)] = stack.redis.xrange(Keys(stack.prefix).stream(failed["partition"]), failed["entry_id"],
                                       failed["entry_id"])
    expect(trace.locator("[data-trace-id]")).to_have_text(fields[b"traceparent"].decode()[3:35])
    expect(trace.locator("tr.span-child")).to_have_count(2)
    expect(trace).to_contain_text("dead-lettered")
    expect(trace).to_contain_text("recorder")
    shot(page, "event-trace")

"""The dashboard with unusual values an operator meets in practice: names and types long enough to
break a layout, and producer names holding the characters their rules allow."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
from playwright.sync_api import expect

from app.keys import Keys
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


def test_a_producer_whose_name_holds_a_slash_can_be_limited_rotated_and_revoked(open_page: Any) -> None:
    page = open_page("admin")
    register_producer(page, "team/billing")
    page.goto("/producers")
    row = page.locator('tr[data-producer="team/billing"]')
    row.locator("summary", has_text="Change").click()
    row.get_by_label("Event types team/billing may send").fill("invoice.*")
    row.get_by_role("button", name="Save").click()
    expect(page.get_by_role("status")).to_contain_text("“team/billing” may now send: invoice.*")

    page.once("dialog", lambda dialog: dialog.accept())
    page.locator('tr[data-producer="team/billing"]').get_by_role("button", name="Rotate key").click()
    expect(page.get_by_role("heading", name="New key for “team/billing”")).to_be_visible()
    assert page.locator("#producer-key").input_value().startswith("efk_")

    page.goto("/producers")
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator('tr[data-producer="team/billing"]').get_by_role("button", name="Revoke").click()
    expect(page.get_by_role("status")).to_contain_text("Revoked producer “team/billing”")
    expect(page.locator('tr[data-producer="team/billing"]')).to_contain_text("revoked")


def test_an_unknown_producer_action_is_a_not_found_page(open_page: Any) -> None:
    page = open_page("admin")
    page.goto("/producers")
    token = page.locator("form[action='/logout'] input[name=csrf_token]").get_attribute("value")
    resp = page.request.post("/producers/team/billing/explode", form={"csrf_token": str(token)}, max_redirects=0)
    assert resp.status == 404
    assert resp.headers["content-type"].startswith("text/html")


def _live(page: Any) -> None:
    expect(page.locator("[data-live-status]")).to_have_attribute("data-state", "live")


def test_an_event_sent_while_the_events_page_loads_appears_live(open_page: Any, stack: Stack) -> None:
    admin = open_page("admin")
    key = register_producer(admin, "loading")
    page = open_page("admin")
    sent: list[str] = []

    def post_then_connect(route: Any) -> None:  # the event lands after the page, before its feed
        if not sent:
            sent.append(stack.post_event(key, {"type": "load.raced"})["entry_id"])
        route.continue_()

    page.route("**/live/events*", post_then_connect)
    page.goto("/events?source=loading")
    _live(page)
    assert sent
    expect(page.locator(f'tr[data-entry="{sent[0]}"]')).to_be_visible()
    expect(page.locator("#event-rows tr")).to_have_count(1)


def test_the_feed_resumes_where_it_stopped_after_the_server_refused_a_reconnect(
    open_page: Any, stack: Stack
) -> None:
    admin = open_page("admin")
    key = register_producer(admin, "resuming")
    first = stack.post_event(key, {"type": "resume.first"})
    page = open_page("admin")
    requests: list[str] = []
    missed: list[str] = []

    def feed(route: Any) -> None:
        requests.append(route.request.url)
        if len(requests) == 1:  # a stream that delivers the first event, then ends (a restart)
            row = {"entry_id": first["entry_id"], "type": "resume.first", "source": "resuming", "subject": None,
                   "id": first["id"], "invalid": False}
            body = f"retry: 200\n\nid: {first['entry_id']}\nevent: event\ndata: {json.dumps(row)}\n\n"
            route.fulfill(status=200, headers={"Content-Type": "text/event-stream"}, body=body)
        elif len(requests) == 2:  # the reconnect meets a proxy answering 503: the browser gives up on it
            missed.append(stack.post_event(key, {"type": "resume.missed"})["entry_id"])
            route.fulfill(status=503, body="restarting")
        else:
            route.continue_()

    page.route("**/live/events*", feed)
    page.goto("/events?source=resuming")
    expect(page.locator(f'tr[data-entry="{first["entry_id"]}"]')).to_be_visible()
    for _ in range(100):  # route handlers run while Playwright waits, not while the test sleeps
        if missed:
            break
        page.wait_for_timeout(100)
    expect(page.locator(f'tr[data-entry="{missed[0]}"]')).to_be_visible()
    _live(page)
    assert len(requests) >= 3


def test_the_producer_form_checks_the_name_in_the_browser_without_console_errors(open_page: Any) -> None:
    page = open_page("admin")
    errors: list[str] = []
    page.on("console", lambda message: message.type == "error" and errors.append(message.text))
    page.goto("/producers")
    name = page.get_by_label("Name", exact=True)
    for value, valid in (("team/billing", True), ("a@b:c.d-e_f", True), ("bad name!", False), ("-x", False)):
        name.fill(value)
        assert name.evaluate("input => input.validity.valid") is valid, value
    assert errors == []


def test_a_time_filter_given_in_rfc_3339_or_ms_stays_in_the_form(open_page: Any, stack: Stack) -> None:
    admin = open_page("admin")
    key = register_producer(admin, "timed")
    posted = stack.post_event(key, {"type": "timed.one"})
    page = open_page("admin")
    # (Chromium reads a picker value with zero seconds back without them.)
    for since, shown in (("2026-11-27T16:00:00Z", "2026-11-27T16:00"),
                         ("1795795205908", "2026-11-27T16:00:05.908"),
                         ("2026-11-27T17:00:00%2B01:00", "2026-11-27T16:00")):
        page.goto(f"/events?source=timed&since={since}&until=2100-01-01T00:00:00Z")
        expect(page.locator("#f-since")).to_have_value(shown)
        expect(page.locator("#f-until")).to_have_value("2100-01-01T00:00")
    page.get_by_role("button", name="Filter").click()  # the operator filters again: the times stay
    expect(page.locator("#f-since")).to_have_value("2026-11-27T16:00")
    assert "since=2026-11-27T16%3A00" in page.url and "until=2100" in page.url
    expect(page.locator(f'tr[data-entry="{posted["entry_id"]}"]')).to_be_visible()


def test_a_dead_letter_with_a_very_long_type_fits_the_overview_and_its_pages(open_page: Any, stack: Stack) -> None:
    long_type = "direct." + "unbrokenname" * 25
    # Written straight into the stream without a source: dead-lettered at once as invalid.
    stack.redis.xadd(Keys(stack.prefix).stream(0), {"type": long_type, "data": "{}"})
    stack.wait(lambda: any(f.get(b"type") == long_type.encode()
                           for _, f in stack.redis.xrevrange(stack.dead_letters, count=50)), "the dead letter")
    for width in (1280, 390):
        page = open_page("viewer", width=width)
        page.goto("/")
        expect(page.locator(".error-list")).to_contain_text("unbrokenname")
        assert _overflow(page) == 0, ("/", width)
        page.locator(".error-title", has_text="unbrokenname").first.click()
        expect(page.locator("main h1")).to_be_visible()
        assert _overflow(page) == 0, (page.url, width)
        for path in ("/dead-letters", "/errors", "/events"):
            page.goto(path)
            assert _overflow(page) == 0, (path, width)


def test_paging_back_through_the_events_ends_on_the_last_full_page(open_page: Any, stack: Stack) -> None:
    admin = open_page("admin")
    key = register_producer(admin, "paged")
    resp = httpx.post(f"{stack.url}/v1/events/batch", json=[{"type": "paged.item", "data": n} for n in range(100)],
                      headers={"Authorization": f"Bearer {key}"}, timeout=10)
    assert resp.status_code == 202, resp.text
    page = open_page("viewer")
    page.goto("/events?source=paged")
    expect(page.locator("#event-rows tr")).to_have_count(50)
    page.get_by_role("link", name="Older →").click()
    expect(page.locator("#event-rows tr")).to_have_count(50)
    expect(page.locator("#event-rows")).to_contain_text("paged.item")
    # The 100 events are all shown: no button to a page with nothing on it.
    expect(page.get_by_role("link", name="Older →")).to_have_count(0)
    expect(page.get_by_role("link", name="← Newest")).to_be_visible()
    page.go_back()
    expect(page.locator("#event-rows tr")).to_have_count(50)
    expect(page.get_by_role("link", name="Older →")).to_be_visible()


def test_opening_a_form_s_address_or_a_mistyped_one_shows_a_page_not_json(open_page: Any) -> None:
    page = open_page("admin")
    register_producer(page, "reopened")
    page.goto("/producers")
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator('tr[data-producer="reopened"]').get_by_role("button", name="Rotate key").click()
    expect(page.get_by_role("heading", name="New key for “reopened”")).to_be_visible()
    for path, heading in ((page.url, "Not a page"), ("/producer", "Not found"), ("/logout", "Not a page")):
        resp = page.goto(path)  # the operator opens the address again (a restored tab, Enter in the bar)
        assert resp is not None and resp.headers["content-type"].startswith("text/html"), path
        expect(page.get_by_role("heading", name=heading)).to_be_visible()
    resp = page.request.get("/v1/nope", headers={"Accept": "text/html"})  # the API answers in JSON still
    assert resp.status == 404 and resp.headers["content-type"] == "application/problem+json"


def _dead_letters_of(stack: Stack, event_type: str) -> int:
    return sum(f.get(b"type") == event_type.encode() for _, f in stack.redis.xrange(stack.dead_letters))


def test_discard_all_discards_only_the_dead_letters_the_operator_confirmed(open_page: Any, stack: Stack) -> None:
    stream = Keys(stack.prefix).stream(0)
    for _ in range(2):  # no source: invalid, dead-lettered at once in each of the three groups
        stack.redis.xadd(stream, {"type": "confirm.me", "data": "{}"})
    stack.wait(lambda: _dead_letters_of(stack, "confirm.me") == 6, "the dead letters")
    page = open_page("admin")
    page.goto("/dead-letters?group=recorder&type=confirm.me")
    page.get_by_role("button", name="Discard all").click()
    expect(page.get_by_role("heading", name="Discard 2 dead letters?")).to_be_visible()
    stack.redis.xadd(stream, {"type": "confirm.me", "data": "{}"})  # one more fails meanwhile
    stack.wait(lambda: _dead_letters_of(stack, "confirm.me") == 9, "the newer dead letters")
    page.get_by_role("button", name="Discard 2 dead letters").click()
    expect(page.get_by_role("status")).to_have_text("Discarded 2 of 2 selected dead letters.")
    expect(page.locator("tr", has_text="confirm.me")).to_have_count(1)  # the newer one, never confirmed


def test_a_live_page_whose_session_ended_goes_to_the_login_page(open_page: Any, stack: Stack) -> None:
    page = open_page("viewer")
    page.goto("/events")
    _live(page)
    other = page.context.new_page()  # the operator logs out in another tab
    other.goto("/")
    other.get_by_role("button", name="Log out").click()
    # The feed ends at its next session check (EVENTFLOW_LIVE_PING_S=5 here); the page then finds
    # out why, instead of saying "Reconnecting…" for ever.
    page.wait_for_url(re.compile(r"/login\?next=%2Fevents$"), timeout=20_000)


def test_a_refused_form_keeps_what_the_operator_typed(open_page: Any) -> None:
    page = open_page("admin")
    page.goto("/webhooks")
    page.get_by_label("URL").fill("http://127.0.0.1:9/hooks/kept")  # loopback: refused
    page.get_by_label("Event types").fill("order.* invoice.sent")
    page.get_by_label("Description").fill("The CRM, ünïcode & <b>all</b>")
    page.get_by_role("button", name="Add subscription").click()
    expect(page.get_by_role("alert")).to_contain_text("loopback")
    expect(page.get_by_label("URL")).to_have_value("http://127.0.0.1:9/hooks/kept")
    expect(page.get_by_label("Event types")).to_have_value("order.* invoice.sent")
    expect(page.get_by_label("Description")).to_have_value("The CRM, ünïcode & <b>all</b>")

    register_producer(page, "kept-name")
    page.goto("/producers")
    page.get_by_label("Name", exact=True).fill("kept-name")  # taken
    page.get_by_label("Description").fill("Second try")
    page.locator("#p-types").fill("order.*")
    page.get_by_role("button", name="Register").click()
    expect(page.get_by_role("alert")).to_contain_text("already exists")
    expect(page.get_by_label("Name", exact=True)).to_have_value("kept-name")
    expect(page.get_by_label("Description")).to_have_value("Second try")
    expect(page.locator("#p-types")).to_have_value("order.*")


def test_a_refused_webhook_edit_keeps_what_the_operator_typed(open_page: Any) -> None:
    page = open_page("admin")
    page.goto("/webhooks")
    page.get_by_label("URL").fill("https://edit-kept.example.com/in")
    page.get_by_label("Event types").fill("*")
    page.get_by_role("button", name="Add subscription").click()
    page.get_by_role("link", name="Done").click()
    page.locator("tr", has_text="edit-kept.example.com").get_by_role("link", name="Edit", exact=True).click()
    page.get_by_label("URL").fill("http://127.0.0.1:9/edited")  # loopback: refused
    page.get_by_label("Event types").fill("order.*")
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_role("alert")).to_contain_text("loopback")
    expect(page.get_by_label("URL")).to_have_value("http://127.0.0.1:9/edited")
    expect(page.get_by_label("Event types")).to_have_value("order.*")
    expect(page.locator("main h1")).to_have_text("https://edit-kept.example.com/in")  # still as saved

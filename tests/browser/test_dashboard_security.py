"""The dashboard's defences in a real browser: data is text, viewers cannot change anything, and a
form post without the session's CSRF token is refused."""

from __future__ import annotations

import re
from typing import Any

from playwright.sync_api import expect

from tests.browser.conftest import Stack, shot
from tests.browser.test_dashboard_flows import register_producer

SCRIPT = "<script>alert(1)</script>"
MUTATION_FORMS = "form[method=post]:not([action='/logout'])"


def test_script_in_event_data_is_shown_as_text_and_opens_no_dialog(open_page: Any, stack: Stack) -> None:
    page = open_page("admin")
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    key = register_producer(page, "mallory")
    page.goto("/events")
    expect(page.locator("[data-live-status]")).to_have_attribute("data-state", "live")
    posted = stack.post_event(key, {"type": "comment.posted", "subject": '<img src=x onerror="alert(2)">',
                                    "data": {"text": SCRIPT, "html": '<img src=x onerror="alert(3)">'}})
    row = page.locator(f'tr[data-entry="{posted["entry_id"]}"]')
    expect(row).to_contain_text('<img src=x onerror="alert(2)">')  # arrived live, shown as text
    row.get_by_role("link", name="comment.posted").click()
    expect(page.locator("pre.code")).to_contain_text(SCRIPT)
    expect(page.locator("dd", has_text="onerror")).to_have_count(1)
    page.wait_for_timeout(500)
    assert page.locator("script").count() == 1  # only /static/app.js
    assert page.locator("img[src=x]").count() == 0
    assert dialogs == []
    shot(page, "event-escaped")


def _csrf_token(page: Any) -> str:
    return str(page.locator("form[action='/logout'] input[name=csrf_token]").get_attribute("value"))


def test_a_viewer_sees_no_mutation_buttons_and_a_forged_post_gets_403(open_page: Any, stack: Stack) -> None:
    admin = open_page("admin")
    key = register_producer(admin, "viewer-demo")
    stack.redis.set(stack.key("broken"), "1")
    try:
        stack.post_event(key, {"type": "invoice.sent", "data": {"invoice": 7}})
        stack.wait(lambda: b"invoice.sent" in b"".join(
            f.get(b"type", b"") for _, f in stack.redis.xrange(stack.dead_letters)), "the dead letter")
    finally:
        stack.redis.delete(stack.key("broken"))

    page = open_page("viewer")
    expect(page.locator(".account .badge")).to_have_text("viewer")
    for path in ("/producers", "/dead-letters", "/webhooks", "/events", "/consumers", "/"):
        page.goto(path)
        expect(page.locator("main h1")).to_be_visible()
        assert page.locator(MUTATION_FORMS).count() == 0, path
        for name in ("Register", "Revoke", "Rotate key", "Replay", "Discard", "Add subscription", "Delete"):
            assert page.get_by_role("button", name=name).count() == 0, (path, name)
            assert page.get_by_role("link", name=re.compile(f"^{name}")).count() == 0, (path, name)
    page.goto("/dead-letters")
    expect(page.locator("tr", has_text="invoice.sent")).to_be_visible()
    shot(page, "dead-letters-viewer")

    token = _csrf_token(page)  # a valid token: the refusal must come from the role check
    for path, form in (("/producers", {"name": "forged"}), ("/producers/viewer-demo/revoke", {}),
                       ("/dead-letters/discard", {"which": "all"}), ("/webhooks", {"url": "https://example.com"})):
        resp = page.request.post(path, form={"csrf_token": token, **form}, max_redirects=0)
        assert resp.status == 403, (path, resp.status)
    page.goto("/dead-letters/confirm?action=discard&which=all")
    expect(page.get_by_role("heading", name="Admins only")).to_be_visible()

    admin.goto("/producers")
    expect(admin.locator('tr[data-producer="viewer-demo"]')).to_contain_text("active")
    expect(admin.locator('tr[data-producer="forged"]')).to_have_count(0)


def test_a_post_without_the_csrf_token_is_refused(open_page: Any) -> None:
    page = open_page("admin")
    page.goto("/producers")
    resp = page.request.post("/producers", form={"name": "no-token"}, max_redirects=0)
    assert resp.status == 403
    assert "did not come from this dashboard" in resp.text()
    resp = page.request.post("/producers", form={"name": "bad-token", "csrf_token": "x" * 43}, max_redirects=0)
    assert resp.status == 403
    page.reload()
    expect(page.locator('tr[data-producer="no-token"]')).to_have_count(0)
    expect(page.locator('tr[data-producer="bad-token"]')).to_have_count(0)


def test_logging_out_ends_the_session(open_page: Any) -> None:
    page = open_page("admin")
    page.get_by_role("button", name="Log out").click()
    expect(page).to_have_url(re.compile(r"/login$"))
    page.goto("/producers")
    expect(page).to_have_url(re.compile(r"/login\?next=%2Fproducers$"))

"""The dashboard's pages and forms over HTTP (no browser): what each page shows, and what each form
does through the service layer."""

from __future__ import annotations

import asyncio
import html
import re
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager

import httpx
import pytest
from redis.asyncio import Redis

from app.deadletters import Filter
from app.errors import InvalidEvent
from app.events import parse_request
from app.service import Services
from app.settings import Settings
from consumers.base import Consumer, Delivery, Permanent
from consumers.runner import Runner
from tests.integration.dashboard_helpers import cheap_hashing, logged_in  # noqa: F401
from tests.integration.helpers import wait_for

pytestmark = pytest.mark.usefixtures("cheap_hashing")

MakeClient = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]


@pytest.fixture
async def admin(services: Services, request: pytest.FixtureRequest) -> tuple[str, str]:
    request.getfixturevalue("cheap_hashing")
    await services.users.create("ada", "admin", "ada-password-1")
    return "ada", "ada-password-1"


async def post(services: Services, body: str, source: str = "billing") -> str:
    events, _ = parse_request(body.encode(), "application/json", {})
    return (await services.ingest(events, source, {}))[0].entry_id



@pytest.fixture
async def workers(redis: Redis, settings: Settings) -> AsyncIterator[dict[str, bool]]:
    """`ok` always succeeds; `picky` refuses events for good while `broken["picky"]` is set."""
    broken = {"picky": False}

    async def ok(delivery: Delivery) -> None:
        return None

    async def picky(delivery: Delivery) -> None:
        if broken["picky"]:
            raise Permanent("the downstream said no")

    runner = Runner([Consumer("ok", ok), Consumer("picky", picky)], redis, settings, "w1")
    task = asyncio.create_task(runner.run())
    yield broken
    runner.stop.set()
    await asyncio.wait_for(task, 10)


async def test_a_new_producer_s_key_is_shown_once_with_a_sample_curl(
    make_client: MakeClient, admin: tuple[str, str], services: Services
) -> None:
    async with make_client() as client:
        token = await logged_in(client, *admin)
        resp = await client.post("/producers", data={"csrf_token": token, "name": "shop", "description": "Shop"})
        assert resp.status_code == 200
        assert resp.headers["cache-control"] == "no-store"
        key = re.search(r'id="producer-key" class="mono" value="(efk_[^"]+)"', resp.text)
        assert key and f"Authorization: Bearer {key.group(1)}" in html.unescape(resp.text)
        assert await services.producers.authenticate(f"Bearer {key.group(1)}") == "shop"
        listing = await client.get("/producers")
        assert key.group(1) not in listing.text and 'data-producer="shop"' in listing.text
        again = await client.post("/producers", data={"csrf_token": token, "name": "shop"})
        assert again.status_code == 303
        assert "already exists" in (await client.get("/producers")).text
        bad = await client.post("/producers", data={"csrf_token": token, "name": "no spaces"})
        assert bad.status_code == 303
        assert "Could not register" in (await client.get("/producers")).text


async def test_a_producer_description_over_500_characters_is_refused_and_kept_in_the_form(
    make_client: MakeClient, admin: tuple[str, str], services: Services
) -> None:
    # The form cut it to 500 characters without a word, and the CLI stored any size.
    with pytest.raises(InvalidEvent) as refused:
        await services.producers.create("cli", "x" * 501)
    assert [p.pointer for p in refused.value.problems] == ["/description"]
    async with make_client() as client:
        token = await logged_in(client, *admin)
        resp = await client.post("/producers", data={"csrf_token": token, "name": "shop", "description": "d" * 501,
                                                     "types": "order.*"})
        assert resp.status_code == 303
        page = html.unescape((await client.get(resp.headers["location"])).text)
        assert "description: at most 500 characters" in page
        assert f'value="{"d" * 501}"' in page and 'value="shop"' in page and 'value="order.*"' in page
        huge = await client.post("/producers", data={"csrf_token": token, "name": "shop", "description": "d" * 100_000})
        assert huge.status_code == 303 and len(huge.headers["location"]) < 10_000  # a URL a browser follows
        ok = await client.post("/producers", data={"csrf_token": token, "name": "shop", "description": "é" * 500})
        assert ok.status_code == 200
    assert [p.name for p in await services.producers.list()] == ["shop"]
    assert (await services.producers.get("shop")).description == "é" * 500


async def test_rotate_and_revoke_take_effect_at_once(
    make_client: MakeClient, admin: tuple[str, str], services: Services
) -> None:
    old = (await services.producers.create("shop")).key
    async with make_client() as client:
        token = await logged_in(client, *admin)
        resp = await client.post("/producers/shop/rotate", data={"csrf_token": token})
        new = re.search(r'value="(efk_[^"]+)"', resp.text)
        assert new and new.group(1) != old
        resp = await client.post("/producers/shop/revoke", data={"csrf_token": token})
        assert resp.status_code == 303
        page = await client.get("/producers")
        assert "Revoked producer" in page.text and "revoked" in page.text
    services.producers.forget()
    with pytest.raises(Exception, match="unknown or revoked"):
        await services.producers.authenticate(f"Bearer {new.group(1)}")


async def test_an_admin_limits_a_producer_to_some_event_types(
    make_client: MakeClient, admin: tuple[str, str], services: Services
) -> None:
    async with make_client() as client:
        token = await logged_in(client, *admin)
        resp = await client.post("/producers", data={"csrf_token": token, "name": "shop", "types": "order.*, cart.x"})
        key = re.search(r'value="(efk_[^"]+)"', resp.text)
        assert key and (await services.producers.get("shop")).types == ["order.*", "cart.x"]
        listing = (await client.get("/producers")).text
        assert "<code>order.*</code> <code>cart.x</code>" in listing
        resp = await client.post("/producers/shop/types", data={"csrf_token": token, "types": "invoice.sent"})
        assert resp.status_code == 303
        assert "may now send: invoice.sent" in html.unescape((await client.get("/producers")).text)
        services.producers.forget()
        auth = {"Authorization": f"Bearer {key.group(1)}"}
        refused = await client.post("/v1/events", json={"type": "order.created"}, headers=auth)
        assert refused.status_code == 403 and "order.created" in refused.json()["detail"], refused.text
        assert (await client.post("/v1/events", json={"type": "invoice.sent"}, headers=auth)).status_code == 202
        await client.post("/producers/shop/types", data={"csrf_token": token, "types": ""})
        assert "may now send: any event type" in html.unescape((await client.get("/producers")).text)


async def test_event_data_is_escaped_text_everywhere(
    make_client: MakeClient, admin: tuple[str, str], services: Services
) -> None:
    entry = await post(services, '{"type": "x<b>t</b>", "subject": "<img src=x onerror=alert(1)>", '
                                 '"data": {"note": "<script>alert(1)</script>"}}')
    async with make_client() as client:
        await logged_in(client, *admin)
        for path in ("/events", f"/events/{entry}"):
            page = (await client.get(path)).text
            assert "<script>alert" not in page and "<img src=x" not in page and "<b>t</b>" not in page
            assert "&lt;img src=x onerror=alert(1)&gt;" in page
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


async def test_events_filter_by_type_source_and_time_and_page_back(
    make_client: MakeClient, admin: tuple[str, str], services: Services
) -> None:
    for n in range(55):
        await post(services, f'{{"type": "{"a" if n % 2 else "b"}.happened", "data": {n}}}',
                   source="one" if n < 50 else "two")
    async with make_client() as client:
        await logged_in(client, *admin)
        first = (await client.get("/events")).text
        assert first.count("<tr data-entry=") == 50 and "Older →" in first and "data-live-feed" in first
        older = re.search(r'href="(/events\?cursor=[^"]+)"', first)
        assert older
        second = (await client.get(html.unescape(older.group(1)))).text
        assert second.count("<tr data-entry=") == 5 and "data-live-feed" not in second and "← Newest" in second
        by_type = (await client.get("/events?type=a.happened")).text
        assert by_type.count("<tr data-entry=") == 27
        # The feed starts where the page's query did (the log's tail), so nothing falls in between.
        assert 'data-live-feed="/live/events?type=a.happened&amp;cursor=' in by_type
        by_source = (await client.get("/events?source=two")).text
        assert by_source.count("<tr data-entry=") == 5
        future = (await client.get("/events?since=2999-01-01T00:00")).text
        assert "<tr data-entry=" not in future and "No events here yet" in future
        bad = (await client.get("/events?since=yesterday")).text
        assert "is not a time" in bad
        superscript = await client.get("/events?since=%C2%B2")  # "²".isdigit(), yet int("²") fails
        assert superscript.status_code == 200 and "is not a time" in superscript.text


async def test_searching_an_event_id_opens_it(
    make_client: MakeClient, admin: tuple[str, str], services: Services
) -> None:
    entry = await post(services, '{"type": "t", "id": "order-17"}')
    async with make_client() as client:
        await logged_in(client, *admin)
        resp = await client.get("/events?id=order-17")
        assert resp.status_code == 303 and resp.headers["location"] == f"/events/{entry}"
        missing = await client.get("/events?id=nope")
        assert "No event with id “nope”" in missing.text


async def test_overview_and_consumers_show_groups_and_the_lifecycle_reaches_succeeded(
    make_client: MakeClient, admin: tuple[str, str], services: Services, workers: dict[str, bool]
) -> None:
    entry = await post(services, '{"type": "t"}')

    async def settled() -> bool:
        detail = await services.get_event(entry, None)
        return [d.state for d in detail.deliveries] == ["succeeded", "succeeded"]

    await wait_for(settled)
    async with make_client() as client:
        await logged_in(client, *admin)
        overview = (await client.get("/")).text
        assert "<strong>ok</strong>" in overview and "<strong>picky</strong>" in overview
        consumers = (await client.get("/consumers")).text
        assert consumers.count('class="card group-card"') == 2 and "w1" in consumers
        # A hung handler is stopped after timeout_s: the card says after how long, beside the attempts.
        assert consumers.count("up to 5 attempts · concurrency 16 · timeout 5 min") == 2
        event = (await client.get(f"/events/{entry}")).text
        assert event.count('data-state="succeeded"') == 2


async def test_a_deleted_group_s_kept_dead_letters_stay_a_choice_and_are_not_replayed_into_nothing(
    make_client: MakeClient, admin: tuple[str, str], services: Services, redis: Redis, settings: Settings
) -> None:
    # Walking `eventflow groups delete` (it keeps the dead letters): the page filtered by the
    # retired group showed "All groups" in the Group box, and Replay moved its letters to a replay
    # stream nothing reads while saying "Replayed 1 of 1".
    from app.groups import Groups

    async def refuse(delivery: Delivery) -> None:
        raise Permanent("retired soon")

    runner = Runner([Consumer("gone", refuse)], redis, settings, "w-gone")
    task = asyncio.create_task(runner.run())
    await post(services, '{"type": "t"}')
    await wait_for(lambda: _has_dead_letters(services, "gone"))
    runner.stop.set()
    await asyncio.wait_for(task, 10)
    await Groups(redis, settings).delete("gone")
    [letter] = await services.dead_letters.list(Filter(group="gone"))
    async with make_client() as client:
        token = await logged_in(client, *admin)
        listing = (await client.get("/dead-letters?group=gone")).text
        assert '<option value="gone" selected>gone</option>' in listing
        assert '<option value="gone">gone</option>' in (await client.get("/dead-letters")).text
        resp = await client.post("/dead-letters/replay", data={"csrf_token": token, "id": letter.id})
        assert resp.status_code == 303
        page = html.unescape((await client.get(resp.headers["location"])).text)
        assert "no consumer group 'gone' on the log" in page and "Nothing was replayed" in page
    assert [dl.id for dl in await services.dead_letters.list(Filter(group="gone"))] == [letter.id]


async def _has_dead_letters(services: Services, group: str) -> bool:
    return bool(await services.dead_letters.list(Filter(group=group)))


async def test_dead_letters_are_confirmed_then_replayed_or_discarded(
    make_client: MakeClient, admin: tuple[str, str], services: Services, workers: dict[str, bool]
) -> None:
    workers["picky"] = True
    entries = [await post(services, f'{{"type": "t", "data": {n}}}') for n in range(3)]

    async def dead() -> bool:
        return len(await services.dead_letters.list(Filter(group="picky"))) == 3

    await wait_for(dead)
    letters = await services.dead_letters.list(Filter())
    async with make_client() as client:
        token = await logged_in(client, *admin)
        listing = (await client.get("/dead-letters?group=picky")).text
        assert listing.count("data-dead-letter=") == 3 and "the downstream said no" in listing
        confirm = await client.get("/dead-letters/confirm", params={"action": "discard", "id": letters[0].id})
        assert "Discard 1 dead letter?" in confirm.text and 'name="id" value="' in confirm.text
        resp = await client.post("/dead-letters/discard", data={"csrf_token": token, "id": letters[0].id})
        assert resp.status_code == 303
        assert "Discarded 1 of 1 selected dead letter." in (await client.get("/dead-letters")).text

        workers["picky"] = False
        confirm = await client.get("/dead-letters/confirm", params={"action": "replay", "which": "all",
                                                                    "group": "picky"})
        assert "Replay 2 dead letters?" in confirm.text
        resp = await client.post("/dead-letters/replay", data={"csrf_token": token, "which": "all", "group": "picky"})
        assert resp.headers["location"] == "/dead-letters?group=picky"
        assert "Replayed 2 of 2 selected dead letters." in (await client.get(resp.headers["location"])).text
        nothing = await client.get("/dead-letters/confirm", params={"action": "replay"})
        assert nothing.status_code == 303
        assert "Select at least one" in (await client.get("/dead-letters")).text

    async def replayed() -> bool:
        kept = [e for e in entries if e != letters[0].entry_id]
        states = [{d.group: d.state for d in (await services.get_event(e, None)).deliveries} for e in kept]
        return all(s["picky"] == "succeeded" for s in states)

    await wait_for(replayed)


async def test_webhook_forms_create_edit_disable_rotate_and_delete(
    make_client: MakeClient, admin: tuple[str, str], services: Services
) -> None:
    async with make_client() as client:
        token = await logged_in(client, *admin)
        resp = await client.post("/webhooks", data={"csrf_token": token, "url": "https://hooks.example.com/in",
                                                    "types": "order.*, user.created", "enabled": "on"})
        assert resp.status_code == 200 and "whsec_" in resp.text
        [sub] = await services.webhooks.list()
        assert sub.types == ["order.*", "user.created"] and sub.enabled
        await client.post(f"/webhooks/{sub.id}", data={"csrf_token": token, "url": "https://hooks.example.com/v2",
                                                       "types": "order.*", "description": "v2"})
        await client.post(f"/webhooks/{sub.id}/disable", data={"csrf_token": token})
        changed = await services.webhooks.get(sub.id)
        assert (changed.url, changed.types, changed.enabled) == ("https://hooks.example.com/v2", ["order.*"], False)
        rotated = await client.post(f"/webhooks/{sub.id}/rotate-secret", data={"csrf_token": token})
        assert "New signing secret" in rotated.text
        refused = await client.post("/webhooks", data={"csrf_token": token, "url": "http://127.0.0.1/x", "types": "*"})
        assert refused.status_code == 303
        assert "Not saved." in (await client.get("/webhooks")).text
        await client.post(f"/webhooks/{sub.id}/delete", data={"csrf_token": token})
        assert await services.webhooks.list() == []


@pytest.mark.parametrize("enabled", [True, False])
async def test_a_refused_webhook_form_keeps_the_enabled_box_as_it_was(
    make_client: MakeClient, admin: tuple[str, str], enabled: bool
) -> None:
    # The URL, types and description came back after a refusal, but the box was always ticked again:
    # an operator who had unticked it, then fixed the URL, added an enabled subscription.
    async with make_client() as client:
        token = await logged_in(client, *admin)
        form = {"csrf_token": token, "url": "http://127.0.0.1/x", "types": "order.*"}
        refused = await client.post("/webhooks", data={**form, **({"enabled": "on"} if enabled else {})})
        assert refused.status_code == 303
        page = (await client.get(refused.headers["location"])).text
        box = re.search(r'<input id="w-enabled"[^>]*>', page)
        assert box and ("checked" in box.group(0)) is enabled, box
        assert "Not saved." in page and 'value="order.*"' in page
        fresh = re.search(r'<input id="w-enabled"[^>]*>', (await client.get("/webhooks")).text)
        assert fresh and "checked" in fresh.group(0)  # a new form starts enabled


async def test_a_webhook_description_over_500_characters_is_refused_and_kept_in_the_form(
    make_client: MakeClient, admin: tuple[str, str], services: Services
) -> None:
    async with make_client() as client:
        token = await logged_in(client, *admin)
        form = {"csrf_token": token, "url": "https://hooks.example.com/in", "types": "order.*"}
        resp = await client.post("/webhooks", data={**form, "description": "d" * 501})
        assert resp.status_code == 303
        page = html.unescape((await client.get(resp.headers["location"])).text)
        assert "description: at most 500 characters" in page and f'value="{"d" * 501}"' in page
        sub = (await client.post("/webhooks", data={**form, "enabled": "on"})).text
        assert "whsec_" in sub
        [saved] = await services.webhooks.list()
        edit = await client.post(f"/webhooks/{saved.id}", data={**form, "description": "d" * 100_000})
        assert edit.status_code == 303 and len(edit.headers["location"]) < 10_000  # a URL a browser follows
        assert "description: at most 500 characters" in (await client.get(edit.headers["location"])).text
        # Kept by bytes, not characters: 2,048 emoji are 24 kB of %-escapes, 2,048 bytes of them 6 kB.
        wide = await client.post(f"/webhooks/{saved.id}", data={**form, "url": "😀" * 20_000,
                                                                "description": "😀" * 20_000})
        assert wide.status_code == 303 and len(wide.headers["location"]) < 16_000
        assert (await client.get(wide.headers["location"])).status_code == 200
    assert (await services.webhooks.get(saved.id)).description == ""


async def test_every_page_has_the_navigation_bar_to_every_other_page(
    make_client: MakeClient, admin: tuple[str, str], services: Services
) -> None:
    # The pages: /login, / (overview), /events, /events/{id}, /producers, /consumers,
    # /dead-letters and /webhooks, with a navigation bar across them.
    entry_id = await post(services, '{"type": "t"}')
    pages = {"/": "Overview", "/events": "Events", "/producers": "Producers", "/consumers": "Consumers",
             "/dead-letters": "Dead letters", "/webhooks": "Webhooks"}
    async with make_client() as client:
        assert (await client.get("/login")).status_code == 200
        await logged_in(client, *admin)
        for path in [*pages, f"/events/{entry_id}"]:
            resp = await client.get(path)
            assert resp.status_code == 200, path
            nav = resp.text.split('<nav class="mainnav"', 1)[1].split("</nav>", 1)[0]
            links = dict(re.findall(r'<a href="([^"]+)"[^>]*>([^<]+)</a>', nav))
            assert {href: links.get(href) for href in pages} == pages, path

"""Pages that change things: producers (register, rotate, revoke) and dead letters (inspect, replay,
discard, single or bulk with a confirmation step). Every POST here is admin-only and needs the CSRF
token (see `auth.guard`); each one ends in a redirect with a notice, except those that show a new
key, which is rendered once and never stored."""

from __future__ import annotations

from typing import Any

from litestar import Response, get, post
from litestar.exceptions import NotFoundException
from litestar.params import FromPath, FromQuery
from litestar.response import Redirect
from msgspec.structs import replace

from app.deadletters import Filter
from app.errors import Conflict, FieldProblem, InvalidEvent, NotFound
from app.producers import Issued
from app.users import Role
from app.web.api import services
from app.web.dashboard.auth import flash
from app.web.dashboard.render import AnyRequest, kept, page, query_url

DEAD_LETTER_PAGE = 100
_ACTIONS = {"replay": "Replay", "discard": "Discard"}


# -- producers ------------------------------------------------------------------------------------
@get("/producers", include_in_schema=False)
async def producers_page(
    request: AnyRequest, name: FromQuery[str] = "", description: FromQuery[str] = "", types: FromQuery[str] = ""
) -> Response[str]:
    """The list and the form to register one; the query holds a refused form's values, to show them again."""
    producers = await services(request).producers.list()
    return page(request, "producers.html", nav="producers", producers=producers,
                draft={"name": name, "description": description, "types": types})


def _key_page(request: AnyRequest, issued: Issued, rotated: bool) -> Response[str]:
    base = str(request.base_url).rstrip("/")
    # The key is on this page only: never stored, never cached by the browser or a proxy.
    return page(request, "producer_key.html", nav="producers", issued=issued, rotated=rotated, base_url=base,
                headers={"Cache-Control": "no-store"})


@post("/producers", include_in_schema=False, status_code=200)
async def create_producer(request: AnyRequest) -> Response[Any]:
    form = await request.form()
    name, description = str(form.get("name", "")).strip(), str(form.get("description", "")).strip()
    try:
        issued = await services(request).producers.create(name, description, _types(form.get("types")))
    except (InvalidEvent, Conflict) as exc:
        message = _problem(exc.problems[0]) if isinstance(exc, InvalidEvent) else exc.detail
        await flash(request, f"error:Could not register “{kept(name)}”: {message}")
        draft = {k: kept(form.get(k)) for k in ("name", "description", "types")}
        return Redirect(query_url("/producers", **draft), status_code=303)  # the form, as it was typed
    return _key_page(request, issued, rotated=False)


async def rotate_producer(request: AnyRequest, name: str) -> Response[Any]:
    return _key_page(request, await services(request).producers.rotate(name), rotated=True)


def _problem(problem: FieldProblem) -> str:
    """`description: at most 500 characters`: which field, when it is not the name in the heading."""
    field = problem.pointer.strip("/")
    return problem.message if field in ("", "name") else f"{field}: {problem.message}"


def _types(value: object) -> list[str]:
    """Event types typed into a form: separated by commas or spaces."""
    return [t for t in str(value or "").replace(",", " ").split() if t]


async def limit_producer_types(request: AnyRequest, name: str) -> Response[Any]:
    types = _types((await request.form()).get("types"))
    try:
        await services(request).producers.limit_types(name, types)
    except InvalidEvent as exc:
        await flash(request, f"error:Could not limit “{name}”: {exc.problems[0].message}")
        return Redirect("/producers", status_code=303)
    limits = ", ".join(types) if types else "any event type"
    await flash(request, f"“{name}” may now send: {limits}.")
    return Redirect("/producers", status_code=303)


async def revoke_producer(request: AnyRequest, name: str) -> Response[Any]:
    await services(request).producers.revoke(name)
    await flash(request, f"Revoked producer “{name}”: its key stopped working.")
    return Redirect("/producers", status_code=303)


_PRODUCER_ACTIONS = {"rotate": rotate_producer, "types": limit_producer_types, "revoke": revoke_producer}


@post("/producers/{target:path}", include_in_schema=False, status_code=303)
async def producer_action(request: AnyRequest, target: FromPath[str]) -> Response[Any]:
    """`/producers/<name>/rotate|types|revoke`. One route for the three, because a producer's name
    may hold a `/`: the server decodes the form's `%2F` before routing, so `{name:str}` never
    matched `team/billing` and those producers could not be changed here."""
    name, _, action = target.strip("/").rpartition("/")
    handler = _PRODUCER_ACTIONS.get(action)
    if not name or handler is None:
        raise NotFoundException(f"no producer action at /producers{target}")
    return await handler(request, name)


# -- dead letters ---------------------------------------------------------------------------------
def _filter(group: str | None, type_: str | None, source: str | None) -> Filter:
    return Filter(group=group or None, type=type_ or None, source=source or None)


@get("/dead-letters", include_in_schema=False)
async def dead_letters_page(
    request: AnyRequest, group: FromQuery[str | None] = None,
    type: FromQuery[str | None] = None,  # noqa: A002 - the CloudEvents attribute
    source: FromQuery[str | None] = None,
) -> Response[str]:
    svc = services(request)
    flt = _filter(group, type, source)
    letters = await svc.dead_letters.list(flt, DEAD_LETTER_PAGE)
    # A retired group's dead letters are kept (`eventflow groups delete`): its name stays a choice
    # while letters of it are shown or it is the filter, or the box claimed "All groups" over them.
    groups = sorted({g.name for g in await svc.consumer_groups()} | {dl.group for dl in letters}
                    | ({flt.group} if flt.group else set()))
    return page(request, "dead_letters.html", nav="dead-letters", letters=letters, flt=flt, groups=groups,
                limit=DEAD_LETTER_PAGE)


@get("/dead-letters/confirm", opt={"role": Role.ADMIN}, include_in_schema=False)
async def confirm_dead_letters(
    request: AnyRequest, action: FromQuery[str] = "", id: FromQuery[list[str] | None] = None,  # noqa: A002
    which: FromQuery[str] = "selected", group: FromQuery[str | None] = None,
    type: FromQuery[str | None] = None, source: FromQuery[str | None] = None,  # noqa: A002
) -> Response[Any]:
    """The confirmation step: what will happen, to how many, with one button to do it."""
    svc = services(request)
    flt = _filter(group, type, source)
    back = query_url("/dead-letters", group=flt.group, type=flt.type, source=flt.source)
    if action not in _ACTIONS:
        await flash(request, "error:Choose replay or discard.")
        return Redirect(back, status_code=303)
    everything = which == "all"
    ids = await svc.dead_letters.matching_ids(flt) if everything else list(dict.fromkeys(id or []))
    if not ids:
        await flash(request, "error:Select at least one dead letter first.")
        return Redirect(back, status_code=303)
    sample = [await svc.dead_letters.get(i) for i in ids[:10]]
    return page(request, "dead_letters_confirm.html", nav="dead-letters", action=action, label=_ACTIONS[action],
                ids=ids, everything=everything, flt=flt, sample=sample, back=back, until_ms=_after_newest(ids))


def _after_newest(ids: list[str]) -> int:
    """The dead-letter time just after the newest of `ids` (`<partition>:<ms>-<seq>`): "all matching"
    is confirmed with this bound, so what fails after the confirmation page was shown is left alone."""
    return max(int(i.rpartition(":")[2].partition("-")[0]) for i in ids) + 1


async def _act(request: AnyRequest, action: str) -> Response[Any]:
    svc = services(request)
    form = await request.form()
    flt = _filter(form.get("group"), form.get("type"), form.get("source"))
    if form.get("which") == "all":
        until = str(form.get("until_ms", ""))
        ids = await svc.dead_letters.matching_ids(replace(flt, until_ms=int(until) if until.isdigit() else None))
    else:
        ids = list(dict.fromkeys(str(i) for i in form.getall("id", [])))
    try:
        done = await (svc.dead_letters.replay(ids) if action == "replay" else svc.dead_letters.discard(ids))
    except NotFound as exc:  # a retired group's letters: said on the page, nothing replayed
        await flash(request, str(exc))
        return Redirect(query_url("/dead-letters", group=flt.group, type=flt.type, source=flt.source),
                        status_code=303)
    verb = "Replayed" if action == "replay" else "Discarded"
    skipped = f" ({len(ids) - done} were already gone)" if done < len(ids) else ""
    what = "dead letter" if len(ids) == 1 else "dead letters"
    await flash(request, f"{verb} {done} of {len(ids)} selected {what}{skipped}.")
    return Redirect(query_url("/dead-letters", group=flt.group, type=flt.type, source=flt.source), status_code=303)


@post("/dead-letters/replay", include_in_schema=False, status_code=303)
async def replay_dead_letters(request: AnyRequest) -> Response[Any]:
    return await _act(request, "replay")


@post("/dead-letters/discard", include_in_schema=False, status_code=303)
async def discard_dead_letters(request: AnyRequest) -> Response[Any]:
    return await _act(request, "discard")


@get("/dead-letters/{ident:str}", include_in_schema=False)
async def dead_letter_page(request: AnyRequest, ident: FromPath[str]) -> Response[str]:
    letter = await services(request).dead_letters.get(ident)
    return page(request, "dead_letter.html", nav="dead-letters", letter=letter)


ROUTES = [producers_page, create_producer, producer_action, dead_letters_page, confirm_dead_letters,
          replay_dead_letters, discard_dead_letters, dead_letter_page]

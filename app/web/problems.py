"""RFC 9457 problem+json: the one place where errors become HTTP responses."""

from __future__ import annotations

import logging
import re
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException

from app.connections import is_unavailable, unavailable
from app.errors import EventFlowError, FieldProblem, InvalidEvent, PayloadTooLarge, TooManyRequests, Unavailable
from app.web.metrics import note_problem

log = logging.getLogger("eventflow.web")

PROBLEM_JSON = "application/problem+json"


_FIELD = re.compile(r"field `([^`]+)`")


def field_problem(text: str) -> FieldProblem:
    """msgspec's "Expected `str`, got `int` - at `$.types[0]`" as a JSON pointer and a message; a
    missing or unknown field ("Object missing required field `url`") is pointed at itself."""
    message, sep, path = text.rpartition(" - at `$")
    if not sep:
        message, path = text, ""
    pointer = path.rstrip("`").replace("[", ".").replace("]", "").replace(".", "/")
    field = _FIELD.search(message)
    if field:
        pointer += "/" + field.group(1)
    return FieldProblem(pointer or "/", message)


def problem_document(status: int, title: str, detail: str, instance: str, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": f"/problems/{title.lower().replace(' ', '-')}",
        "title": title,
        "status": status,
        "detail": detail,
        "instance": instance,
    }
    body.update(extra)
    return body


def problem_headers(status: int, extra: dict[str, Any]) -> dict[str, str]:
    headers = {}
    if "retry_after" in extra:
        headers["Retry-After"] = str(extra["retry_after"])
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="eventflow"'  # RFC 9110: a 401 must name its scheme
    return headers


def problem(request: Request[Any, Any, Any], status: int, title: str, detail: str, **extra: Any) -> Response[bytes]:
    body = problem_document(status, title, detail, request.url.path, **extra)
    note_problem(request, status, body["type"])  # metrics: rejected ingests by reason, unrouted requests
    return Response(msgspec.json.encode(body), status_code=status, media_type=PROBLEM_JSON,
                    headers=problem_headers(status, extra))


def _extra(exc: EventFlowError) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    if isinstance(exc, InvalidEvent):
        extra["errors"] = [p.to_dict() for p in exc.problems]
    if isinstance(exc, Unavailable | TooManyRequests):
        extra["retry_after"] = exc.retry_after_s
    return extra


def problem_parts(exc: EventFlowError, instance: str) -> tuple[bytes, list[tuple[bytes, bytes]], str]:
    """(body, headers, problem type) of an error, for answers sent without Litestar (app/web/ingest.py)."""
    extra = _extra(exc)
    body = problem_document(exc.status, exc.title, exc.detail, instance, **extra)
    headers = [(k.lower().encode(), v.encode()) for k, v in problem_headers(exc.status, extra).items()]
    return msgspec.json.encode(body), headers, body["type"]


def eventflow_error(request: Request[Any, Any, Any], exc: EventFlowError) -> Response[bytes]:
    return problem(request, exc.status, exc.title, exc.detail, **_extra(exc))


def http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    settings = request.app.state.settings
    if exc.status_code == 413:
        return eventflow_error(request, PayloadTooLarge(
            f"the body is larger than {settings.max_body_bytes} bytes (EVENTFLOW_MAX_BODY_BYTES)"
        ))
    extra: dict[str, Any] = {}
    if isinstance(exc, ValidationException) and (invalid := _query_problems(exc)):
        return eventflow_error(request, InvalidEvent(invalid))
    if isinstance(exc, ValidationException) and isinstance(exc.extra, list):
        extra["errors"] = [
            {"pointer": f"/{e.get('key', '')}", "detail": e.get("message", "")}
            for e in exc.extra if isinstance(e, dict)
        ]
    title = _TITLES.get(exc.status_code, "Error")
    return problem(request, exc.status_code, title, str(exc.detail), **extra)


def _query_problems(exc: ValidationException) -> list[FieldProblem]:
    """Litestar refuses a query parameter its type cannot hold (`limit=ten`) with a 400; the same
    parameter out of range (`limit=0`) is our 422. Both are an invalid value of a named parameter,
    so both are the 422, naming it. Anything else Litestar refuses (no errors listed, a path
    parameter, a missing one) stays its 400."""
    errors = exc.extra if isinstance(exc.extra, list) else []
    if not errors or not all(isinstance(e, dict) and e.get("source") == "query" and e.get("key") for e in errors):
        return []
    return [FieldProblem(f"/{e['key']}", _plain(str(e.get("message") or "invalid value"))) for e in errors]


# msgspec's words for a value its type cannot hold, said as our other query checks say it
# ("/limit: must be between 1 and 1000"), not "Expected `int`, got `str`".
_EXPECTED = {"int": "must be a whole number", "float": "must be a number", "bool": "must be true or false"}


def _plain(message: str) -> str:
    match = re.fullmatch(r"Expected `(\w+)(?: \| null)?`, got `\w+`", message)  # `int | null`: optional
    return _EXPECTED.get(match.group(1), message) if match else message


def unexpected_error(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    if is_unavailable(exc):
        return eventflow_error(request, unavailable(exc, request.app.state.settings))
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    services = getattr(request.app.state, "services", None)
    if services is not None:  # error monitoring groups these under the pseudo-consumer "web"
        services.errors.note("web", type(exc).__name__, str(exc), exc=exc)
    return problem(request, 500, "Internal error", "an unexpected error occurred; it has been logged")


_TITLES = {
    400: "Bad request", 401: "Unauthorized", 403: "Forbidden", 404: "Not found",
    405: "Method not allowed", 409: "Conflict", 413: "Payload too large",
    415: "Unsupported media type", 429: "Too many requests", 503: "Service unavailable",
}

EXCEPTION_HANDLERS: dict[Any, Any] = {
    EventFlowError: eventflow_error,
    HTTPException: http_error,
    Exception: unexpected_error,
}

"""The error tree. Domain code raises these; `app.web.problems` maps them to RFC 9457 responses.

    EventFlowError
    ├── ConfigError            bad setting at start-up (never reaches HTTP)
    ├── InvalidEvent           422, with a list of (pointer, message) problems
    ├── MalformedBody          400, body is not the JSON it claims to be
    ├── MalformedHeader        400, e.g. a header ingest reads given twice
    ├── UnsupportedMediaType   415
    ├── PayloadTooLarge        413
    ├── RequestTimeout         408, the body did not arrive in time
    ├── Unauthorized           401, missing or unknown producer key
    ├── Forbidden              403, e.g. a body claiming another producer's source
    ├── NotFound               404
    ├── Conflict               409
    ├── TooManyRequests        429, a producer over EVENTFLOW_PRODUCER_RATE_LIMIT (with retry_after_s)
    └── Unavailable            503, Redis unreachable, full, or durability wait timed out
"""

from __future__ import annotations

from dataclasses import dataclass


class EventFlowError(Exception):
    """Base class: `detail` is a human sentence safe to show to the caller."""

    status = 500
    title = "Internal error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class ConfigError(EventFlowError):
    title = "Invalid configuration"


@dataclass(frozen=True, slots=True)
class FieldProblem:
    """One failing field: a JSON pointer into the request body and what is wrong there."""

    pointer: str
    message: str
    keyword: str | None = None

    def to_dict(self) -> dict[str, str]:
        out = {"pointer": self.pointer, "detail": self.message}
        if self.keyword:
            out["keyword"] = self.keyword
        return out


class InvalidEvent(EventFlowError):
    status = 422
    title = "Invalid event"

    def __init__(self, problems: list[FieldProblem]) -> None:
        first = problems[0]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        super().__init__(f"{first.pointer or '/'}: {first.message}{more}")
        self.problems = problems


class MalformedBody(EventFlowError):
    status = 400
    title = "Malformed request body"


class MalformedHeader(EventFlowError):
    status = 400
    title = "Malformed request header"


class UnsupportedMediaType(EventFlowError):
    status = 415
    title = "Unsupported media type"


class PayloadTooLarge(EventFlowError):
    status = 413
    title = "Payload too large"


class RequestTimeout(EventFlowError):
    status = 408
    title = "Request timeout"


class Unauthorized(EventFlowError):
    status = 401
    title = "Unauthorized"


class Forbidden(EventFlowError):
    status = 403
    title = "Forbidden"


class NotFound(EventFlowError):
    status = 404
    title = "Not found"


class Conflict(EventFlowError):
    status = 409
    title = "Conflict"


class TooManyRequests(EventFlowError):
    status = 429
    title = "Too many requests"

    def __init__(self, detail: str, retry_after_s: int = 1) -> None:
        super().__init__(detail)
        self.retry_after_s = retry_after_s


class Unavailable(EventFlowError):
    status = 503
    title = "Service unavailable"

    def __init__(self, detail: str, retry_after_s: int = 1) -> None:
        super().__init__(detail)
        self.retry_after_s = retry_after_s


def message_of(exc: BaseException) -> str:
    """`str(exc)`, or a stand-in when its `__str__` itself fails: a handler's odd exception must never
    stop its failure being recorded (the event would be redelivered for ever, never dead-lettered)."""
    try:
        return str(exc)
    except Exception:  # noqa: BLE001 - whatever __str__ raised, the failure is still recorded
        return f"<unprintable {type(exc).__name__}>"

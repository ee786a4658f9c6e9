"""Fuzz the public API from its own OpenAPI document with schemathesis: requests that fit the schema and
requests that break it (negative mode), with the right credentials and with none. No answer may be a
server error (5xx other than 503, which is the documented "Redis unavailable"), and every error from
the /v1 API is RFC 9457 problem+json.

Budget: a few dozen examples per operation and mode, deterministic (the same cases every run), about half a
minute on a 2-core box; the summary (requests per status, per operation) goes to
test-artifacts/fuzz-summary.md.
"""

from __future__ import annotations

import collections
import time
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from tests.fuzz.conftest import Target

EXAMPLES = {GenerationMode.POSITIVE: 12, GenerationMode.NEGATIVE: 12}
EXAMPLES_WITHOUT_KEY = 4
ARTIFACT = Path(__file__).resolve().parents[2] / "test-artifacts" / "fuzz-summary.md"
SEEN: dict[str, collections.Counter[int]] = collections.defaultdict(collections.Counter)
ELAPSED: list[float] = []  # seconds spent by each fuzz test
PRODUCER_ROUTES = ("/v1/events", "/v1/events/batch")
FUZZ = settings(deadline=None, derandomize=True, database=None, phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck))


def credentials(case: Any, target: Target, with_key: bool) -> dict[str, str]:
    if not with_key:
        return {}
    producer = case.method == "POST" and case.path in PRODUCER_ROUTES
    return {"Authorization": f"Bearer {target.producer_key if producer else target.operator_token}"}


def events_in(body: Any) -> list[Any]:
    if isinstance(body, dict) and isinstance(body.get("events"), list):
        return list(body["events"])
    return list(body) if isinstance(body, list) else [body]


def check(case: Any, response: Any) -> None:
    SEEN[f"{case.method} {case.path}"][response.status_code] += 1
    assert response.status_code < 500 or response.status_code == 503, (
        f"{response.status_code} for {case.method} {case.formatted_path}: {response.text[:500]}\n"
        f"reproduce: {case.as_curl_command()}")
    if response.status_code >= 400 and case.path.startswith("/v1"):
        content_type = (response.headers.get("content-type") or [""])[0]  # schemathesis: name -> values
        assert content_type.startswith("application/problem+json"), (
            case.as_curl_command(), response.status_code, content_type)


def operations(api_schema: Any) -> list[Any]:
    return [result.ok() for result in api_schema.get_all_operations()]


# Schemathesis's own pytest integration (`schema.parametrize()`) breaks under pytest 9 (it sets a
# private node attribute), so its strategies are driven with hypothesis directly: one run per
# operation and generation mode.
def test_no_generated_request_gets_a_server_error(api_schema: Any, fuzz_target: Target) -> None:
    started = time.monotonic()
    for operation in operations(api_schema):
        for mode, examples in EXAMPLES.items():

            @settings(FUZZ, max_examples=examples)
            @given(case=operation.as_strategy(generation_mode=mode))
            def fuzz(case: Any) -> None:
                check(case, case.call(headers=credentials(case, fuzz_target, with_key=True)))

            try:
                fuzz()
            except Unsatisfiable:
                # Negative mode has nothing to break in an operation without parameters or body.
                assert mode is GenerationMode.NEGATIVE, operation.label
    ELAPSED.append(time.monotonic() - started)


def test_no_request_without_credentials_gets_a_server_error(api_schema: Any, fuzz_target: Target) -> None:
    started = time.monotonic()
    for operation in operations(api_schema):

        @settings(FUZZ, max_examples=EXAMPLES_WITHOUT_KEY)
        @given(case=operation.as_strategy())
        def fuzz(case: Any) -> None:
            response = case.call(headers={})
            check(case, response)
            if case.path.startswith("/v1"):
                assert response.status_code in (400, 401, 404, 405, 413, 415, 422), (case.as_curl_command(),
                                                                                     response.text)

        fuzz()
    ELAPSED.append(time.monotonic() - started)


def test_write_the_fuzz_summary() -> None:
    """Runs after the fuzz tests in this module (file order): the per-operation status counts."""
    total = sum(sum(c.values()) for c in SEEN.values())
    errors = sum(n for c in SEEN.values() for s, n in c.items() if s >= 500 and s != 503)
    lines = [f"Schemathesis fuzz of the OpenAPI document: {total} requests to {len(SEEN)} operations in "
             f"{sum(ELAPSED):.0f} s; 5xx other than 503: {errors}.",
             "", "| operation | requests | statuses |", "|---|---|---|"]
    for operation, counts in sorted(SEEN.items()):
        statuses = ", ".join(f"{s}x{n}" for s, n in sorted(counts.items()))
        lines.append(f"| `{operation}` | {sum(counts.values())} | {statuses} |")
    ARTIFACT.parent.mkdir(exist_ok=True)
    ARTIFACT.write_text("\n".join(lines) + "\n")
    assert total > 0

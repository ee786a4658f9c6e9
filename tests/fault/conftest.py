"""Fixtures of the fault suite, and the table it prints at the end of the run.

Each test builds its own world (`make_stack`: a Valkey server in the test's folder, the web process
and worker processes on loopback), puts it under steady load, injects faults, checks that nothing
acknowledged was lost, and files one row: load held, faults injected, events acknowledged, lost,
duplicated, unfinished. The rows are printed after the test summary and written to
test-artifacts/fault-table.md (the README's reliability section shows a real run).
"""

from __future__ import annotations

import datetime as dt
import os
import platform
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from app.embedded import EmbeddedServer
from tests.fault.stack import Stack

ARTIFACT = Path(__file__).resolve().parents[2] / "test-artifacts" / "fault-table.md"
COLUMNS = ("scenario", "load held", "faults injected", "answers producers saw", "acknowledged", "lost", "duplicated",
           "unfinished")


@dataclass
class Row:
    scenario: str
    load: str
    faults: str
    answers: str
    acknowledged: int
    lost: int | str
    duplicated: str
    unfinished: int

    def cells(self) -> tuple[str, ...]:
        return (self.scenario, self.load, self.faults, self.answers, str(self.acknowledged), str(self.lost),
                self.duplicated, str(self.unfinished))


ROWS: list[Row] = []


@pytest.fixture
def fault_table() -> Callable[..., None]:
    """`fault_table(scenario=..., load=..., ...)`: file this test's row (call it before the asserts,
    so a failing run still shows its figures)."""

    def record(**fields: Any) -> None:
        ROWS.append(Row(**fields))

    return record


@pytest.fixture
def make_stack(tmp_path: Path) -> Iterator[Callable[..., Stack]]:
    """`make_stack(appendfsync="always", EVENTFLOW_DURABILITY="fsync")`: a server and a stack on it."""
    made: list[Stack] = []

    def make(*, appendfsync: str = "everysec", **env: str) -> Stack:
        server = EmbeddedServer(tmp_path / f"valkey-{len(made)}", appendfsync=appendfsync).start()
        stack = Stack(server=server, folder=tmp_path, env=env)
        made.append(stack)
        return stack

    yield make
    for stack in made:
        stack.stop()
        stack.server.stop()


def table_markdown(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row.cells()) + " |" for row in rows]
    return "\n".join(lines)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not ROWS:
        return
    table = table_markdown(ROWS)
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    machine = f"{os.cpu_count()} cores, {platform.system()} {platform.machine()}, Python {platform.python_version()}"
    terminalreporter.section("EventFlow fault table")
    for line in table.splitlines():
        terminalreporter.write_line(line)
    ARTIFACT.parent.mkdir(exist_ok=True)
    ARTIFACT.write_text(f"Fault suite, {when} ({machine}); `pytest tests/fault`.\n\n{table}\n")
    terminalreporter.write_line(f"(written to {ARTIFACT.relative_to(ARTIFACT.parents[1])})")

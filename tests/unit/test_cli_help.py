"""`--help` everywhere: every command and subcommand of `eventflow` prints a description of itself
and of each of its options, and exits 0."""

from __future__ import annotations

import argparse
import contextlib
import io
import subprocess
import sys
from pathlib import Path

import pytest

from app.cli import build_parser, main
from app.embedded import free_port


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = [path]
    for action in parser._actions:  # argparse keeps subcommands only here
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                found += _commands(child, (*path, name))
    return found


COMMANDS = _commands(build_parser())


def test_there_are_commands_to_check() -> None:
    assert len(COMMANDS) > 30
    assert ("dev",) in COMMANDS and ("consume",) in COMMANDS and ("dlq", "discard") in COMMANDS


@pytest.mark.parametrize("path", COMMANDS, ids=lambda path: " ".join(path) or "eventflow")
def test_every_command_has_help_for_itself_and_each_option(path: tuple[str, ...]) -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as done:
        build_parser().parse_args([*path, "--help"])
    assert done.value.code == 0
    text = out.getvalue()
    assert text.startswith("usage: eventflow")
    parser = build_parser()
    for name in path:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        summary = next(c.help for c in sub._choices_actions if c.dest == name)
        assert summary, f"eventflow {' '.join(path)}: no one-line help in its parent's list"
        parser = sub.choices[name]
    undocumented = [a.dest for a in parser._actions
                    if a.help is None and not isinstance(a, argparse._SubParsersAction) and a.dest != "help"]
    assert undocumented == [], f"eventflow {' '.join(path)}: options without help: {undocumented}"


# Commands that read Redis, run against a port nobody listens on.
NEEDS_REDIS = [("producers", "list"), ("dlq", "list"), ("dlq", "show", "0:1-0"),
               ("replay", "--group", "g", "--since", "0"), ("types", "list"), ("retention", "status"),
               ("webhooks", "list"), ("users", "list")]


@pytest.mark.parametrize("args", NEEDS_REDIS, ids=" ".join)
def test_an_unreachable_redis_is_a_one_line_error_not_a_traceback(
    args: tuple[str, ...], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    monkeypatch.setenv("EVENTFLOW_REDIS_TIMEOUT_S", "0.5")
    assert main(list(args)) == 1
    err = capsys.readouterr().err
    assert err.startswith("eventflow: ") and "unreachable" in err and err.count("\n") == 1, err


def test_output_into_a_closed_pipe_ends_quietly() -> None:
    """`eventflow config | head -1`: the reader may go away before the output is written."""
    proc = subprocess.Popen([str(Path(sys.executable).with_name("eventflow")), "config"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # before it has started: every write of its output meets a closed pipe
    with proc.stderr:
        err = proc.stderr.read().decode()
    assert proc.wait(30) != 0
    assert "Traceback" not in err and "BrokenPipeError" not in err, err


# Every command line the issues and the README name, as they spell it: parsed, it reaches a handler.
CONTRACT_COMMANDS = [
    "dev", "serve", "consume", "consume audit analytics", "consume --module my_consumers",
    "embedded-redis --cluster 3", "producers create billing", "producers create shop --types order.* cart.updated",
    "producers list", "producers rotate billing", "producers revoke billing", "producers limit shop order.*",
    "users create alice --role admin", "users create vic --role viewer",
    "dlq list --group notify --type order.created --source shop --since 0 --until 1",
    "dlq show 0:1-0", "dlq replay 0:1-0", "dlq replay --all --group notify", "dlq discard --all --type test.ping",
    "replay --group analytics --since 2026-11-26T10:00:00Z --until 2026-11-26T11:00:00Z",
    "audit verify", "types list", "retention run", "retention status",
    "archive replay --group G --since 2026-11-26T10:00:00Z --until 2026-11-26T11:00:00Z",
    "webhooks create https://example.com/in --type order.*", "webhooks list",
]


@pytest.mark.parametrize("command", CONTRACT_COMMANDS)
def test_every_command_line_the_issues_name_parses(command: str) -> None:
    args = build_parser().parse_args(command.split())
    assert callable(args.handler)


@pytest.mark.parametrize("args", [("dev", "--port", "0"), ("serve", "--port", "70000"),
                                  ("embedded-redis", "--port", "-1"), ("embedded-redis", "--cluster", "-1"),
                                  ("dlq", "list", "--limit", "0"), ("dlq", "list", "--limit", "-5"),
                                  ("dev", "--port", "²")],
                         ids=" ".join)
def test_a_port_or_a_count_out_of_range_is_a_usage_error(
    args: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as done:
        build_parser().parse_args(list(args))
    assert done.value.code == 2
    assert f"argument {args[-2]}" in capsys.readouterr().err

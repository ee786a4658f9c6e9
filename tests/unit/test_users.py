"""Operator accounts without Redis: name and password rules, the hash, the CLI's password prompt."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest
from argon2 import PasswordHasher, Type

from app import users
from app.cli_users import PASSWORD_ENV, read_password
from app.errors import InvalidEvent
from app.users import Role, check_name, check_password


def test_passwords_are_hashed_with_argon2id_at_the_rfc_9106_defaults() -> None:
    hasher = users._hasher
    defaults = PasswordHasher()
    assert hasher.type is Type.ID
    assert (hasher.time_cost, hasher.memory_cost, hasher.parallelism) == (
        defaults.time_cost, defaults.memory_cost, defaults.parallelism)
    assert hasher.memory_cost >= 64 * 1024  # KiB: memory-hard


async def test_a_hash_verifies_its_own_password_only() -> None:
    stored = await users.hash_password("correct horse battery")
    assert stored.startswith("$argon2id$")
    assert "correct horse" not in stored
    assert await users._verify(stored, "correct horse battery")
    assert not await users._verify(stored, "correct horse battery!")
    assert not await users._verify("not a hash", "x")


@pytest.mark.parametrize("name", ["ada", "ops.team", "a@b", "x-1_2"])
def test_good_names(name: str) -> None:
    check_name(name)


# Non-ASCII (one starts with a Cyrillic look-alike of "a"), and a trailing newline that `$` would allow.
@pytest.mark.parametrize("name", ["", " ada", "-ada", "a b", "a/b", "a" * 65, "\u00e4da", "\u0430da", "ada\n"])
def test_bad_names(name: str) -> None:
    with pytest.raises(InvalidEvent):
        check_name(name)


@pytest.mark.parametrize("password", ["", "short", "x" * 1025])
def test_bad_passwords(password: str) -> None:
    with pytest.raises(InvalidEvent):
        check_password(password)


def test_roles_are_admin_and_viewer() -> None:
    assert [r.value for r in Role] == ["admin", "viewer"]
    with pytest.raises(InvalidEvent):
        users._role("root")


def test_the_cli_takes_the_password_from_the_environment_or_asks_twice() -> None:
    assert read_password({PASSWORD_ENV: "from-the-env"}, prompt=_no_prompt) == "from-the-env"
    answers = iter(["typed-secret", "typed-secret"])
    assert read_password({}, prompt=lambda _: next(answers)) == "typed-secret"
    answers = iter(["one", "two"])
    with pytest.raises(InvalidEvent):
        read_password({}, prompt=lambda _: next(answers))


def test_without_a_terminal_or_the_variable_the_cli_says_how_to_give_the_password() -> None:
    done = subprocess.run([sys.executable, "-m", "app.cli", "users", "create", "alice", "--role", "admin"],
                          input=b"", capture_output=True, timeout=60, check=False,
                          env={k: v for k, v in os.environ.items() if k != PASSWORD_ENV})
    assert done.returncode != 0
    assert PASSWORD_ENV in done.stderr.decode() and "Traceback" not in done.stderr.decode()


def _no_prompt(_: str) -> str:
    raise AssertionError("must not prompt")


async def test_at_most_two_argon2_runs_at_once_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    import threading
    import time

    running, most, lock = 0, 0, threading.Lock()

    class Slow:
        def hash(self, password: str) -> str:
            nonlocal running, most
            with lock:
                running += 1
                most = max(most, running)
            time.sleep(0.05)
            with lock:
                running -= 1
            return "h:" + password

    monkeypatch.setattr(users, "_hasher", Slow())
    hashed = await asyncio.gather(*(users.hash_password(f"password-{n}") for n in range(8)))
    assert hashed == [f"h:password-{n}" for n in range(8)]
    assert most == 2

"""`eventflow users ...`: dashboard operator accounts (create, list, delete, set-password).

Passwords are prompted for (twice), or taken from EVENTFLOW_ADMIN_PASSWORD for automation. That
variable is read only by these commands, at the moment they run; it is not a setting, so it never
shows in `eventflow config`.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from app.errors import ConfigError, FieldProblem, InvalidEvent
from app.settings import Settings

PASSWORD_ENV = "EVENTFLOW_ADMIN_PASSWORD"


def add_parser(sub: Any) -> None:
    users = sub.add_parser("users", help="create, list and delete dashboard operators",
                           description="Operators log in to the dashboard. Roles: admin (may change things) "
                           f"and viewer (read only). Passwords are prompted for, or read from {PASSWORD_ENV}.")
    usub = users.add_subparsers(title="user commands", metavar="ACTION")
    create = usub.add_parser("create", help="add an operator (password prompted, or from $" + PASSWORD_ENV + ")")
    create.add_argument("name", help="login name: letters, digits and . _ @ -")
    create.add_argument("--role", choices=["admin", "viewer"], default="viewer", help="default: viewer")
    create.set_defaults(handler=_run(lambda svc, a, pw: svc.users.create(a.name, a.role, pw), password=True))
    lst = usub.add_parser("list", help="list operators and their roles")
    lst.set_defaults(handler=_run(lambda svc, a, pw: svc.users.list()))
    delete = usub.add_parser("delete", help="remove an operator and end their sessions")
    delete.add_argument("name", help="the operator's name")
    delete.set_defaults(handler=_run(lambda svc, a, pw: svc.delete_user(a.name)))
    passwd = usub.add_parser("set-password", help="change a password (their open sessions end)")
    passwd.add_argument("name", help="the operator's name")
    passwd.set_defaults(handler=_run(lambda svc, a, pw: svc.set_user_password(a.name, pw), password=True))
    users.set_defaults(handler=lambda a, s: (users.print_help(), 2)[1])


def read_password(environ: Any = os.environ, prompt: Callable[[str], str] = getpass.getpass) -> str:
    """The new password: from the environment, else typed twice at a prompt."""
    given = environ.get(PASSWORD_ENV)
    if given:
        return str(given)
    try:
        first, again = prompt("Password: "), prompt("Again: ")
    except EOFError:  # no terminal to type at (a script, a pipe)
        raise ConfigError(f"no password: type it at a terminal, or set {PASSWORD_ENV}") from None
    if again != first:
        raise InvalidEvent([FieldProblem("/password", "the two passwords differ")])
    return first


Action = Callable[[Any, argparse.Namespace, str], Awaitable[Any]]


def _run(action: Action, *, password: bool = False) -> Callable[[argparse.Namespace, Settings], int]:
    def handler(args: argparse.Namespace, settings: Settings) -> int:
        from app.connections import connect
        from app.service import Services

        secret = read_password() if password else ""  # prompt before connecting: no timeout while typing

        async def go() -> Any:
            redis = connect(settings)
            try:
                return await action(Services(redis, settings), args, secret)
            finally:
                await redis.aclose()

        print(msgspec.json.format(msgspec.json.encode(asyncio.run(go())), indent=2).decode())
        return 0

    return handler

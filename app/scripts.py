"""The Lua scripts kept as package files next to the code, loaded once per client."""

from __future__ import annotations

from functools import cache
from importlib.resources import files
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

_PRELUDE = "_index.lua"


@cache
def source(name: str) -> str:
    """The text of `app/lua/<name>.lua`, with the shared prelude for the log scripts."""
    folder = files("app") / "lua"
    text = (folder / f"{name}.lua").read_text()
    if name in ("append", "catch_up"):
        text = (folder / _PRELUDE).read_text() + "\n" + text
    return text


class Scripts:
    """Registered scripts for one client (EVALSHA, falling back to EVAL once after a flush)."""

    def __init__(self, redis: Redis[Any] | Any) -> None:
        self.append: AsyncScript = redis.register_script(source("append"))
        self.catch_up: AsyncScript = redis.register_script(source("catch_up"))
        self.query: AsyncScript = redis.register_script(source("query"))
        self.claim_due: AsyncScript = redis.register_script(source("claim_due"))
        self.dead_letter: AsyncScript = redis.register_script(source("dead_letter"))
        self.replay_dead: AsyncScript = redis.register_script(source("replay_dead"))

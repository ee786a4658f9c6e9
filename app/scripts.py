"""The Lua scripts kept as package files next to the code, loaded once per client."""

from __future__ import annotations

from functools import cache
from importlib.resources import files
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

# Values one script call can hand to a single command (`unpack` in Lua stops near 8,000): entries with
# more fields than this are written with MULTI/EXEC instead (dead letters, their replays).
SCRIPT_VALUES_MAX = 7000

# Shared Lua helpers each script starts with (Redis scripts cannot import one another).
_PRELUDES = {"append": "_index.lua", "catch_up": "_index.lua", "query": "_ids.lua", "trim": "_ids.lua"}


@cache
def source(name: str) -> str:
    """The text of `app/lua/<name>.lua`, with its shared prelude."""
    folder = files("app") / "lua"
    text = (folder / f"{name}.lua").read_text()
    if name in _PRELUDES:
        text = (folder / _PRELUDES[name]).read_text() + "\n" + text
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

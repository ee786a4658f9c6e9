"""Operator accounts for the dashboard: names, roles and argon2id password hashes.

Two roles: `admin` may change things (producers, dead letters, webhooks); `viewer` only reads.
Passwords are hashed with argon2id (argon2-cffi's RFC 9106 defaults, memory-hard). Hashing takes
tens of milliseconds and 64 MiB, so it runs in a worker thread, never on the event loop, and at
most two at a time per process.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import re
import secrets
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import msgspec
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from redis.asyncio import Redis

from app.connections import redis_errors
from app.errors import Conflict, FieldProblem, InvalidEvent, NotFound, Unauthorized
from app.keys import Keys
from app.settings import Settings

MIN_PASSWORD = 8
MAX_PASSWORD = 1024  # argon2 takes any length; a bound keeps a hostile form post cheap
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
T = TypeVar("T")
_hasher = PasswordHasher()
# One argon2 run takes 64 MiB (the library's RFC 9106 defaults): at most two at once per process, so
# a burst of logins waits its turn instead of taking a small machine's memory (the 512 MB web VM).
_HASH_SLOTS = threading.BoundedSemaphore(2)


def _argon2(work: Callable[[], T]) -> T:
    """Run argon2 work in a worker thread, within the process's hashing slots."""
    with _HASH_SLOTS:
        return work()


@functools.cache
def _dummy_hash() -> str:
    """Verified against when the name is unknown, so a wrong name costs as long as a wrong password."""
    return _hasher.hash(secrets.token_urlsafe(16))


class Role(enum.StrEnum):
    ADMIN = "admin"
    VIEWER = "viewer"


class User(msgspec.Struct, kw_only=True):
    """An operator as stored."""

    name: str
    role: Role
    password_hash: str
    created_ms: int
    updated_ms: int | None = None


class UserView(msgspec.Struct, kw_only=True):
    """An operator as the CLI shows it (never the hash)."""

    name: str
    role: Role
    created_ms: int
    updated_ms: int | None = None


def check_name(name: str) -> None:
    if not _NAME.fullmatch(name):
        raise InvalidEvent([FieldProblem("/name", "1-64 characters: letters, digits and . _ @ -")])


def check_password(password: str) -> None:
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise InvalidEvent([FieldProblem("/password", f"between {MIN_PASSWORD} and {MAX_PASSWORD} characters")])


async def hash_password(password: str) -> str:
    return await asyncio.to_thread(_argon2, lambda: _hasher.hash(password))


async def _verify(password_hash: str, password: str) -> bool:
    def verify() -> bool:
        try:
            return _hasher.verify(password_hash, password)
        except (VerificationError, InvalidHashError):
            return False

    return await asyncio.to_thread(_argon2, verify)


class Users:
    """Create, list, delete and authenticate operators."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.redis = redis
        self.settings = settings
        self.keys = Keys(settings.prefix, settings.partitions)

    async def create(self, name: str, role: Role | str, password: str) -> UserView:
        check_name(name)
        check_password(password)
        user = User(name=name, role=_role(role), password_hash=await hash_password(password), created_ms=_now_ms())
        async with redis_errors(self.settings):
            if not await self.redis.hsetnx(self.keys.users, name, msgspec.json.encode(user)):
                raise Conflict(f"operator {name!r} already exists")
        return _view(user)

    async def list(self) -> list[UserView]:
        async with redis_errors(self.settings):
            raw = await self.redis.hgetall(self.keys.users)
        users = (msgspec.json.decode(v, type=User) for v in raw.values())
        return sorted((_view(u) for u in users), key=lambda u: u.name)

    async def get(self, name: str) -> User:
        async with redis_errors(self.settings):
            raw = await self.redis.hget(self.keys.users, name)
        if raw is None:
            raise NotFound(f"no operator named {name!r}")
        return msgspec.json.decode(raw, type=User)

    async def delete(self, name: str) -> UserView:
        """Remove an operator; their open sessions end with it (see `Sessions.end_all`)."""
        user = await self.get(name)
        async with redis_errors(self.settings):
            await self.redis.hdel(self.keys.users, name)
        return _view(user)

    async def set_password(self, name: str, password: str) -> UserView:
        check_password(password)
        user = await self.get(name)
        new_hash = await hash_password(password)
        changed = msgspec.structs.replace(user, password_hash=new_hash, updated_ms=_now_ms())
        async with redis_errors(self.settings):
            await self.redis.hset(self.keys.users, name, msgspec.json.encode(changed))
        return _view(changed)

    async def authenticate(self, name: str, password: str) -> User:
        """The operator for this name and password, or Unauthorized (the same for either mistake)."""
        user: User | None = None
        if _NAME.fullmatch(name) and len(password) <= MAX_PASSWORD:
            async with redis_errors(self.settings):
                raw = await self.redis.hget(self.keys.users, name)
            user = msgspec.json.decode(raw, type=User) if raw is not None else None
        stored = user.password_hash if user else await asyncio.to_thread(_argon2, _dummy_hash)
        ok = await _verify(stored, password[:MAX_PASSWORD])
        if user is None or not ok:
            raise Unauthorized("wrong name or password")
        if _hasher.check_needs_rehash(user.password_hash):  # parameters were raised since it was hashed
            await self._rehash(user, password)
        return user

    async def _rehash(self, user: User, password: str) -> None:
        changed = msgspec.structs.replace(user, password_hash=await hash_password(password))
        async with redis_errors(self.settings):
            await self.redis.hset(self.keys.users, user.name, msgspec.json.encode(changed))


def _role(role: Role | str) -> Role:
    try:
        return Role(role)
    except ValueError:
        raise InvalidEvent([FieldProblem("/role", "admin or viewer")]) from None


def _view(user: User) -> UserView:
    return UserView(name=user.name, role=user.role, created_ms=user.created_ms, updated_ms=user.updated_ms)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000

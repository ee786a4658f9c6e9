"""Operator sessions (server-side, in Redis) and the failed-login throttle.

The browser holds only a random 256-bit token in an HttpOnly cookie; Redis holds the session under
the token's SHA-256 (a copy of the keyspace gives no usable cookie). A session expires after
`EVENTFLOW_SESSION_IDLE_S` without a request and after `EVENTFLOW_SESSION_MAX_S` in any case. Login
always issues a new token and ends the one the browser had (no session fixation), and every
session carries its own CSRF token. Deleting an operator or changing their password ends all of
their sessions.
"""

from __future__ import annotations

import hashlib
import secrets
import time

import msgspec
from redis.asyncio import Redis

from app.connections import redis_errors, transaction
from app.keys import Keys
from app.settings import Settings
from app.users import Role, User

MAX_FLASHES = 5
_MAX_TOKEN = 128  # a cookie longer than any token we issue is not looked up at all


class Session(msgspec.Struct, kw_only=True):
    """What the server knows about a logged-in browser."""

    user: str
    role: Role
    csrf: str
    created_ms: int

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN


class Loaded(msgspec.Struct):
    """A session found by its token, with the notices queued for its next page."""

    token: str
    session: Session
    flashes: list[str]


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Sessions:
    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.redis = redis
        self.settings = settings
        self.keys = Keys(settings.prefix, settings.partitions)

    async def start(self, user: User, previous_token: str | None = None) -> tuple[str, Session]:
        """A fresh session for `user`; the browser's previous session, if any, ends."""
        token = secrets.token_urlsafe(32)
        digest = token_hash(token)
        session = Session(user=user.name, role=user.role, csrf=secrets.token_urlsafe(32), created_ms=_now_ms())
        async with redis_errors(self.settings):
            pipe = transaction(self.redis)
            if previous_token:
                pipe.delete(self.keys.session(token_hash(previous_token)))
            pipe.set(self.keys.session(digest), msgspec.json.encode(session), ex=self.settings.session_idle_s)
            pipe.sadd(self.keys.user_sessions(user.name), digest)
            pipe.expire(self.keys.user_sessions(user.name), self.settings.session_max_s)
            await pipe.execute()
        return token, session

    async def load(self, token: str | None, *, take_flashes: bool = True) -> Loaded | None:
        """The session for a cookie, its idle timer restarted; None when unknown or expired."""
        if not token or len(token) > _MAX_TOKEN:
            return None
        digest = token_hash(token)
        async with redis_errors(self.settings):
            pipe = transaction(self.redis)
            pipe.getex(self.keys.session(digest), ex=self.settings.session_idle_s)
            if take_flashes:
                pipe.lrange(self.keys.session_flash(digest), 0, MAX_FLASHES - 1)
                pipe.delete(self.keys.session_flash(digest))
            replies = await pipe.execute()
        if replies[0] is None:
            return None
        session = msgspec.json.decode(replies[0], type=Session)
        if _now_ms() - session.created_ms > self.settings.session_max_s * 1000:
            await self.end(token)
            return None
        flashes = [f.decode() for f in replies[1]] if take_flashes else []
        return Loaded(token, session, flashes)

    async def alive(self, token: str) -> bool:
        """Whether the session still exists (long-lived streams check it without extending it)."""
        async with redis_errors(self.settings):
            return bool(await self.redis.exists(self.keys.session(token_hash(token))))

    async def flash(self, token: str, message: str) -> None:
        """Queue a one-time notice for the session's next page (POST, then redirect, then show)."""
        key = self.keys.session_flash(token_hash(token))
        async with redis_errors(self.settings):
            pipe = transaction(self.redis)
            pipe.rpush(key, message)
            pipe.ltrim(key, -MAX_FLASHES, -1)
            pipe.expire(key, 300)
            await pipe.execute()

    async def end(self, token: str) -> None:
        digest = token_hash(token)
        async with redis_errors(self.settings):
            await self.redis.delete(self.keys.session(digest), self.keys.session_flash(digest))

    async def end_all(self, name: str) -> int:
        """End every session of one operator; returns how many were open."""
        async with redis_errors(self.settings):
            digests = [d.decode() for d in await self.redis.smembers(self.keys.user_sessions(name))]
            keys = [self.keys.session(d) for d in digests]
            ended = int(await self.redis.delete(*keys)) if keys else 0
            await self.redis.delete(self.keys.user_sessions(name))
        return ended


class LoginThrottle:
    """At most `EVENTFLOW_LOGIN_MAX_FAILURES` failed logins per client address per window.

    Each try takes an attempt from the count before the password is checked (INCR is atomic, every
    web process shares it), and a right password gives it back: checking first and counting the
    failure after the slow hash let any number of concurrent tries through. The window starts at
    the first attempt and is not extended by later ones, so a blocked client waits it out."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.redis = redis
        self.settings = settings
        self.keys = Keys(settings.prefix, settings.partitions)

    async def attempt(self, client: str) -> int | None:
        """Take an attempt: None when this client may try now, else the seconds until it may."""
        key = self.keys.login_failures(client)
        async with redis_errors(self.settings):
            pipe = transaction(self.redis)
            pipe.incr(key)
            pipe.expire(key, self.settings.login_window_s, nx=True)
            pipe.ttl(key)
            count, _, ttl = await pipe.execute()
        if count <= self.settings.login_max_failures:
            return None
        return max(1, int(ttl))

    async def succeeded(self, client: str) -> None:
        """Give the attempt back: a right password is no failure (and never outlives the window)."""
        async with redis_errors(self.settings):
            await self.redis.eval(_GIVE_BACK, 1, self.keys.login_failures(client))


_GIVE_BACK = "if redis.call('DECR', KEYS[1]) <= 0 then redis.call('DEL', KEYS[1]) end"


def _now_ms() -> int:
    return time.time_ns() // 1_000_000

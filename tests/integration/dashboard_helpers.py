"""Logging in to the dashboard from an httpx client, and reading tokens out of its pages."""

from __future__ import annotations

import re

import httpx
import pytest
from argon2 import PasswordHasher

from app import users

_TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_token(html: str) -> str:
    found = _TOKEN.search(html)
    assert found, "no CSRF token on the page"
    return found.group(1)


async def login(client: httpx.AsyncClient, name: str, password: str, *, next_path: str = "/") -> httpx.Response:
    form = await client.get("/login")
    return await client.post("/login", data={"csrf_token": csrf_token(form.text), "username": name,
                                             "password": password, "next": next_path})


async def logged_in(client: httpx.AsyncClient, name: str, password: str) -> str:
    """Log in and return the session's CSRF token (from the overview page)."""
    resp = await login(client, name, password)
    assert resp.status_code == 303, resp.text
    page = await client.get("/")
    assert page.status_code == 200
    return csrf_token(page.text)


@pytest.fixture
def cheap_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    """argon2 at its smallest: these tests log in often and check access rules, not the hash's cost
    (tests/unit/test_users.py checks that the real parameters are the library's RFC 9106 defaults)."""
    monkeypatch.setattr(users, "_hasher", PasswordHasher(time_cost=1, memory_cost=8, parallelism=1))
    users._dummy_hash.cache_clear()

"""Browser-facing security: response headers, HTTPS detection behind a proxy, the client address,
and CSRF tokens for the dashboard's forms.

CSRF uses the synchronizer-token pattern: each session has a random token, every form carries it
in a hidden `csrf_token` field, and every state-changing request must send it back. Litestar's
own `CSRFConfig` (a double-submit cookie applied to the whole app) is not used: the public API's
POSTs authenticate with bearer keys and need no token, and a token bound to the server-side
session cannot be planted by a sibling subdomain the way a cookie can. The login form, which has
no session yet, uses a double-submit cookie.
"""

from __future__ import annotations

import hmac
import secrets
from typing import Any

from litestar.connection import ASGIConnection
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from app.settings import Settings

CSRF_FIELD = "csrf_token"

# No inline script or style anywhere: the dashboard's JS and CSS are files under /static.
CSP = "; ".join([
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' data:",
    "connect-src 'self'",
    "font-src 'self'",
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
])
_EXEMPT = ("/schema",)  # the OpenAPI viewers are third-party pages with their own inline scripts


def is_https(connection: ASGIConnection[Any, Any, Any, Any], settings: Settings) -> bool:
    """Whether the browser reached us over HTTPS (as the trusted proxy says, when there is one)."""
    if connection.scope.get("scheme") == "https":
        return True
    if settings.trust_proxy:
        proto = connection.headers.get("x-forwarded-proto", "")
        return proto.split(",")[0].strip().lower() == "https"
    return False


def secure_cookies(connection: ASGIConnection[Any, Any, Any, Any], settings: Settings) -> bool:
    if settings.cookie_secure == "always":
        return True
    if settings.cookie_secure == "never":
        return False
    return is_https(connection, settings)


def client_address(connection: ASGIConnection[Any, Any, Any, Any], settings: Settings) -> str:
    """The client's address: the peer, or behind a trusted proxy the address the proxy appended last
    to X-Forwarded-For (earlier entries are whatever the client chose to send)."""
    if settings.trust_proxy:
        forwarded = connection.headers.get("x-forwarded-for", "")
        last = forwarded.rsplit(",", 1)[-1].strip()
        if last:
            return last
    client = connection.scope.get("client")
    return str(client[0]) if client else "unknown"


def new_token() -> str:
    return secrets.token_urlsafe(32)


def tokens_match(expected: str, given: str | None) -> bool:
    return bool(expected) and given is not None and hmac.compare_digest(expected.encode(), given.encode())


def security_headers(settings: Settings) -> Any:
    """ASGI middleware factory: adds the security headers to every response."""

    def middleware(app: ASGIApp) -> ASGIApp:
        async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            path = scope.get("path", "")
            https = is_https(ASGIConnection(scope), settings)

            async def send_with_headers(message: Message) -> None:
                if message["type"] == "http.response.start":
                    headers = list(message.get("headers", []))
                    headers += _headers(path, https)
                    message = {**message, "headers": headers}  # type: ignore[typeddict-item]
                await send(message)

            await app(scope, receive, send_with_headers)

        return wrapped

    return middleware


def _headers(path: str, https: bool) -> list[tuple[bytes, bytes]]:
    out = [
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"same-origin"),
        (b"x-frame-options", b"DENY"),
        (b"cross-origin-opener-policy", b"same-origin"),
        (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
    ]
    if not path.startswith(_EXEMPT):
        out.append((b"content-security-policy", CSP.encode()))
    if https:
        out.append((b"strict-transport-security", b"max-age=31536000; includeSubDomains"))
    return out

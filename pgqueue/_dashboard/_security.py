"""Who is asking, whether a form came from our own page, and the headers of every response.

Authentication: a bearer token (``Authorization: Bearer <token>``, for scripts), or HTTP basic
auth (what a browser asks for), where the password is the token, or the configured user's
password. Without configured credentials the dashboard is anonymous and read-only (the
settings refuse actions without them).

CSRF: every form carries a token, an HMAC of the user name under the app's secret; an action
without it, or whose ``Origin`` / ``Sec-Fetch-Site`` says another site sent it, is refused. A
page cannot read another origin's token, so it cannot forge a form that passes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping
from urllib.parse import urlsplit

from ._config import DashboardSettings

ANONYMOUS = "anonymous"
REALM = 'Basic realm="pgqueue dashboard", charset="UTF-8"'


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def authenticate(settings: DashboardSettings, authorization: str | None) -> str | None:
    """The user name of a request, or None when it must be refused (401)."""
    if not settings.requires_auth:
        return ANONYMOUS
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    scheme = scheme.lower()
    if scheme == "bearer":
        if settings.token is not None and _same(value.strip(), settings.token):
            return "token"
        return None
    if scheme != "basic":
        return None
    try:
        user, sep, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    if not sep:
        return None
    if settings.basic_auth is not None:
        expected_user, expected_password = settings.basic_auth
        # Both compared, always: no early exit that tells a right user from a wrong one.
        user_ok = _same(user, expected_user)
        if _same(password, expected_password) and user_ok:
            return user
    if settings.token is not None and _same(password, settings.token):
        return f"{user or 'token'} (token)"
    return None


def csrf_token(settings: DashboardSettings, user: str) -> str:
    """The CSRF token of ``user``'s forms."""
    return hmac.new(settings.csrf_secret, user.encode(), hashlib.sha256).hexdigest()


def csrf_refusal(
    settings: DashboardSettings, user: str, form_token: str | None, headers: Mapping[str, str]
) -> str | None:
    """Why a state-changing request must be refused (None: it may go on)."""
    site = headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return f"the request came from another site (Sec-Fetch-Site: {site})"
    origin = headers.get("origin")
    # "null" too: a sandboxed frame or a blank page's form is not one of our pages.
    if origin is not None and urlsplit(origin).netloc != headers.get("host"):
        return "the request came from another origin"
    if not form_token or not _same(form_token, csrf_token(settings, user)):
        return "the form's CSRF token is missing or wrong: reload the page and try again"
    return None


def security_headers(nonce: str) -> dict[str, str]:
    """Headers of every page: only our own inline script and style run, no framing, nothing
    cached, no Referer sent to other sites."""
    return {
        "Content-Security-Policy": (
            f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
            "img-src 'self' data:; connect-src 'self'; form-action 'self'; "
            "frame-ancestors 'none'; base-uri 'none'"
        ),
        "X-Frame-Options": "DENY",
        "X-Content-Type-Options": "nosniff",
        # Not no-referrer: under it, browsers send "Origin: null" with our own forms, which
        # the CSRF check must refuse; same-origin still tells other sites nothing.
        "Referrer-Policy": "same-origin",
        "Cache-Control": "no-store",
    }

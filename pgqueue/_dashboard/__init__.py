"""The web dashboard: an ASGI app (Starlette, Jinja2; no front-end build) over the same library
functions as the CLI. ``pgqueue dashboard`` serves it with uvicorn; any ASGI application can
mount it (``app.mount("/pgqueue", pgqueue_dashboard(dsn=...))``).

Needs the ``[dashboard]`` extra; this module imports nothing of it until the app is built.

Modules: ``_config`` (settings and their checks), ``_security`` (authentication, CSRF, headers),
``_app`` (routes, database pool, rendering), ``_pages`` (the read-only views), ``_actions``
(retry, discard, replay, cancel, limit overrides), ``_chart`` (the SVG chart), ``templates/``.
"""

from __future__ import annotations

from typing import Any

from .._settings import DEFAULT_SCHEMA
from ._config import REFRESH_SECONDS, DashboardSettings

__all__ = ["DashboardSettings", "pgqueue_dashboard"]


def pgqueue_dashboard(
    dsn: str,
    *,
    schema: str = DEFAULT_SCHEMA,
    allow_actions: bool = False,
    token: str | None = None,
    basic_auth: tuple[str, str] | None = None,
    show_payloads: bool = False,
    refresh_seconds: float = REFRESH_SECONDS,
) -> Any:
    """The dashboard as an ASGI app (a Starlette application).

    Read-only unless ``allow_actions``; actions need ``token`` (sent as a bearer token, or as
    the password of HTTP basic auth) or ``basic_auth`` (user, password), which then guard
    every page. Payloads are shown only with ``show_payloads`` (they may hold personal data).
    ``refresh_seconds`` is the default live-refresh interval (0: off; each page can change
    it). Pass secrets in from your own settings: the library reads no environment.
    """
    settings = DashboardSettings(
        dsn=dsn,
        schema=schema,
        allow_actions=allow_actions,
        token=token,
        basic_auth=basic_auth,
        show_payloads=show_payloads,
        refresh_seconds=refresh_seconds,
    )
    from ._app import build_app  # Starlette and Jinja2 come with the [dashboard] extra

    return build_app(settings)

"""The Starlette application: routes, authentication on every request, CSRF and the
read-only switch on every action, and errors as pages."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from urllib.parse import parse_qs

import asyncpg
import click
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from .._errors import DatabaseUnavailableError, PgQueueError
from . import _actions, _pages
from ._config import DashboardSettings
from ._context import Dashboard, log
from ._security import REALM, authenticate, csrf_refusal

Page = Callable[[Dashboard, Request], Awaitable[Response]]
Form = dict[str, list[str]]
Action = Callable[[Dashboard, Request, Form], Awaitable[Response]]

MAX_FORM_BYTES = 1_000_000


def _refused(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return PlainTextResponse(message + "\n", status_code=status, headers=headers)


def _who(request: Request) -> str | None:
    return authenticate(request.scope["dashboard"].settings, request.headers.get("authorization"))


async def _guarded(
    dash: Dashboard, request: Request, call: Callable[[], Awaitable[Response]]
) -> Response:
    """Run a page or action; a user error becomes a page saying what to do, not a traceback."""
    try:
        return await call()
    except (PgQueueError, ValueError, click.BadParameter) as exc:
        message = exc.format_message() if isinstance(exc, click.BadParameter) else str(exc)
        if isinstance(exc, DatabaseUnavailableError):
            return dash.render(request, "error.html", status=503, message=message)
        return dash.render(request, "error.html", status=400, message=message)
    except asyncpg.InsufficientPrivilegeError as exc:
        return dash.render(
            request,
            "error.html",
            status=403,
            message=f"the database refused ({exc}): the dashboard's role lacks a grant; see "
            "'pgqueue roles' (pgqueue_ops reads, pgqueue_worker retries)",
        )
    except (OSError, asyncpg.CannotConnectNowError, asyncpg.ConnectionDoesNotExistError) as exc:
        return dash.render(
            request,
            "error.html",
            status=503,
            message=f"the database is unavailable ({type(exc).__name__}); the page will work "
            "again once it answers",
        )


def _page(fn: Page) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        dash: Dashboard = request.scope["dashboard"]
        user = _who(request)
        if user is None:
            return _refused(401, "authentication required", {"WWW-Authenticate": REALM})
        request.state.user = user
        return await _guarded(dash, request, lambda: fn(dash, request))

    return endpoint


def _action(fn: Action) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        dash: Dashboard = request.scope["dashboard"]
        user = _who(request)
        if user is None:
            return _refused(401, "authentication required", {"WWW-Authenticate": REALM})
        request.state.user = user
        client = request.client.host if request.client else "?"
        if not dash.settings.allow_actions:
            log.warning("refused an action from %s (%s): the dashboard is read-only", user, client)
            return _refused(
                403, "this dashboard is read-only: start it with --allow-actions to act on events"
            )
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_FORM_BYTES:  # read no further: a form is a few hundred bytes
                return _refused(413, "form too large")
        form = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
        given = next(iter(form.get("csrf", [])), None)
        reason = csrf_refusal(dash.settings, user, given, request.headers)
        if reason is not None:
            log.warning("refused an action from %s (%s): %s", user, client, reason)
            return _refused(403, f"refused: {reason}")
        return await _guarded(dash, request, lambda: fn(dash, request, form))

    return endpoint


class _Scoped:
    """Puts the dashboard instance into every request's scope (mounted apps share nothing)."""

    def __init__(self, app: Starlette, dash: Dashboard) -> None:
        self.app = app
        self.dashboard = dash

    async def aclose(self) -> None:
        """Close the database pool (when mounted in another app, call it at its shutdown)."""
        await self.dashboard.aclose()

    async def __call__(self, scope: dict[str, object], receive: object, send: object) -> None:
        scope["dashboard"] = self.dashboard
        await self.app(scope, receive, send)  # type: ignore[arg-type]


def build_app(settings: DashboardSettings) -> _Scoped:
    """The ASGI app for ``settings``."""
    dash = Dashboard(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await dash.aclose()

    routes = [
        Route("/", _page(_pages.overview), name="overview"),
        Route("/events", _page(_pages.events), name="events"),
        Route("/events/{event_id:int}", _page(_pages.event), name="event"),
        Route("/dead", _page(_pages.dead), name="dead"),
        Route("/schedules", _page(_pages.schedules), name="schedules"),
        Route("/limits", _page(_pages.limits), name="limits"),
        Route("/workers", _page(_pages.workers), name="workers"),
        Route("/replay", _page(_pages.replay_form), name="replay"),
        Route("/actions/dead", _action(_actions.dead), methods=["POST"]),
        Route("/actions/replay", _action(_actions.replay), methods=["POST"]),
        Route("/actions/cancel", _action(_actions.cancel), methods=["POST"]),
        Route("/actions/limit", _action(_actions.limit), methods=["POST"]),
        Route("/actions/pause", _action(_actions.pause), methods=["POST"]),
        Route("/actions/reschedule", _action(_actions.reschedule), methods=["POST"]),
    ]
    return _Scoped(Starlette(routes=routes, lifespan=lifespan), dash)

"""One dashboard instance's state: its settings, database pool, templates, and how a page is
rendered."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import secrets
from typing import Any

import asyncpg
from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse

from .._db import create_pool
from .._parse import format_age
from ._config import REFRESH_CHOICES, DashboardSettings
from ._security import csrf_token, security_headers

log = logging.getLogger("pgqueue.dashboard")


def _ago(value: dt.datetime | None, now: dt.datetime) -> str:
    if value is None:
        return "-"
    seconds = (now - value).total_seconds()
    return f"{format_age(seconds)} ago" if seconds >= 0 else f"in {format_age(-seconds)}"


def _utc(value: dt.datetime | None) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if value else "-"


class Dashboard:
    """Everything one app instance keeps between requests."""

    def __init__(self, settings: DashboardSettings) -> None:
        self.settings = settings
        self._pool: asyncpg.Pool | None = None
        self._pool_lock = asyncio.Lock()
        #: The first event id created in each minute of the chart (see CREATED_BOUNDS): past
        #: minutes do not change, so a refresh searches only for the new ones.
        self.created_ids: dict[dt.datetime, int] = {}
        self.templates = Environment(
            loader=PackageLoader("pgqueue._dashboard", "templates"),
            autoescape=select_autoescape(default=True, default_for_string=True),
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.templates.filters["age"] = format_age
        self.templates.filters["utc"] = _utc
        self.templates.globals["ago"] = _ago

    async def pool(self) -> asyncpg.Pool:
        """The database pool, opened on first use (a mounted app gets no startup event)."""
        async with self._pool_lock:
            if self._pool is None:
                settings = {"application_name": "pgqueue-dashboard"}
                if not self.settings.allow_actions:
                    # A read-only dashboard cannot write even through a bug of ours.
                    settings["default_transaction_read_only"] = "on"
                self._pool = await create_pool(
                    self.settings.dsn,
                    min_size=0,
                    max_size=4,
                    server_settings=settings,
                    command_timeout=30,
                )
            return self._pool

    async def aclose(self) -> None:
        """Close the pool (the app's shutdown does it; call it when mounted elsewhere)."""
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    def render(
        self, request: Request, template: str, *, status: int = 200, **context: Any
    ) -> HTMLResponse:
        """A page: the template with what every page needs, and the security headers."""
        nonce = secrets.token_urlsafe(16)
        user: str = request.state.user
        refresh = request.query_params.get("refresh")
        try:
            interval = float(refresh) if refresh is not None else self.settings.refresh_seconds
        except ValueError:
            interval = self.settings.refresh_seconds
        html = self.templates.get_template(template).render(
            base=request.scope.get("root_path", "").rstrip("/"),
            user=user,
            csrf=csrf_token(self.settings, user),
            allow_actions=self.settings.allow_actions,
            show_payloads=self.settings.show_payloads,
            refresh=interval,
            refresh_choices=REFRESH_CHOICES,
            nonce=nonce,
            schema=self.settings.schema,
            **context,
        )
        return HTMLResponse(html, status_code=status, headers=security_headers(nonce))

"""``pgqueue dashboard``: serve the web dashboard (pgqueue/_dashboard) with uvicorn."""

from __future__ import annotations

import ipaddress
import os

import click

from .._dashboard._config import MAX_REFRESH_SECONDS, REFRESH_SECONDS
from .._errors import ConfigurationError
from .._logs import configure
from .._settings import mask_dsn
from .common import dsn_option, log_options, schema_option

TOKEN_ENV = "PGQUEUE_DASHBOARD_TOKEN"
USER_ENV = "PGQUEUE_DASHBOARD_USER"
PASSWORD_ENV = "PGQUEUE_DASHBOARD_PASSWORD"
EXTRA_HINT = "pip install starlette jinja2 uvicorn (the [dashboard] extra)"


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def credentials() -> tuple[str | None, tuple[str, str] | None]:
    """The token and basic-auth pair from the environment (secrets never go on argv, where
    ``ps`` shows them to every user of the host)."""
    token = os.environ.get(TOKEN_ENV) or None
    user, password = os.environ.get(USER_ENV), os.environ.get(PASSWORD_ENV)
    if bool(user) != bool(password):
        raise ConfigurationError(f"set both {USER_ENV} and {PASSWORD_ENV}, or neither")
    return token, (user, password) if user and password else None


@click.command("dashboard")
@dsn_option()
@schema_option
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on. Loopback by default: put a TLS proxy in front before "
    "opening it wider.",
)
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@click.option(
    "--allow-actions",
    is_flag=True,
    help=f"Allow retry, discard, replay, cancel and limit overrides (needs ${TOKEN_ENV}, or "
    f"${USER_ENV} and ${PASSWORD_ENV}). Without it the dashboard only reads, on a read-only "
    "database session.",
)
@click.option(
    "--show-payloads",
    is_flag=True,
    help="Show event payloads on the event page (hidden by default: they may hold personal data).",
)
@click.option(
    "--refresh",
    type=click.FloatRange(0, MAX_REFRESH_SECONDS),
    default=REFRESH_SECONDS,
    show_default=True,
    help="Default live-refresh interval of the pages in seconds (0: off; each page can change it).",
)
@log_options
def dashboard_cmd(
    dsn: str | None,
    schema: str,
    host: str,
    port: int,
    allow_actions: bool,
    show_payloads: bool,
    refresh: float,
    log_level: str,
    log_format: str,
) -> None:
    """Serve the web dashboard: overview, events, dead events, schedules, limits, workers.

    Read-only unless --allow-actions. With $PGQUEUE_DASHBOARD_TOKEN (a bearer token, or the
    password of the browser's login prompt) or $PGQUEUE_DASHBOARD_USER and
    $PGQUEUE_DASHBOARD_PASSWORD set, every page asks for them; actions are logged with the
    user's name. To mount it in your own ASGI app, see pgqueue.admin.pgqueue_dashboard.
    """
    if not dsn:
        raise ConfigurationError(
            "no database given: pass --dsn postgresql://user@host/db or set PGQUEUE_DSN"
        )
    try:
        import uvicorn
    except ImportError:
        raise ConfigurationError(f"the dashboard needs its extra: {EXTRA_HINT}") from None
    from .._dashboard import pgqueue_dashboard

    token, basic_auth = credentials()
    app = pgqueue_dashboard(
        dsn,
        schema=schema,
        allow_actions=allow_actions,
        token=token,
        basic_auth=basic_auth,
        show_payloads=show_payloads,
        refresh_seconds=refresh,
    )
    configure(log_level, log_format)
    if not _loopback(host) and token is None and basic_auth is None:
        click.echo(
            f"warning: listening on {host} without authentication: anyone who reaches it "
            f"reads your queue; set {TOKEN_ENV} or {USER_ENV}/{PASSWORD_ENV}",
            err=True,
        )
    mode = "actions enabled" if allow_actions else "read-only"
    click.echo(
        f"pgqueue dashboard on http://{host}:{port}/ ({mode}, schema {schema}, {mask_dsn(dsn)})",
        err=True,
    )
    uvicorn.run(app, host=host, port=port, log_config=None, access_log=False)

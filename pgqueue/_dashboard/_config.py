"""The dashboard's settings, checked when the app is built."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from .._errors import ConfigurationError
from .._settings import validate_schema

#: Live-refresh intervals offered on every page (seconds; 0 = off).
REFRESH_CHOICES = (0.0, 2.0, 5.0, 10.0, 30.0)
#: The default live-refresh interval, and its bounds (seconds; 0 = off).
REFRESH_SECONDS = 5.0
MAX_REFRESH_SECONDS = 3600.0


@dataclass(frozen=True)
class DashboardSettings:
    """What :func:`pgqueue_dashboard` was given. ``csrf_secret`` signs the CSRF tokens of
    this app instance (random per instance unless given: give one to share tokens between
    processes behind one load balancer)."""

    dsn: str
    schema: str
    allow_actions: bool = False
    token: str | None = None
    basic_auth: tuple[str, str] | None = None
    show_payloads: bool = False
    refresh_seconds: float = REFRESH_SECONDS
    csrf_secret: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)

    def __post_init__(self) -> None:
        validate_schema(self.schema)
        if self.token is not None and len(self.token) < 16:
            raise ConfigurationError(
                "the dashboard token must be at least 16 characters; make one with: "
                "python -c 'import secrets; print(secrets.token_urlsafe(24))'"
            )
        if self.basic_auth is not None:
            user, password = self.basic_auth
            if not user or ":" in user or len(password) < 8:
                raise ConfigurationError(
                    "dashboard basic auth needs a user name without ':' and a password of at "
                    "least 8 characters"
                )
        if self.allow_actions and not self.requires_auth:
            raise ConfigurationError(
                "dashboard actions need authentication: set PGQUEUE_DASHBOARD_TOKEN, or "
                "PGQUEUE_DASHBOARD_USER and PGQUEUE_DASHBOARD_PASSWORD (or pass token= / "
                "basic_auth=), or leave the dashboard read-only"
            )
        if not 0 <= self.refresh_seconds <= MAX_REFRESH_SECONDS:
            raise ConfigurationError(
                f"refresh interval must be between 0 (off) and {MAX_REFRESH_SECONDS:g} s, "
                f"not {self.refresh_seconds}"
            )

    @property
    def requires_auth(self) -> bool:
        """Whether every request must authenticate."""
        return self.token is not None or self.basic_auth is not None

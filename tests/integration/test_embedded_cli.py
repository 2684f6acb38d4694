"""Where the CLI's database comes from: a DSN, or a private server only when asked for.

``pgqueue worker`` without a DSN refuses (a production worker whose variable is missing must not
serve an empty throwaway database); ``--embedded`` starts one in ``--data-dir`` /
``PGQUEUE_DATA_DIR`` / the default, which works for root from any directory, 0700 ones too.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from pgqueue._serviceuser import ROOT_BASE, default_data_dir
from tests.helpers import run_cli
from tests.integration.embedded_support import base_fixture, kill_servers  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = "tests.integration.sample_handlers:registry"
NO_DSN = {"PGQUEUE_DSN": "", "DATABASE_URL": "", "PGQUEUE_DATA_DIR": ""}


async def cli(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    # PYTHONPATH: the tests.* handler modules import from any working directory.
    extra = {**NO_DSN, "PYTHONPATH": str(ROOT), **env}
    return await asyncio.to_thread(run_cli, *args, cwd=cwd, env=extra, timeout=120)


def _one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


async def test_worker_without_a_dsn_refuses_naming_the_variables(base: Path) -> None:
    result = await cli("worker", "--handlers", SAMPLE, "--burst", cwd=base)
    line = _one_error_line(result)
    for name in ("--dsn", "PGQUEUE_DSN", "DATABASE_URL", "--embedded"):
        assert name in line, line
    assert not (base / ".pgqueue").exists()  # no server was started, nothing was written


async def test_worker_refuses_embedded_together_with_a_dsn(base: Path) -> None:
    result = await cli(
        "worker", "--embedded", "--handlers", SAMPLE, "--burst", cwd=base,
        PGQUEUE_DSN="postgresql://postgres@127.0.0.1:5432/postgres",
    )  # fmt: skip
    assert "pass only one" in _one_error_line(result)


async def test_worker_embedded_serves_a_private_server_in_the_data_dir_option(
    base: Path,
) -> None:
    data_dir = base / "chosen"
    result = await cli(
        "worker", "--embedded", "--data-dir", str(data_dir), "--handlers", SAMPLE, "--burst",
        cwd=base,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "started PostgreSQL" in result.stderr and " in chosen on 127.0.0.1:" in result.stderr
    assert "burst done: 0 done" in result.stdout  # migrated, served, stopped
    assert (data_dir / "PG_VERSION").exists()
    assert not (data_dir / "postmaster.pid").exists()
    assert not (base / ".pgqueue").exists()


async def test_the_data_dir_comes_from_pgqueue_data_dir(base: Path) -> None:
    data_dir = base / "from-env"
    result = await cli(
        "worker", "--embedded", "--handlers", SAMPLE, "--burst", cwd=base,
        PGQUEUE_DATA_DIR=str(data_dir),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (data_dir / "PG_VERSION").exists()
    assert not (data_dir / "postmaster.pid").exists()


def test_the_default_data_dir_is_local_where_the_server_user_can_reach_it(base: Path) -> None:
    assert default_data_dir(base) == base / ".pgqueue" / "pg"


@pytest.mark.skipif(os.geteuid() != 0, reason="only root runs the server as another user")
async def test_root_in_a_0700_directory_gets_a_reachable_data_dir(base: Path) -> None:
    """Like a clone in /root: the server's user cannot enter it, so the data goes elsewhere."""
    private = base / "home"
    private.mkdir(mode=0o700)
    chosen = default_data_dir(private)
    assert chosen.parent.parent == ROOT_BASE and chosen.parent.name.startswith("home-")
    assert default_data_dir(private) == chosen  # the same directory on every run
    try:
        result = await cli("worker", "--embedded", "--handlers", SAMPLE, "--burst", cwd=private)
        assert result.returncode == 0, result.stderr
        assert str(chosen) in result.stderr, result.stderr
        assert (chosen / "PG_VERSION").exists()
        assert not (private / ".pgqueue").exists()
        assert private.stat().st_mode & 0o777 == 0o700  # we never widen permissions
    finally:
        kill_servers(chosen.parent)
        shutil.rmtree(chosen.parent, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root runs the server as another user")
async def test_an_explicit_unreachable_data_dir_says_how_to_choose_another(base: Path) -> None:
    private = base / "home"
    private.mkdir(mode=0o700)
    result = await cli(
        "worker", "--embedded", "--data-dir", str(private / "pg"), "--handlers", SAMPLE,
        "--burst", cwd=base,
    )  # fmt: skip
    line = _one_error_line(result)
    assert f"{private} is not searchable by user 'pgqueue'" in line
    assert "--data-dir" in line and "PGQUEUE_DATA_DIR" in line


async def test_without_handlers_outside_the_checkout_says_how_to_pass_a_registry(
    base: Path, db_dsn: str
) -> None:
    """An installed library has no example package to default to."""
    result = await cli("worker", "--dsn", db_dsn, "--burst", cwd=base, PYTHONPATH="")
    line = _one_error_line(result)
    assert "no handlers given: pass --handlers MODULE:ATTRIBUTE" in line
    assert "PGQUEUE_HANDLERS" in line and "handlers:registry" not in line


async def test_in_the_checkout_the_example_handlers_are_the_default(db_dsn: str) -> None:
    result = await cli("worker", "--dsn", db_dsn, "--burst", cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "types=order.placed" in result.stderr  # handlers:registry, the checkout example

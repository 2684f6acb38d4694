"""bin/setup and bin/demo on this checkout's real venv: once it is set up, neither runs pip, so
a second bin/demo works with no package index (offline) and starts at once.

pip is made unusable for the runs under test (no index, an index address where nothing
listens, no local wheel folder): a pip run would fail them, and bin/setup announces any install
before it starts one.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parents[2]
LOG = ROOT / ".venv" / "install.log"
OFFLINE = {
    "PIP_NO_INDEX": "1",
    "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
    "PIP_FIND_LINKS": "",
    "PIP_CONFIG_FILE": os.devnull,
}


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(args), cwd=ROOT, env={**os.environ, **(env or {})}, capture_output=True,
        text=True, timeout=300, stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip


def _shape(line: str) -> str:
    """A demo line with its timings and timestamps blanked."""
    return re.sub(r"\d+(\.\d+)? (s|ms)\b|\(\d+x faster\)|processed_at=.*", "#", line)


def _ready() -> float:
    """Set the venv up as bin/test does (a no-op when it is); the install log's mtime."""
    result = _run("bin/setup", "dev")
    assert result.returncode == 0, result.stderr
    return LOG.stat().st_mtime_ns if LOG.exists() else 0


async def test_setup_of_a_ready_venv_runs_no_pip() -> None:
    before = await asyncio.to_thread(_ready)
    for extra in ("dev", "embedded"):
        result = await asyncio.to_thread(_run, "bin/setup", extra, env=OFFLINE)
        assert (result.returncode, result.stdout, result.stderr) == (0, "", ""), result
    assert (LOG.stat().st_mtime_ns if LOG.exists() else 0) == before


async def test_a_second_demo_runs_offline_without_pip(db_dsn: str) -> None:
    before = await asyncio.to_thread(_ready)
    result = await asyncio.to_thread(_run, "bin/demo", "--dsn", db_dsn, env=OFFLINE)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "bin/setup" not in result.stderr
    assert (LOG.stat().st_mtime_ns if LOG.exists() else 0) == before
    # The README's sample is a real run: the same lines but for timings and times.
    sample = (ROOT / "README.md").read_text().split("## What the demo shows", 1)[1]
    sample = sample.split("```\n", 2)[1].splitlines()[1:]  # without the stderr line
    assert [_shape(line) for line in result.stdout.splitlines()] == [_shape(s) for s in sample]
    conn = await asyncpg.connect(db_dsn)
    try:  # the demo's event really ran, in the database it was given
        assert await conn.fetchval("SELECT count(*) FROM pgqueue.outbox WHERE state = 'done'") == 1
    finally:
        await conn.close()

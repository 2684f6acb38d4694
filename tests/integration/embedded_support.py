"""What the tests of private servers share: a scratch directory that no server outlives.

Import ``base_fixture`` into a test module (``from tests.integration.embedded_support import
base_fixture  # noqa: F401``) to make the ``base`` fixture available.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgqueue import _embedded


def kill_servers(path: Path) -> None:
    """SIGKILL every postmaster whose data directory lies below ``path``."""
    for pidfile in path.glob("**/postmaster.pid"):
        pid = int(pidfile.read_text().splitlines()[0])
        if _embedded._alive(pid):
            os.kill(pid, 9)


@pytest.fixture(name="base")
def base_fixture() -> Iterator[Path]:
    """A scratch directory the server's user can reach (pytest's tmp_path is 0700 root)."""
    path = Path(tempfile.mkdtemp(prefix="pgqueue-embedded-test-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        kill_servers(path)  # belt and braces: a failed test must not leave a server behind
        shutil.rmtree(path, ignore_errors=True)

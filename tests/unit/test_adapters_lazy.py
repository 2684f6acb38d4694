"""The core imports and works without the optional libraries of the adapters."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import sys
import pgqueue

loaded = [m for m in ("psycopg", "psycopg2", "sqlalchemy", "django") if m in sys.modules]
assert not loaded, loaded
for call in (lambda: pgqueue.enqueue(object(), "t", {}), lambda: pgqueue.once_sync(3, None)):
    try:
        call()
    except TypeError as exc:
        print(exc)
loaded = [m for m in ("psycopg", "psycopg2", "sqlalchemy", "django") if m in sys.modules]
assert not loaded, loaded
"""


def test_importing_and_rejecting_loads_no_optional_library() -> None:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    first, second = result.stdout.splitlines()
    assert first.startswith("pgqueue.enqueue() takes an asyncpg Connection or Pool, a psycopg")
    assert first.endswith("not builtins.object")
    assert second.startswith("pgqueue.once_sync() takes a psycopg Connection, a SQLAlchemy")

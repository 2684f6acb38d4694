"""Pooled mode (PgBouncer in transaction mode) at the edge: settings, pool options, --processes.

The real thing runs in tests/integration/test_pgbouncer.py.
"""

from __future__ import annotations

import pytest

from pgqueue import WorkerSettings
from pgqueue._cli.worker import _child_args
from pgqueue._db import CONTROL_SETTINGS, pool_options
from pgqueue._settings import check_listen
from pgqueue.errors import ConfigurationError


def test_pooled_listen_needs_a_listen_dsn() -> None:
    with pytest.raises(ConfigurationError, match=r"--listen-dsn .* or --poll-only"):
        check_listen(WorkerSettings(pooled=True))


@pytest.mark.parametrize(
    "settings",
    [
        WorkerSettings(pooled=True, listen_dsn="postgresql://direct/db"),
        WorkerSettings(pooled=True, listen=False),
        WorkerSettings(pooled=True, burst=True),  # a burst run never listens
        WorkerSettings(),
    ],
)
def test_pooled_listen_is_accepted_with_a_direct_connection_or_without_listen(
    settings: WorkerSettings,
) -> None:
    check_listen(settings)


def test_pooled_pools_keep_nothing_in_the_session() -> None:
    assert pool_options(pooled=True, control=True) == {"statement_cache_size": 0}
    assert pool_options(pooled=True, control=False) == {"statement_cache_size": 0}


def test_direct_pools_are_unchanged() -> None:
    """The default path keeps its statement cache and startup settings (the drain depends
    on both)."""
    assert pool_options(pooled=False, control=True) == {"server_settings": CONTROL_SETTINGS}
    assert CONTROL_SETTINGS == {
        "plan_cache_mode": "force_custom_plan",
        "synchronous_commit": "off",
    }
    assert pool_options(pooled=False, control=False) == {}


def test_children_of_processes_get_no_dsn_on_their_command_line() -> None:
    argv = [
        "worker", "--dsn", "postgresql://u:secret@pooler/db", "--pooled",
        "--listen-dsn", "postgresql://u:secret@direct/db", "--processes=2",
        "--listen-dsn=postgresql://u:secret@direct/db", "--poll-interval", "5",
    ]  # fmt: skip
    assert _child_args(argv) == ["worker", "--pooled", "--poll-interval", "5"]


def test_children_of_an_embedded_worker_serve_the_parents_server() -> None:
    """The parent starts the private server; children get its DSN, never --embedded."""
    argv = ["worker", "--embedded", "--data-dir", "/tmp/x", "--processes", "2", "--burst"]
    assert _child_args(argv) == ["worker", "--burst"]
    assert _child_args(["worker", "--data-dir=/tmp/x", "--embedded"]) == ["worker"]

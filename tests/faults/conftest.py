"""Fixtures of the fault suite: real worker processes, the fault tables, a throwaway cluster.

- ``fconn`` (asyncpg.Connection to ``db_dsn``, with ``fault_log`` / ``fault_effects`` created).
- ``workers``: ``workers.start(dsn, **options) -> WorkerProcess`` starts ``pgqueue worker``
  through the CLI with short leases; every process started is SIGKILLed (after a SIGCONT, in
  case a test froze it) and reaped in the finalizer, pass or fail.
- ``cluster``: a private PostgreSQL (``pgqueue._embedded.EmbeddedPostgres``) in a temporary
  directory, run as an unprivileged user under root, from the binaries of the version under
  test with ``--pg`` (``pg_bindir``); ``cluster.restart()`` is ``pg_ctl restart -m fast``.
  Stopped (then SIGKILLed if need be) and deleted at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from pgqueue._embedded import EmbeddedPostgres, _alive
from tests.faults.fault_handlers import create_tables

ROOT = Path(__file__).resolve().parents[2]
CLI = "from pgqueue._cli.main import main; main()"
HANDLERS = "tests.faults.fault_handlers:registry"

# Short enough that a lost lease is rescued within ~1.5 s: the suite stays fast on 2 cores.
DEFAULTS: dict[str, Any] = {
    "lease": 1,
    "heartbeat": 0.3,
    "rescue_interval": 0.2,
    "poll_interval": 0.2,
    "shutdown_timeout": 5,
    "concurrency": 20,
    "log_level": "info",
}


class WorkerProcess:
    """One ``pgqueue worker`` child process; its stderr goes to a file the test can read."""

    def __init__(self, popen: subprocess.Popen[bytes], log: Path, args: list[str]) -> None:
        self.popen = popen
        self.log = log
        self.args = args

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)

    async def wait_started(self, timeout: float = 20.0) -> None:
        """Wait for the worker's "started" log line (it has checked the schema)."""
        from tests.helpers import wait_for

        async def started() -> bool:
            if not self.alive:
                raise AssertionError(f"worker {self.pid} exited early:\n{self.stderr()}")
            return " started: " in self.stderr()

        await wait_for(started, timeout=timeout, message=f"worker {self.pid} did not start")

    async def wait_exit(self, timeout: float = 20.0) -> int:
        """Wait for the process to end; return its exit code."""
        from tests.helpers import wait_for

        async def ended() -> bool:
            return not self.alive

        await wait_for(ended, timeout=timeout, interval=0.05, message=f"{self.pid} still runs")
        code = self.popen.returncode
        assert code is not None
        return code


class Workers:
    """Starts worker processes and guarantees none outlives the test."""

    def __init__(self, logdir: Path, handlers: str = HANDLERS) -> None:
        self.logdir = logdir
        self.handlers = handlers
        self.started: list[WorkerProcess] = []

    def start(self, dsn: str, **options: Any) -> WorkerProcess:
        """Start ``pgqueue worker --dsn DSN`` with DEFAULTS overridden by ``options``.

        Option names are the CLI's with ``_`` for ``-``; True is a bare flag, None drops it, a
        list repeats the option.
        """
        args = ["worker", "--dsn", dsn, "--handlers", self.handlers]
        for name, value in {**DEFAULTS, **options}.items():
            flag = "--" + name.replace("_", "-")
            if value is True:
                args.append(flag)
            elif isinstance(value, list):
                for item in value:
                    args += [flag, str(item)]
            elif value is not None and value is not False:
                args += [flag, str(value)]
        log = self.logdir / f"worker-{len(self.started) + 1}.log"
        with log.open("wb") as err:
            popen = subprocess.Popen(
                [sys.executable, "-c", CLI, *args],
                cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"},
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=subprocess.STDOUT,
            )
        process = WorkerProcess(popen, log, args)
        self.started.append(process)
        return process

    async def start_ready(self, dsn: str, n: int, **options: Any) -> list[WorkerProcess]:
        """Start ``n`` workers (as ``start``) and wait until every one is up."""
        processes = [self.start(dsn, **options) for _ in range(n)]
        for process in processes:
            await process.wait_started()
        return processes

    @classmethod
    @contextlib.contextmanager
    def killed_after(cls, logdir: Path, handlers: str) -> Iterator[Workers]:
        """The body of a ``workers`` fixture: every process started is killed at the end."""
        started = cls(logdir, handlers)
        try:
            yield started
        finally:
            started.kill_all()

    def kill_all(self) -> None:
        for process in self.started:
            if process.alive:
                process.signal(signal.SIGCONT)  # a frozen process must wake to die
                process.signal(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.popen.wait(timeout=10)

    def logs(self) -> str:
        return "\n".join(f"--- {p.log.name} (pid {p.pid})\n{p.stderr()}" for p in self.started)


@pytest.fixture
def workers(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Workers]:
    """Factory of worker processes; all are killed and reaped after the test."""
    started = Workers(tmp_path)
    try:
        yield started
    finally:
        started.kill_all()
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            print(started.logs()[-20000:])


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Expose each phase's report on the item, so fixtures can print logs on failure."""
    report = yield
    setattr(item, "rep_" + report.when, report)
    return report


@pytest.fixture
async def fconn(conn: asyncpg.Connection) -> asyncpg.Connection:
    """``conn`` with the fault tables created in the test database."""
    await create_tables(conn)
    return conn


class Cluster:
    """A private server the test may restart; ``dsn`` points at its ``postgres`` database."""

    def __init__(self, base: Path, bindir: Path | None = None) -> None:
        self.server = EmbeddedPostgres(base / "pg", bindir=bindir)
        self.dsn = self.server.start()

    def restart(self, mode: str = "fast") -> None:
        """``pg_ctl restart -m MODE`` as the server's user (same port and options)."""
        data = self.server.data_dir
        owner = data.stat()
        bindir = self.server._bindir
        assert bindir is not None
        run_as: dict[str, Any] = {}
        if os.geteuid() == 0:
            run_as = {"user": owner.st_uid, "group": owner.st_gid, "extra_groups": []}
        result = subprocess.run(
            [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(data / "restart.log"),
             "-m", mode, "-w", "-t", "60", "restart"],
            cwd="/", stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=90,
            check=False, **run_as,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.server.data_dir / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop(self) -> None:
        try:
            self.server.stop()
        finally:
            pid = self.postmaster_pid()
            if pid is not None and _alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def cluster(pg_bindir: Path | None) -> Iterator[Cluster]:
    """A throwaway PostgreSQL cluster owned by this test (initdb'd in a temporary directory),
    of the version under test (``--pg``), else of the machine's binaries."""
    base = Path(tempfile.mkdtemp(prefix="pgqueue-faults-pg-"))
    base.chmod(0o755)  # the server's unprivileged user must reach the data directory
    server: Cluster | None = None
    try:
        server = Cluster(base, pg_bindir)
        yield server
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
async def cluster_conn(cluster: Cluster) -> AsyncIterator[asyncpg.Connection]:
    """A connection to the private cluster, migrated, with the fault tables."""
    connection = await asyncpg.connect(cluster.dsn)
    try:
        await pgqueue_migrate(connection)
        await create_tables(connection)
        yield connection
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(connection.close(), 5)


async def pgqueue_migrate(connection: asyncpg.Connection) -> None:
    from pgqueue import migrate

    await migrate(connection)

"""Databases for one benchmark run: a migrated template, and a fresh clone per measurement.

Every database is named ``pgqueue_bench_<pid>_*`` and dropped when the run ends, so two
benchmark runs on one server never touch each other's data.
"""

from __future__ import annotations

import contextlib
import os
import platform
import sys
from collections.abc import AsyncIterator, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

import pgqueue

from . import minimal

DEFAULT_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
SETTINGS = (
    "shared_buffers",
    "synchronous_commit",
    "fsync",
    "full_page_writes",
    "wal_level",
    "max_wal_size",
    "checkpoint_timeout",
    "work_mem",
    "max_connections",
)


@contextlib.contextmanager
def private_server(version: str) -> Iterator[str]:
    """A private PostgreSQL ``version`` in a temporary directory for this run; its DSN.

    initdb's defaults (shared_buffers 128MB, fsync on), like the machine's Debian cluster:
    figures compare across majors, not against a tuned server.
    """
    from tests import pgversions

    with pgversions.private_server(version, prefix="pgqueue-bench-pg-") as server:
        print(f"bench: {server.description}", file=sys.stderr)
        assert server.dsn is not None
        yield server.dsn


def dsn_for(admin_dsn: str, dbname: str) -> str:
    """``admin_dsn`` pointed at database ``dbname``."""
    parts = urlsplit(admin_dsn)
    return urlunsplit((parts.scheme, parts.netloc, "/" + dbname, parts.query, parts.fragment))


class Databases:
    """Creates the template once, then hands out fresh clones of it."""

    def __init__(self, admin_dsn: str) -> None:
        self.admin_dsn = admin_dsn
        self.prefix = f"pgqueue_bench_{os.getpid()}"
        self.template = f"{self.prefix}_tpl"
        self._count = 0

    async def _admin(self, sql: str) -> None:
        conn = await asyncpg.connect(self.admin_dsn)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    async def setup(self) -> None:
        """Create the template: pgqueue migrated, and PgQueuer installed when available."""
        await self._admin(f'DROP DATABASE IF EXISTS "{self.template}"')
        await self._admin(f'CREATE DATABASE "{self.template}"')
        conn = await asyncpg.connect(dsn_for(self.admin_dsn, self.template))
        try:
            await pgqueue.migrate(conn)
            await minimal.install(conn)
            with contextlib.suppress(ImportError):
                from pgqueuer.db import AsyncpgDriver
                from pgqueuer.queries import Queries

                await Queries(AsyncpgDriver(conn)).install()
        finally:
            await conn.close()

    async def teardown(self) -> None:
        """Drop the template."""
        await self._admin(f'DROP DATABASE IF EXISTS "{self.template}" WITH (FORCE)')

    @property
    def made(self) -> int:
        """How many fresh databases were handed out so far."""
        return self._count

    @contextlib.asynccontextmanager
    async def fresh(self) -> AsyncIterator[str]:
        """A new database cloned from the template (dropped on exit); yields its DSN."""
        self._count += 1
        name = f"{self.prefix}_{self._count}"
        await self._admin(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"')
        try:
            yield dsn_for(self.admin_dsn, name)
        finally:
            await self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def checkpoint(conn: asyncpg.Connection) -> None:
    """Flush dirty pages before a measured phase, so a checkpoint does not land inside it."""
    with contextlib.suppress(asyncpg.InsufficientPrivilegeError):
        await conn.execute("CHECKPOINT")


def _meminfo_kb() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


async def machine_info(admin_dsn: str) -> dict[str, Any]:
    """Cores, memory, versions and the PostgreSQL settings that shape the figures."""
    conn = await asyncpg.connect(admin_dsn)
    try:
        server = await conn.fetchval("SELECT version()")
        settings = {name: await conn.fetchval(f"SHOW {name}") for name in SETTINGS}
    finally:
        await conn.close()
    mem = _meminfo_kb()
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": _cpu_model(),
        "memory_gib": round(mem / 1024 / 1024, 1) if mem else None,
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "postgresql": server,
        "settings": settings,
        "versions": {
            "pgqueue": _version("pgqueue-outbox"),
            "pgqueuer": _version("pgqueuer"),
            "asyncpg": _version("asyncpg"),
        },
    }

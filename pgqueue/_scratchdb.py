"""Throwaway databases for tests: a migrated template, cloned per test, dropped at the end.

Used by the ``pgqueue.testing`` fixtures. Cloning (``CREATE DATABASE ... TEMPLATE``) copies a
migrated database in tens of milliseconds, where migrating each one would take longer, and
gives every test its own outbox, sequences and effects ledger: tests that commit, LISTEN or
run workers stay isolated and can run in parallel.

Dropping is the slow part: on PostgreSQL 15 every ``DROP DATABASE`` waits for a checkpoint
(0.9 s each on the 2-core test machine under load, 1-2 s per test in a suite), while
concurrent drops share one checkpoint (two at once: 0.5 s in total). So a finished test's
database is dropped in the background, a few at a time, while the next tests run; the
session's end waits for every drop and sweeps whatever is left.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from ._migrate import migrate
from ._queries import scratch_databases
from ._settings import quote_ident

T = TypeVar("T")


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on a private event loop in a thread.

    Sync fixtures use it so they never touch (or need) the loop pytest-asyncio gives a test.
    """
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def with_database(dsn: str, name: str) -> str:
    """``dsn`` pointed at database ``name`` (host, user, password and options kept)."""
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


class ScratchDatabases:
    """Creates ``<prefix>_tpl`` and its clones ``<prefix>_<n>``; drops them all at the end.

    ``prefix`` must be unique per process (the fixtures put the xdist worker, the pid and a
    random token in it), so parallel sessions never collide.
    """

    def __init__(self, admin_dsn: str, prefix: str) -> None:
        self.admin_dsn = admin_dsn
        self.prefix = prefix
        self.template = f"{prefix}_tpl"
        self._numbers = itertools.count(1)
        self._dropper = ThreadPoolExecutor(4, thread_name_prefix="pgqueue-drop")
        self._drops: list[concurrent.futures.Future[None]] = []

    async def _admin(self, statement: str) -> None:
        conn = await asyncpg.connect(self.admin_dsn, timeout=10)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    async def create_template(
        self, schema: str, setup: Callable[[asyncpg.Connection], Awaitable[None]] | None
    ) -> None:
        """Create and migrate the template, then run ``setup`` on it."""
        await self._admin(f"CREATE DATABASE {quote_ident(self.template)}")
        conn = await asyncpg.connect(with_database(self.admin_dsn, self.template), timeout=10)
        try:
            await migrate(conn, schema)
            if setup is not None:
                await setup(conn)
        finally:
            await conn.close()

    async def clone(self, *, migrated: bool = True) -> tuple[str, str]:
        """A fresh copy of the template (``migrated=False``: an empty database, from
        template0): (name, DSN)."""
        name = f"{self.prefix}_{next(self._numbers)}"
        source = quote_ident(self.template) if migrated else "template0"
        await self._admin(f"CREATE DATABASE {quote_ident(name)} TEMPLATE {source}")
        return name, with_database(self.admin_dsn, name)

    async def drop(self, name: str) -> None:
        """Drop one database, closing its sessions (a test may leave a connection open)."""
        await self._admin(f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE)")

    def drop_later(self, name: str) -> None:
        """Drop one database in the background (see the module notes); :meth:`close` waits."""
        self._drops.append(self._dropper.submit(asyncio.run, self.drop(name)))

    def close(self) -> None:
        """Wait for the background drops, then drop the template and anything left."""
        concurrent.futures.wait(self._drops)  # a failed drop is swept up below
        self._dropper.shutdown()
        run_sync(self._drop_all())

    async def _drop_all(self) -> None:
        conn = await asyncpg.connect(self.admin_dsn, timeout=10)
        try:
            for name in await scratch_databases(conn, self.prefix + "_"):
                await conn.execute(f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE)")
        finally:
            await conn.close()

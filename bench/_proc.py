"""Running the worker and producer scripts as separate OS processes, and waiting on the DB."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg

ROOT = Path(__file__).resolve().parent.parent


class Child:
    """A ``python -m bench.<module>`` subprocess that writes its result as JSON to a file."""

    def __init__(self, module: str, *args: str) -> None:
        fd, name = tempfile.mkstemp(prefix="pgqueue_bench_", suffix=".json")
        os.close(fd)
        self.out = Path(name)
        self.argv = [sys.executable, "-m", f"bench.{module}", *args, "--out", name]
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> Child:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = await asyncio.create_subprocess_exec(*self.argv, cwd=ROOT, env=env)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def wait(self, timeout: float) -> dict[str, Any]:
        """Wait for the process to exit by itself; return its JSON result."""
        assert self.proc is not None
        try:
            rc = await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError as exc:
            self.proc.kill()
            await self.proc.wait()
            what = " ".join(self.argv[2:4])
            raise RuntimeError(f"{what} did not finish in {timeout:.0f}s") from exc
        if rc != 0:
            raise RuntimeError(f"{' '.join(self.argv[2:4])} exited with {rc}")
        try:
            result: dict[str, Any] = json.loads(self.out.read_text())
        finally:
            self.out.unlink(missing_ok=True)
        return result

    async def stop(self, timeout: float = 30.0) -> dict[str, Any]:
        """SIGTERM (graceful stop), then wait for the result."""
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        return await self.wait(timeout)

    def kill(self) -> None:
        """Last resort when a scenario fails half-way."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
        self.out.unlink(missing_ok=True)


async def wait_until(
    check: Callable[[], Awaitable[bool]], timeout: float, what: str, interval: float = 0.05
) -> None:
    """Poll ``check`` until it holds; raise after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(interval)


async def scalar(dsn: str, sql: str, *args: Any) -> Any:
    """One value from a short-lived connection."""
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()

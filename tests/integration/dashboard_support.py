"""A real dashboard server (``pgqueue dashboard`` in a child process) and a real browser
(Debian's chromium driven by Playwright) for the dashboard tests. Both are started and
stopped by each test: nothing outlives it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import wait_for

CHROMIUM = "/usr/bin/chromium"
# What these machines need: no sandbox as root, and no background traffic to Google's hosts
# (the network is closed; without these flags chromium retries its connections).
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TOKEN = "test-token-0123456789abcdef"
_CLI = "from pgqueue._cli.main import main; main()"
ROOT = Path(__file__).resolve().parents[2]


def needs_chromium() -> None:
    """Skip, saying why, where Debian's chromium is not installed (.ci/run installs it)."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no {CHROMIUM}: apt-get install chromium (.ci/run does)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=1).close()
    except urllib.error.HTTPError:
        return True  # 401 when auth is on: the server is up
    except OSError:
        return False
    return True


@contextlib.asynccontextmanager
async def dashboard_server(
    dsn: str, *flags: str, log: Path, env: Mapping[str, str] | None = None
) -> AsyncIterator[str]:
    """Run ``pgqueue dashboard`` on a free port, its output going to ``log``; yield its base
    URL; stop it."""
    port = free_port()
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _CLI,
            "dashboard",
            "--dsn",
            dsn,
            "--port",
            str(port),
            *flags,
            env={**os.environ, **(env or {})},
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:

        async def up() -> bool:
            if process.returncode is not None:
                output = await asyncio.to_thread(log.read_text)
                raise AssertionError(f"the dashboard exited early: {output}")
            return await asyncio.to_thread(_answers, url + "/")

        await wait_for(up, timeout=20, interval=0.1, message="the dashboard never answered")
        yield url
    finally:
        if process.returncode is None:
            process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            process.kill()
            await asyncio.wait_for(process.wait(), 10)


@contextlib.asynccontextmanager
async def browser_page(**context: Any) -> AsyncIterator[Any]:
    """A fresh headless chromium and one page (context options: http_credentials, ...)."""
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            ctx = await browser.new_context(viewport={"width": 1100, "height": 720}, **context)
            page = await ctx.new_page()
            page.set_default_timeout(15_000)
            yield page
        finally:
            await browser.close()


def screenshot_dir(tmp_path: Path) -> Path:
    """Where screenshots go: the test's tmp_path, or $PGQUEUE_SCREENSHOTS (to refresh the
    README's pictures: PGQUEUE_SCREENSHOTS=docs/images pytest -k screenshots)."""
    chosen = os.environ.get("PGQUEUE_SCREENSHOTS")
    folder = Path(chosen) if chosen else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def has_chromium() -> bool:
    """Whether the browser tests can run here."""
    return shutil.which(CHROMIUM) is not None

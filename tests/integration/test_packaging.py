"""The distribution: sdist and wheel build, and the CLI runs from the wheel installed (not
editable) in a fresh virtualenv, outside the checkout, against a real database.

The wheel goes in with ``--no-deps`` and the fresh venv borrows the dependencies of the venv
running the tests through a .pth file placed after its own site-packages: resolving them from
the package index took 46-54 s per run here. ``pip check`` in the fresh venv still proves the
wheel's declared requirements are met by what it finds.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

from pgqueue._migrate import latest_version
from pgqueue._settings import DISTRIBUTION

ROOT = Path(__file__).resolve().parents[2]
NO_DSN = {"PGQUEUE_DSN": "", "DATABASE_URL": "", "PGQUEUE_HANDLERS": "", "PYTHONPATH": ""}


def _run(*args: str | Path, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], cwd=cwd, env={**os.environ, **NO_DSN}, capture_output=True,
        text=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip


def _build_and_install(tmp: Path) -> tuple[Path, Path, Path]:
    dist = tmp / "dist"
    # python -m build: the sdist first, then the wheel built from the unpacked sdist, so a file
    # missing from the sdist fails here. --no-isolation: setuptools and wheel come from dev.
    built = _run(sys.executable, "-m", "build", "--no-isolation", "--outdir", dist, ROOT, cwd=tmp)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    (wheel,) = dist.glob("*.whl")
    (sdist,) = dist.glob("*.tar.gz")
    venv = tmp / "venv"
    made = _run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp)
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    own_site = Path(
        _run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))", cwd=tmp)
        .stdout.strip()
    )  # fmt: skip
    installed = _run(
        sys.executable, "-m", "pip", "--python", python, "install", "--no-deps",
        "--no-index", "--disable-pip-version-check", wheel, cwd=tmp,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stdout + installed.stderr
    # "zz": read after the wheel's own files, so `import pgqueue` finds the installed wheel.
    (own_site / "zz_borrowed_dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    return wheel, sdist, venv


async def test_the_wheel_installs_and_its_cli_runs_outside_the_checkout(
    tmp_path: Path, database_factory: object
) -> None:
    wheel, sdist, venv = await asyncio.to_thread(_build_and_install, tmp_path)
    assert wheel.name.startswith(DISTRIBUTION.replace("-", "_") + "-")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
        assert f"Name: {DISTRIBUTION}\n" in archive.read(metadata).decode()
    assert f"pgqueue/sql/{latest_version():04d}_" in "\n".join(names)  # migrations ship
    assert not any(n.startswith(("handlers/", "tests/")) for n in names)
    # Every module, template and the PEP 561 marker of the source tree ship (the package list
    # in pyproject.toml is explicit: a new subpackage left out of it would be missing here).
    package = ROOT / "pgqueue"
    shipped = {
        str(f.relative_to(ROOT))
        for f in package.rglob("*")
        if f.suffix in {".py", ".html", ".typed"} and "__pycache__" not in f.parts
    }
    assert shipped - set(names) == set()
    with tarfile.open(sdist) as archive:
        members = "\n".join(archive.getnames())
    for needed in (
        "/sql/0001_outbox.sql",
        "/pgqueue/_cli/main.py",
        "/README.md",
        "/pyproject.toml",
    ):
        assert needed in members, needed

    elsewhere = tmp_path / "app"
    elsewhere.mkdir()
    pgqueue_cli = venv / "bin" / "pgqueue"
    python = venv / "bin" / "python"

    def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
        return _run(*args, cwd=elsewhere)

    where = await asyncio.to_thread(run, python, "-c", "import pgqueue; print(pgqueue.__file__)")
    assert Path(where.stdout.strip()).is_relative_to(venv), where.stdout + where.stderr
    check = await asyncio.to_thread(run, python, "-m", "pip", "check")  # pip is borrowed too
    assert check.returncode == 0, f"requirements not met: {check.stdout}{check.stderr}"
    version = await asyncio.to_thread(run, pgqueue_cli, "--version")
    assert version.returncode == 0 and version.stdout.startswith("pgqueue, version "), version

    dsn = database_factory(migrated=False)  # type: ignore[operator]
    migrated = await asyncio.to_thread(run, pgqueue_cli, "migrate", "--dsn", dsn)
    assert migrated.returncode == 0, migrated.stderr
    assert f"now at version {latest_version()}" in migrated.stdout
    status = await asyncio.to_thread(run, pgqueue_cli, "status", "--dsn", dsn)
    assert status.returncode == 0, status.stderr
    # An installed library has no example handlers to fall back on: say how to pass yours.
    worker = await asyncio.to_thread(run, pgqueue_cli, "worker", "--dsn", dsn, "--burst")
    assert worker.returncode == 1
    assert worker.stderr.startswith("error: no handlers given: pass --handlers MODULE:ATTRIBUTE")
    no_dsn = await asyncio.to_thread(run, pgqueue_cli, "worker", "--burst")
    assert no_dsn.returncode == 1 and "PGQUEUE_DSN" in no_dsn.stderr, no_dsn.stderr

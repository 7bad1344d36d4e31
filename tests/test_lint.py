"""`make lint` (ruff, configured in pyproject.toml) fails on a lint error, and `make test` runs it before the tests:
checked on a copy of the Makefile and pyproject.toml with a planted error, using this checkout's .venv."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
VENV = Path(sys.prefix)
pytestmark = pytest.mark.skipif(
    shutil.which("make") is None or not (VENV / "bin" / "ruff").exists() or not (VENV / ".installed").exists(),
    reason="needs make and the project's .venv with ruff (make setup)",
)


def make(folder: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["make", "-C", str(folder), f"VENV={VENV}", *args], capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def project(tmp_path):
    """The Makefile, pyproject.toml and requirements files (mtimes kept, so the venv stamp stays up to date) and
    one clean module in each folder make lint checks."""
    for name in ("Makefile", "pyproject.toml", "requirements.txt", "requirements-nodeps.txt"):
        shutil.copy2(ROOT / name, tmp_path / name)
    for folder in ("pipeline", "models", "tests", "bench"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "clean.py").write_text('"""A clean module."""\n\nimport os\n\nHOME = os.sep\n')
    return tmp_path


def test_make_lint_passes_clean_code_and_fails_on_a_lint_error(project):
    ok = make(project, "lint")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    (project / "pipeline" / "bad.py").write_text("import os\n")  # F401: imported but unused
    bad = make(project, "lint")
    assert bad.returncode != 0 and "F401" in bad.stdout + bad.stderr
    (project / "pipeline" / "bad.py").write_text("x = {'a':1}\n")  # lints clean, but not in ruff's format
    unformatted = make(project, "lint")
    assert unformatted.returncode != 0 and "bad.py" in unformatted.stdout + unformatted.stderr


def test_make_test_runs_lint_before_the_tests(project):
    commands = make(project, "-n", "test").stdout.splitlines()
    lint = [i for i, c in enumerate(commands) if "ruff check" in c]
    tests = [i for i, c in enumerate(commands) if "-m pytest" in c]
    assert lint and tests and lint[0] < tests[0], commands

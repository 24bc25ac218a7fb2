"""The repository's habits, checked with the suite (so the README's test command and CI run
them): ruff's rules (pyflakes, pycodestyle, isort, bugbear, pyupgrade, simplify) and its
formatter over all Python code, and mypy over the core package. Settings: pyproject.toml."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PYTHON_CODE = [
    "callscribe",
    "tests",
    "infra",
    "functions",
    "containers",
    "tools",
    "app.py",
    "customer_account_app.py",
]


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_ruff_finds_nothing() -> None:
    result = run(str(BIN / "ruff"), "check", "--no-cache", *PYTHON_CODE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_code_is_as_ruff_formats_it() -> None:
    result = run(str(BIN / "ruff"), "format", "--check", "--no-cache", *PYTHON_CODE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_finds_nothing_in_the_core() -> None:
    result = run(str(BIN / "mypy"), "--python-executable", sys.executable)
    assert result.returncode == 0, result.stdout + result.stderr

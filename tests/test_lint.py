"""The package is ruff- and mypy-clean (both are installed by the test extra)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # whole runs, subprocesses or napari; see pyproject.toml's markers

ROOT = Path(__file__).resolve().parents[1]


def test_ruff() -> None:
    folders = [d for d in ("cvplgraph", "tests", "benchmarks") if (ROOT / d).is_dir()]
    out = subprocess.run(
        [sys.executable, "-m", "ruff", "check", *folders],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_mypy() -> None:
    out = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr

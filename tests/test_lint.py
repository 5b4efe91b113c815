"""The tree is clean under the project's ruff configuration (pyproject.toml)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: The package, its tests, the benchmark and the twistd dropin.
CHECKED = ["accel", "tests", "bench", "twisted"]


def test_ruff_finds_nothing() -> None:
    """``python -m ruff check accel tests bench twisted`` reports no finding."""
    # The ruff of the interpreter running the tests (setup.cfg's test extra
    # pins the version the configuration is written for), never one on PATH.
    if importlib.util.find_spec("ruff") is None:
        pytest.skip(
            f"ruff is not installed in the environment running the tests ({sys.prefix}); "
            "pip install '.[test]' installs it, and CI always has it"
        )
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", *CHECKED],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr

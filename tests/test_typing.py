"""The pure modules type-check under mypy --strict."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: The bottom layer: stdlib and attrs only, no I/O (docs/architecture.rst).
PURE = [
    "accel/http/headers.py",
    "accel/http/model.py",
    "accel/http/dates.py",
    "accel/http/fields.py",
    "accel/http/byteranges.py",
    "accel/cache/policy.py",
    "accel/cache/keys.py",
    "accel/forwarding.py",
    "accel/routing.py",
    "accel/reload.py",
]


def test_pure_modules_are_strictly_typed(tmp_path: Path) -> None:
    """mypy --strict finds nothing in the pure layer."""
    pytest.importorskip("mypy")
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent",
         "--cache-dir", str(tmp_path / "mypy"), *PURE],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr

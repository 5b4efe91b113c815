"""The built wheel ships the twistd dropin and never a twisted/__init__.py."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: What a wheel is built from; copied so the build leaves no build/ or
#: *.egg-info behind in the checkout.
SOURCES = ("setup.cfg", "pyproject.toml", "README.rst", "accel", "twisted")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    if not (ROOT / "setup.cfg").exists():
        pytest.skip("not running from a source checkout")
    source = tmp_path_factory.mktemp("source")
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "dropin.cache"))
        else:
            shutil.copy2(path, source / name)
    out = tmp_path_factory.mktemp("wheel")
    command = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(out), str(source)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL, check=False)
    assert result.returncode == 0, result.stderr
    (built,) = out.glob("accel-*.whl")
    return zipfile.ZipFile(built)


def test_wheel_has_the_dropin(wheel: zipfile.ZipFile) -> None:
    """twisted/plugins/accel_plugin.py is in the wheel, so twistd finds accel."""
    assert "twisted/plugins/accel_plugin.py" in wheel.namelist()


def test_wheel_has_no_twisted_package_init(wheel: zipfile.ZipFile) -> None:
    """Neither twisted/__init__.py nor twisted/plugins/__init__.py is shipped:
    either would overwrite Twisted's own."""
    names = wheel.namelist()
    assert "twisted/__init__.py" not in names
    assert "twisted/plugins/__init__.py" not in names
    assert not any(name.startswith("twisted/") and name != "twisted/plugins/accel_plugin.py" for name in names)


def test_wheel_has_the_package(wheel: zipfile.ZipFile) -> None:
    """Every module of the accel package is in the wheel, and no tests."""
    names = set(wheel.namelist())
    expected = {str(path.relative_to(ROOT)) for path in (ROOT / "accel").rglob("*.py")}
    assert expected <= names
    assert not any(name.startswith("tests/") for name in names)

"""Lint and public-surface checks."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("ruff") is None and subprocess.run([sys.executable, "-m", "ruff", "--version"],
                    capture_output=True).returncode != 0, reason="ruff not installed")
def test_ruff_clean():
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "deepshrink", "tests", "benchmarks", "examples"], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.slow
@pytest.mark.skipif(subprocess.run([sys.executable, "-m", "mypy", "--version"], capture_output=True).returncode != 0,
                    reason="mypy not installed")
def test_mypy_clean():
    proc = subprocess.run([sys.executable, "-m", "mypy", "deepshrink"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_import_is_light():
    code = "import sys, deepshrink; bad = [m for m in ('numba', 'matplotlib', 'scipy') if m in sys.modules]; print(bad)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_public_api_is_all():
    import deepshrink

    public = {n for n in dir(deepshrink) if not n.startswith("_")}
    modules = {n for n in public if type(getattr(deepshrink, n)).__name__ == "module"}
    assert public - modules == set(deepshrink.__all__)
    assert (ROOT / "deepshrink" / "py.typed").exists()

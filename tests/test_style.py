"""One formatter and one line length for the whole tree: ``ruff format`` and ``ruff check``
(configured in pyproject.toml, line length 120) must have nothing to say. Fix with
``.venv/bin/ruff format . && .venv/bin/ruff check --fix .``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "args", [["check", "--no-cache", "."], ["format", "--check", "--no-cache", "."]], ids=["lint", "format"]
)
def test_ruff_is_clean(args):
    pytest.importorskip("ruff", reason="ruff comes with .[dev] (ops/setup.sh installs it)")
    proc = subprocess.run([sys.executable, "-m", "ruff", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"ruff {' '.join(args)}:\n{proc.stdout}{proc.stderr}"

"""The code is ruff-clean (the rules in pyproject.toml): part of the test command, so CI runs it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_ruff_check_is_clean() -> None:
    # ruff comes with the test extra; a missing ruff is a broken install, not a reason to skip
    command = [shutil.which("ruff") or "ruff"] if shutil.which("ruff") else [sys.executable, "-m", "ruff"]
    result = subprocess.run([*command, "check", "trtq", "tests", "scripts"], cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr

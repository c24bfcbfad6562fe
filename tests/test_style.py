"""The tree stays formatted and lint-clean: `ruff format --check` and `ruff check` (configured in
pyproject.toml) both pass. Fix a failure with `ruff format . && ruff check --fix .`."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.paths import REPO


@pytest.mark.parametrize("command", [["format", "--check", "."], ["check", "."]])
def test_ruff_is_clean(command):
  proc = subprocess.run(
    [sys.executable, "-m", "ruff", *command], cwd=REPO, capture_output=True, text=True, timeout=120
  )
  assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]

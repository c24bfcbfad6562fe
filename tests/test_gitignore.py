"""The checkout's .gitignore covers the virtualenv and the demo's output also when they are
symlinks (a pattern ending in '/' matches directories only, so a `.venv` link to an environment
elsewhere showed up as an untracked file)."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.paths import REPO

IGNORED = (".venv", "demo_out", "workdir_1", "runs")


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
@pytest.mark.parametrize("kind", ["directory", "symlink"])
def test_generated_paths_are_ignored_as_directories_and_as_symlinks(tmp_path, kind):
  repo = tmp_path / "checkout"
  repo.mkdir()
  subprocess.run(["git", "init", "-q", str(repo)], check=True)
  shutil.copy(os.path.join(REPO, ".gitignore"), repo / ".gitignore")
  target = tmp_path / "elsewhere"
  target.mkdir()
  for name in IGNORED:
    if kind == "directory":
      (repo / name).mkdir()
      (repo / name / "file").write_text("x")
    else:
      os.symlink(target, repo / name)
  status = subprocess.run(
    ["git", "status", "--porcelain", "--untracked-files=all"],
    cwd=repo,
    capture_output=True,
    text=True,
    check=True,
  ).stdout.splitlines()
  assert status == ["?? .gitignore"], status
  # Only at the top: a package directory named like a run is not ignored.
  (repo / "pkg").mkdir()
  (repo / "pkg" / "runs").write_text("x")
  check = subprocess.run(["git", "check-ignore", "-q", "pkg/runs"], cwd=repo)
  assert check.returncode == 1

"""One atomic writer for the files read while they may be rewritten (data2vec_jax/atomic_files.py):
a reader sees the old file or the new, never part of one, and the file has open()'s mode."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest

from data2vec_jax.atomic_files import write_json_atomically, write_text_atomically
from data2vec_jax.file_modes import current_umask


def test_json_is_indented_with_a_trailing_newline(tmp_path):
  path = tmp_path / "results.json"
  write_json_atomically(path, {"score": 0.5, "splits": ["validation"]})
  assert path.read_text() == json.dumps({"score": 0.5, "splits": ["validation"]}, indent=2) + "\n"
  assert os.listdir(tmp_path) == ["results.json"]  # no temporary left behind


def test_the_target_is_untouched_when_serialisation_fails(tmp_path):
  path = tmp_path / "status.json"
  write_json_atomically(path, {"state": "done"})
  before = path.read_bytes()
  with pytest.raises(TypeError, match="not JSON serializable"):
    write_json_atomically(path, {"state": np.float32(1.0)})
  assert path.read_bytes() == before
  assert os.listdir(tmp_path) == ["status.json"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
  path = tmp_path / "results.md"
  write_text_atomically(path, "old\n")
  with pytest.raises(UnicodeEncodeError):
    write_text_atomically(path, "half written, then \ud800")  # a lone surrogate: not UTF-8
  assert path.read_text() == "old\n"
  assert os.listdir(tmp_path) == ["results.md"]


def test_the_file_has_the_mode_open_gives_it(tmp_path):
  """0666 less the umask (0644 for umask 022), as file_modes.make_readable: not a private 0600
  temporary renamed into place; an existing file with another mode gets it too."""
  path = tmp_path / "config.json"
  path.write_text("{}")
  os.chmod(path, 0o600)
  write_json_atomically(path, {"a": 1})
  assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~current_umask()
  old = os.umask(0o022)
  try:
    write_text_atomically(tmp_path / "new.txt", "x")
  finally:
    os.umask(old)
  assert stat.S_IMODE(os.stat(tmp_path / "new.txt").st_mode) == 0o644

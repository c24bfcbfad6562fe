"""Model files are readable as the umask allows (0644 under umask 022), not safetensors' 0600: a
model directory on a shared disk must be readable by a colleague."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from data2vec_jax import file_modes
from data2vec_jax.model.config import tiny_config
from data2vec_jax.weights import layout
from data2vec_jax.weights.hf import save_hf_dir
from data2vec_jax.weights.pretrained import save_pretrained


@pytest.fixture(scope="module")
def model():
  config = tiny_config(num_layers=1, hidden_size=16, num_heads=2, intermediate_size=32)
  shapes = layout.param_shapes(config)
  params = layout.unflatten({k: np.zeros(s, np.float32) for k, s in shapes.items()})
  return config, params


def mode(path) -> int:
  return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("umask, expected", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_written_model_files_follow_the_umask(tmp_path, model, umask, expected):
  config, params = model
  old = os.umask(umask)
  try:
    assert file_modes.current_umask() == umask
    save_pretrained(tmp_path / "jax", config, params, head_params={"lm": {"bias": np.zeros(3)}})
    save_hf_dir(tmp_path / "hf", config, params)
  finally:
    os.umask(old)
  written = [
    tmp_path / "jax" / "params.safetensors",
    tmp_path / "jax" / "heads.safetensors",
    tmp_path / "jax" / "config.json",
    tmp_path / "hf" / "model.safetensors",
    tmp_path / "hf" / "config.json",
  ]
  assert {str(p.relative_to(tmp_path)): oct(mode(p)) for p in written} == {
    str(p.relative_to(tmp_path)): oct(expected) for p in written
  }

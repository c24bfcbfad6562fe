"""The fairseq data2vec 2.0 checkpoint layout (fused qkv, `modality_encoders.TEXT.*`, the
decoder, `_ema`) round-trips through `weights/fairseq_v2.py` bit for bit, and its encoder exports
to a Hugging Face `Data2VecTextModel` directory that `transformers` and our HF importer load."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from data2vec_jax.model.encoder import Encoder
from data2vec_jax.objective.loss import PretrainingModel
from data2vec_jax.weights import fairseq_v2, layout
from data2vec_jax.weights.hf import load_hf_dir
from data2vec_jax.weights.torch_io import CheckpointError
from tests.objective.test_data2vec2 import BASE, CFG, PAD, H, T, fairseq_state_dict  # noqa: E402
from tests.paths import REPO
from tests.xla_env import xla_flags


@pytest.fixture(scope="module")
def checkpoint_file(tmp_path_factory):
  sd = fairseq_state_dict(BASE, seed=7)
  path = tmp_path_factory.mktemp("v2") / "checkpoint.pt"
  torch.save({"model": sd, "cfg": {"model": {"num_heads": H, "norm_eps": 1e-5}}}, path)
  return path, sd


def test_round_trip_is_bit_exact(checkpoint_file):
  path, sd = checkpoint_file
  config, params, ema = fairseq_v2.load_fairseq_v2(path)
  assert (config.num_layers, config.num_heads, config.hidden_size) == (3, H, CFG.hidden_size)
  assert (config.vocab_size, config.max_positions, config.pad_id) == (
    CFG.vocab_size,
    CFG.max_positions,
    PAD,
  )
  back = fairseq_v2.params_to_fairseq_v2(params, config, ema)
  assert set(back) == set(sd)
  for k, v in sd.items():
    if k == "_ema":
      assert set(back[k]) == set(v)
      for kk, vv in v.items():
        np.testing.assert_array_equal(back[k][kk], vv.numpy(), err_msg=kk)
    else:
      np.testing.assert_array_equal(back[k], v.numpy(), err_msg=k)


def test_converted_tree_is_the_models_tree(checkpoint_file):
  path, _ = checkpoint_file
  config, params, ema = fairseq_v2.load_fairseq_v2(path)
  init = nn.meta.unbox(
    PretrainingModel(config, BASE).init(jax.random.PRNGKey(0), jnp.full((1, T), 5, jnp.int32))
  )["params"]
  shapes = lambda tree: {k: tuple(np.shape(v)) for k, v in layout.flatten(tree).items()}
  assert shapes(params) == shapes(init)
  assert shapes(ema) == shapes({"layers": init["encoder"]["layers"]})


def test_bad_state_dicts_are_refused_by_name():
  sd = {k: v for k, v in fairseq_state_dict(BASE, seed=1).items() if k != "_ema"}
  missing = {k: v for k, v in sd.items() if "layernorm_embedding.bias" not in k}
  with pytest.raises(CheckpointError, match="layernorm_embedding.bias"):
    fairseq_v2.params_from_fairseq_v2(missing, CFG)
  with pytest.raises(CheckpointError, match="unexpected keys .*shared_decoder"):
    fairseq_v2.params_from_fairseq_v2({**sd, "shared_decoder.x": torch.zeros(1)}, CFG)
  wrong_heads = CFG.replace(num_heads=8, hidden_size=CFG.hidden_size)
  params, _ = fairseq_v2.params_from_fairseq_v2(sd, wrong_heads)  # a reshape, still exact
  assert params["encoder"]["layers"]["attention"]["qkv"]["kernel"].shape[-2:] == (8, 4)


def test_encoder_exports_to_transformers(checkpoint_file, tmp_path):
  from transformers import Data2VecTextModel

  path, _ = checkpoint_file
  config, params, _ = fairseq_v2.load_fairseq_v2(path)
  fairseq_v2.export_hf_dir(tmp_path, config, params["encoder"])
  hf, info = Data2VecTextModel.from_pretrained(
    tmp_path, output_loading_info=True, attn_implementation="eager"
  )
  assert not info["missing_keys"] or set(info["missing_keys"]) <= {
    "pooler.dense.weight",
    "pooler.dense.bias",
  }
  tokens = np.random.default_rng(0).integers(4, CFG.vocab_size, size=(2, T))
  tokens[:, 0] = 0
  tokens[1, -4:] = PAD
  with torch.no_grad():
    ref = hf.eval()(torch.from_numpy(tokens), attention_mask=torch.from_numpy(tokens != PAD))
  ours = Encoder(config, zero_pads=False).apply(
    {"params": params["encoder"]}, jnp.asarray(tokens, jnp.int32)
  )
  real = tokens != PAD
  a = np.asarray(ours.last_hidden_state)[real]
  b = ref.last_hidden_state.numpy()[real]
  assert np.max(np.abs(a - b)) <= 1e-5 * max(1.0, np.max(np.abs(b)))
  # ... and our HF importer (the fine-tuning path's) reads back the same encoder
  back = load_hf_dir(tmp_path)
  for k, v in layout.flatten(params["encoder"]).items():
    np.testing.assert_array_equal(layout.flatten(back.params)[k], v, err_msg=k)


def test_the_converter_cli_recognises_a_v2_checkpoint(checkpoint_file, tmp_path):
  """convert_torch_weights.py --from fairseq on a data2vec 2.0 .pt: the student (or, with --ema,
  the teacher's blocks) as a data2vec-jax directory with the decoder as a head, and as HF."""
  import os
  import subprocess
  import sys

  from data2vec_jax.weights.pretrained import load_checkpoint

  repo = REPO
  path, _ = checkpoint_file
  _, params, ema = fairseq_v2.load_fairseq_v2(path)

  def convert(*flags):
    out = subprocess.run(
      [sys.executable, os.path.join(repo, "convert_torch_weights.py"), "--from", "fairseq"]
      + [str(path), *flags, "--no-tokenizer"],
      capture_output=True,
      text=True,
      timeout=300,
      env=dict(os.environ, XLA_FLAGS=xla_flags(), JAX_PLATFORMS="cpu"),
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout

  assert "fairseq data2vec 2.0 (student)" in convert("--to", "jax", "--output", str(tmp_path / "s"))
  convert("--to", "jax", "--ema", "--output", str(tmp_path / "t"))
  student, teacher = load_checkpoint(str(tmp_path / "s")), load_checkpoint(str(tmp_path / "t"))
  for k, v in layout.flatten(params["encoder"]).items():
    np.testing.assert_array_equal(layout.flatten(student.params)[k], v, err_msg=k)
    expected = layout.flatten(ema)[k] if k.startswith("layers/") else v  # embeddings: student's
    np.testing.assert_array_equal(layout.flatten(teacher.params)[k], expected, err_msg=k)
  assert set(layout.flatten(student.heads["decoder"])) == set(layout.flatten(params["head"]))
  convert("--to", "hf", "--output", str(tmp_path / "hf"))
  back = load_hf_dir(str(tmp_path / "hf"))
  np.testing.assert_array_equal(
    layout.flatten(back.params)["layers/fc1/kernel"],
    layout.flatten(params["encoder"])["layers/fc1/kernel"],
  )

"""The data2vec-jax model directory, `load_pretrained` dispatch, and `encode`."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

from data2vec_jax import encode, load_pretrained, save_pretrained
from data2vec_jax.model.config import tiny_config
from data2vec_jax.weights import CheckpointError
from data2vec_jax.weights.layout import flatten, param_shapes, unflatten
from data2vec_jax.weights.parity import (
  diff_report,
  padded_batch,
  reference_features,
  reference_model,
)
from data2vec_jax.weights.pretrained import _encode, load_checkpoint

CONFIG = tiny_config(
  vocab_size=90, hidden_size=32, num_heads=2, intermediate_size=40, num_layers=2, max_positions=24
)


@pytest.fixture(scope="module")
def params():
  """Random float32 params of the model's exact tree (from eval_shape: no slow eager init)."""
  rng = np.random.default_rng(0)
  return unflatten(
    {k: rng.normal(0, 0.05, shape).astype(np.float32) for k, shape in param_shapes(CONFIG).items()}
  )


def _equal(a, b):
  fa, fb = flatten(a), flatten(b)
  return fa.keys() == fb.keys() and all(np.array_equal(fa[k], fb[k]) for k in fa)


def test_save_load_round_trip_with_heads_and_metadata(tmp_path, params):
  heads = {
    "regression_head": {
      "dense_0": {"kernel": np.ones((32, 64), np.float32), "bias": np.arange(64, dtype=np.float32)}
    }
  }
  save_pretrained(tmp_path, CONFIG, params, head_params=heads, metadata={"step": 7})
  config, loaded = load_pretrained(tmp_path)
  assert config == CONFIG and _equal(params, loaded)
  full = load_checkpoint(tmp_path)
  assert _equal(full.heads, heads) and full.metadata == {"step": 7}
  document = json.loads((tmp_path / "config.json").read_text())
  assert document["format"] == "data2vec-jax" and document["format_version"] == 1
  assert "embeddings/token_embedding/embedding" in load_file(tmp_path / "params.safetensors")

  save_pretrained(tmp_path, CONFIG, params)  # re-saving without heads removes the stale file
  assert not (tmp_path / "heads.safetensors").exists()
  assert load_checkpoint(tmp_path).heads == {}


def test_save_refuses_params_that_do_not_match(tmp_path, params):
  with pytest.raises(ValueError, match="shape mismatches"):
    save_pretrained(tmp_path, CONFIG.replace(intermediate_size=41), params)
  assert not (tmp_path / "config.json").exists()


def test_load_lists_every_key_problem(tmp_path, params):
  save_pretrained(tmp_path, CONFIG, params)
  flat = load_file(tmp_path / "params.safetensors")
  del flat["layers/fc2/bias"]
  flat["layers/extra"] = np.zeros(1, np.float32)
  flat["layers/fc1/kernel"] = np.zeros((2, 32, 41), np.float32)
  save_file(flat, tmp_path / "params.safetensors")
  with pytest.raises(CheckpointError) as err:
    load_pretrained(tmp_path)
  message = str(err.value)
  assert "missing keys ['layers/fc2/bias']" in message
  assert "unexpected keys ['layers/extra']" in message
  assert "layers/fc1/kernel: got (2, 32, 41), expected (2, 32, 40)" in message


@pytest.mark.parametrize(
  "file, key, dtype",
  [
    ("params.safetensors", "layers/fc1/kernel", np.float32),
    ("params.safetensors", "layers/fc1/kernel", jnp.bfloat16),  # kept as stored
    ("heads.safetensors", "regression_head/dense_0/bias", np.float32),
  ],
)
def test_load_refuses_non_finite_weights_naming_file_and_tensor(tmp_path, params, file, key, dtype):
  params = jax.tree.map(lambda x: x.astype(dtype), params)
  heads = {
    "regression_head": {"dense_0": {"kernel": np.ones((32, 4), dtype), "bias": np.zeros(4, dtype)}}
  }
  save_pretrained(tmp_path, CONFIG, params, head_params=heads)
  load_pretrained(tmp_path)  # clean: loads
  flat = {k: v.copy() for k, v in load_file(tmp_path / file).items()}
  flat[key].flat[[0, 2, 3]] = [np.nan, np.inf, -np.inf]
  save_file(flat, tmp_path / file)
  with pytest.raises(CheckpointError) as err:
    load_pretrained(tmp_path)
  assert str(err.value) == (
    f"{tmp_path / file}: tensor '{key}' has 3 NaN/Inf values; the "
    "checkpoint is corrupt or diverged, load an earlier one"
  )


def test_load_refuses_unknown_formats_and_versions(tmp_path, params):
  save_pretrained(tmp_path, CONFIG, params)
  document = json.loads((tmp_path / "config.json").read_text())
  document["format_version"] = 99
  (tmp_path / "config.json").write_text(json.dumps(document))
  with pytest.raises(CheckpointError, match="format_version 99"):
    load_pretrained(tmp_path)
  (tmp_path / "config.json").write_text("{}")
  with pytest.raises(CheckpointError, match="neither a data2vec-jax config"):
    load_pretrained(tmp_path)
  with pytest.raises(CheckpointError, match="no such file"):
    load_pretrained(tmp_path / "absent")
  with pytest.raises(CheckpointError, match="use_ema applies to fairseq"):
    load_pretrained(tmp_path, use_ema=True)


def test_load_pretrained_dispatches_hf_fairseq_and_own(tmp_path):
  model = reference_model(CONFIG, seed=1)
  model.save_pretrained(tmp_path / "hf")
  config, hf_params = load_pretrained(tmp_path / "hf")
  save_pretrained(tmp_path / "own", config, hf_params)
  assert _equal(load_pretrained(tmp_path / "own")[1], hf_params)

  prefix = "encoder.sentence_encoder."
  fs = {}
  for k, v in model.state_dict().items():
    k = (
      k.replace("embeddings.word_embeddings", "embed_tokens")
      .replace("embeddings.position_embeddings", "embed_positions")
      .replace("embeddings.LayerNorm", "layernorm_embedding")
      .replace("encoder.layer.", "layers.")
      .replace("attention.self.query", "self_attn.q_proj")
      .replace("attention.self.key", "self_attn.k_proj")
      .replace("attention.self.value", "self_attn.v_proj")
      .replace("attention.output.dense", "self_attn.out_proj")
      .replace("attention.output.LayerNorm", "self_attn_layer_norm")
      .replace("intermediate.dense", "fc1")
      .replace("output.dense", "fc2")
      .replace("output.LayerNorm", "final_layer_norm")
    )
    if not k.startswith(("pooler", "embeddings.token_type")):
      fs[prefix + k] = v
  cfg = {
    "model": {
      "encoder_embed_dim": 32,
      "encoder_layers": 2,
      "encoder_attention_heads": 2,
      "encoder_ffn_embed_dim": 40,
      "max_positions": 22,
    }
  }
  torch.save({"model": fs, "cfg": cfg}, tmp_path / "model.pt")
  fs_config, fs_params = load_pretrained(tmp_path / "model.pt")
  assert fs_config.replace(dropout=0.1, attention_dropout=0.1) == config
  assert _equal(fs_params, hf_params)

  ids, mask = padded_batch(config, (6, 3))
  ref = reference_features(model, ids, mask)
  assert diff_report(encode(config, fs_params, ids, mask), ref, mask).max_diff <= 1e-5


def test_encode_masks_validates_and_compiles_once_per_shape(params):
  ids, mask = padded_batch(CONFIG, (7, 4, 2), seed=3)
  garbage = np.where(mask == 1, ids, 50)  # non-pad ids where the mask says "pad"
  before = _encode._cache_size()
  a = encode(CONFIG, params, ids, mask)
  b = encode(CONFIG, params, garbage, mask)
  encode(CONFIG, params, ids)  # mask-free call: pads are already pad ids
  assert _encode._cache_size() == before + 1  # one compile for this config and shape
  assert np.array_equal(a.last_hidden_state, b.last_hidden_state)
  assert len(a.hidden_states) == CONFIG.num_layers + 1 and len(a.ffn_outputs) == CONFIG.num_layers
  assert all(
    h.shape == (3, 7, 32) and h.dtype == np.float32 for h in (*a.hidden_states, *a.ffn_outputs)
  )
  # fairseq semantics: the embedding output is zero at pads.
  assert np.all(np.asarray(a.hidden_states[0])[mask == 0] == 0)

  with pytest.raises(ValueError, match=r"token id 90 at position \(0, 1\) is outside"):
    encode(CONFIG, params, np.where(np.arange(7) == 1, 90, ids))
  with pytest.raises(ValueError, match="outside"):
    encode(CONFIG, params, ids - 5)
  with pytest.raises(ValueError, match="attention_mask shape"):
    encode(CONFIG, params, ids, mask[:, :3])
  with pytest.raises(ValueError, match="exceeds"):
    encode(CONFIG, params, np.full((1, 30), 5))
  with pytest.raises(ValueError, match="integer"):
    encode(CONFIG, params, ids.astype(np.float32))

"""EMA teacher: decay schedule vs fairseq, update vs a PyTorch EMAModule step, shared embeddings."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from data2vec_jax.model.config import tiny_config
from data2vec_jax.model.encoder import Encoder
from data2vec_jax.objective.ema import EMAConfig, ema_decay, ema_update, init_ema, teacher_params


def fairseq_decay(n: int, start=0.999, end=0.9999, total=300000) -> float:
  """Data2VecTextEncoder.set_num_updates + get_annealed_rate, float64."""
  if start == end:
    return start
  if n >= total:
    return end
  r = end - start
  pct_remaining = 1 - n / total
  return end - r * pct_remaining


@pytest.mark.parametrize("step", [0, 1, 2, 1000, 150000, 299999, 300000, 300001, 10**6])
def test_decay_schedule_matches_fairseq(step):
  got = ema_decay(step, EMAConfig())
  assert got.dtype == jnp.float32 and got.shape == ()
  # float32 resolves decays near 1 to ~6e-8.
  assert abs(float(got) - fairseq_decay(step)) < 6e-8


def test_decay_named_values_constant_and_traced():
  cfg = EMAConfig()
  assert float(ema_decay(0, cfg)) == pytest.approx(0.999, abs=1e-7)
  assert float(ema_decay(150000, cfg)) == pytest.approx(0.99945, abs=1e-7)
  assert float(ema_decay(300000, cfg)) == pytest.approx(0.9999, abs=1e-7)
  assert float(ema_decay(400000, cfg)) == pytest.approx(0.9999, abs=1e-7)
  const = EMAConfig(ema_decay=0.998, ema_end_decay=0.998)
  assert float(ema_decay(0, const)) == float(ema_decay(10**6, const)) == np.float32(0.998)
  paper = EMAConfig(ema_anneal_end_step=100000)  # the paper's tau_n
  assert float(ema_decay(50000, paper)) == pytest.approx(0.99945, abs=1e-7)
  traced = jax.jit(lambda s: ema_decay(s, cfg))(jnp.int32(150000))
  assert float(traced) == float(ema_decay(150000, cfg))


def _tree(seed: int, dtype=np.float32) -> dict:
  """A small encoder-shaped tree: {'embeddings': ..., 'layers': ...}."""
  r = np.random.default_rng(seed)
  a = lambda *s: r.normal(size=s).astype(dtype)
  return {
    "embeddings": {
      "token_embedding": {"embedding": a(10, 4)},
      "layer_norm": {"scale": a(4), "bias": a(4)},
    },
    "layers": {
      "fc1": {"kernel": a(2, 4, 8), "bias": a(2, 8)},
      "ffn_layer_norm": {"scale": a(2, 4), "bias": a(2, 4)},
    },
  }


def _torch_ema_step(ema: dict, student: dict, decay: float, skip_embeddings: bool) -> dict:
  """fairseq EMAModule._step_internal on flat fp32 tensors."""
  out = {}
  for key in ema:
    e, p = torch.tensor(ema[key]), torch.tensor(student[key]).float()
    if skip_embeddings and key.startswith("embeddings"):
      e.copy_(p)
    else:
      lr = 1 - decay
      e.mul_(1 - lr)
      e.add_(p, alpha=lr)
    out[key] = e.numpy()
  return out


def _flat(tree) -> dict:
  return {
    jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]
  }


@pytest.mark.parametrize("layers_only", [True, False])
def test_update_matches_torch_and_copies_or_averages_the_right_leaves(layers_only):
  cfg = EMAConfig(ema_transformer_layers_only=layers_only)
  ema, student = init_ema(_tree(0), cfg), _tree(1)
  # the torch reference keeps a full EMA encoder (fairseq copies the skipped embeddings into it)
  ref = {k.replace("['", "").replace("']", "."): v for k, v in _flat(_tree(0)).items()}
  for step in (1, 2, 3):
    student = _tree(step)
    decay = ema_decay(step, cfg)
    ema = jax.jit(lambda e, s, d: ema_update(e, s, d, cfg))(ema, student, decay)
    flat_student = {k.replace("['", "").replace("']", "."): v for k, v in _flat(student).items()}
    ref = _torch_ema_step(ref, flat_student, float(decay), layers_only)
  # Our EMA tree holds only the blocks when layers_only; the teacher supplies the embeddings.
  assert ("embeddings" in ema) == (not layers_only)
  teacher = teacher_params(ema, student, cfg)
  for key, value in _flat(teacher).items():
    k = key.replace("['", "").replace("']", ".")
    assert value.dtype == np.float32
    # Each update is two products and a sum (3 roundings of <= eps/2 of the leaf's largest
    # magnitude, on either side, so <= 3 eps apart), and an earlier update's difference only
    # shrinks (times decay < 1): 3 updates stay within 9 eps of the leaf's scale. Skipping an
    # update or swapping decay and 1 - decay moves values by >= 1e-3 of it.
    bound = 9 * np.finfo(np.float32).eps * np.abs(ref[k]).max()
    np.testing.assert_allclose(value, ref[k], rtol=0, atol=bound, err_msg=k)
    if layers_only and k.startswith("embeddings"):
      np.testing.assert_array_equal(value, _flat(student)[key])  # the student's, exactly
    else:
      assert not np.allclose(value, _flat(student)[key])  # averaged


def test_float32_ema_from_bfloat16_student_and_frozen_at_decay_one():
  cfg = EMAConfig()
  ema = init_ema(_tree(0), cfg)
  student = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.bfloat16), _tree(1))
  new = ema_update(ema, student, jnp.float32(0.9), cfg)
  assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(new))
  frozen = ema_update(ema, student, jnp.float32(1.0), cfg)  # fairseq skips ema.step at decay 1
  for a, b in zip(jax.tree_util.tree_leaves(frozen), jax.tree_util.tree_leaves(ema)):
    np.testing.assert_array_equal(a, b)


def test_teacher_params_and_step_zero_teacher_equals_student():
  cfg = tiny_config(num_layers=2)
  student = jax.tree_util.tree_map(
    lambda s: np.random.default_rng(0).normal(size=s.shape).astype(np.float32),
    jax.eval_shape(
      lambda: Encoder(cfg).init(jax.random.key(0), jnp.ones((1, 4), jnp.int32))["params"]
    ),
  )
  student = jax.tree_util.tree_map(
    lambda x: x.value if hasattr(x, "value") else x, student, is_leaf=lambda x: hasattr(x, "value")
  )
  for mode in (True, False):
    cfg = EMAConfig(ema_transformer_layers_only=mode)
    ema = init_ema(student, cfg)  # update 0: the teacher is a copy of the student
    t = teacher_params(ema, student, cfg)
    for a, b in zip(jax.tree_util.tree_leaves(t), jax.tree_util.tree_leaves(student)):
      np.testing.assert_array_equal(a, b)
    # Later: layers from the EMA; embeddings from the current student (layers_only) or the EMA.
    other = jax.tree_util.tree_map(lambda x: x + 1.0, student)
    t = teacher_params(ema, other, cfg)
    np.testing.assert_array_equal(t["layers"]["fc1"]["kernel"], ema["layers"]["fc1"]["kernel"])
    np.testing.assert_array_equal(
      t["embeddings"]["token_embedding"]["embedding"],
      (other if mode else ema)["embeddings"]["token_embedding"]["embedding"],
    )
  # A full-encoder EMA tree under layers_only (e.g. an old checkpoint) is refused by name.
  with pytest.raises(ValueError, match="holds only 'layers'"):
    teacher_params(
      init_ema(student, EMAConfig(ema_transformer_layers_only=False)), student, EMAConfig()
    )


def test_config_from_dict():
  assert EMAConfig.from_dict({"ema_anneal_end_step": 100000}).ema_anneal_end_step == 100000
  with pytest.raises(ValueError, match="unknown"):
    EMAConfig.from_dict({"ema_decay_end": 0.9999})
  with pytest.raises(ValueError):
    EMAConfig(ema_decay=1.5)

"""Token packing (`data2vec_jax/speed/packing.py`): layouts, the pack/unpack pair and its gradients, host capacity.

The numerical claim that a packed step equals the reference (loss, metrics, every gradient) is
tested against PyTorch in tests/objective/test_loss.py (`test_packed_data2vec_matches_torch`, MLM
`fit_no_fallback_packed`); here the building blocks and the encoder's packed outputs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from data2vec_jax.model.config import EncoderConfig
from data2vec_jax.model.encoder import Encoder, init_params, take_positions
from data2vec_jax.speed import packing

PAD = 1


def _keep(lengths, length):
  return np.arange(length)[None, :] < np.asarray(lengths)[:, None]


def test_layout_places_real_tokens_in_order_per_group():
  keep = _keep([3, 1, 4, 0], 4)  # groups of 2 rows: 4 and 4 real tokens
  layout = packing.make_layout(jnp.asarray(keep), packing.PackingSpec(2, 5))
  assert (layout.rows, layout.length, layout.groups, layout.capacity) == (4, 4, 2, 5)
  # Group 0: row 0 positions 0..2 (flat 0..2), row 1 position 0 (flat 4); slot 4 left over (8).
  np.testing.assert_array_equal(layout.slot_position, [[0, 1, 2, 4, 8], [0, 1, 2, 3, 8]])
  np.testing.assert_array_equal(layout.position_slot[0], [0, 1, 2, 5, 3, 5, 5, 5])
  assert not bool(layout.overflow)
  assert bool(packing.make_layout(jnp.asarray(keep), packing.PackingSpec(2, 3)).overflow)


def test_pack_unpack_roundtrip_and_are_each_others_transpose():
  rng = np.random.default_rng(0)
  keep = _keep([5, 2, 6, 3, 0, 6], 6)
  layout = packing.make_layout(jnp.asarray(keep), packing.PackingSpec(3, 9))
  x = jnp.asarray(rng.normal(size=(6, 6, 3)), jnp.float32)
  y = packing.pack(x, layout)
  assert y.shape == (3, 9, 3)
  back = packing.unpack(y, layout)
  np.testing.assert_array_equal(back, np.where(keep[..., None], x, 0))
  # Left-over slots hold zeros (group 2 has 6 real tokens of 9 slots).
  np.testing.assert_array_equal(y[2, 6:], 0)
  # <pack(x), w> == <x, unpack(w)> for every x, w: the custom VJPs must be these transposes.
  w = jnp.asarray(rng.normal(size=(3, 9, 3)), jnp.float32)
  w = w * (jnp.arange(9)[None, :, None] < jnp.asarray([7, 9, 6])[:, None, None])
  g_pack = jax.grad(lambda x: jnp.sum(packing.pack(x, layout) * w))(x)
  np.testing.assert_allclose(g_pack, packing.unpack(w, layout), rtol=1e-6)
  v = jnp.asarray(rng.normal(size=(6, 6, 3)), jnp.float32)
  g_unpack = jax.grad(lambda y: jnp.sum(packing.unpack(y, layout) * v))(y)
  np.testing.assert_allclose(g_unpack, packing.pack(v * keep[..., None], layout), rtol=1e-6)
  # ...and equal to what autodiff of the same gathers gives.
  auto = jax.grad(
    lambda x: jnp.sum(
      jnp.take_along_axis(
        x.reshape(3, 12, 3), layout.slot_position[..., None], axis=1, mode="fill", fill_value=0
      )
      * w
    )
  )(x)
  np.testing.assert_allclose(g_pack, auto, rtol=1e-6)


def test_take_matches_take_positions_of_the_unpacked_array():
  rng = np.random.default_rng(1)
  keep = _keep([4, 7, 2, 5], 8)
  layout = packing.make_layout(jnp.asarray(keep), packing.PackingSpec(2, 11))
  x = jnp.asarray(rng.normal(size=(4, 8, 2)), jnp.float32) * keep[..., None]
  index = jnp.asarray(rng.integers(0, 8, (4, 3)), jnp.int32)
  np.testing.assert_array_equal(
    packing.take(packing.pack(x, layout), index, layout), take_positions(x, index)
  )
  ids = jnp.asarray(np.where(keep, 7, PAD), jnp.int32)
  packed_ids = packing.pack_ids(ids, layout, PAD)
  assert int(jnp.sum(packed_ids == 7)) == keep.sum() and packed_ids.shape == (2, 11)


def test_bad_shapes_and_specs_are_refused():
  keep = jnp.asarray(_keep([2, 2, 2], 4))
  with pytest.raises(ValueError, match="cannot split 3 rows into 2 packing groups"):
    packing.make_layout(keep, packing.PackingSpec(2, 4))
  with pytest.raises(ValueError, match="groups >= 1 and capacity >= 1"):
    packing.PackingSpec(1, 0)
  layout = packing.make_layout(keep, packing.PackingSpec(3, 2))
  with pytest.raises(ValueError, match=r"expected a packed array \[G=3, C=2"):
    packing.unpack(jnp.zeros((3, 4, 5)), layout)
  with pytest.raises(ValueError, match=r"expected an unpacked array \[B=3, T=4"):
    packing.pack(jnp.zeros((3, 5, 2)), layout)


def test_spec_for_batch_follows_the_train_steps_micro_batch_split():
  # Rows 0, 2 form micro-batch 0 and rows 1, 3 micro-batch 1 (interleaved, train_step.py).
  rows = np.array([8, 1, 8, 1])
  np.testing.assert_array_equal(packing.group_token_counts(rows, 1, 2), [[16], [2]])
  np.testing.assert_array_equal(packing.group_token_counts(rows, 2, 1), [[9, 9]])
  spec = lambda rows, groups, micro, buckets: packing.spec_for_batch(
    np.asarray(rows), seq_len=8, groups=groups, micro_batches=micro, buckets=buckets
  )
  # Micro-batch 0 fills all 16 positions of its group: nothing to save, run unpacked.
  assert spec(rows, 1, 2, 8) is None
  # 9 real tokens, buckets of 16/8 = 2 tokens -> 10; one bucket of 16 -> unpacked.
  assert spec([5, 0, 4, 0], 1, 2, 8) == packing.PackingSpec(1, 10)
  assert spec([5, 0, 4, 0], 1, 2, 1) is None
  assert spec([0, 0], 1, 1, 4) == packing.PackingSpec(1, 4)  # one bucket, never 0
  # Two groups (e.g. one per process): the fullest one sets the capacity of both.
  assert spec([3, 2], 2, 1, 4) == packing.PackingSpec(2, 4)  # buckets of 8/4 = 2 tokens
  with pytest.raises(ValueError, match="do not split into 3 micro-batches"):
    packing.group_token_counts(rows, 1, 3)
  with pytest.raises(ValueError, match="buckets must be >= 1"):
    spec(rows, 1, 1, 0)
  with pytest.raises(ValueError, match="holds 9 real tokens but has only 8 positions"):
    spec([9, 0], 2, 1, 4)
  with pytest.raises(ValueError, match=r"must be \[B\]"):
    packing.group_token_counts(_keep([1, 2], 4), 1, 1)


def test_packed_encoder_equals_padded_encoder_at_real_tokens():
  cfg = EncoderConfig(
    vocab_size=40, hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32, max_positions=24
  )
  params = init_params(cfg, jax.random.key(0))
  rng = np.random.default_rng(2)
  keep = _keep([10, 3, 7, 10], 10)
  ids = jnp.asarray(np.where(keep, rng.integers(3, 40, keep.shape), PAD), jnp.int32)
  layout = packing.make_layout(ids != PAD, packing.PackingSpec(2, 17))  # 13 and 17 tokens
  assert not bool(layout.overflow)
  run = lambda p, lay: Encoder(cfg).apply({"params": p}, ids, deterministic=True, layout=lay)
  padded, packed = run(params, None), run(params, layout)
  assert packed.last_hidden_state.shape == (2, 17, 16)
  assert packed.ffn_outputs.shape == (2, 2, 17, 16)
  full = packed.unpacked()
  real = keep[..., None]

  # Packed and padded are the same math in other shapes, so XLA may sum in another order: an
  # n-term dot product is within n * eps * sum_i |x_i w_i| of the exact value (the standard
  # bound), n = 32 (the FFN width, the widest reduction here), with the compared array's
  # largest magnitude standing in for the sum. An absolute bound (right near zero too) of
  # ~4e-6 of the scale: a token attending across a packing boundary moves values by percents.
  def assert_equal_up_to_rounding(got, want, err_msg=""):
    want = np.asarray(want, np.float64)
    bound = cfg.intermediate_size * np.finfo(np.float32).eps * np.abs(want).max()
    np.testing.assert_allclose(
      np.asarray(got, np.float64), want, rtol=0, atol=bound, err_msg=err_msg
    )

  for name in ("last_hidden_state", "embedding_output", "block_outputs", "ffn_outputs"):
    a, b = getattr(padded, name), getattr(full, name)
    assert_equal_up_to_rounding(b, np.where(real, a, 0), err_msg=name)
  # Gradients through the packed encoder (weights on real tokens only) equal the padded ones.
  w = jnp.asarray(rng.normal(size=(4, 10, 16)), jnp.float32) * real
  loss = lambda p, lay: jnp.sum(run(p, lay).unpacked().last_hidden_state * w)
  for a, b in zip(
    jax.tree_util.tree_leaves(jax.grad(loss)(params, None)),
    jax.tree_util.tree_leaves(jax.grad(loss)(params, layout)),
  ):
    assert_equal_up_to_rounding(b, a)
  with pytest.raises(ValueError, match=r"layout is for \[4, 10\] inputs"):
    Encoder(cfg).apply({"params": params}, ids[:2], deterministic=True, layout=layout)


def test_specs_for_batches_is_spec_for_batch_of_each():
  rng = np.random.default_rng(0)
  for groups, micro, buckets in [(1, 1, 16), (2, 1, 4), (2, 2, 8), (4, 2, 3)]:
    rows = rng.integers(0, 33, size=(40, 16))
    rows[3] = 32  # a full batch: unpacked
    many = packing.specs_for_batches(
      rows, seq_len=32, groups=groups, micro_batches=micro, buckets=buckets
    )
    one = [
      packing.spec_for_batch(r, seq_len=32, groups=groups, micro_batches=micro, buckets=buckets)
      for r in rows
    ]
    assert many == one and many[3] is None

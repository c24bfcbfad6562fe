"""Encoder options that must not change the math: rematerialisation, scan unrolling, attention
implementations, the CPU spelling of the projections' weight gradient, and bf16 compute with
float32 parameters."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from data2vec_jax.model.config import EncoderConfig, tiny_config
from data2vec_jax.model.encoder import Encoder, apply_last_block, init_params, take_positions
from data2vec_jax.speed.contraction import Projection, contract

IDS = jnp.array([[0, 5, 6, 7, 8, 2, 1, 1], [0, 9, 10, 11, 12, 13, 14, 2]], jnp.int32)
EPS = float(np.finfo(np.float32).eps)
# The tiny encoder's widest reduction: the FFN's 128-term dot products.
WIDEST = tiny_config().intermediate_size


def assert_equal_up_to_rounding(got, want, n=WIDEST, err_msg=""):
  """The same math run through other kernels or shapes (remat, unrolling, pruning, another
  CPU's XLA) differs only by float32 rounding: an n-term dot product is within n * eps *
  sum_i |x_i w_i| of the exact value (the standard bound). Here the compared array's largest
  magnitude stands in for that sum: one absolute bound per array, right for values near zero
  too (where a relative one is not), and ~1e-5 of the array's scale: far below any real bug."""
  want = np.asarray(want, np.float64)
  np.testing.assert_allclose(
    np.asarray(got, np.float64), want, rtol=0, atol=n * EPS * np.abs(want).max(), err_msg=err_msg
  )


@pytest.fixture(scope="module")
def params():
  return jax.jit(lambda r: init_params(tiny_config(), r))(jax.random.PRNGKey(0))


def loss_and_grads(cfg, params, deterministic=True):
  def loss(p):
    out = Encoder(cfg).apply(
      {"params": p}, IDS, deterministic=deterministic, rngs={"dropout": jax.random.PRNGKey(1)}
    )
    return jnp.sum(out.last_hidden_state.astype(jnp.float32) ** 2) + jnp.sum(
      out.ffn_outputs.astype(jnp.float32) ** 2
    )

  return jax.jit(jax.value_and_grad(loss))(params)


@pytest.mark.parametrize(
  "option",
  [
    dict(remat_policy="full"),
    dict(remat_policy="dots"),
    dict(remat_policy="dots_no_batch"),
    dict(scan_unroll=2),
    dict(scan_unroll=99),
  ],
)
def test_execution_options_give_the_same_gradients(params, option):
  base_loss, base_grads = loss_and_grads(tiny_config(), params, deterministic=False)
  loss, grads = loss_and_grads(tiny_config(**option), params, deterministic=False)
  # A sum of squares: positive, so a relative bound is right for it.
  assert float(loss) == pytest.approx(float(base_loss), rel=WIDEST * EPS)
  for g, b in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(base_grads)):
    assert_equal_up_to_rounding(g, b)


@pytest.mark.parametrize(
  "x_shape,k_shape,c",
  [
    ((2, 5, 8), (8, 12), 1),  # FFN: x smaller than dy -> x^T branch
    ((2, 5, 12), (12, 8), 1),  # fc2-like: dy smaller -> (dy^T x)^T branch
    ((2, 5, 8), (8, 3, 2, 4), 1),  # fused q/k/v kernel [D, 3, H, Dh]
    ((2, 5, 2, 4), (2, 4, 8), 2),  # attention output [H, Dh, D], two contracted axes
  ],
)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_canonical_weight_grad_matches_einsum(x_shape, k_shape, c, dtype):
  kx, kk, ky = jax.random.split(jax.random.PRNGKey(3), 3)
  x = jax.random.normal(kx, x_shape).astype(dtype)
  kernel = jax.random.normal(kk, k_shape).astype(dtype)
  out_shape = x_shape[: len(x_shape) - c] + k_shape[c:]
  dy = jax.random.normal(ky, out_shape).astype(dtype)

  def vjp(canonical):
    y, pullback = jax.vjp(lambda a, b: contract(a, b, c, canonical), x, kernel)
    return (y,) + pullback(dy)

  letters = "abcdefgh"
  lhs, rhs = letters[: len(x_shape)], letters[len(x_shape) - c : len(x_shape) - c + len(k_shape)]
  out = lhs[: len(x_shape) - c] + rhs[c:]
  ref_y, ref_pullback = jax.vjp(lambda a, b: jnp.einsum(f"{lhs},{rhs}->{out}", a, b), x, kernel)
  ref = (ref_y,) + ref_pullback(dy)
  # Both sides are float32-accumulated n-term dot products summed in some order, each then
  # rounded once to `dtype`: within 2 * n * eps32 * sum_i |x_i w_i| of each other (the standard
  # bound, per element: sum_i |x_i w_i| is the same contraction of |x|, |kernel|, |dy|), plus
  # two roundings to `dtype` of at most half its eps relative each.
  f32 = lambda a: jnp.abs(a).astype(jnp.float32)
  abs_y, abs_pullback = jax.vjp(
    lambda a, b: jnp.einsum(f"{lhs},{rhs}->{out}", a, b), f32(x), f32(kernel)
  )
  scales = (abs_y,) + abs_pullback(f32(dy))
  size = lambda shape: int(np.prod(shape))
  terms = (size(x_shape[len(x_shape) - c :]), size(k_shape[c:]), size(x_shape[: len(x_shape) - c]))
  for canonical in (True, False):
    got = jax.jit(vjp, static_argnums=0)(canonical)
    for g, r, scale, n in zip(got, ref, scales, terms):
      assert g.shape == r.shape and g.dtype == r.dtype
      r = np.asarray(r, np.float64)
      bound = float(jnp.finfo(dtype).eps) * np.abs(r) + 2 * n * EPS * np.asarray(scale)
      assert np.all(np.abs(np.asarray(g, np.float64) - r) <= bound), (canonical, n)


# Row 0 queries two real tokens and a pad; row 1 the first, a middle and the last token.
QUERY = jnp.array([[1, 4, 7], [0, 3, 7]], jnp.int32)


@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("attention_impl", ["reference", "xla"])
def test_last_block_at_chosen_positions_equals_the_full_encoder(num_layers, attention_impl):
  """Encoder(skip_last_block) + apply_last_block(query_index): the full encoder's values at those
  positions, and the same parameter gradients for a loss that reads only them."""
  cfg = tiny_config(num_layers=num_layers, attention_impl=attention_impl)
  p = init_params(cfg, jax.random.PRNGKey(3))
  attend = IDS != cfg.pad_id

  for feature in ("ffn", "ffn_residual"):  # the block's target feature comes out too
    whole = Encoder(cfg, feature=feature).apply({"params": p}, IDS)
    trunk = Encoder(cfg, feature=feature).apply({"params": p}, IDS, skip_last_block=True)
    _, last_feature = apply_last_block(
      cfg, p, trunk.last_hidden_state, attend, QUERY, feature=feature
    )
    assert_equal_up_to_rounding(last_feature, take_positions(whole.ffn_outputs[-1], QUERY))

  def full(p):
    return take_positions(Encoder(cfg).apply({"params": p}, IDS).last_hidden_state, QUERY)

  def pruned(p, index=QUERY):
    trunk = Encoder(cfg).apply({"params": p}, IDS, skip_last_block=True)
    assert trunk.block_outputs.shape[0] == num_layers - 1
    return apply_last_block(cfg, p, trunk.last_hidden_state, attend, index)[0]

  want, got = jax.jit(full)(p), jax.jit(pruned)(p)
  assert got.shape == (2, 3, cfg.hidden_size)
  assert_equal_up_to_rounding(got, want)
  # Without query_index the last block covers every position.
  everywhere = jax.jit(lambda p: pruned(p, None))(p)
  assert_equal_up_to_rounding(take_positions(everywhere, QUERY), want)

  weights = jax.random.normal(jax.random.PRNGKey(4), want.shape)
  grad = lambda f: jax.jit(jax.grad(lambda p: jnp.sum(f(p) * weights)))(p)
  for g, b in zip(jax.tree_util.tree_leaves(grad(pruned)), jax.tree_util.tree_leaves(grad(full))):
    assert_equal_up_to_rounding(g, b)


def test_projection_computes_a_slice_of_its_first_output_axis():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 8))
  proj = Projection((8, 3, 2, 4), ("embed", None, "heads", "kv"), jnp.float32, jnp.float32)
  variables = proj.init(jax.random.PRNGKey(1), x)
  variables = jax.tree_util.tree_map(lambda a: a + 0.1, nn.meta.unbox(variables))
  full = proj.apply(variables, x)
  part = proj.apply(variables, x, first_output=slice(1, 3))
  # Equal up to float32 rounding of two 8-term dot products that XLA may order differently:
  # each is within 8 * eps * sum_i |x_i w_i| (+|b|) of the exact value (the standard bound), an
  # absolute bound that stays right for outputs near zero, where a relative one does not.
  scale = proj.apply(jax.tree_util.tree_map(jnp.abs, variables), jnp.abs(x))[:, :, 1:3]
  bound = 2 * 8 * np.finfo(np.float32).eps * np.asarray(scale)
  assert np.all(np.abs(np.asarray(part) - np.asarray(full[:, :, 1:3])) <= bound)
  assert part.shape == (2, 3, 2, 2, 4)
  with pytest.raises(ValueError, match="output axis"):
    Projection((8,), ("embed",), jnp.float32, jnp.float32).init(
      jax.random.PRNGKey(0), x, first_output=slice(0, 1)
    )


def test_contract_refuses_mismatched_shapes():
  with pytest.raises(ValueError, match="cannot contract"):
    contract(jnp.ones((2, 3, 4)), jnp.ones((5, 6)))


def test_projection_has_the_dense_parameter_tree():
  x = jnp.ones((2, 3, 8))
  ours = Projection((8, 5), ("embed", "mlp"), jnp.float32, jnp.float32).init(
    jax.random.PRNGKey(0), x
  )
  dense = nn.Dense(5).init(jax.random.PRNGKey(0), x)
  shapes = lambda t: jax.tree_util.tree_map(jnp.shape, nn.meta.unbox(t))
  assert shapes(ours) == shapes(dense)


def test_xla_and_reference_attention_agree(params):
  outs = [
    Encoder(tiny_config(attention_impl=impl)).apply({"params": params}, IDS)
    for impl in ("xla", "reference")
  ]
  nonpad = np.asarray(IDS != 1)
  assert_equal_up_to_rounding(
    np.asarray(outs[0].last_hidden_state)[nonpad], np.asarray(outs[1].last_hidden_state)[nonpad]
  )


def test_bf16_compute_keeps_float32_params(params):
  cfg = tiny_config(dtype="bfloat16")
  loss, grads = loss_and_grads(cfg, params)
  ref_loss, _ = loss_and_grads(tiny_config(), params)
  assert all(g.dtype == jnp.float32 for g in jax.tree_util.tree_leaves(grads))
  # bf16 has an 8-bit mantissa: a percent-level agreement is what it can give.
  assert float(loss) == pytest.approx(float(ref_loss), rel=2e-2)
  out = Encoder(cfg).apply({"params": params}, IDS)
  assert out.last_hidden_state.dtype == jnp.bfloat16


@pytest.mark.parametrize(
  "bad",
  [
    dict(hidden_size=65),
    dict(dtype="float64"),
    dict(attention_impl="flash"),
    dict(remat_policy="some"),
    dict(scan_unroll=0),
    dict(dropout=1.5),
    dict(max_positions=2),
  ],
)
def test_bad_configs_are_refused(bad):
  with pytest.raises(ValueError):
    tiny_config(**bad)


def test_unknown_config_key_is_refused():
  with pytest.raises(ValueError, match="hiden_size"):
    EncoderConfig.from_dict({"hiden_size": 64})


def test_too_long_input_is_refused(params):
  cfg = tiny_config()
  ids = jnp.full((1, cfg.max_sequence_length + 1), 5, jnp.int32)
  with pytest.raises(ValueError, match="exceeds"):
    Encoder(cfg).apply({"params": params}, ids)


def test_auto_attention_picks_cudnn_only_for_full_bf16_attention_on_gpu(monkeypatch):
  from data2vec_jax.model import encoder as model_lib

  bf16 = tiny_config(dtype="bfloat16")
  resolve = model_lib._resolve_attention_impl
  assert resolve(bf16, dropout_active=False) == "xla"  # this CPU
  monkeypatch.setattr(model_lib.jax, "default_backend", lambda: "gpu")
  assert resolve(bf16, dropout_active=False) == "cudnn"
  assert resolve(bf16, dropout_active=True) == "reference"  # dropout on the probabilities
  assert resolve(bf16, dropout_active=False, all_queries=False) == "xla"  # pruned last block
  assert resolve(tiny_config(), dropout_active=False) == "xla"  # float32
  assert (
    resolve(tiny_config(dtype="bfloat16", attention_impl="cudnn"), False, all_queries=False)
    == "cudnn"
  )  # an explicit choice is kept

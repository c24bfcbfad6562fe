"""Schedules against fairseq's formulas; AdamW (+ clipping, weight-decay mask) against torch."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from data2vec_jax.runtime.optimizer import (
  OptimizerConfig,
  apply_gradients,
  gradient_scale,
  learning_rate_schedule,
  make_optimizer,
  weight_decay_mask,
)


def fairseq_cosine(n, lr=2e-4, warmup=10000, max_update=1000000, min_lr=0.0):
  """CosineLRSchedule.step_update (t_mult 1, warmup_init_lr = min_lr), within the first period."""
  if n < warmup:
    return min_lr + n * (lr - min_lr) / warmup
  period = max_update - warmup
  t = n - warmup
  return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * t / period))


def fairseq_tri_stage(n, lr, max_update, ratios, init_scale=0.01, final_scale=0.01):
  """TriStageLRSchedule.step_update with phase_ratio."""
  w, h, d = (int(max_update * r) for r in ratios)
  init_lr, final_lr = init_scale * lr, final_scale * lr
  if n < w:
    return init_lr + (lr - init_lr) / w * n
  if n < w + h:
    return lr
  if n <= w + h + d:
    return lr * math.exp(-(-math.log(final_scale) / d) * (n - w - h))
  return final_lr


def test_cosine_schedule():
  sched = learning_rate_schedule(OptimizerConfig())
  assert float(sched(0)) == 0.0  # the first update runs with lr 0, as in fairseq
  # Near the end of the cosine, cos(x) ~ -1 and float32 resolves it to eps/2 (its ulp), so
  # `1 + cos(x)` carries an absolute error of eps/2 per ulp of cos error, and lr = peak/2 *
  # (1 + cos) one of peak * eps / 4: `floor` allows 4 ulps, far below a schedule bug's lr.
  floor = 2e-4 * float(np.finfo(np.float32).eps)
  for n in (0, 1, 5000, 9999, 10000, 10001, 250000, 505000, 999999, 1000000):
    assert float(sched(n)) == pytest.approx(fairseq_cosine(n), rel=1e-5, abs=floor), n
  assert float(sched(5000)) == pytest.approx(1e-4, rel=1e-6)
  assert float(sched(10000)) == pytest.approx(2e-4, rel=1e-6)
  assert float(sched(505000)) == pytest.approx(1e-4, rel=1e-5)  # half-way down the cosine
  assert float(sched(1000000)) == pytest.approx(0.0, abs=floor)
  assert float(sched(1200000)) == pytest.approx(0.0, abs=floor)  # held after max_steps
  with_min = OptimizerConfig(min_lr=1e-5, warmup_steps=100, max_steps=1000)
  s = learning_rate_schedule(with_min)
  for n in (0, 50, 100, 550, 1000):
    assert float(s(n)) == pytest.approx(
      fairseq_cosine(n, warmup=100, max_update=1000, min_lr=1e-5), rel=1e-5
    )


@pytest.mark.parametrize("decay", ["exponential", "linear"])
def test_tri_stage_schedule(decay):
  cfg = OptimizerConfig(schedule="tri_stage", max_steps=1000, tri_stage_decay=decay)
  s = learning_rate_schedule(cfg)
  assert float(s(0)) == pytest.approx(2e-6)  # init_lr_scale * lr (fairseq default 0.01)
  assert float(s(25)) == pytest.approx(fairseq_tri_stage(25, 2e-4, 1000, cfg.tri_stage_ratios))
  for n in (50, 300, 849):  # hold stage
    assert float(s(n)) == pytest.approx(2e-4)
  for n in (1000, 5000):  # after the decay: final_lr_scale * lr
    assert float(s(n)) == pytest.approx(2e-6, rel=1e-5)
  for n in (850, 900, 925, 999, 1000):
    ref = fairseq_tri_stage(n, 2e-4, 1000, cfg.tri_stage_ratios)
    if decay == "linear":  # paper text: linear to the same end point
      ref = 2e-4 + (2e-6 - 2e-4) * (n - 850) / 150
    assert float(s(n)) == pytest.approx(ref, rel=1e-5), n


def test_constant_schedule():
  s = learning_rate_schedule(OptimizerConfig(schedule="constant", warmup_steps=10))
  assert [float(s(n)) for n in (0, 5, 10, 100)] == pytest.approx([0.0, 1e-4, 2e-4, 2e-4])
  s = learning_rate_schedule(OptimizerConfig(schedule="constant", warmup_steps=0))
  assert float(s(0)) == pytest.approx(2e-4)


class FairseqPolynomialDecay:
  """fairseq's PolynomialDecayLRSchedule (power 1, end lr 0) as a state machine, driven as the
  trainer drives it: built (lr/W), `step_update(0)` at once (trainer._build_optimizer), then
  `step_update(num_updates)` after each update."""

  def __init__(self, lr, warmup, total):
    self.lr, self.warmup, self.total = lr, warmup, total
    self.current = lr / warmup if warmup > 0 else lr
    self.step_update(0)

  def step_update(self, n):
    if self.warmup > 0 and n <= self.warmup:
      self.current = self.lr * n / self.warmup
    elif n >= self.total:
      self.current = 0.0
    else:
      self.current = self.lr * (1 - (n - self.warmup) / (self.total - self.warmup))


@pytest.mark.parametrize("warmup", [0, 7])
def test_polynomial_decay_schedule_matches_fairseq_update_by_update(warmup):
  # RTE's recipe shape: decay towards max_steps; the update after update n runs with the lr
  # fairseq set in step_update(n) (the first with the build-time lr).
  lr, total = 2e-5, 40
  ours = learning_rate_schedule(
    OptimizerConfig(schedule="polynomial_decay", lr=lr, warmup_steps=warmup, max_steps=total)
  )
  fairseq = FairseqPolynomialDecay(lr, warmup, total)
  for count in range(total + 5):
    assert float(ours(count)) == pytest.approx(fairseq.current, rel=1e-6, abs=1e-12), count
    fairseq.step_update(count + 1)


def _params(seed=0):
  r = np.random.default_rng(seed)
  return {
    "dense": {
      "kernel": r.normal(size=(4, 3)).astype(np.float32),
      "bias": r.normal(size=(3,)).astype(np.float32),
    },
    "layers": {"ln": {"scale": r.normal(size=(2, 3)).astype(np.float32)}},
  }


def _run_ours(cfg: OptimizerConfig, grads_seq, params, normalizer=1.0):
  tx = make_optimizer(cfg)
  state = tx.init(params)
  step = jax.jit(lambda p, s, g: apply_gradients(tx, cfg, p, s, g, normalizer)[:2])
  for g in grads_seq:
    params, state = step(params, state, g)
  return params


def _run_torch(cfg: OptimizerConfig, grads_seq, params, clip: bool):
  leaves = jax.tree_util.tree_leaves(params)
  tparams = [torch.nn.Parameter(torch.tensor(np.asarray(x))) for x in leaves]
  opt = torch.optim.AdamW(
    tparams, lr=cfg.lr, betas=(cfg.b1, cfg.b2), eps=cfg.eps, weight_decay=cfg.weight_decay
  )
  sched = learning_rate_schedule(cfg)
  for n, g in enumerate(grads_seq):
    for p, gl in zip(tparams, jax.tree_util.tree_leaves(g)):
      p.grad = torch.tensor(np.asarray(gl))
    if clip:
      torch.nn.utils.clip_grad_norm_(tparams, cfg.clip_norm)
    for group in opt.param_groups:
      group["lr"] = float(sched(n))  # fairseq/torch: update n+1 runs with lr(n)
    opt.step()
  return jax.tree_util.tree_unflatten(
    jax.tree_util.tree_structure(params), [p.detach().numpy() for p in tparams]
  )


def _grads(n, scale):
  r = np.random.default_rng(100)
  return [
    jax.tree_util.tree_map(
      lambda x: (scale * (1 + i) * r.normal(size=x.shape)).astype(np.float32), _params()
    )
    for i in range(n)
  ]


@pytest.mark.parametrize("clip", [False, True])
def test_adamw_matches_torch(clip):
  cfg = OptimizerConfig(
    lr=1e-2, warmup_steps=2, max_steps=10, weight_decay=0.1, clip_norm=1.0 if clip else 0.0
  )
  grads = _grads(6, scale=3.0)  # global norms ~10-60: clipping is active at every step
  ours = _run_ours(cfg, grads, _params())
  ref = _run_torch(cfg, grads, _params(), clip)
  for a, b in zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(ref)):
    np.testing.assert_allclose(a, b, rtol=2e-6, atol=2e-7)
  if clip:  # and clipping made a difference
    unclipped = _run_ours(OptimizerConfig(**{**cfg.to_dict(), "clip_norm": 0.0}), grads, _params())
    assert not np.allclose(
      jax.tree_util.tree_leaves(unclipped)[0], jax.tree_util.tree_leaves(ours)[0], rtol=1e-4
    )


def test_normalizer_is_folded_like_dividing_first():
  """apply_gradients(raw, n) == the same update from raw / n (clip active), against torch."""
  cfg = OptimizerConfig(lr=1e-2, warmup_steps=2, max_steps=10, weight_decay=0.1, clip_norm=1.0)
  n = 37.0
  grads = _grads(4, scale=3.0)
  ours = _run_ours(cfg, grads, _params(), normalizer=n)
  divided = [jax.tree_util.tree_map(lambda g: g / n, g) for g in grads]
  ref = _run_torch(cfg, divided, _params(), clip=True)
  for a, b in zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(ref)):
    np.testing.assert_allclose(a, b, rtol=2e-6, atol=2e-7)


def test_gradient_scale():
  scale, norm = gradient_scale(jnp.float32(40.0), jnp.float32(4.0), 5.0)  # norm 10 > 5: clip
  np.testing.assert_allclose([float(scale), float(norm)], [0.5 / 4.0, 10.0], rtol=1e-7)
  scale, norm = gradient_scale(jnp.float32(8.0), jnp.float32(4.0), 5.0)  # norm 2 < 5: no clip
  np.testing.assert_allclose([float(scale), float(norm)], [0.25, 2.0], rtol=1e-7)
  scale, _ = gradient_scale(jnp.float32(0.0), jnp.float32(4.0), 5.0)  # zero grads: finite
  assert float(scale) == 0.25
  scale, _ = gradient_scale(jnp.float32(1e6), jnp.float32(1.0), 0.0)  # clipping disabled
  assert float(scale) == 1.0


@pytest.mark.parametrize("decay_all", [True, False])
def test_weight_decay_mask(decay_all):
  cfg = OptimizerConfig(
    lr=0.1,
    schedule="constant",
    warmup_steps=0,
    weight_decay=0.5,
    decay_bias_and_norm=decay_all,
    clip_norm=0.0,
  )
  params = _params()
  zeros = jax.tree_util.tree_map(np.zeros_like, params)  # Adam step is 0: only decay moves p
  new = _run_ours(cfg, [zeros], params)
  np.testing.assert_allclose(
    new["dense"]["kernel"], params["dense"]["kernel"] * (1 - 0.05), rtol=1e-6
  )
  for path in (("dense", "bias"), ("layers", "ln", "scale")):  # stacked [L, D] scale is 2-D
    old, got = params[path[0]], new[path[0]]
    for k in path[1:]:
      old, got = old[k], got[k]
    expected = old * (1 - 0.05) if decay_all else old
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_weight_decay_mask_on_boxed_tree():
  boxed = {
    "k": nn.Partitioned(jnp.zeros((2, 3)), names=("embed", "mlp")),
    "bias": nn.Partitioned(jnp.zeros((3,)), names=("mlp",)),
  }
  mask = weight_decay_mask(boxed)
  assert jax.tree_util.tree_structure(mask) == jax.tree_util.tree_structure(boxed)
  assert [bool(x) for x in jax.tree_util.tree_leaves(mask)] == [False, True]  # sorted: bias, k


def test_config_validation():
  assert OptimizerConfig.from_dict(
    {"lr": 1e-3, "tri_stage_ratios": [0.1, 0.8, 0.1]}
  ).tri_stage_ratios == (0.1, 0.8, 0.1)
  with pytest.raises(ValueError, match="unknown"):
    OptimizerConfig.from_dict({"learning_rate": 1e-3})
  for bad in (
    dict(schedule="linear"),
    dict(tri_stage_ratios=(0.5, 0.5, 0.5)),
    dict(warmup_steps=10, max_steps=5),
    dict(tri_stage_decay="cosine"),
  ):
    with pytest.raises(ValueError):
      OptimizerConfig(**bad)

"""The FLOP formulas (data2vec_jax/model/flops.py) against matmul FLOPs counted in the traced programs.

`dot_flops` walks a jaxpr (and every sub-jaxpr: jit, custom_vjp, remat) and adds 2 * |out| *
|contracted| for each dot_general, so the formulas are checked against what the model actually
multiplies, not against themselves (a scan body counts `length` times).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import pytest

from data2vec_jax.model import flops
from data2vec_jax.model.config import EncoderConfig, tiny_config
from data2vec_jax.model.encoder import Encoder, apply_last_block, init_params, take_positions
from data2vec_jax.model.flops import (
  encoder_forward_flops_per_token,
  last_block_query_flops_per_token,
  train_flops_per_token,
)
from data2vec_jax.objective.loss import ObjectiveConfig
from data2vec_jax.objective.targets import teacher_targets_fn

CFG = tiny_config(
  num_layers=3, hidden_size=32, num_heads=4, intermediate_size=80, vocab_size=50, max_positions=40
)
B, T, K = 2, 24, 5


def _sub_jaxprs(value):
  if hasattr(value, "eqns"):
    yield value
  elif hasattr(value, "jaxpr") and hasattr(value.jaxpr, "eqns"):
    yield value.jaxpr
  elif isinstance(value, (tuple, list)):
    for v in value:
      yield from _sub_jaxprs(v)


def dot_flops(jaxpr) -> int:
  total = 0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      (lhs_contract, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval.shape
      total += 2 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[i] for i in lhs_contract)
    if eqn.primitive.name == "while":
      raise NotImplementedError("a while loop's trip count is not static")
    # A scan body runs `length` times (the encoder's blocks, unless fully unrolled).
    repeats = eqn.params["length"] if eqn.primitive.name == "scan" else 1
    for value in eqn.params.values():
      for sub in _sub_jaxprs(value):
        total += repeats * dot_flops(sub)
  return total


def counted(fn, *args) -> int:
  return dot_flops(jax.make_jaxpr(fn)(*args).jaxpr)


@pytest.fixture(scope="module")
def params():
  return init_params(CFG, jax.random.PRNGKey(0))


IDS = jnp.full((B, T), 7, jnp.int32)
INDEX = jnp.tile(jnp.arange(K, dtype=jnp.int32)[None], (B, 1))


def test_flops_formula_matches_design_doc():
  base = EncoderConfig()
  assert encoder_forward_flops_per_token(base, 512) == pytest.approx(188.7e6, rel=1e-3)
  # docs/DESIGN.md §5: a data2vec step is ~0.76 GFLOP/token at base, s=512.
  assert train_flops_per_token(base, 512) == pytest.approx(0.76e9, rel=0.01)


def test_encoder_forward_formula_counts_the_model_matmuls(params):
  got = counted(lambda p: Encoder(CFG).apply({"params": p}, IDS).last_hidden_state, params)
  assert got == encoder_forward_flops_per_token(CFG, T) * B * T


def test_pruned_last_block_saves_what_the_formula_says(params):
  """Forward + backward of a loss read at K positions per row: the pruned last block multiplies
  3 x (T - K) x its query-side FLOPs less per row, as `train_flops_per_token` discounts."""
  attend = IDS != CFG.pad_id

  def full(p):
    out = Encoder(CFG).apply({"params": p}, IDS).last_hidden_state
    return jnp.sum(take_positions(out, INDEX))

  def pruned(p):
    trunk = Encoder(CFG).apply({"params": p}, IDS, skip_last_block=True).last_hidden_state
    return jnp.sum(apply_last_block(CFG, p, trunk, attend, INDEX)[0])

  saved = counted(jax.grad(full), params) - counted(jax.grad(pruned), params)
  per_token = last_block_query_flops_per_token(CFG, T)
  assert saved == 3 * B * (T - K) * per_token
  fraction = K / T
  assert (
    train_flops_per_token(CFG, T, masked_fraction=fraction)
    - train_flops_per_token(CFG, T, masked_fraction=fraction, pruned_last_block=True)
  ) == pytest.approx(saved / (B * T))


def test_pruned_teacher_last_block_saves_what_the_formula_says(params):
  objective = ObjectiveConfig(average_top_k_layers=2)
  targets = lambda prune: (
    lambda p: teacher_targets_fn(p, IDS, config=CFG, objective=objective, prune_last_block=prune)(
      INDEX
    )
  )
  saved = counted(targets(False), params) - counted(targets(True), params)
  assert saved == B * (T - K) * last_block_query_flops_per_token(CFG, T)
  fraction = K / T
  assert (
    train_flops_per_token(CFG, T, masked_fraction=fraction)
    - train_flops_per_token(CFG, T, masked_fraction=fraction, pruned_teacher_last_block=True)
  ) == pytest.approx(saved / (B * T))


XEON = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
cpu MHz\t\t: 2699.998
flags\t\t: fpu sse2 avx fma avx2 avx512f avx512bw
"""


def test_cpu_peak_is_cores_times_clock_times_fma_width_and_says_so():
  # AVX-512: 16 fp32 lanes x 2 (FMA) x 2 units = 64 FLOP/cycle; the clock from the model name.
  peak, how = flops.cpu_peak_flops(XEON, cores=4)
  assert peak == 4 * 2.7e9 * 64
  assert how == (
    "4 CPU core(s) x 2.70 GHz x 64 fp32 FLOP/cycle (AVX-512 FMA, 2 FMA units assumed) = "
    "691.2 GFLOP/s"
  )
  # cpufreq's maximum wins over the name; AVX2 + FMA is 32 FLOP/cycle.
  avx2 = XEON.replace(" avx512f avx512bw", "")
  assert flops.cpu_peak_flops(avx2, cores=2, max_freq_khz=3.5e6)[0] == 2 * 3.5e9 * 32
  # Without a clock in the name, cpuinfo's "cpu MHz".
  plain = XEON.replace(" @ 2.70GHz", "")
  assert flops.cpu_peak_flops(plain, cores=1)[0] == 2699.998e6 * 64
  # No known vector flags or no clock at all: no peak can be stated.
  assert flops.cpu_peak_flops("model name\t: mystery\nflags\t: fpu\ncpu MHz\t: 1000\n", 2) is None
  assert flops.cpu_peak_flops("flags\t: avx2 fma\n", 2) is None


def test_mfu_peak_override_wins_and_cpu_devices_share_the_host_peak():
  assert flops.mfu_peak(1e12) == (
    1e12,
    "peak: 1e+12 FLOP/s per device (train.peak_flops_per_device)",
  )
  peak, how = flops.mfu_peak()
  host = flops._host_cpu_peak()
  if host is None:  # not Linux, or a CPU whose flags we do not know
    assert peak is None and "set train.peak_flops_per_device" in how
  else:  # the 8 fake CPU devices of the tests share the host's cores
    assert peak == host[0] / jax.local_device_count()
    assert how.startswith("peak on CPU, an estimate: ") and "to override" in how

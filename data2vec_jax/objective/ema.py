"""The EMA teacher of data2vec: decay schedule, update, and the parameters the teacher runs with.

fairseq reference (docs/reference/data2vec_text_reference.md §2): `Data2VecTextEncoder.set_num_updates` + `EMAModule.step`.

Ordering. fairseq calls `set_num_updates(n)` at the *start* of update n (n = completed updates):
at n = 0 it creates the teacher as a copy of the student θ0 (no EMA step); at n >= 1 it steps the
EMA with τ(n) on the current student θn (the weights the n-th optimizer step produced), then runs
the teacher forward. Here the same sequence is written from the other end: after the optimizer
step that produces θk (k = the new step count, k >= 1) the train step calls

    ema = ema_update(ema, θk, ema_decay(k, cfg), cfg)

and the teacher of update k is `teacher_params(ema, θk, cfg)`; the teacher of update 0 is
`init_ema(θ0)`. Each update therefore sees exactly the teacher fairseq builds for it.
Not reproduced (docs/reference/data2vec_text_reference.md §2.4 "quirks"): fairseq v1 steps the EMA once per *micro-batch* when
`update_freq > 1` and repeats a step after an fp16 overflow; here there is one EMA step per
optimizer update, as data2vec 2.0 guards for.

Precision. The EMA is kept in float32 (fairseq `ema_fp32=True`). fairseq forms `1 - decay` in
float64 on the host; here decay is a float32 scalar (it is a traced function of the step), so the
update rate 1 - τ carries a relative error of up to ~3e-5 at τ = 0.999 and ~3e-4 at τ = 0.9999
(float32 rounds τ to within 3e-8). Harmless: it changes the averaging horizon by that fraction. The teacher forward uses the EMA cast to the student's parameter dtype.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from data2vec_jax import strict_config

_EMBEDDINGS = "embeddings"  # the encoder subtree fairseq's skip_keys cover (tokens, positions, LN)


@dataclasses.dataclass(frozen=True)
class EMAConfig(strict_config.StrictConfig):
  """EMA teacher knobs; defaults are the data2vec text yaml (docs/reference/data2vec_text_reference.md §4).

  Attributes:
    ema_decay: τ0, the decay at update 0.
    ema_end_decay: τe, reached at `ema_anneal_end_step` and held after it. The paper's τn is
      100k; the yaml's is 300k (docs/reference/data2vec_text_reference.md §2.5, AMBIGUOUS) -- the default follows the yaml.
    ema_anneal_end_step: τn, number of updates of the linear anneal.
    ema_transformer_layers_only: only the transformer blocks are averaged; the token and position
      embeddings and the embedding LayerNorm are copied from the current student (fairseq
      `skip_keys`; the paper's "feature encoder and positional encoder shared").
  """

  ema_decay: float = 0.999
  ema_end_decay: float = 0.9999
  ema_anneal_end_step: int = 300000
  ema_transformer_layers_only: bool = True

  def __post_init__(self):
    for name in ("ema_decay", "ema_end_decay"):
      if not 0.0 <= getattr(self, name) <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
    if self.ema_anneal_end_step < 0:
      raise ValueError(f"ema_anneal_end_step must be >= 0, got {self.ema_anneal_end_step}")


def ema_decay(step: jax.Array | int, config: EMAConfig) -> jax.Array:
  """τ(step): linear from `ema_decay` to `ema_end_decay` over `ema_anneal_end_step`, then held.

  fairseq `get_annealed_rate(start, end, n, total) = end - (end - start) * (1 - n / total)` for
  n < total and `end` from n >= total on; when `ema_decay == ema_end_decay` the decay is that
  constant (fairseq then never re-sets it).

  Args:
    step: int scalar, number of completed optimizer updates (the k of θk the update averages in).
  Returns:
    float32 scalar τ.
  """
  start, end, total = config.ema_decay, config.ema_end_decay, config.ema_anneal_end_step
  if start == end:
    return jnp.asarray(start, jnp.float32)
  step = jnp.asarray(step, jnp.float32)
  if total <= 0:
    return jnp.asarray(end, jnp.float32)
  annealed = end - (end - start) * (1.0 - step / total)
  return jnp.where(step >= total, jnp.float32(end), annealed).astype(jnp.float32)


def init_ema(student_encoder_params: Any, config: EMAConfig) -> Any:
  """The EMA tree at update 0: a float32 copy of the student encoder (fairseq deep-copies it).

  With `ema_transformer_layers_only` only the {'layers': ...} subtree is kept: the teacher's
  embeddings are the current student's at every update (`teacher_params`), so an EMA copy of
  them would be dead state that costs a parameter-sized copy per step (the 50265 x D token table
  dominates the small configs) and its memory.
  """
  if config.ema_transformer_layers_only:
    _check_encoder_tree(student_encoder_params)
    student_encoder_params = {"layers": student_encoder_params["layers"]}
  return jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float32), student_encoder_params)


def ema_update(
  ema_params: Any, student_encoder_params: Any, decay: jax.Array, config: EMAConfig
) -> Any:
  """One EMA step (fairseq `EMAModule._step_internal`), in float32.

  `ema <- decay * ema + (1 - decay) * student` for every leaf of the EMA tree (`init_ema`: the
  whole encoder, or only 'layers' with `ema_transformer_layers_only`, whose embeddings fairseq
  copies from the student instead -- `teacher_params` takes them from the student directly).
  A decay >= 1 leaves the EMA unchanged, as fairseq skips `ema.step` then.

  Args:
    ema_params: float32 tree from `init_ema` (may be boxed in `nn.Partitioned`; the boxes are
      kept).
    student_encoder_params: the student's encoder tree θk ({'embeddings', 'layers'}), any float
      dtype.
    decay: float32 scalar τ(k) from `ema_decay`.
  Returns:
    The new float32 EMA tree.
  """
  decay = jnp.asarray(decay, jnp.float32)

  def average(e, s):
    e = jnp.asarray(e, jnp.float32)
    new = e * decay + jnp.asarray(s, jnp.float32) * (1.0 - decay)
    return jnp.where(decay < 1.0, new, e)

  if not config.ema_transformer_layers_only:
    return jax.tree_util.tree_map(average, ema_params, student_encoder_params)
  _check_layers_only_tree(ema_params)
  return {
    "layers": jax.tree_util.tree_map(
      average, ema_params["layers"], student_encoder_params["layers"]
    )
  }


def teacher_params(ema_params: Any, student_encoder_params: Any, config: EMAConfig) -> Any:
  """Encoder parameters for the teacher forward, in the student's parameter dtype.

  With `ema_transformer_layers_only` the EMA tree holds only 'layers' and the 'embeddings' are
  the current student's: the values fairseq copies into its EMA after every optimizer step.
  Returned under no stop_gradient: `objective.loss_fn` stops gradients at the teacher.
  """

  def cast(e, s):
    return jnp.asarray(e, jnp.asarray(s).dtype)

  if not config.ema_transformer_layers_only:
    return jax.tree_util.tree_map(cast, ema_params, student_encoder_params)
  _check_layers_only_tree(ema_params)
  _check_encoder_tree(student_encoder_params)
  return {
    _EMBEDDINGS: student_encoder_params[_EMBEDDINGS],
    "layers": jax.tree_util.tree_map(cast, ema_params["layers"], student_encoder_params["layers"]),
  }


def _check_encoder_tree(params: Any) -> None:
  if _EMBEDDINGS not in params or "layers" not in params:
    raise ValueError(
      f"expected an encoder parameter tree with 'embeddings' and 'layers', got keys "
      f"{sorted(params)}"
    )


def _check_layers_only_tree(ema_params: Any) -> None:
  if set(ema_params) != {"layers"}:
    raise ValueError(
      "with ema_transformer_layers_only the EMA tree holds only 'layers' (init_ema), got keys "
      f"{sorted(ema_params)}; a checkpoint written with a full EMA encoder needs "
      "ema_transformer_layers_only=False"
    )

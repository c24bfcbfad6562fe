"""Optimizer and learning-rate schedules (docs/reference/data2vec_text_reference.md §4): clip-by-global-norm then AdamW.

Schedules are functions of the optax update count, which is 0 at the first update; fairseq calls
`lr_scheduler.step_update(0)` at build time and `step_update(n)` after update n, so its update
n+1 runs with lr(n) -- the first update runs with lr(0). Both therefore evaluate the same formula
at the same count:

- 'cosine' (fairseq `CosineLRSchedule`, yaml): linear warmup from `min_lr` (fairseq's
  `warmup_init_lr` defaults to min_lr = 0) to `lr` over `warmup_steps`, then
  `min_lr + (lr - min_lr)/2 * (1 + cos(pi * (n - warmup) / (max_steps - warmup)))`. After
  `max_steps` it holds `min_lr` (fairseq would start a new, shrunk cosine period).
- 'tri_stage' (fairseq `TriStageLRSchedule` with `phase_ratio`, the paper's main row): stage
  lengths `int(max_steps * ratio)`; warmup from `init_lr_scale * lr` to `lr`, hold, then decay to
  `final_lr_scale * lr` and hold that. `tri_stage_decay='exponential'` is fairseq's code
  (`lr * exp(-ln(1/final_lr_scale) * t / decay_steps)`); 'linear' (default) is the paper's text
  ("15% linear decay"), interpolating linearly to the same end value. AMBIGUOUS in the sources.
  The first update runs with `init_lr_scale * lr` (fairseq default 0.01; 0 gives lr 0 there).
- 'constant': linear warmup from 0 over `warmup_steps`, then `lr`.
- 'polynomial_decay' (fairseq `PolynomialDecayLRSchedule`, power 1, end lr 0: the GLUE
  fine-tuning recipe, docs/reference/finetuning_reference.md §1.3): `lr * n / W` for n <= W, then
  `lr * (1 - (n - W) / (max_steps - W))`, and 0 from `max_steps` on. The scheduler's constructor
  sets lr/W, but the trainer calls `step_update(0)` right after building it (fairseq
  `trainer.py` `_build_optimizer`), so the first update runs with lr 0, not lr/W as the
  reference's §1.3 says; read in fairseq HEAD 3d262bb2.

AdamW: optax's `adamw` (decoupled weight decay `p -= lr * wd * p`, as fairseq's Adam and
`torch.optim.AdamW`). One documented difference from fairseq's own Adam (docs/reference/data2vec_text_reference.md §4): fairseq
adds eps to the *un*-bias-corrected sqrt(v), `m_hat * sqrt(1-b2^t) / (sqrt(v) + eps)`, whereas
optax and torch add it to sqrt(v_hat): fairseq's effective eps is eps / sqrt(1 - b2^t) (7x larger
at t = 1, ->1x later). With eps = 1e-6 this only matters for parameters with tiny gradients.

Clipping (`apply_gradients`): by global norm, of the gradient divided by the number of loss
positions (fairseq clips after `multiply_grads`), with optax's rule (`clip_by_global_norm`: scale
by `clip_norm / norm` when norm >= clip_norm). fairseq scales by `clip_norm / (norm + 1e-6)`: a
2e-7 relative difference at norm 5. The normalisation and the clip factor are folded into one
scalar that multiplies the raw gradients inside AdamW's elementwise pass, instead of an optax
`clip_by_global_norm` stage: XLA then reads each gradient once for the norm and once for the
update, where the chain materialised the divided and then the clipped gradients (two extra
passes over every parameter-sized array, ~20 ms of a 0.6 s CPU step of the small config).

Weight decay: fairseq v1 decays every parameter (`decay_bias_and_norm=True`). False excludes
biases, LayerNorm scales and any <= 1-D parameter (data2vec 2.0's `optim_overrides`). Because
the blocks are scanned, a block's bias/scale is 2-D ([L, D]), so exclusion goes by name.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import optax

from data2vec_jax import strict_config
from data2vec_jax.model import pad_rows

SCHEDULES = ("cosine", "tri_stage", "constant", "polynomial_decay")
TRI_STAGE_DECAYS = ("linear", "exponential")
_NO_DECAY_NAMES = ("bias", "scale")  # Dense/LayerNorm biases and LayerNorm scales


@dataclasses.dataclass(frozen=True)
class OptimizerConfig(strict_config.StrictConfig):
  """Optimizer and schedule knobs; defaults are the data2vec text yaml (docs/reference/data2vec_text_reference.md §4).

  Attributes:
    lr: peak learning rate.
    b1, b2, eps: Adam betas and epsilon (fairseq adam_betas (0.9, 0.98), adam_eps 1e-6).
    weight_decay: decoupled weight decay coefficient.
    decay_bias_and_norm: decay biases and LayerNorm parameters too (fairseq v1 does).
    clip_norm: max global gradient norm; <= 0 disables clipping.
    schedule: 'cosine' | 'tri_stage' | 'constant' | 'polynomial_decay' (module docstring).
    warmup_steps: warmup updates of 'cosine' and 'constant'.
    max_steps: total updates (fairseq max_update); the cosine period ends here.
    min_lr: cosine floor and warmup start.
    tri_stage_ratios: (warmup, hold, decay) fractions of max_steps; must sum to 1.
    init_lr_scale: tri-stage warmup start, as a fraction of lr (fairseq 0.01).
    final_lr_scale: tri-stage end, as a fraction of lr (fairseq 0.01).
    tri_stage_decay: 'linear' (paper text) or 'exponential' (fairseq code).
  """

  lr: float = 2e-4
  b1: float = 0.9
  b2: float = 0.98
  eps: float = 1e-6
  weight_decay: float = 0.01
  decay_bias_and_norm: bool = True
  clip_norm: float = 5.0
  schedule: str = "cosine"
  warmup_steps: int = 10000
  max_steps: int = 1000000
  min_lr: float = 0.0
  tri_stage_ratios: tuple[float, float, float] = (0.05, 0.8, 0.15)
  init_lr_scale: float = 0.01
  final_lr_scale: float = 0.01
  tri_stage_decay: str = "linear"

  def __post_init__(self):
    if self.schedule not in SCHEDULES:
      raise ValueError(f"schedule={self.schedule!r}; expected one of {SCHEDULES}")
    if self.tri_stage_decay not in TRI_STAGE_DECAYS:
      raise ValueError(
        f"tri_stage_decay={self.tri_stage_decay!r}; expected one of {TRI_STAGE_DECAYS}"
      )
    object.__setattr__(self, "tri_stage_ratios", tuple(float(r) for r in self.tri_stage_ratios))
    if len(self.tri_stage_ratios) != 3 or abs(sum(self.tri_stage_ratios) - 1.0) > 1e-6:
      raise ValueError(
        f"tri_stage_ratios must be 3 numbers summing to 1, got {self.tri_stage_ratios}"
      )
    if self.warmup_steps < 0 or self.max_steps <= 0:
      raise ValueError("warmup_steps must be >= 0 and max_steps > 0")
    if self.schedule in ("cosine", "polynomial_decay") and self.warmup_steps >= self.max_steps:
      raise ValueError(f"{self.schedule} needs warmup_steps < max_steps")
    if self.schedule == "tri_stage" and not 0.0 < self.final_lr_scale <= 1.0:
      raise ValueError("final_lr_scale must be in (0, 1] (fairseq takes its log)")


def _warmup(count: jax.Array, start: float, end: float, steps: int) -> jax.Array:
  """fairseq warmup: start + count * (end - start) / steps."""
  return start + count * ((end - start) / steps)


def learning_rate_schedule(config: OptimizerConfig) -> optax.Schedule:
  """lr as a function of the number of completed updates (0 for the first update)."""
  peak, warmup = config.lr, config.warmup_steps

  if config.schedule == "cosine":
    period = config.max_steps - warmup
    min_lr = min(config.min_lr, peak)  # fairseq: `if max_lr < min_lr: min_lr = max_lr`

    def schedule(count):
      count = jnp.asarray(count, jnp.float32)
      t = jnp.clip(count - warmup, 0.0, period)
      cosine = min_lr + 0.5 * (peak - min_lr) * (1.0 + jnp.cos(math.pi * t / period))
      if warmup == 0:
        return cosine
      return jnp.where(count < warmup, _warmup(count, min_lr, peak, warmup), cosine)

    return schedule

  if config.schedule == "constant":

    def schedule(count):
      count = jnp.asarray(count, jnp.float32)
      if warmup == 0:
        return jnp.full_like(count, peak)
      return jnp.where(count < warmup, _warmup(count, 0.0, peak, warmup), peak)

    return schedule

  if config.schedule == "polynomial_decay":
    total = config.max_steps

    def schedule(count):
      count = jnp.asarray(count, jnp.float32)
      decay = peak * jnp.clip(1.0 - (count - warmup) / (total - warmup), 0.0, 1.0)
      if warmup == 0:
        return decay
      return jnp.where(count <= warmup, _warmup(count, 0.0, peak, warmup), decay)

    return schedule

  # tri_stage, with fairseq's `phase_ratio` arithmetic and stage boundaries (`_decide_stage`).
  w, h, d = (int(config.max_steps * r) for r in config.tri_stage_ratios)
  init_lr, final_lr = config.init_lr_scale * peak, config.final_lr_scale * peak

  def schedule(count):
    count = jnp.asarray(count, jnp.float32)
    warm = _warmup(count, init_lr, peak, w) if w > 0 else jnp.full_like(count, peak)
    t = count - (w + h)
    if d == 0:
      decayed = jnp.full_like(count, final_lr)
    elif config.tri_stage_decay == "exponential":
      decayed = peak * jnp.exp(math.log(config.final_lr_scale) / d * t)
    else:
      decayed = peak + (final_lr - peak) * t / d
    return jnp.where(
      count < w,
      warm,
      jnp.where(count < w + h, peak, jnp.where(count <= w + h + d, decayed, final_lr)),
    )

  return schedule


def weight_decay_mask(params: Any) -> Any:
  """True for parameters that get weight decay when `decay_bias_and_norm=False`.

  Excluded: leaves named 'bias' or 'scale' (Dense/LayerNorm biases, LayerNorm scales, stacked
  or not, and the MLM head's output bias) and any leaf with ndim <= 1. Works on boxed
  (`nn.Partitioned`) or plain trees: the result has the same structure with bool leaves.
  """

  def decide(path, leaf) -> bool:
    names = [p.key for p in path if isinstance(p, jax.tree_util.DictKey)]
    name = names[-1] if names else ""
    return not (name in _NO_DECAY_NAMES or jnp.ndim(leaf) <= 1)

  return jax.tree_util.tree_map_with_path(decide, params)


def make_optimizer(config: OptimizerConfig) -> optax.GradientTransformation:
  """AdamW(schedule, b1, b2, eps, weight_decay). Clipping is `apply_gradients`' job."""
  return optax.adamw(
    learning_rate=learning_rate_schedule(config),
    b1=config.b1,
    b2=config.b2,
    eps=config.eps,
    weight_decay=config.weight_decay,
    mask=None if config.decay_bias_and_norm else weight_decay_mask,
  )


def gradient_scale(
  raw_norm: jax.Array, normalizer: jax.Array, clip_norm: float
) -> tuple[jax.Array, jax.Array]:
  """The one scalar that turns raw gradients into normalised, clipped ones.

  Args:
    raw_norm: float32 global L2 norm of the un-normalised gradients.
    normalizer: float32 > 0 the gradients are divided by (the number of loss positions).
    clip_norm: max global norm of the normalised gradients; <= 0 disables clipping.
  Returns:
    (scale, grad_norm): multiply the raw gradients by `scale`; `grad_norm` is the norm of the
    normalised gradients before clipping (what fairseq logs as gnorm).
  """
  grad_norm = raw_norm / normalizer
  scale = 1.0 / normalizer
  if clip_norm > 0:
    # optax.clip_by_global_norm's rule; the where keeps a zero norm from dividing by zero.
    safe_norm = jnp.where(grad_norm > 0, grad_norm, 1.0)
    scale = scale * jnp.where(grad_norm < clip_norm, 1.0, clip_norm / safe_norm)
  return scale, grad_norm


def apply_gradients(
  tx: optax.GradientTransformation,
  config: OptimizerConfig,
  params: Any,
  opt_state: Any,
  raw_grads: Any,
  normalizer: jax.Array | float = 1.0,
  pad_id: int | None = None,
) -> tuple[Any, Any, jax.Array]:
  """One update from un-normalised gradients: divide by `normalizer`, clip, AdamW (`tx`).

  pad_id: row `pad_id` of the token and position embedding tables is frozen: its gradient
  (before the norm and the moments) and its update (weight decay included) are exactly 0, so
  the row stays bit-identical (`model/pad_rows.py`). None freezes nothing.
  Returns (new params, new opt_state, grad_norm of the normalised gradients before clipping).
  """
  raw_grads = pad_rows.zero_pad_rows(raw_grads, pad_id)
  normalizer = jnp.asarray(normalizer, jnp.float32)
  scale, grad_norm = gradient_scale(optax.tree.norm(raw_grads), normalizer, config.clip_norm)
  grads = jax.tree_util.tree_map(lambda g: g * scale.astype(g.dtype), raw_grads)
  updates, opt_state = tx.update(grads, opt_state, params)
  updates = pad_rows.zero_pad_rows(updates, pad_id)
  return optax.apply_updates(params, updates), opt_state, grad_norm

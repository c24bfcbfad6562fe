"""The data2vec (v1, text) objective and the RoBERTa MLM baseline: model, loss and metrics.

data2vec (fairseq `Data2VecTextEncoder.forward`, reference §1.5):

  x    = student(source)            last block output, train mode (dropout)
  y    = targets(teacher(teacher_in))   top-K FFN outputs, normalised, averaged (`targets.py`)
  loss = loss_scale * sum_{t in loss positions} sum_d  l(head(x_t)_d - y_t,d)

with l = PyTorch's smooth-L1 with `beta` (`0.5 d^2 / beta` if |d| < beta else `|d| - beta/2`;
note `optax.huber_loss` is beta times this) or the squared error when beta == 0. The loss is a
SUM: fairseq divides the gradient by the number of loss positions of the whole global batch
(reference §1.6), which only the train step knows.

Loss positions (`loss_positions`): 'mask_token' = `source == <mask>` (the reference's
`src_tokens.eq(mask_idx)`; with BERT 80/10/10 masking that is only the 80% replaced by <mask>,
fairseq issue #4229), or 'selected' = every position the masker chose. The MLM baseline always
uses the selected positions (fairseq `masked_lm` criterion: `target != pad`).

Teacher input (`teacher_input`, reference §3.3, AMBIGUOUS): 'unmasked' (default, the paper) feeds
the original tokens; 'masked_only' reproduces the published fairseq code, whose teacher gets
`target_tokens` = the original token at the masker's *selected* positions and <pad> elsewhere, so
the selected tokens attend only to each other at compacted positions (the encoder's
`make_positions` does the compaction, as in fairseq).

Everything has static shapes (positions are weights, never boolean indexing), so it jit-compiles.
Head positions (`head_positions_per_row`): 0 runs the head on every position and lets the loss
weights select (simple; wasted head FLOPs: ~3% of a data2vec step, far more for the MLM head's
[B, T, V] logits). K > 0 gathers, per row, the loss positions into K slots (in order, then
filler slots with weight 0) and runs the head and the loss there only -- what fairseq's
`x[masked_indices]` does, in static shapes. A batch with a row of more than K loss positions is
never silently truncated. `head_overflow` says what happens instead:
- 'fallback' (the default): a `lax.cond` runs the every-position path for that batch (exact
  either way; metric 'head_gathered' is 1 when the gathered path ran). The price is a second
  compiled copy of the head (and, when pruned, of the last blocks) behind the cond: on CPU
  +44-57% compile time for the small config and +12-15% for base, +0.6 GiB peak memory for base
  (bench/README.md); on GPU, XLA reads a cond's predicate back to the host.
- 'error': no fallback is compiled. For callers that *guarantee* at most K loss positions per
  row: the trainer, when K is the masker's exact bound (`masking.max_selected_per_row` with fixed
  span lengths), checks every host batch with `check_head_positions` before it is dispatched and
  stops with a clear error. Should a batch beyond K still reach the step, its loss and gradients
  are NaN (`head_gathered` 0): loud, never a loss over a subset of the positions.
The trainer's 'auto' (-1) derives K from the masking config, and its head_overflow 'auto' picks
'error' exactly when that K is a guaranteed bound (`trainer.py`).

Pruned last block (`prune_last_block`, on by default, active with gathered heads): the student's
last block is only ever read at the loss positions, so on the gathered path it runs there only --
keys and values over all T positions, but queries, attention output, LayerNorms and FFN over the
K slots (`model.apply_last_block`). The teacher's last block likewise, when the targets are per
position (layer norms only, the yaml's choice; instance and batch norm need every position):
`targets.teacher_targets_fn`. Same values and gradients (float rounding aside); the last-block
work drops by ~(1 - K/T) of its q/out/FFN share (`flops.train_flops_per_token`): ~17% of a 4-layer
data2vec step's matmuls at T=128, ~5% of base's. The reference computes every position. The
student's dropout streams differ from the unpruned path (the trunk and the last block take split
keys), not their distribution.

Token packing (`loss_fn(..., packing=PackingSpec)`, `packing.py`): the student encoder runs on
the real tokens only, packed per group of rows into static slots, and so does the teacher when
its targets are per position (instance and batch norm average over the pads, so the teacher then
runs padded). Same loss and gradients (torch-parity tests); the pads' share of the per-token
FLOPs is saved. The reference computes every pad.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from data2vec_jax import packing as packing_lib
from data2vec_jax import strict_config
from data2vec_jax.heads import MaskedLMHead, RegressionHead
from data2vec_jax.model import (Encoder, EncoderOutput, apply_last_block, gather_positions,
                                take_positions)
from data2vec_jax.model_config import EncoderConfig
from data2vec_jax.targets import TARGET_TYPES, targets_are_per_position, teacher_targets_fn

KINDS = ("data2vec", "mlm")
TEACHER_INPUTS = ("unmasked", "masked_only")
LOSS_POSITIONS = ("mask_token", "selected")
HEAD_OVERFLOWS = ("fallback", "error")
VAR_EPS = 1e-6  # data2vec 2.0 compute_var


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig:
  """What is predicted and how it is scored; defaults are the data2vec text yaml (reference §4).

  Attributes:
    kind: 'data2vec' (EMA-teacher regression) or 'mlm' (RoBERTa baseline, tied LM head).
    average_top_k_layers: K, how many of the top blocks are averaged (yaml 10).
    layer_norm_target_layer: parameter-free LayerNorm over channels per layer (yaml true).
    instance_norm_target_layer: instance norm over time per layer (data2vec 2.0 / speech).
    batch_norm_target_layer: batch norm (batch statistics) per layer.
    layer_norm_targets: LayerNorm after averaging.
    instance_norm_targets: instance norm after averaging.
    target_type: 'ffn' (FFN output, the paper's choice), 'ffn_residual' or 'end_of_block'.
    head_layers: regression head depth (yaml 2: Linear(D,2D)-GELU-Linear(2D,D); 1: Linear(D,D)).
    loss_beta: smooth-L1 beta in PyTorch's convention; 0 = squared error (yaml 4).
    loss_scale: multiplies the summed loss; <= 0 means 1/sqrt(D) (yaml 1). Not used by 'mlm'.
    teacher_input: 'unmasked' (paper) or 'masked_only' (published fairseq code), see module doc.
    loss_positions: 'mask_token' (reference: source == <mask>) or 'selected'; data2vec only.
    mask_id: id of <mask> (50264 in the released dictionary).
    head_positions_per_row: 0 = head and loss on every position; K > 0 = on at most K gathered
      loss positions per row (module docstring; same loss, fewer head FLOPs).
    prune_last_block: with gathered heads, also run the student's last block at the gathered
      positions only, and the teacher's too when the targets are per position (layer norms
      only); module docstring. Same loss, fewer FLOPs. Ignored when K == 0.
    head_overflow: with gathered heads, a batch whose row has more than K loss positions runs
      the every-position path ('fallback', exact) or is refused ('error': NaN loss; for callers
      that guarantee the bound and check batches with `check_head_positions`); module docstring.
  """

  kind: str = "data2vec"
  average_top_k_layers: int = 10
  layer_norm_target_layer: bool = True
  instance_norm_target_layer: bool = False
  batch_norm_target_layer: bool = False
  layer_norm_targets: bool = False
  instance_norm_targets: bool = False
  target_type: str = "ffn"
  head_layers: int = 2
  loss_beta: float = 4.0
  loss_scale: float = 1.0
  teacher_input: str = "unmasked"
  loss_positions: str = "mask_token"
  mask_id: int = 50264
  head_positions_per_row: int = 0
  prune_last_block: bool = True
  head_overflow: str = "fallback"

  def __post_init__(self):
    for name, allowed in (("kind", KINDS), ("target_type", TARGET_TYPES),
                          ("teacher_input", TEACHER_INPUTS), ("loss_positions", LOSS_POSITIONS),
                          ("head_overflow", HEAD_OVERFLOWS)):
      if getattr(self, name) not in allowed:
        raise ValueError(f"{name}={getattr(self, name)!r}; expected one of {allowed}")
    if self.average_top_k_layers < 1:
      raise ValueError(f"average_top_k_layers must be >= 1, got {self.average_top_k_layers}")
    if self.head_layers < 1:
      raise ValueError(f"head_layers must be >= 1, got {self.head_layers}")
    if self.loss_beta < 0:
      raise ValueError(f"loss_beta must be >= 0, got {self.loss_beta}")
    if self.head_positions_per_row < 0:
      raise ValueError(f"head_positions_per_row must be >= 0 (0 = every position), got "
                       f"{self.head_positions_per_row}")

  @classmethod
  def from_dict(cls, values: Mapping[str, Any]) -> "ObjectiveConfig":
    """Builds a config from a dict, refusing unknown keys."""
    return strict_config.from_dict(cls, values)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


class PretrainingModel(nn.Module):
  """Student encoder + head. Params: {'encoder': Encoder tree, 'head': head tree}.

  `head` is a `RegressionHead` (data2vec) or a `MaskedLMHead` (mlm, decoder tied to
  encoder/embeddings/token_embedding). Every parameter carries logical axis names, so
  `.init(rng, tokens)` returns `nn.Partitioned`-boxed params. `encode` and `predict` run the two
  halves separately (same parameter paths and dropout streams), so the loss can gather positions
  between them.
  """

  config: EncoderConfig
  objective: ObjectiveConfig

  def setup(self):
    self.encoder = Encoder(self.config)
    if self.objective.kind == "data2vec":
      self.head = RegressionHead(self.config, self.objective.head_layers)
    else:
      self.head = MaskedLMHead(self.config)

  def encode(self, tokens: jax.Array, *, deterministic: bool = True,
             skip_last_block: bool = False,
             layout: packing_lib.TokenLayout | None = None) -> EncoderOutput:
    """tokens: [B, T] int32 student input. Dropout needs the 'dropout' rng. With a packing
    `layout` the outputs are packed [G, C, D] (`Encoder`)."""
    return self.encoder(tokens, deterministic=deterministic, skip_last_block=skip_last_block,
                        layout=layout)

  def predict(self, features: jax.Array) -> jax.Array:
    """features: [..., D] student features -> predictions [..., D] in the compute dtype
    (data2vec) or float32 logits [..., V] (mlm)."""
    if self.objective.kind == "data2vec":
      return self.head(features)
    table = self.encoder.variables["params"]["embeddings"]["token_embedding"]["embedding"]
    return self.head(features, nn.meta.unbox(table))

  def __call__(self, tokens: jax.Array, *,
               deterministic: bool = True) -> tuple[EncoderOutput, jax.Array]:
    """tokens: [B, T] int32. Returns (encoder output, head output at every position)."""
    out = self.encode(tokens, deterministic=deterministic)
    return out, self.predict(out.last_hidden_state)


def gathers_head_positions(objective: ObjectiveConfig, seq_len: int) -> bool:
  """Whether the head runs on K < seq_len gathered slots per row (when every row fits K)."""
  return 0 < objective.head_positions_per_row < seq_len


def prunes_last_block(objective: ObjectiveConfig, seq_len: int) -> bool:
  """Whether the student's last block runs on the gathered slots only (when every row fits)."""
  return objective.prune_last_block and gathers_head_positions(objective, seq_len)


def prunes_teacher_last_block(objective: ObjectiveConfig, seq_len: int) -> bool:
  """Whether the teacher's last block runs on the gathered slots only (per-position targets)."""
  return (objective.kind == "data2vec" and prunes_last_block(objective, seq_len)
          and targets_are_per_position(objective))


def packs_teacher(objective: ObjectiveConfig) -> bool:
  """Whether a packed step packs the teacher too: only when its targets read no pad
  (per-position targets; instance and batch norm average over the pads)."""
  return objective.kind == "data2vec" and targets_are_per_position(objective)


def regression_loss(pred: jax.Array, target: jax.Array, beta: float) -> jax.Array:
  """Element-wise `F.smooth_l1_loss(reduction='none', beta=beta)`, `F.mse_loss` when beta == 0."""
  d = pred.astype(jnp.float32) - target.astype(jnp.float32)
  if beta == 0:
    return d * d
  ad = jnp.abs(d)
  return jnp.where(ad < beta, 0.5 * d * d / beta, ad - 0.5 * beta)


def masked_std(x: jax.Array, weights: jax.Array) -> jax.Array:
  """data2vec 2.0 `compute_var` over the weighted rows: mean_d sqrt(unbiased var_d + 1e-6).

  x: [N, D]; weights: [N] float32 0/1. Returns a float32 scalar (0 when fewer than 2 rows).
  """
  x = x.astype(jnp.float32)
  n = jnp.sum(weights)
  mean = jnp.sum(x * weights[:, None], axis=0) / jnp.maximum(n, 1.0)
  var = jnp.sum(jnp.square(x - mean) * weights[:, None], axis=0) / jnp.maximum(n - 1.0, 1.0)
  return jnp.where(n > 1, jnp.mean(jnp.sqrt(var + VAR_EPS)), 0.0)


def loss_positions(batch: Mapping[str, Any], *, config: EncoderConfig,
                   objective: ObjectiveConfig) -> Any:
  """[B, T] bool positions the loss covers (see module docstring).

  Operators only, so it runs on jax arrays in the step and on the host's numpy batches alike.
  """
  if objective.kind == "mlm" or objective.loss_positions == "selected":
    return batch["selected"] & (batch["target"] != config.pad_id)
  return batch["source"] == objective.mask_id


def check_head_positions(batch: Mapping[str, np.ndarray], *, config: EncoderConfig,
                         objective: ObjectiveConfig) -> None:
  """Raises ValueError if a row of this host batch has more loss positions than the head's K.

  For `head_overflow='error'`, where the step compiles no fallback for such a batch. batch:
  numpy 'source' / 'target' [B, T] int, 'selected' [B, T] bool. No-op when K == 0 (every
  position) or K >= T (nothing to overflow).
  """
  k = objective.head_positions_per_row
  seq_len = batch["source"].shape[1]
  if not gathers_head_positions(objective, seq_len):
    return
  counts = np.sum(np.asarray(loss_positions(batch, config=config, objective=objective)), axis=1)
  over = np.flatnonzero(counts > k)
  if over.size:
    row = int(over[0])
    raise ValueError(
        f"batch row {row} has {int(counts[row])} loss positions ({over.size} rows over the "
        f"limit), more than objective.head_positions_per_row={k}, and head_overflow='error' "
        f"compiles no fallback for that. Raise head_positions_per_row to the masker's bound "
        f"(masking.max_selected_per_row), or set head_overflow='fallback'.")


def teacher_tokens(batch: Mapping[str, jax.Array], *, config: EncoderConfig,
                   objective: ObjectiveConfig) -> jax.Array:
  """[B, T] int32 teacher input: the original tokens, or fairseq's `target_tokens`."""
  if objective.teacher_input == "unmasked":
    return batch["target"]
  return jnp.where(batch["selected"], batch["target"], config.pad_id).astype(batch["target"].dtype)


def loss_fn(params: Any, teacher_encoder_params: Any, batch: Mapping[str, jax.Array],
            dropout_rng: jax.Array | None, *, config: EncoderConfig,
            objective: ObjectiveConfig,
            packing: packing_lib.PackingSpec | None = None
            ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Summed loss of one (micro-)batch and its metrics.

  Args:
    params: {'encoder': ..., 'head': ...} student parameters (unboxed).
    teacher_encoder_params: encoder tree for the teacher (`ema.teacher_params`); ignored (may be
      None) for 'mlm'. Gradients are stopped: the teacher never receives gradient.
    batch: 'source' [B, T] int32 masked input; 'target' [B, T] int32 original tokens (pads =
      pad_id); 'selected' [B, T] bool positions chosen by the masker.
    dropout_rng: key for the student's dropout; None runs the student deterministically.
    packing: run the student (and the teacher, for per-position targets and the unmasked
      teacher input) on the real tokens only (`packing.py`): same loss, fewer FLOPs. A group of
      more real tokens than the capacity makes the loss and the gradients NaN.

  Returns:
    loss_sum: float32 scalar, SUM over loss positions (and feature dims) of the per-element loss,
      times loss_scale for data2vec. Not normalised: divide by the global `num_masked`.
    aux: float32 scalars. 'num_masked' (number of loss positions) and 'loss_sum' are sums.
      data2vec: 'target_var' / 'pred_var' (data2vec 2.0 compute_var over this batch's loss
      positions; under gradient accumulation the train step averages them over micro-batches,
      which is not the variance of the whole batch). mlm: 'accuracy' (fraction of loss positions
      whose argmax is the target, in this micro-batch; also averaged over micro-batches).
      'head_gathered': 1 if the head ran on gathered positions, 0 if on every position.
  """
  deterministic = dropout_rng is None
  model = PretrainingModel(config, objective)
  variables = {"params": params}
  k = objective.head_positions_per_row
  seq_len = batch["source"].shape[1]
  gather = gathers_head_positions(objective, seq_len)
  prune = prunes_last_block(objective, seq_len)
  rngs = lambda key: {} if deterministic else {"dropout": key}
  attend = batch["source"] != config.pad_id
  layout = None if packing is None else packing_lib.make_layout(attend, packing)
  overflows = [] if layout is None else [layout.overflow]

  if prune:
    trunk_rng, last_rng = (None, None) if deterministic else jax.random.split(dropout_rng)
    trunk = model.apply(variables, batch["source"], deterministic=deterministic,
                        skip_last_block=True, rngs=rngs(trunk_rng), layout=layout,
                        method=PretrainingModel.encode).last_hidden_state  # [B, T, D] | [G, C, D]

    def student_features(index):
      """[B, K, D] last-block output at index [B, K], or [B, T, D] for index None."""
      out = apply_last_block(config, params["encoder"], trunk, attend, index,
                             deterministic=deterministic, dropout_rng=last_rng, layout=layout)[0]
      return packing_lib.rows(out, layout) if index is None else out
  else:
    features = model.apply(variables, batch["source"], deterministic=deterministic,
                           rngs=rngs(dropout_rng), layout=layout,
                           method=PretrainingModel.encode).last_hidden_state  # [B, T, D] | [G, C, D]

    def student_features(index):
      if index is None:
        return packing_lib.rows(features, layout)
      return gather_positions(features, index, layout)

  positions = loss_positions(batch, config=config, objective=objective)
  num_masked = jnp.sum(positions.astype(jnp.float32))

  targets_at = lambda index: None  # the MLM head's targets are the tokens
  if objective.kind == "data2vec":
    if teacher_encoder_params is None:
      raise ValueError("the data2vec objective needs teacher_encoder_params")
    t_tokens = teacher_tokens(batch, config=config, objective=objective)
    teacher_layout = None
    if layout is not None and packs_teacher(objective):
      # Its own layout (same capacity): its input's real tokens are the student's, or fewer.
      teacher_layout = packing_lib.make_layout(t_tokens != config.pad_id, packing)
      overflows.append(teacher_layout.overflow)
    targets_at = teacher_targets_fn(
        teacher_encoder_params, t_tokens, config=config, objective=objective,
        prune_last_block=prunes_teacher_last_block(objective, seq_len), layout=teacher_layout)

  def head_and_loss(features, y, targets, positions):
    """The head and the loss on [B, N] positions (N = T, or K gathered slots)."""
    head_out = model.apply(variables, features, method=PretrainingModel.predict)
    return _scored(head_out, y, targets, positions, objective)

  def every_position(targets, positions):
    return head_and_loss(student_features(None), targets_at(None), targets, positions)

  operands = (batch["target"], positions)
  if not gather:
    loss_sum, aux = every_position(*operands)
    gathered = jnp.float32(k > 0)
  else:
    fits = jnp.max(jnp.sum(positions, axis=1)) <= k
    index = _first_positions(positions, k)  # [B, K]

    def gathered_branch(targets, positions):
      return head_and_loss(student_features(index), targets_at(index),
                           take_positions(targets, index), take_positions(positions, index))

    if objective.head_overflow == "fallback":
      loss_sum, aux = jax.lax.cond(fits, gathered_branch, every_position, *operands)
    else:
      # No fallback compiled: a row beyond K makes the loss and every gradient NaN (the factor
      # multiplies, so the NaN reaches the gradients too) rather than scoring only K positions.
      loss_sum, aux = gathered_branch(*operands)
      loss_sum = loss_sum * jnp.where(fits, jnp.float32(1), jnp.float32(jnp.nan))
    gathered = fits.astype(jnp.float32)
  if overflows:
    # Tokens beyond a group's capacity were not packed: loud, like a row beyond K above.
    overflow = jnp.any(jnp.stack(overflows))
    loss_sum = loss_sum * jnp.where(overflow, jnp.float32(jnp.nan), jnp.float32(1))
  aux = {"num_masked": num_masked, "loss_sum": loss_sum, **aux, "head_gathered": gathered}
  return loss_sum, aux


def _first_positions(positions: jax.Array, k: int) -> jax.Array:
  """[B, T] bool -> [B, K] int32: each row's True positions in order, then its False ones."""
  length = positions.shape[1]
  t = jnp.arange(length, dtype=jnp.int32)
  # top_k takes the largest scores: True positions score above every False one, and within
  # each group an earlier position scores higher.
  score = jnp.where(positions, 2 * length - t, length - t)
  return jax.lax.top_k(score, k)[1].astype(jnp.int32)


def _scored(head_out: jax.Array, y: jax.Array | None, targets: jax.Array, positions: jax.Array,
            objective: ObjectiveConfig) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Summed loss and metrics of head outputs [B, N, D|V] at [B, N] bool loss positions."""
  weights = positions.astype(jnp.float32)
  count = jnp.maximum(jnp.sum(weights), 1.0)
  if objective.kind == "mlm":
    logp = jax.nn.log_softmax(head_out.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    loss_sum = jnp.sum(jnp.where(positions, nll, 0.0))
    correct = (jnp.argmax(head_out, axis=-1) == targets).astype(jnp.float32) * weights
    return loss_sum, {"accuracy": jnp.sum(correct) / count}

  # Zero the targets off the loss positions: a non-finite value there (possible in the teacher's
  # all-pad rows) would otherwise turn into NaN gradients through the masked-out branch.
  y = jnp.where(positions[..., None], y, 0.0)
  per_token = jnp.sum(regression_loss(head_out, y, objective.loss_beta), axis=-1)  # [B, N]
  dim = head_out.shape[-1]
  scale = objective.loss_scale if objective.loss_scale > 0 else 1.0 / math.sqrt(dim)
  loss_sum = jnp.sum(jnp.where(positions, per_token, 0.0)) * jnp.float32(scale)
  flat_w = weights.reshape(-1)
  return loss_sum, {
      "target_var": masked_std(y.reshape(-1, dim), flat_w),
      "pred_var": masked_std(jax.lax.stop_gradient(head_out).reshape(-1, dim), flat_w),
  }

"""data2vec regression targets: top-K teacher features, normalised and averaged (docs/reference/data2vec_text_reference.md §1.5).

fairseq `Data2VecTextEncoder.forward` (the `torch.no_grad()` block), term by term:

  y = teacher(target_tokens).fc_results[-K:]                   # K x [T, B, C]
  if instance_norm_target_layer or batch_norm_target_layer: permute to [B, C, T]
  if batch_norm_target_layer:    y = F.batch_norm(y.float(), training=True)  # per C over (B, T)
  if instance_norm_target_layer: y = F.instance_norm(y.float())             # per (B, C) over T
  (permute back to [B, T, C])
  if layer_norm_target_layer:    y = F.layer_norm(y.float(), (C,))          # per token over C
  y = sum(y) / K
  if layer_norm_targets:         y = F.layer_norm(y.float(), (C,))
  if instance_norm_targets:      y = F.instance_norm(y)                     # per (B, C) over T

All three norms are parameter-free with eps 1e-5 and the biased variance; the statistics over T
(instance norm) and over (B, T) (batch norm) include padded positions, exactly like the reference
(with `teacher_input='masked_only'` most positions are such pads). Everything here is float32.

When only layer norms are on (the yaml's choice), a position's target depends on the teacher's
features at that position alone, so the teacher's *last* block need only run where the loss reads
(`teacher_targets_fn(..., prune_last_block=True)`); the earlier blocks still run everywhere, since
they are the last block's keys and values.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from data2vec_jax.model.config import EncoderConfig
from data2vec_jax.model.encoder import Encoder, apply_last_block, gather_positions
from data2vec_jax.speed import packing

NORM_EPS = 1e-5  # PyTorch's default for F.layer_norm / F.instance_norm / F.batch_norm
TARGET_TYPES = ("ffn", "ffn_residual", "end_of_block")


def _normalize(x: jax.Array, axes: tuple[int, ...]) -> jax.Array:
  """(x - mean) / sqrt(biased var + eps) over `axes`, float32."""
  x = x.astype(jnp.float32)
  mean = jnp.mean(x, axis=axes, keepdims=True)
  var = jnp.mean(jnp.square(x - mean), axis=axes, keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + NORM_EPS)


def layer_norm(x: jax.Array) -> jax.Array:
  """`F.layer_norm(x, x.shape[-1:])`: x [..., C] normalised over C."""
  return _normalize(x, (-1,))


def instance_norm(x: jax.Array) -> jax.Array:
  """`F.instance_norm` on the BCT view: x [..., B, T, C] normalised over T per (b, c)."""
  return _normalize(x, (-2,))


def batch_norm(x: jax.Array) -> jax.Array:
  """`F.batch_norm(training=True)` on the BCT view: x [..., B, T, C] normalised per c over (B, T)."""
  return _normalize(x, (-3, -2))


def make_targets(layer_features: jax.Array, objective: Any) -> jax.Array:
  """Top-K average of per-layer-normalised features.

  Args:
    layer_features: [L, B, T, D] per-block teacher features (any float dtype), oldest block first.
    objective: an `ObjectiveConfig` (reads average_top_k_layers and the five norm switches).
  Returns:
    [B, T, D] float32 targets at every position (the loss selects its positions).
  """
  num_layers = layer_features.shape[0]
  k = objective.average_top_k_layers
  if not 1 <= k <= num_layers:
    raise ValueError(f"average_top_k_layers={k} but the encoder has {num_layers} blocks")
  y = layer_features[num_layers - k :].astype(jnp.float32)  # [K, B, T, D]
  # Reference order: batch norm, then instance norm, then layer norm, each per layer.
  if objective.batch_norm_target_layer:
    y = batch_norm(y)
  if objective.instance_norm_target_layer:
    y = instance_norm(y)
  if objective.layer_norm_target_layer:
    y = layer_norm(y)
  y = jnp.mean(y, axis=0)
  if objective.layer_norm_targets:
    y = layer_norm(y)
  if objective.instance_norm_targets:
    y = instance_norm(y)
  return y


def teacher_layer_features(
  teacher_encoder_params: Any,
  teacher_tokens: jax.Array,
  *,
  config: EncoderConfig,
  target_type: str,
  layout: packing.TokenLayout | None = None,
  embedded: jax.Array | None = None,
) -> jax.Array:
  """The teacher's per-block features [L, B, T, D] (eval mode: no dropout); [L, G, C, D] packed
  with `layout`.

  embedded: [B, T, D] the blocks' input instead of the teacher's own embeddings (data2vec 2.0:
  the student's embedding output; `teacher_encoder_params` then needs only 'layers').

  target_type: 'ffn' (fc2 output before dropout/residual/LN: the data2vec target), 'ffn_residual'
  (that plus the block's residual input, before the final LayerNorm) or 'end_of_block' (the
  block output): the paper's Table 5 ablation.
  """
  out = Encoder(config, feature=_encoder_feature(target_type)).apply(
    {"params": teacher_encoder_params},
    teacher_tokens,
    deterministic=True,
    layout=layout,
    embedded=embedded,
  )
  return _per_block_features(out, target_type)


def _encoder_feature(target_type: str) -> str:
  """The `Encoder.feature` that carries `target_type` ('end_of_block' reads the block outputs)."""
  if target_type not in TARGET_TYPES:
    raise ValueError(f"target_type={target_type!r}; expected one of {TARGET_TYPES}")
  return "ffn_residual" if target_type == "ffn_residual" else "ffn"


def _per_block_features(out: Any, target_type: str) -> jax.Array:
  """[L', B, T, D] the blocks' `target_type` features from an `EncoderOutput`."""
  return out.block_outputs if target_type == "end_of_block" else out.ffn_outputs


def teacher_targets(
  teacher_encoder_params: Any,
  teacher_tokens: jax.Array,
  *,
  config: EncoderConfig,
  objective: Any,
  layout: packing.TokenLayout | None = None,
) -> jax.Array:
  """Regression targets [B, T, D] float32 from the teacher, under `stop_gradient`.

  Args:
    teacher_encoder_params: encoder tree the teacher runs with (`ema.teacher_params`).
    teacher_tokens: [B, T] int32 teacher input (pads = `config.pad_id`).
    layout: run the teacher packed; the targets are then [G, C, D] (per-position targets only).
  """
  _check_packable(objective, layout)
  teacher_encoder_params = jax.lax.stop_gradient(teacher_encoder_params)
  features = teacher_layer_features(
    teacher_encoder_params,
    teacher_tokens,
    config=config,
    target_type=objective.target_type,
    layout=layout,
  )
  return jax.lax.stop_gradient(make_targets(features, objective))


def targets_are_per_position(objective: Any) -> bool:
  """True when no normalisation mixes positions (no instance or batch norm): the target at a
  position then depends only on the teacher's top-K features at that position."""
  return not (
    objective.batch_norm_target_layer
    or objective.instance_norm_target_layer
    or objective.instance_norm_targets
  )


def _check_packable(objective: Any, layout: packing.TokenLayout | None) -> None:
  if layout is not None and not targets_are_per_position(objective):
    raise ValueError(
      "the teacher can only run packed for per-position targets (instance and "
      "batch norm average over the pads too)"
    )


def teacher_targets_fn(
  teacher_encoder_params: Any,
  teacher_tokens: jax.Array,
  *,
  config: EncoderConfig,
  objective: Any,
  prune_last_block: bool,
  layout: packing.TokenLayout | None = None,
) -> Callable[[jax.Array | None], jax.Array]:
  """Targets as a function of the positions that need them, under `stop_gradient`.

  Returns `targets(index)`: index [B, K] int32 -> [B, K, D] float32 (row b at index[b]);
  None -> [B, T, D], every position, equal to `teacher_targets`. Without `prune_last_block`
  the whole teacher runs now and `targets` only gathers; with it (only for per-position
  targets: `objective.prunes_teacher_last_block` decides), the first L-1 blocks run now and
  `targets` runs the last block at `index` only. Either way the values at a position are the
  same (float rounding aside). With `layout` (per-position targets only) the teacher runs on
  the packed real tokens; `targets` still answers in [B, ...] rows (zeros at pads for None).
  """
  if prune_last_block and not targets_are_per_position(objective):
    raise ValueError(
      "the teacher's last block can only be pruned for per-position targets "
      "(no instance or batch norm)"
    )
  _check_packable(objective, layout)
  teacher_encoder_params = jax.lax.stop_gradient(teacher_encoder_params)
  if not prune_last_block:
    y = teacher_targets(
      teacher_encoder_params, teacher_tokens, config=config, objective=objective, layout=layout
    )
    return lambda index: (
      packing.rows(y, layout) if index is None else gather_positions(y, index, layout)
    )
  return _pruned_teacher_targets_fn(
    teacher_encoder_params, teacher_tokens, config=config, objective=objective, layout=layout
  )


def _pruned_teacher_targets_fn(
  teacher_encoder_params: Any,
  teacher_tokens: jax.Array,
  *,
  config: EncoderConfig,
  objective: Any,
  layout: packing.TokenLayout | None,
) -> Callable[[jax.Array | None], jax.Array]:
  """`teacher_targets_fn` with `prune_last_block`: the first L-1 blocks run now, the returned
  function runs the last block at its index only (params already under stop_gradient)."""
  k = objective.average_top_k_layers
  if not 1 <= k <= config.num_layers:  # make_targets could not tell: it sees K layers only
    raise ValueError(f"average_top_k_layers={k} but the encoder has {config.num_layers} blocks")
  feature = _encoder_feature(objective.target_type)
  trunk = Encoder(config, feature=feature).apply(
    {"params": teacher_encoder_params},
    teacher_tokens,
    deterministic=True,
    skip_last_block=True,
    layout=layout,
  )
  # The top K-1 blocks below the last: [K-1, B, T, D].
  lower = _per_block_features(trunk, objective.target_type)[config.num_layers - k :]
  attend = teacher_tokens != config.pad_id

  def targets(index: jax.Array | None) -> jax.Array:
    out, last = apply_last_block(
      config,
      teacher_encoder_params,
      trunk.last_hidden_state,
      attend,
      index,
      feature=feature,
      layout=layout,
    )
    last = out if objective.target_type == "end_of_block" else last
    below = (
      lower if index is None else jax.vmap(lambda f: gather_positions(f, index, layout))(lower)
    )
    features = jnp.concatenate([below, last[None]], axis=0)  # [K, B, N, D] (or [K, G, C, D])
    y = make_targets(features, objective)
    return jax.lax.stop_gradient(packing.rows(y, layout) if index is None else y)

  return targets

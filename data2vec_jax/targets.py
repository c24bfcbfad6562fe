"""data2vec regression targets: top-K teacher features, normalised and averaged (reference §1.5).

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
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from data2vec_jax.model import Encoder
from data2vec_jax.model_config import EncoderConfig

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
  y = layer_features[num_layers - k:].astype(jnp.float32)  # [K, B, T, D]
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


def teacher_layer_features(teacher_encoder_params: Any, teacher_tokens: jax.Array, *,
                           config: EncoderConfig, target_type: str) -> jax.Array:
  """The teacher's per-block features [L, B, T, D] (eval mode: no dropout).

  target_type: 'ffn' (fc2 output before dropout/residual/LN: the data2vec target), 'ffn_residual'
  (that plus the block's residual input, before the final LayerNorm) or 'end_of_block' (the
  block output): the paper's Table 5 ablation.
  """
  if target_type not in TARGET_TYPES:
    raise ValueError(f"target_type={target_type!r}; expected one of {TARGET_TYPES}")
  feature = "ffn_residual" if target_type == "ffn_residual" else "ffn"
  out = Encoder(config, feature=feature).apply(
      {"params": teacher_encoder_params}, teacher_tokens, deterministic=True)
  return out.block_outputs if target_type == "end_of_block" else out.ffn_outputs


def teacher_targets(teacher_encoder_params: Any, teacher_tokens: jax.Array, *,
                    config: EncoderConfig, objective: Any) -> jax.Array:
  """Regression targets [B, T, D] float32 from the teacher, under `stop_gradient`.

  Args:
    teacher_encoder_params: encoder tree the teacher runs with (`ema.teacher_params`).
    teacher_tokens: [B, T] int32 teacher input (pads = `config.pad_id`).
  """
  teacher_encoder_params = jax.lax.stop_gradient(teacher_encoder_params)
  features = teacher_layer_features(teacher_encoder_params, teacher_tokens, config=config,
                                    target_type=objective.target_type)
  return jax.lax.stop_gradient(make_targets(features, objective))

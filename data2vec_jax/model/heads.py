"""Prediction heads on top of the student encoder.

- `RegressionHead`: data2vec's `regression_head` (docs/reference/data2vec_text_reference.md §1.1): `head_layers - 1` blocks of
  Linear -> exact GELU (the first D -> 2D, later 2D -> 2D), then Linear(-> D). head_layers=2 (the
  yaml) is Linear(D, 2D) -> GELU -> Linear(2D, D); head_layers=1 is one Linear(D, D).
- `MaskedLMHead`: the RoBERTa baseline's `RobertaLMHead`: dense(D, D) -> GELU -> LayerNorm ->
  tied decoder (token embedding transposed) + bias [V].

Both initialise like fairseq's `init_bert_params`: kernels N(0, 0.02), zero biases, LayerNorm
ones/zeros. Parameters carry logical axis names like `data2vec_jax/model/encoder.py`.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from data2vec_jax.model.config import EncoderConfig
from data2vec_jax.model.encoder import exact_gelu, layer_norm
from data2vec_jax.speed.contraction import Projection


def _dense(
  in_features: int,
  features: int,
  axes: tuple[str | None, str | None],
  cfg: EncoderConfig,
  name: str,
) -> Projection:
  return Projection(
    (in_features, features), axes, jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype), name=name
  )


class RegressionHead(nn.Module):
  """data2vec regression head. Params: dense_0 .. dense_{head_layers-1} ({kernel, bias})."""

  config: EncoderConfig
  head_layers: int = 2

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [..., D] student features -> [..., D] predictions (compute dtype)."""
    if self.head_layers < 1:
      raise ValueError(f"head_layers must be >= 1, got {self.head_layers}")
    dim = self.config.hidden_size
    for i in range(self.head_layers - 1):
      # Logical axes: the first kernel maps embed -> mlp; later hidden ones mlp -> (replicated).
      axes = ("embed", "mlp") if i == 0 else ("mlp", None)
      in_features = dim if i == 0 else 2 * dim
      x = exact_gelu(_dense(in_features, 2 * dim, axes, self.config, f"dense_{i}")(x))
    last_axes = ("mlp", "embed") if self.head_layers > 1 else ("embed", None)
    in_features = 2 * dim if self.head_layers > 1 else dim
    return _dense(in_features, dim, last_axes, self.config, f"dense_{self.head_layers - 1}")(x)


class MaskedLMHead(nn.Module):
  """RoBERTa LM head with the decoder tied to the token embedding. Params: dense, layer_norm, bias."""

  config: EncoderConfig

  @nn.compact
  def __call__(self, x: jax.Array, embedding: jax.Array) -> jax.Array:
    """x: [..., D]; embedding: [V, D] token table. Returns float32 logits [..., V]."""
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    x = exact_gelu(_dense(cfg.hidden_size, cfg.hidden_size, ("embed", None), cfg, "dense")(x))
    x = layer_norm(cfg, "layer_norm")(x)
    bias = self.param(
      "bias",
      nn.with_logical_partitioning(nn.initializers.zeros, ("vocab",)),
      (cfg.vocab_size,),
      jnp.dtype(cfg.param_dtype),
    )
    logits = jnp.einsum(
      "...d,vd->...v", x, embedding.astype(dtype), preferred_element_type=jnp.float32
    )
    return logits + bias.astype(jnp.float32)

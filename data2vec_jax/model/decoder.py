"""data2vec 2.0's convolutional decoder (fairseq `Decoder1d`,
docs/reference/data2vec2_text_reference.md §3.4).

  x [N, T, D] (encoder output at the kept positions, noise at the masked ones, token order)
  for j in range(layers):
    h = Conv1d(k, padding k//2, groups)(x)       # D (first) or dim -> dim, channels last here
    h = gelu_erf(LayerNorm_without_affine(h))    # over channels, eps 1e-5
    x = h + x if residual and x has dim channels else h
  pred = proj(x)   # projection_layers=1: Linear(dim, D); 2: Linear(dim, dim*ratio) GELU Linear(-> D)

The text recipe: dim 768, kernel 9, 5 layers, groups 1, no residual, 2 projection layers
(28.9M parameters at D=768). There are no positional inputs: the convolutions' receptive field
is all the decoder knows of position.

Initialisation as fairseq's: Linear N(0, 0.02) with zero bias (`init_bert_params`); Conv1d keeps
PyTorch's default, kaiming-uniform with a=sqrt(5), i.e. U(+-1/sqrt(fan_in)) for the weight and the
bias, fan_in = k * in_channels / groups.

Parameters: conv_{j}/{kernel [k, in/groups, dim], bias [dim]}, proj_{i}/{kernel, bias}.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from data2vec_jax.model.encoder import exact_gelu
from data2vec_jax.speed.contraction import Projection

LAYER_NORM_EPS = 1e-5  # fixed in fairseq's Decoder1d, whatever the blocks' norm_eps


def _torch_conv_bias_init(fan_in: int):
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


class Decoder1d(nn.Module):
  """Attributes:
  input_dim: D, the encoder width (input channels of the first conv and the output width).
  dim: decoder_dim; kernel: decoder_kernel (odd); layers: decoder_layers; groups:
  decoder_groups; residual: decoder_residual; projection_layers / projection_ratio: as fairseq.
  dtype / param_dtype: compute and storage dtypes (LayerNorm statistics and GELU in float32).
  """

  input_dim: int
  dim: int = 768
  kernel: int = 9
  layers: int = 5
  groups: int = 1
  residual: bool = False
  projection_layers: int = 2
  projection_ratio: float = 2.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [N, T, D] -> predictions [N, T, D] in `dtype`."""
    if self.kernel % 2 == 0:
      raise ValueError(f"decoder_kernel must be odd (SamePad), got {self.kernel}")
    x = x.astype(self.dtype)
    for j in range(self.layers):
      in_dim = x.shape[-1]
      if in_dim % self.groups or self.dim % self.groups:
        raise ValueError(f"decoder_groups={self.groups} must divide {in_dim} and {self.dim}")
      fan_in = self.kernel * in_dim // self.groups
      h = nn.Conv(
        self.dim,
        kernel_size=(self.kernel,),
        padding=[(self.kernel // 2, self.kernel // 2)],
        feature_group_count=self.groups,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        kernel_init=nn.with_logical_partitioning(
          nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform"),
          (None, "embed", "mlp"),
        ),
        bias_init=nn.with_logical_partitioning(_torch_conv_bias_init(fan_in), ("mlp",)),
        name=f"conv_{j}",
      )(x)
      h = nn.LayerNorm(
        epsilon=LAYER_NORM_EPS, use_scale=False, use_bias=False, dtype=self.dtype, name=f"ln_{j}"
      )(h)
      h = exact_gelu(h)
      x = h + x if self.residual and in_dim == self.dim else h
    dim = self.dim
    for i in range(self.projection_layers - 1):
      nxt = int(dim * self.projection_ratio) if i == 0 else dim
      axes = ("embed", "mlp") if i == 0 else ("mlp", None)
      x = Projection((dim, nxt), axes, self.dtype, self.param_dtype, name=f"proj_{i}")(x)
      x = exact_gelu(x)
      dim = nxt
    last_axes = ("mlp", "embed") if self.projection_layers > 1 else (None, "embed")
    name = f"proj_{self.projection_layers - 1}"
    return Projection((dim, self.input_dim), last_axes, self.dtype, self.param_dtype, name=name)(x)

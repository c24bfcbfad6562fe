"""Hyper-parameters of the data2vec-text encoder (RoBERTa-shaped, post-LN).

`EncoderConfig` is a frozen dataclass so it can be a static argument of `jax.jit` and a field of a
Flax module. It round-trips through a plain dict (`to_dict` / `from_dict`), which is what a
data2vec-jax model directory stores as `config.json`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from data2vec_jax import strict_config

_DTYPES = ("float32", "bfloat16", "float16")
_ATTENTION_IMPLS = ("auto", "xla", "cudnn", "reference")
_REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")


@dataclasses.dataclass(frozen=True)
class EncoderConfig(strict_config.StrictConfig):
  """Shape and numerics of the encoder.

  Defaults are those of the released `facebook/data2vec-text-base` (fairseq `nlp_base.pt`), not
  the `transformers` library defaults (which use eps 1e-12 and 512 positions).

  Attributes:
    vocab_size: rows of the token embedding (50265 = fairseq dict incl. `<mask>`).
    hidden_size: model width D.
    num_layers: number of transformer blocks L.
    num_heads: attention heads H; `hidden_size` must be divisible by it.
    intermediate_size: FFN width F.
    max_positions: rows of the learned position table, *including* the `pad_id + 1` offset
      (514 = 512 usable positions + 2).
    pad_id: padding token id; positions start at `pad_id + 1`.
    layer_norm_eps: epsilon of every LayerNorm.
    dropout: residual-branch and embedding dropout.
    attention_dropout: dropout on attention probabilities.
    activation_dropout: dropout after the FFN GELU (0 in the released recipe).
    dtype: compute dtype ('float32' or 'bfloat16'); softmax, LayerNorm statistics and GELU run
      in float32 regardless.
    param_dtype: storage dtype of the parameters.
    attention_impl: 'auto' (cuDNN flash attention on GPU when no attention dropout is active,
      XLA otherwise), 'xla', 'cudnn', or 'reference' (explicit softmax, always used when attention
      dropout is active).
    remat_policy: rematerialisation of each block in the backward pass: 'none', 'full',
      'dots' (save matmul outputs), 'dots_no_batch'.
    scan_unroll: blocks per iteration of the `nn.scan` over the blocks (lax.scan's `unroll`);
      >= num_layers unrolls completely. The parameters stay stacked on the leading 'layers'
      axis either way, so checkpoints and conversion do not depend on it. 1 compiles one block
      (shortest compile); full unrolling gives XLA straight-line code and removes the per-
      iteration copies of the saved activations into stacked buffers: a faster train step
      (measured in bench/README.md), at a compile time that grows with depth.
  """

  vocab_size: int = 50265
  hidden_size: int = 768
  num_layers: int = 12
  num_heads: int = 12
  intermediate_size: int = 3072
  max_positions: int = 514
  pad_id: int = 1
  layer_norm_eps: float = 1e-5
  dropout: float = 0.1
  attention_dropout: float = 0.1
  activation_dropout: float = 0.0
  dtype: str = "float32"
  param_dtype: str = "float32"
  attention_impl: str = "auto"
  remat_policy: str = "none"
  scan_unroll: int = 1

  def __post_init__(self):
    if self.hidden_size % self.num_heads:
      raise ValueError(
        f"hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}"
      )
    for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size"):
      if getattr(self, name) <= 0:
        raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
    if self.max_positions < self.pad_id + 2:
      raise ValueError(
        f"max_positions={self.max_positions} leaves no usable position after the "
        f"pad_id + 1 = {self.pad_id + 1} offset"
      )
    for name in ("dtype", "param_dtype"):
      if getattr(self, name) not in _DTYPES:
        raise ValueError(f"{name}={getattr(self, name)!r}; expected one of {_DTYPES}")
    if self.attention_impl not in _ATTENTION_IMPLS:
      raise ValueError(
        f"attention_impl={self.attention_impl!r}; expected one of {_ATTENTION_IMPLS}"
      )
    if self.remat_policy not in _REMAT_POLICIES:
      raise ValueError(f"remat_policy={self.remat_policy!r}; expected one of {_REMAT_POLICIES}")
    if self.scan_unroll < 1:
      raise ValueError(f"scan_unroll must be >= 1, got {self.scan_unroll}")
    for name in ("dropout", "attention_dropout", "activation_dropout"):
      if not 0.0 <= getattr(self, name) < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @property
  def max_sequence_length(self) -> int:
    """Longest input the position table supports (514 rows -> 512 tokens)."""
    return self.max_positions - self.pad_id - 1

  def replace(self, **changes: Any) -> "EncoderConfig":
    return dataclasses.replace(self, **changes)


def tiny_config(**overrides: Any) -> EncoderConfig:
  """A small config for tests and the CPU demo (2 layers x 64 wide, 1000-token vocabulary)."""
  values = dict(
    vocab_size=1000,
    hidden_size=64,
    num_layers=2,
    num_heads=4,
    intermediate_size=128,
    max_positions=130,
  )
  values.update(overrides)
  return EncoderConfig(**values)

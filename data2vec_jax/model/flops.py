"""FLOP accounting for throughput and MFU figures (docs/DESIGN.md §5).

Encoder forward FLOPs per token: 2*N + 4*L*s*d, N = matmul parameters without embeddings. One
data2vec v1 update ~ student forward+backward (3F) + teacher forward (F) + the regression head on
the masked tokens (3 x its forward); with a pruned last block (student or teacher), that block's
query-side work also counts at the masked fraction. Count only real (non-pad) tokens when using these.

A data2vec 2.0 update (`data2vec2_train_flops_per_token`) per sentence token: the student
forward+backward on M clones of the K = int(T(1 - mask_prob)) kept tokens (attention over K
keys), the teacher forward once per sentence on all T, and the convolutional decoder
forward+backward on all T positions of every clone.
"""

from __future__ import annotations

import jax

from data2vec_jax.model.config import EncoderConfig
from data2vec_jax.model.decoder import Decoder1d

# Dense bf16 peak per chip/GPU, FLOP/s. Keys are substrings of `jax.Device.device_kind`.
PEAK_BF16_FLOPS = {
  "H200": 989e12,
  "H100": 989e12,
  "A100": 312e12,
  "TPU v4": 275e12,
  "TPU v5 lite": 197e12,
  "TPU v5e": 197e12,
  "TPU v5p": 459e12,
  "TPU v5": 459e12,
  "TPU v6": 918e12,
}


def encoder_matmul_params(cfg: EncoderConfig) -> int:
  """Matmul parameters of the blocks (embeddings, biases and LayerNorms excluded)."""
  d, f = cfg.hidden_size, cfg.intermediate_size
  return cfg.num_layers * (4 * d * d + 2 * d * f)


def encoder_forward_flops_per_token(cfg: EncoderConfig, seq_len: int) -> float:
  """2N + 4 L s d. Base at s=512: 188.7 MFLOP/token."""
  return 2.0 * encoder_matmul_params(cfg) + 4.0 * cfg.num_layers * seq_len * cfg.hidden_size


def head_forward_flops_per_token(cfg: EncoderConfig, head_layers: int, kind: str) -> float:
  d = cfg.hidden_size
  if kind == "mlm":
    return 2.0 * (d * d + d * cfg.vocab_size)
  return 2.0 * (d * d) if head_layers == 1 else 2.0 * (4 * d * d)


def last_block_query_flops_per_token(cfg: EncoderConfig, seq_len: int) -> float:
  """Forward FLOPs of one block that scale with its *queried* positions: the q and output
  projections, the FFN and the attention scores/values (4 s d). Only k and v (4 d^2) remain
  when a position is not queried (`ExecutionPlan.prune_student_last_block`)."""
  d, f = cfg.hidden_size, cfg.intermediate_size
  return 2.0 * (2 * d * d + 2 * d * f) + 4.0 * seq_len * d


def train_flops_per_token(
  cfg: EncoderConfig,
  seq_len: int,
  *,
  kind: str = "data2vec",
  head_layers: int = 2,
  masked_fraction: float = 0.307,
  pruned_last_block: bool = False,
  pruned_teacher_last_block: bool = False,
) -> float:
  """Model FLOPs of one update per real token (no rematerialisation counted).

  pruned_last_block / pruned_teacher_last_block: the student's / the teacher's last block runs
  only at the loss positions (`ExecutionPlan.prune_student_last_block` / `prune_teacher_last_block`), so
  its query-side FLOPs count at `masked_fraction`, like the head's: the figure never credits work
  the step skips (docs/DESIGN.md §5's formula is the default, both False).
  """
  forward = encoder_forward_flops_per_token(cfg, seq_len)
  skipped = (1.0 - masked_fraction) * last_block_query_flops_per_token(cfg, seq_len)
  student = forward - skipped * pruned_last_block
  teacher = (forward - skipped * pruned_teacher_last_block) if kind == "data2vec" else 0.0
  head = 3.0 * head_forward_flops_per_token(cfg, head_layers, kind) * masked_fraction
  return 3.0 * student + teacher + head


def decoder_forward_flops_per_position(cfg: EncoderConfig, decoder: Decoder1d) -> float:
  """Convolutions (2 k in dim / groups each) and the projection, per decoded position (read
  from the module's attributes; it need not be bound)."""
  d = cfg.hidden_size
  conv = 0.0
  in_dim = d
  for _ in range(decoder.layers):
    conv += 2.0 * decoder.kernel * in_dim * decoder.dim / decoder.groups
    in_dim = decoder.dim
  proj, dim = 0.0, decoder.dim
  for i in range(decoder.projection_layers - 1):
    nxt = int(dim * decoder.projection_ratio) if i == 0 else dim
    proj += 2.0 * dim * nxt
    dim = nxt
  return conv + proj + 2.0 * dim * d


def data2vec2_train_flops_per_token(
  cfg: EncoderConfig,
  seq_len: int,
  *,
  clone_batch: int = 8,
  mask_prob: float = 0.48,
  decoder: Decoder1d | None = None,
  dropped_masked: bool = True,
) -> float:
  """Model FLOPs of one data2vec 2.0 update per sentence token (no rematerialisation).

  dropped_masked: the student encodes the K kept tokens of each clone (fairseq's); False
  credits the plain path's full T positions per clone.
  """
  kept = int(seq_len * (1 - mask_prob))
  if dropped_masked:
    student = clone_batch * kept / seq_len * encoder_forward_flops_per_token(cfg, kept)
  else:
    student = clone_batch * encoder_forward_flops_per_token(cfg, seq_len)
  teacher = encoder_forward_flops_per_token(cfg, seq_len)
  decoder = decoder if decoder is not None else Decoder1d(cfg.hidden_size)  # the yaml's
  dec = clone_batch * decoder_forward_flops_per_position(cfg, decoder)
  return 3.0 * student + teacher + 3.0 * dec


def peak_flops_per_device(device: jax.Device | None = None) -> float | None:
  """bf16 dense peak of `device` (default: the first device), or None when unknown (CPU)."""
  device = device or jax.devices()[0]
  kind = getattr(device, "device_kind", "")
  for key, value in PEAK_BF16_FLOPS.items():
    if key.lower() in kind.lower():
      return value
  return None

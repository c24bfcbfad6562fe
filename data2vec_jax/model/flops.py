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

import os
import re

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


# fp32 FLOPs per cycle per core by vector extension (/proc/cpuinfo flags): lanes x 2 (a fused
# multiply-add is 2 FLOPs) x 2 FMA units, the count on most server cores (some have one: their
# peak is half, and their MFU twice what is logged). Without FMA: one add and one multiply a cycle.
CPU_FLOPS_PER_CYCLE = (
  ("avx512f", 16 * 2 * 2, "AVX-512 FMA"),
  ("fma", 8 * 2 * 2, "AVX2 FMA"),
  ("avx", 8 * 2, "AVX, no FMA"),
  ("asimd", 4 * 2 * 2, "NEON FMA"),
  ("sse2", 4 * 2, "SSE2"),
)


def cpu_peak_flops(
  cpuinfo: str, cores: int, max_freq_khz: float | None = None
) -> tuple[float, str] | None:
  """fp32 peak of `cores` CPU cores, FLOP/s, and how it was derived: cores x clock x FLOPs per
  cycle (the widest vector extension in `cpuinfo`'s flags, 2 FMA units assumed). The clock is
  `max_freq_khz` (cpufreq's cpuinfo_max_freq) if known, else the model name's "@ 2.20GHz", else
  cpuinfo's "cpu MHz". None when the flags or the clock are not in `cpuinfo` (a CPU's peak is
  not knowable portably: then MFU is not logged unless train.peak_flops_per_device is set).
  Counts logical CPUs: two hyperthreads of a core share its FMA units, so where `cores` counts
  hyperthreads the true peak is half this and the MFU twice what is logged."""
  flags: set[str] = set()
  ghz = None
  for line in cpuinfo.splitlines():
    key, _, value = line.partition(":")
    key = key.strip().lower()
    if key in ("flags", "features") and not flags:
      flags = set(value.split())
    elif key == "model name" and ghz is None:
      match = re.search(r"@\s*([\d.]+)\s*GHz", value)
      ghz = float(match.group(1)) if match else None
    elif key == "cpu mhz" and ghz is None and max_freq_khz is None:
      mhz = float(value.strip() or 0)
      ghz = mhz / 1000 if mhz > 0 else None
  if max_freq_khz:
    ghz = max_freq_khz / 1e6
  per_cycle = next(((n, name) for flag, n, name in CPU_FLOPS_PER_CYCLE if flag in flags), None)
  if per_cycle is None or not ghz or cores < 1:
    return None
  peak = cores * ghz * 1e9 * per_cycle[0]
  how = (
    f"{cores} CPU core(s) x {ghz:.2f} GHz x {per_cycle[0]} fp32 FLOP/cycle ({per_cycle[1]}, "
    f"2 FMA units assumed) = {peak / 1e9:.1f} GFLOP/s"
  )
  return peak, how


def _host_cpu_peak() -> tuple[float, str] | None:
  """`cpu_peak_flops` of this process's CPUs (Linux: /proc/cpuinfo, cpufreq); None elsewhere."""
  try:
    with open("/proc/cpuinfo") as f:
      cpuinfo = f.read()
  except OSError:
    return None
  try:
    with open("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq") as f:
      max_khz = float(f.read().strip())
  except (OSError, ValueError):
    max_khz = None
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  return cpu_peak_flops(cpuinfo, cores or 0, max_khz)


def mfu_peak(override: float = 0.0) -> tuple[float | None, str]:
  """The peak FLOP/s per device that MFU divides by, and a line saying where it comes from:
  `override` (train.peak_flops_per_device) when > 0; the device kind's bf16 peak
  (PEAK_BF16_FLOPS); on CPU the host's fp32 estimate (`cpu_peak_flops`) shared by the local CPU
  devices; else None (MFU not logged)."""
  if override > 0:
    return override, f"peak: {override:.4g} FLOP/s per device (train.peak_flops_per_device)"
  device = jax.devices()[0]
  known = peak_flops_per_device(device)
  if known:
    return known, f"peak: {known:.4g} FLOP/s per device ({device.device_kind}, dense bf16)"
  if device.platform == "cpu":
    host = _host_cpu_peak()
    if host is not None:
      per_device = host[0] / jax.local_device_count()
      return per_device, (
        f"peak on CPU, an estimate: {host[1]}, over {jax.local_device_count()} CPU device(s); "
        "set train.peak_flops_per_device to override"
      )
  return None, (
    f"not logged: no peak FLOP rate known for {getattr(device, 'device_kind', device.platform)}; "
    "set train.peak_flops_per_device"
  )

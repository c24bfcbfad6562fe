"""A roofline ESTIMATE of one compiled step's time on a TPU chip, and per-chip memory vs its HBM.

step time ~ max(FLOPs / peak, HBM bytes / HBM bandwidth) + ICI bytes / ICI bandwidth
          + DCN bytes / DCN bandwidth

No overlap of communication with compute is assumed (pessimistic), every matmul is assumed to
run at the chip's peak and every HBM byte at full bandwidth (optimistic), and the ICI figure is
the chip's total bidirectional bandwidth over all its ports (optimistic for a ring along one
mesh axis). It is an estimate to compare configurations before renting, not a measurement.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from data2vec_jax.speed.tpu_topology import ChipSpec


@dataclasses.dataclass(frozen=True)
class Roofline:
  """Seconds per step by each bound (per chip), their combination and the implied MFU.

  flops_per_chip: model FLOPs of the step on one chip (not XLA's count); hbm_bytes: bytes the
  chip moves to/from HBM; ici_bytes / dcn_bytes: bytes each chip sends over the links.
  """

  flops_per_chip: float
  hbm_bytes: float
  ici_bytes: float
  dcn_bytes: float
  compute_s: float
  hbm_s: float
  ici_s: float
  dcn_s: float

  @property
  def step_s(self) -> float:
    return max(self.compute_s, self.hbm_s) + self.ici_s + self.dcn_s

  @property
  def estimated_mfu(self) -> float:
    """Model FLOPs utilisation implied by the estimate: compute time / step time."""
    return self.compute_s / self.step_s if self.step_s > 0 else 0.0

  def to_dict(self) -> dict[str, Any]:
    values = dataclasses.asdict(self)
    values.update(step_s=self.step_s, estimated_mfu=self.estimated_mfu)
    return values


def estimate(
  chip: ChipSpec, *, flops_per_chip: float, hbm_bytes: float, ici_bytes: float, dcn_bytes: float
) -> Roofline:
  """The roofline of one step from per-chip FLOPs and bytes (see the module docstring)."""
  return Roofline(
    flops_per_chip=flops_per_chip,
    hbm_bytes=hbm_bytes,
    ici_bytes=ici_bytes,
    dcn_bytes=dcn_bytes,
    compute_s=flops_per_chip / chip.peak_bf16_flops,
    hbm_s=hbm_bytes / chip.hbm_bytes_per_s,
    ici_s=ici_bytes / chip.ici_bytes_per_s,
    dcn_s=dcn_bytes / chip.dcn_bytes_per_s,
  )


@dataclasses.dataclass(frozen=True)
class MemoryPerChip:
  """Bytes on one chip during a step, from the compiled program's `memory_analysis()`.

  arguments: everything passed in (state + batch); of it parameters / optimizer_state / ema /
  batch (from the inputs' shard shapes); temp: activations and scratch; output: results not
  aliased to (donated) inputs; code: the program.
  """

  parameters: int
  optimizer_state: int
  ema: int
  batch: int
  arguments: int
  temp: int
  output: int
  alias: int
  code: int
  hbm: float

  @property
  def total(self) -> int:
    return self.arguments + self.temp + self.output - self.alias + self.code

  @property
  def fits(self) -> bool:
    return self.total <= self.hbm

  def to_dict(self) -> dict[str, Any]:
    values = dataclasses.asdict(self)
    values.update(total=self.total, fits=self.fits, fraction_of_hbm=self.total / self.hbm)
    return values


def memory_per_chip(stats: Any, parts: dict[str, int], hbm: float) -> MemoryPerChip:
  """`stats`: the executable's `memory_analysis()`; `parts`: per-chip bytes of parameters,
  optimizer_state, ema and batch (`shard_bytes` of each input tree)."""
  return MemoryPerChip(
    parameters=parts["parameters"],
    optimizer_state=parts["optimizer_state"],
    ema=parts["ema"],
    batch=parts["batch"],
    arguments=int(stats.argument_size_in_bytes),
    temp=int(stats.temp_size_in_bytes),
    output=int(stats.output_size_in_bytes),
    alias=int(stats.alias_size_in_bytes),
    code=int(stats.generated_code_size_in_bytes),
    hbm=hbm,
  )

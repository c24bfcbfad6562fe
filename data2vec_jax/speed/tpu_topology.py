"""TPU chips and slice topologies for compiling on a host without the TPU (`compile_for`).

`topology_devices('v5e-256', slices=2)` gives abstract TPU devices from the `libtpu` wheel
(`jax.experimental.topologies`): XLA compiles a program for them on any CPU machine; nothing
runs. `ChipSpec` holds the public spec-sheet numbers the roofline estimate uses.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from typing import Sequence

import jax

GiB = 1024**3


@dataclasses.dataclass(frozen=True)
class ChipSpec:
  """One TPU chip's public numbers (all per chip).

  Attributes:
    name: 'v5e', 'v5p', 'v6e'.
    topology_prefix: libtpu's topology name prefix ('v5e:16x16').
    peak_bf16_flops: dense bf16 FLOP/s.
    hbm_bytes: HBM capacity.
    hbm_bytes_per_s: HBM bandwidth.
    ici_bytes_per_s: bidirectional inter-chip interconnect bandwidth (all ports together).
    dcn_bytes_per_s: data-center network bandwidth across slices.
    source: the spec sheet.
  """

  name: str
  topology_prefix: str
  peak_bf16_flops: float
  hbm_bytes: float
  hbm_bytes_per_s: float
  ici_bytes_per_s: float
  dcn_bytes_per_s: float
  source: str
  # Chip grid of the largest slice: 2D torus for v5e/v6e, 3D for v5p.
  dims: int = 2


CHIPS = {
  # https://cloud.google.com/tpu/docs/v5e: 197 TFLOP/s bf16, 16 GB HBM2 at 819 GB/s, 400 GB/s
  # bidirectional ICI per chip; DCN 6.4 Tbps per 256-chip pod = 25 Gbps = 3.125 GB/s per chip.
  "v5e": ChipSpec(
    "v5e", "v5e", 197e12, 16 * GiB, 819e9, 400e9, 6.4e12 / 8 / 256, "cloud.google.com/tpu/docs/v5e"
  ),
  # https://cloud.google.com/tpu/docs/v5p: 459 TFLOP/s bf16, 95 GiB HBM2e at 2765 GB/s, 1200 GB/s
  # bidirectional ICI per chip (4800 Gbps), DCN 50 Gbps per chip.
  "v5p": ChipSpec(
    "v5p",
    "v5p",
    459e12,
    95 * GiB,
    2765e9,
    1200e9,
    50e9 / 8,
    "cloud.google.com/tpu/docs/v5p",
    dims=3,
  ),
  # https://cloud.google.com/tpu/docs/v6e: 918 TFLOP/s bf16, 32 GB HBM at 1638 GB/s, 800 GB/s
  # bidirectional ICI per chip; DCN 25.6 Tbps per 256-chip pod = 100 Gbps per chip.
  "v6e": ChipSpec(
    "v6e",
    "v6e",
    918e12,
    32 * GiB,
    1638e9,
    800e9,
    25.6e12 / 8 / 256,
    "cloud.google.com/tpu/docs/v6e",
  ),
}

# Chips per host as Cloud TPU slices have them (2x2 per host for v5e/v6e/v5p slices of > 8 chips).
_HOST_BOUNDS = {2: (2, 2, 1), 3: (2, 2, 1)}


@dataclasses.dataclass(frozen=True)
class Topology:
  """A described TPU system: `slices` slices of `chips` chips each on a `grid` of chips."""

  chip: ChipSpec
  grid: tuple[int, ...]
  slices: int = 1

  @property
  def chips(self) -> int:
    return math.prod(self.grid)

  @property
  def name(self) -> str:
    """libtpu's name, e.g. 'v5e:16x16'."""
    return f"{self.chip.topology_prefix}:{'x'.join(map(str, self.grid))}"

  def describe(self) -> str:
    """'v5e-256' or '2 x v5e-256' (Cloud TPU's names: v5p-N counts N TensorCores, 2 a chip)."""
    cores = 2 * self.chips if self.chip.name == "v5p" else self.chips
    one = f"{self.chip.name}-{cores}"
    return one if self.slices == 1 else f"{self.slices} x {one}"


def _square_grid(chips: int, dims: int) -> tuple[int, ...]:
  """The most cubic power-of-two grid of `chips` chips, larger dims last ('4x4x8')."""
  if chips < 1 or chips & (chips - 1):
    raise ValueError(f"{chips} chips: give a power of two or the grid itself (e.g. v5e:8x16)")
  exponent = chips.bit_length() - 1
  parts = [exponent // dims + (i >= dims - exponent % dims) for i in range(dims)]
  grid = [2**p for p in parts]
  if dims == 3 and grid[-1] == 1:
    grid = sorted(grid)
  return tuple(sorted(grid))


def parse_topology(name: str, slices: int = 1) -> Topology:
  """'v5e-256' (chips) or 'v5e:16x16' (libtpu's grid) -> Topology.

  v5p's `v5p-N` counts TensorCores in Cloud TPU names (2 per chip): 'v5p-128' = 64 chips.
  """
  match = re.fullmatch(r"(v5e|v5p|v6e)([-:])([0-9x]+)", name.strip().lower())
  if not match:
    raise ValueError(
      f"unknown topology {name!r}: expected e.g. v5e-256, v5p-128, v6e-256 or v5e:16x16 "
      f"(chips: {sorted(CHIPS)})"
    )
  chip = CHIPS[match.group(1)]
  if slices < 1:
    raise ValueError(f"--slices must be >= 1, got {slices}")
  if match.group(2) == ":":
    grid = tuple(int(x) for x in match.group(3).split("x"))
  else:
    count = int(match.group(3))
    chips = count // 2 if chip.name == "v5p" else count
    grid = _square_grid(chips, chip.dims if chips >= 8 else 2)
    if chip.dims == 3 and len(grid) == 2:
      grid = grid + (1,)
  return Topology(chip, grid, slices)


def topology_devices(topology: Topology) -> Sequence[jax.Device]:
  """Abstract devices of the described system (one per chip), from libtpu.

  Raises ValueError with the install command when libtpu is missing.
  """
  try:
    from jax.experimental import topologies
  except ImportError as e:  # pragma: no cover - part of jax
    raise ValueError(f"jax.experimental.topologies unavailable: {e}") from e
  # Only compiling, no TPU is touched: several processes (a test, a benchmark) may do it at
  # once, which libtpu's lock file would otherwise refuse.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  bounds = _HOST_BOUNDS[len(topology.grid)]
  if topology.chips < math.prod(bounds):
    bounds = topology.grid + (1,) * (3 - len(topology.grid))
  try:
    desc = topologies.get_topology_desc(
      platform="tpu",
      topology_name=topology.name,
      chips_per_host_bounds=bounds,
      num_slices=topology.slices,
    )
  except Exception as e:  # noqa: BLE001 - libtpu absent or a topology it does not know
    if "libtpu" in str(e).lower() or "tpu" in str(e).lower() and "not" in str(e).lower():
      raise ValueError(
        f"cannot describe TPU topology {topology.name}: {str(e).splitlines()[0]} "
        f"(install libtpu: pip install 'data2vec-jax[tpu]')"
      ) from e
    raise ValueError(f"cannot describe TPU topology {topology.name}: {e}") from e
  return list(desc.devices)

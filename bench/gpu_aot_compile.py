"""`compile_for`'s report for 8 x NVIDIA H100 (SXM), compiled on a CPU-only host.

    pip install --no-deps --target /tmp/cudaplug jax-cuda12-plugin==0.10.2 jax-cuda12-pjrt==0.10.2
    PYTHONPATH=/tmp/cudaplug JAX_PLATFORMS=cpu python bench/gpu_aot_compile.py \\
        --config configs/pretrain.py:model=base,recipe=release --topology 8xH100 --out /tmp/h100

How (bench/README.md, "Compiling for GPUs without a GPU"): the CUDA PJRT plugin (the two wheels
`jax[cuda12]` pins for jax 0.10.2; --no-deps: no CUDA libraries are needed to compile) describes
a GPU system without a GPU when it is given the GPU's `GpuTargetConfigProto` as text
(`target_config`, here `bench/h100_sxm.txtpb`: the H100 SXM's public numbers) and a shape
(`topology='<slices>x<hosts>x<gpus per host>'`): `jax.experimental.topologies.get_topology_desc(
platform='cuda', target_config=..., topology='1x1x8')` gives 8 abstract H100s. JAX_PLATFORMS=cpu
keeps the plugin from looking for a CUDA runtime when it loads.

The rest is `python -m data2vec_jax.compile_for` unchanged (same step, memory, collectives,
roofline, largest-batch search): this script only hands it those devices and the H100's spec
sheet numbers (H100_SXM) in place of a TPU topology. Memory and collectives come from XLA's GPU
compiler; the step time is the roofline ESTIMATE with these constants, nothing was run.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # set before jax loads the CUDA plugin
# Without a GPU, XLA's Triton GEMM emitter fails on the step ("Couldn't find output tile sizes
# that satisfy hlo: %dot... attention/out/dot_general", also with --xla_gpu_autotune_level=0):
# compile the matmuls as cuBLAS calls instead. A real H100 run would use Triton for some.
if "xla_gpu_enable_triton_gemm" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_gpu_enable_triton_gemm=false"
  ).strip()

from absl import app  # noqa: E402

from data2vec_jax import compile_for  # noqa: E402  (defines --config, --topology, --out, ...)
from data2vec_jax.speed import tpu_topology  # noqa: E402

TARGET_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "h100_sxm.txtpb")

# NVIDIA H100 SXM5 80GB datasheet (nvidia.com/en-us/data-center/h100): 989 TFLOP/s dense BF16
# (1979 with sparsity), 80 GB HBM3 at 3.35 TB/s, NVLink 900 GB/s bidirectional per GPU; between
# nodes one 400 Gb/s InfiniBand NIC per GPU (DGX H100) = 50 GB/s, used as the 'DCN' figure.
H100_SXM = tpu_topology.ChipSpec(
  name="h100",
  topology_prefix="h100",
  peak_bf16_flops=989e12,
  hbm_bytes=80e9,
  hbm_bytes_per_s=3.35e12,
  ici_bytes_per_s=900e9,
  dcn_bytes_per_s=400e9 / 8,
  source="nvidia.com/en-us/data-center/h100 (H100 SXM5 datasheet)",
)


def h100_devices(gpus: int, hosts: int = 1) -> list:
  """Abstract H100s (`gpus` per host) from the CUDA plugin: nothing needs a GPU or CUDA."""
  from jax.experimental import topologies

  with open(TARGET_CONFIG, encoding="utf-8") as f:
    target_config = f.read()
  desc = topologies.get_topology_desc(
    platform="cuda", target_config=target_config, topology=f"1x{hosts}x{gpus}"
  )
  return list(desc.devices)


def _parse_gpu_topology(name: str, slices: int = 1) -> tpu_topology.Topology:
  """'8xH100' (GPUs of one host) -> a Topology over H100_SXM (slices: not for GPUs)."""
  count, sep, rest = name.lower().partition("xh100")
  if not sep or rest or not count.isdigit():
    raise ValueError(f"--topology {name!r}: this script compiles for '<n>xH100', e.g. 8xH100")
  if slices != 1:
    raise ValueError("--slices is a TPU notion; give the GPU count in --topology")
  return tpu_topology.Topology(H100_SXM, (int(count),), 1)


def main(argv):
  # compile_for.run asks tpu_topology for the devices; give it the H100s instead.
  tpu_topology.parse_topology = _parse_gpu_topology
  tpu_topology.topology_devices = lambda topology: h100_devices(topology.chips)
  compile_for.main(argv)


if __name__ == "__main__":
  if "--topology" not in " ".join(sys.argv):
    sys.argv.append("--topology=8xH100")
  app.run(main)

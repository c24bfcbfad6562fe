"""XLA flags for GPU training, in one place: `train.py` and `bench/bench_gpu.py` both apply them.

XLA reads `XLA_FLAGS` once, when JAX starts its first backend, so the flags must be in the
environment before that: `train.py` calls `apply_gpu_flags()` before it imports the trainer, and
the benchmark passes `with_gpu_flags()` to its worker subprocesses.

Every flag here is a field of XLA's DebugOptions, which the CPU backend parses too (an unknown
flag aborts the process at backend start; `tests/speed/test_xla_flags.py`), so the same command runs
on CPU, where the GPU flags are inert. Not tried on TPU here: if libtpu ever rejects them, set
D2V_XLA_FLAGS=none. Flags the user already set in `XLA_FLAGS` win over ours
(compared by name, so `--xla_gpu_enable_triton_gemm=true` of the user is kept). Opt out
entirely with `D2V_XLA_FLAGS=none`.

Not yet measured on a GPU by this project (no GPU in the sessions that wrote them):
`python bench/bench_gpu.py --xla_flags none` compares against XLA's defaults.
"""

from __future__ import annotations

import os
from typing import Mapping, MutableMapping, Sequence

from data2vec_jax.speed.environ import with_settings

# - latency hiding scheduler: lets XLA overlap the data-parallel / FSDP collectives (gradient
#   reduce-scatter, parameter all-gather) with compute; NVIDIA's JAX containers set it by default.
#   A no-op on one GPU, so single-GPU benchmarks run in the same setting as multi-GPU training.
# - triton gemm off: the dense layers of these shapes (d=768, ffn 3072, bf16) go to cuBLAS(Lt),
#   which also removes GEMM autotuning variance between runs (NVIDIA's JAX containers did the same).
GPU_FLAGS: tuple[str, ...] = (
  "--xla_gpu_enable_latency_hiding_scheduler=true",
  "--xla_gpu_enable_triton_gemm=false",
)
OPT_OUT_VARIABLE = "D2V_XLA_FLAGS"


def with_flags(flags: Sequence[str], environ: Mapping[str, str] | None = None) -> dict[str, str]:
  """A copy of `environ` (default os.environ) with `flags` appended to its XLA_FLAGS.

  A flag whose name the environment's XLA_FLAGS already sets is left out: the user's value wins.
  """
  return with_settings("XLA_FLAGS", flags, separator=" ", environ=environ)


def with_gpu_flags(environ: Mapping[str, str] | None = None) -> dict[str, str]:
  """`with_flags(GPU_FLAGS, environ)`, unless `environ` opts out with D2V_XLA_FLAGS=none."""
  env = dict(os.environ if environ is None else environ)
  if env.get(OPT_OUT_VARIABLE, "").lower() == "none":
    return env
  return with_flags(GPU_FLAGS, env)


def apply_gpu_flags(environ: MutableMapping[str, str] | None = None) -> str:
  """Adds GPU_FLAGS to `environ` (default os.environ) in place; returns the resulting XLA_FLAGS.

  Call it before JAX initialises a backend (before the first `jax.devices()` or computation):
  afterwards XLA no longer reads the variable.
  """
  env = os.environ if environ is None else environ
  value = with_gpu_flags(env).get("XLA_FLAGS", "")
  if value:
    env["XLA_FLAGS"] = value
  return value

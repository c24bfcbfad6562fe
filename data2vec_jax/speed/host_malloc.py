"""glibc malloc settings that stop XLA:CPU from page-faulting its scratch memory in every step.

Why: XLA:CPU allocates each execution's temporary buffer (hundreds of MB for a train step) with
malloc, from a worker thread. glibc serves a request that large from a fresh `mmap` and gives it
back with `munmap` on free, so every step faults the whole buffer in again, and the first writes
into that memory (zero fills of the embedding gradient, scan buffers) run at page-fault speed.
With every thread on the main arena, no mmap-served chunks and no trimming, freed memory stays
mapped and is reused: no faults per step (bench/README.md has the measured faults and step
times).

The settings only take effect when the process starts, hence `maybe_reexec`: `train.py` calls it
first thing, and the benchmarks start their workers (both frameworks) with `tuned_environ()`.
The cost is that the process keeps its peak heap mapped (RSS does not shrink after a peak),
which is what a training process does anyway. Opt out with `D2V_MALLOC=default`.
"""

from __future__ import annotations

import os
import platform
import sys
from typing import Mapping, MutableMapping

from data2vec_jax.speed.environ import with_settings

# arena_max=1: every thread allocates from the main (sbrk) arena, the one where mmap_max=0 and
# trim_threshold apply to large requests too (secondary arenas mmap anything over 64 MB).
TUNABLES = (
  "glibc.malloc.arena_max=1",
  "glibc.malloc.mmap_max=0",
  "glibc.malloc.trim_threshold=4294967296",
)
OPT_OUT_VARIABLE = "D2V_MALLOC"


def applies() -> bool:
  """True on Linux with glibc, where GLIBC_TUNABLES means something."""
  return sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


def tuned_environ(environ: Mapping[str, str] | None = None) -> dict[str, str]:
  """A copy of `environ` (default os.environ) with TUNABLES added to GLIBC_TUNABLES.

  Settings the caller already has in GLIBC_TUNABLES win over ours.
  """
  return with_settings("GLIBC_TUNABLES", TUNABLES, separator=":", environ=environ)


def is_tuned(environ: Mapping[str, str] | None = None) -> bool:
  env = os.environ if environ is None else environ
  have = {t.split("=", 1)[0] for t in env.get("GLIBC_TUNABLES", "").split(":") if t}
  return all(t.split("=", 1)[0] in have for t in TUNABLES)


def maybe_reexec(environ: MutableMapping[str, str] | None = None) -> None:
  """Re-executes this Python process with `tuned_environ()` unless that is already in effect.

  Call it before anything else: when it re-executes it never returns, and the new image runs
  the same command line (`sys.orig_argv`, interpreter flags included) under the same PID, so
  launchers and signal handlers see the same process. No-op when not on glibc, when the
  settings are already present, or when D2V_MALLOC=default.
  """
  env = os.environ if environ is None else environ
  mode = env.get(OPT_OUT_VARIABLE, "tuned")
  if mode not in ("tuned", "default"):
    raise ValueError(f"{OPT_OUT_VARIABLE}={mode!r}; expected 'tuned' or 'default'")
  if mode == "default" or not applies() or is_tuned(env):
    return
  os.execve(sys.executable, list(sys.orig_argv), tuned_environ(env))

"""JAX's persistent compilation cache, on by default for the launchers: a restart (after a
preemption, on every host of a pod) loads the programs it compiled before instead of compiling
them again (a Base step: ~40 s per shape on CPU, minutes on some accelerators).

`setting` (train.compilation_cache in the configs):
  'auto'   JAX_COMPILATION_CACHE_DIR if the environment sets it (sweep.py shares one cache
           between its cells), else `<workdir>/jax_cache`: beside the checkpoints, so a restart
           finds it wherever the workdir lives (a pod's shared storage, or each host's own disk);
  'none'   off (also '');
  a path   that directory (any path JAX's cache takes: a local directory per host, a shared
           file system, gs://...).

Every program is cached, however short its compile (JAX's default skips those under 1 s): a
restart then compiles nothing. The cache's keys include the program, the devices and the
jax/XLA versions, so a changed config or machine compiles anew rather than loading a wrong
program.
"""

from __future__ import annotations

import logging
import os

ENV = "JAX_COMPILATION_CACHE_DIR"


def cache_directory(setting: str, workdir: str) -> str | None:
  """The directory `setting` names for a run in `workdir` (None: off)."""
  setting = str(setting or "none")
  if setting == "none":
    return None
  if setting == "auto":
    return os.environ.get(ENV) or os.path.join(os.path.abspath(workdir), "jax_cache")
  return setting


def enable(setting: str, workdir: str) -> str | None:
  """Points JAX's persistent cache at `cache_directory(setting, workdir)`; returns it. Call before
  the first compilation (JAX reads the setting when it first compiles)."""
  import jax

  directory = cache_directory(setting, workdir)
  if directory is None:
    logging.info("persistent compilation cache: off")
    return None
  if "://" not in directory:
    os.makedirs(directory, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", directory)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  logging.info("persistent compilation cache: %s", directory)
  return directory

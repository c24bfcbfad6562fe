"""Test-wide setup: 8 fake CPU devices (for sharding tests) before JAX starts its backend."""

import os
import shutil
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import jax  # noqa: E402  (must come after the environment is set)

jax.config.update("jax_num_cpu_devices", 8)

# One persistent compilation cache for every process the session starts (train.py, finetune.py,
# sweep.py, notebook kernels: train.compilation_cache='auto' reads the variable): most runs
# compile the same tiny steps, and a cached program loads in a second instead of compiling for
# ~15 s. xdist's workers inherit it from the controller (one directory for both), which removes
# it at the end. The pytest processes themselves keep JAX's default (no persistent cache), as
# before. Tests of the cache itself, or that need a real compile to happen, drop it
# (tests/train_helpers.py: env(shared_cache=False)).
SHARED_CACHE_ENV = "JAX_COMPILATION_CACHE_DIR"
_OWN_SHARED_CACHE = None
if not os.environ.get(SHARED_CACHE_ENV):
  _OWN_SHARED_CACHE = tempfile.mkdtemp(prefix="d2v-tests-jax-cache-")
  os.environ[SHARED_CACHE_ENV] = _OWN_SHARED_CACHE
jax.config.update("jax_compilation_cache_dir", None)  # a worker's JAX read the variable


def pytest_unconfigure(config):
  if _OWN_SHARED_CACHE:
    shutil.rmtree(_OWN_SHARED_CACHE, ignore_errors=True)


E2E = os.path.join(os.path.dirname(os.path.abspath(__file__)), "e2e")


def pytest_collection_modifyitems(config, items):
  """Whole runs (subprocess launches, grids, notebooks, the packaging install) live in tests/e2e/
  and are all `slow`, so `make test-fast` (-m "not slow") skips exactly them and the few slow
  tests elsewhere that say so themselves."""
  import pytest

  for item in items:
    if str(item.path).startswith(E2E + os.sep):
      item.add_marker(pytest.mark.slow)

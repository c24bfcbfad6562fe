"""Test-wide setup: 8 fake CPU devices (for sharding tests) before JAX starts its backend."""

import os
import shutil
import tempfile

from tests.xla_env import xla_flags  # imports no JAX

# Fast-compiling XLA for every test process (why it changes no result: tests/xla_env.py).
os.environ.setdefault("XLA_FLAGS", xla_flags(devices=8))
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


TESTS = os.path.dirname(os.path.abspath(__file__))
E2E = os.path.join(TESTS, "e2e")
# The files that take minutes, longest first (--durations on 2 cores). Run first, they leave the
# many short files to fill both xdist workers at the end; last (xdist's own order puts the files
# with the fewest tests last, hence `make test`'s --no-loadscope-reorder), one of them alone kept
# a worker busy for minutes while the other had nothing left. The order changes no result.
SLOWEST_FILES = (
  "e2e/test_train.py",
  "e2e/test_sweep.py",
  "e2e/test_gpu_session.py",
  "test_compile_for.py",
  "e2e/test_train_failures.py",
  "train/test_step.py",
  "e2e/test_train_multiprocess.py",
  "e2e/test_finetune.py",
  "e2e/test_transfer.py",
  "e2e/test_packaging.py",
  "e2e/test_notebooks.py",
  "e2e/test_data2vec2.py",
  "objective/test_loss.py",
  "finetune/test_starting_point.py",
  "objective/test_data2vec2.py",
  "train/test_step_data2vec2.py",
  "train/test_validation.py",
  "model/test_pad_rows.py",
  "finetune/test_model_parity.py",
  "speed/test_packing.py",
)


def pytest_collection_modifyitems(config, items):
  """Whole runs (subprocess launches, grids, notebooks, the packaging install) live in tests/e2e/
  and are all `slow`, so `make test-fast` (-m "not slow") skips exactly them and the few slow
  tests elsewhere that say so themselves. SLOWEST_FILES come first, in that order; every other
  file keeps its place, and every file the order of its tests."""
  import pytest

  for item in items:
    if str(item.path).startswith(E2E + os.sep):
      item.add_marker(pytest.mark.slow)
  rank = {os.path.join(TESTS, name): i for i, name in enumerate(SLOWEST_FILES)}
  items.sort(key=lambda item: rank.get(str(item.path), len(rank)))  # a stable sort

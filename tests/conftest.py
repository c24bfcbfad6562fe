"""Test-wide setup: 8 fake CPU devices (for sharding tests) before JAX starts its backend."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import jax  # noqa: E402  (must come after the environment is set)

jax.config.update("jax_num_cpu_devices", 8)


E2E = os.path.join(os.path.dirname(os.path.abspath(__file__)), "e2e")


def pytest_collection_modifyitems(config, items):
  """Whole runs (subprocess launches, grids, notebooks, the packaging install) live in tests/e2e/
  and are all `slow`, so `make test-fast` (-m "not slow") skips exactly them and the few slow
  tests elsewhere that say so themselves."""
  import pytest

  for item in items:
    if str(item.path).startswith(E2E + os.sep):
      item.add_marker(pytest.mark.slow)

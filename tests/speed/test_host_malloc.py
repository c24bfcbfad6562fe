"""host_malloc: the environment it builds, the re-exec, and the effect it exists for (no page
faults on XLA:CPU's per-call scratch memory)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from data2vec_jax.speed import host_malloc
from tests.paths import REPO

pytestmark = pytest.mark.skipif(not host_malloc.applies(), reason="needs Linux with glibc")


def test_tuned_environ_adds_settings_and_keeps_the_users():
  env = host_malloc.tuned_environ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=4", "X": "1"})
  tunables = env["GLIBC_TUNABLES"].split(":")
  assert "glibc.malloc.arena_max=4" in tunables  # the user's value wins
  assert "glibc.malloc.arena_max=1" not in tunables
  assert "glibc.malloc.mmap_max=0" in tunables and env["X"] == "1"
  assert host_malloc.is_tuned(env)
  assert not host_malloc.is_tuned({"GLIBC_TUNABLES": "glibc.malloc.mmap_max=0"})
  assert host_malloc.tuned_environ({})["GLIBC_TUNABLES"] == ":".join(host_malloc.TUNABLES)


def _run(code: str, **env_overrides) -> subprocess.CompletedProcess:
  env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "D2V_MALLOC")}
  env.update(env_overrides)
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  return subprocess.run(
    [sys.executable, "-c", textwrap.dedent(code)],
    capture_output=True,
    text=True,
    env=env,
    timeout=300,
  )


_FAULTS = """
    from data2vec_jax.speed import host_malloc
    host_malloc.maybe_reexec()
    import os, resource
    import jax, jax.numpy as jnp
    # a [5000, 5000] float32 intermediate (100 MB) lives in the call's scratch buffer
    f = jax.jit(lambda a, b: jnp.sum(jnp.tanh(a @ b), axis=0))
    a, b = jnp.ones((5000, 8)), jnp.ones((8, 5000))
    jax.block_until_ready(f(a, b))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(4):
      jax.block_until_ready(f(a, b))
    per_call = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 4
    print(os.environ.get("GLIBC_TUNABLES", ""), per_call)
"""


def test_reexec_removes_per_call_page_faults():
  tuned = _run(_FAULTS)
  default = _run(_FAULTS, D2V_MALLOC="default")
  assert tuned.returncode == 0 and default.returncode == 0, tuned.stderr + default.stderr
  tunables, tuned_faults = tuned.stdout.split()
  assert host_malloc.is_tuned({"GLIBC_TUNABLES": tunables})
  default_faults = float(default.stdout.split()[-1])
  # 100 MB of fresh pages is ~24k faults per call without the settings; with them, ~none.
  assert default_faults > 10000, default.stdout
  assert float(tuned_faults) < 500, tuned.stdout


def test_bad_opt_out_value_is_refused():
  proc = _run(
    "from data2vec_jax.speed import host_malloc; host_malloc.maybe_reexec()", D2V_MALLOC="yes"
  )
  assert proc.returncode != 0 and "D2V_MALLOC='yes'" in proc.stderr

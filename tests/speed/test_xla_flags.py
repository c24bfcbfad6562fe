"""xla_flags: the environment it builds, and that XLA starts a backend with the GPU flags (an
unknown or malformed flag aborts the process at backend start, on CPU too)."""

from __future__ import annotations

import os
import subprocess
import sys

from data2vec_jax.speed import xla_flags
from tests.paths import REPO


def test_flags_are_appended_once_and_the_users_value_wins():
  user = "--xla_gpu_enable_triton_gemm=true --xla_dump_to=/tmp/x"
  env = xla_flags.with_flags(xla_flags.GPU_FLAGS, {"XLA_FLAGS": user, "OTHER": "1"})
  flags = env["XLA_FLAGS"].split()
  assert flags[:2] == user.split()  # the user's flags first and unchanged
  assert "--xla_gpu_enable_triton_gemm=false" not in flags  # same name: the user's value kept
  assert "--xla_gpu_enable_latency_hiding_scheduler=true" in flags
  assert env["OTHER"] == "1"
  # Idempotent: applying twice adds nothing.
  assert xla_flags.with_flags(xla_flags.GPU_FLAGS, env)["XLA_FLAGS"] == env["XLA_FLAGS"]
  assert xla_flags.with_gpu_flags({})["XLA_FLAGS"] == " ".join(xla_flags.GPU_FLAGS)


def test_opt_out_and_in_place_application():
  assert "XLA_FLAGS" not in xla_flags.with_gpu_flags({xla_flags.OPT_OUT_VARIABLE: "none"})
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
  value = xla_flags.apply_gpu_flags(env)
  assert env["XLA_FLAGS"] == value
  assert value.split() == ["--xla_force_host_platform_device_count=2", *xla_flags.GPU_FLAGS]


def _start_backend(xla_flags_value: str) -> subprocess.CompletedProcess:
  env = dict(os.environ, XLA_FLAGS=xla_flags_value, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
  code = "import jax, jax.numpy as jnp; print(float(jnp.ones(3).sum()), jax.devices())"
  return subprocess.run(
    [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
  )


def test_xla_accepts_the_gpu_flags():
  ok = _start_backend(xla_flags.with_gpu_flags({})["XLA_FLAGS"])
  assert ok.returncode == 0 and ok.stdout.startswith("3.0"), ok.stderr[-2000:]
  # The check has teeth: a flag XLA does not know stops the process.
  bad = _start_backend("--xla_gpu_enable_no_such_thing=true")
  assert bad.returncode != 0
  assert "xla_gpu_enable_no_such_thing" in bad.stderr

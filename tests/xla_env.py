"""The XLA flags of every JAX process the tests run: the pytest processes (tests/conftest.py) and
the train.py / finetune.py / sweep.py / notebook subprocesses they start.

The tests' programs are tiny, so compiling them costs far more than running them: ~60% of a cold
tiny train.py run's CPU time is XLA's LLVM backend optimising kernels that then run for
milliseconds. FAST_COMPILE turns that backend optimisation down (LLVM -O0, no expensive passes);
every HLO pass (fusion, layout, sharding) still runs, so the programs compute what they compute
under the defaults, only with slower kernels. Float results can differ in the last bit (LLVM may
contract or vectorise differently), which no test depends on: comparisons with PyTorch use
float32-rounding tolerances, and every bit-exact comparison (resume, multi-host vs one host,
packed vs padded) runs both sides under these same flags.

One end-to-end test keeps XLA's defaults on purpose: tests/e2e/test_packaging.py runs the
commands in a fresh environment exactly as a user's shell starts them.
"""

FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def xla_flags(devices: int = 1) -> str:
  """XLA_FLAGS for a test process on `devices` host (CPU) devices."""
  if devices == 1:
    return FAST_COMPILE
  return f"--xla_force_host_platform_device_count={devices} {FAST_COMPILE}"

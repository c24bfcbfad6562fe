"""Shared helpers of the benchmarks: machine description, git commit, result logging, subprocess
workers, and the recommended XLA flags for GPU runs.

Every benchmark appends one JSON object per run to `bench/results.jsonl`:

    {"bench", "command", "git_commit", "git_dirty", "machine", "device", "load_avg",
     "time_utc", "results", ...}

Workers. Each framework/config measurement runs in its own Python subprocess (`run_worker`), so
that peak resident memory (`ru_maxrss`) is attributable to one framework and one model, and the
two frameworks never share a process (their thread pools would otherwise compete: Eigen and OpenMP
workers spin-wait for a while after each parallel region).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time
from typing import Any, Iterable, Sequence

import numpy as np

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(BENCH_DIR)
# D2V_BENCH_RESULTS redirects the records (bench/gpu_session.sh writes them under its output
# folder, which is what comes back from a lent GPU machine).
RESULTS_PATH = os.environ.get("D2V_BENCH_RESULTS") or os.path.join(BENCH_DIR, "results.jsonl")
WORKER_PREFIX = "BENCH_RESULT "

# Memory: let XLA take 95% of the GPU (default 75%) so the batch-size sweep finds the real limit.
GPU_ENV: dict[str, str] = {"XLA_PYTHON_CLIENT_MEM_FRACTION": "0.95"}


def load_avg() -> list[float]:
  try:
    return [round(x, 2) for x in os.getloadavg()]
  except OSError:
    return []


def machine_info() -> dict[str, Any]:
  info = {
    "hostname": platform.node(),
    "platform": platform.platform(),
    "processor": platform.processor() or platform.machine(),
    "cpu_count": os.cpu_count(),
    "python": platform.python_version(),
  }
  try:
    info["cpu_affinity"] = len(os.sched_getaffinity(0))
  except AttributeError:
    pass
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          info["cpu_model"] = line.split(":", 1)[1].strip()
          break
    with open("/proc/meminfo") as f:
      info["mem_total_gib"] = round(int(f.readline().split()[1]) / 2**20, 1)
  except OSError:
    pass
  return info


def available_cores() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1


def pin_to_cores(n: int) -> None:
  """Restricts this process (and the threads it will start) to the first n allowed cores."""
  cores = sorted(os.sched_getaffinity(0))[:n]
  os.sched_setaffinity(0, cores)


def git_commit() -> tuple[str, bool]:
  """(HEAD commit, whether the work tree has uncommitted changes)."""

  def git(*args):
    return subprocess.run(
      ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=30
    ).stdout.strip()

  try:
    # The results file itself changes with every run; it is not code under measurement.
    return git("rev-parse", "HEAD"), bool(
      git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!bench/results.jsonl")
    )
  except (OSError, subprocess.SubprocessError):
    return "unknown", False


def library_versions(*names: str) -> dict[str, str]:
  from importlib import metadata

  out = {}
  for name in names:
    try:
      out[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
      pass
  return out


def append_result(bench: str, device: str, results: Any, **extra: Any) -> dict[str, Any]:
  """Appends one JSON line to bench/results.jsonl and returns the record."""
  commit, dirty = git_commit()
  record = {
    "bench": bench,
    "command": "python "
    + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0], REPO_ROOT)] + sys.argv[1:]),
    "git_commit": commit,
    "git_dirty": dirty,
    "machine": machine_info(),
    "device": device,
    "load_avg": load_avg(),
    "time_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    **extra,
    "results": results,
  }
  with open(RESULTS_PATH, "a") as f:
    f.write(json.dumps(record) + "\n")
  return record


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
  def fmt(v):
    if isinstance(v, float):
      return f"{v:.4g}" if abs(v) < 1e5 else f"{v:.0f}"
    return "-" if v is None else str(v)

  cells = [[fmt(r.get(c)) for c in columns] for r in rows]
  widths = [
    max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)
  ]
  print("  ".join(c.rjust(w) for c, w in zip(columns, widths)))
  for row in cells:
    print("  ".join(v.rjust(w) for v, w in zip(row, widths)))


# ----------------------------------------------------------------------------------------------
# Timing and memory inside a worker


def set_torch_threads(threads: int) -> None:
  """PyTorch's intra- and inter-op pools at `threads` (the inter-op one can be set only once)."""
  import torch

  torch.set_num_threads(threads)
  try:
    torch.set_num_interop_threads(threads)
  except RuntimeError:
    pass


def peak_rss_mib() -> float:
  """Peak resident set size of this process (Linux ru_maxrss is in KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mib() -> float:
  try:
    with open("/proc/self/statm") as f:
      return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
  except OSError:
    return float("nan")


def timed_loop(step, n: int) -> list[float]:
  """Calls `step()` n times; `step` must block until its work is done. Returns seconds each."""
  times = []
  for _ in range(n):
    t0 = time.perf_counter()
    step()
    times.append(time.perf_counter() - t0)
  return times


def emit(result: dict[str, Any]) -> None:
  """Worker side: print the result as one prefixed JSON line on stdout."""
  print(WORKER_PREFIX + json.dumps(result), flush=True)


MALLOC_MODES = ("tuned", "default")


def run_worker(
  script: str,
  args: Iterable[str],
  *,
  timeout: float,
  env: dict[str, str] | None = None,
  malloc: str = "tuned",
) -> dict[str, Any]:
  """Runs `python script args` and returns the JSON it emitted ({'error': ...} on failure).

  malloc: 'tuned' starts the worker with `host_malloc.tuned_environ()` (what train.py runs
  under; applied to every framework alike), 'default' with the environment as it is.
  """
  from data2vec_jax.speed import host_malloc  # no jax import: safe in the driver process

  if malloc not in MALLOC_MODES:
    raise ValueError(f"malloc={malloc!r}; expected one of {MALLOC_MODES}")
  cmd = [sys.executable, script, *args]
  env = dict(os.environ if env is None else env)
  if malloc == "tuned" and host_malloc.applies():
    env = host_malloc.tuned_environ(env)
  env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
  try:
    proc = subprocess.run(
      cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO_ROOT
    )
  except subprocess.TimeoutExpired:
    return {"error": f"timeout after {timeout:.0f}s", "cmd": " ".join(cmd)}
  for line in reversed(proc.stdout.splitlines()):
    if line.startswith(WORKER_PREFIX):
      return json.loads(line[len(WORKER_PREFIX) :])
  tail = (proc.stderr or proc.stdout)[-3000:]
  return {
    "error": f"worker exited {proc.returncode} without a result",
    "stderr_tail": tail,
    "cmd": " ".join(cmd),
  }


def run_rounds(
  script: str,
  label: str,
  frameworks: Sequence[str],
  rounds: int,
  worker_args: Sequence[str],
  *,
  timeout: float,
  malloc: str = "tuned",
  env: dict[str, str] | None = None,
) -> tuple[dict[str, list[dict[str, Any]]], list[dict[str, Any]]]:
  """The benchmarks' protocol: `rounds` rounds, one worker subprocess per framework per round,
  the order alternating between rounds (so neither framework always runs on a warmer machine).

  worker_args: the arguments every worker gets after `--worker <framework>`. Returns (framework
  -> the workers' results, errors); each round's outcome is printed to stderr as it ends.
  """
  runs: dict[str, list[dict[str, Any]]] = {f: [] for f in frameworks}
  errors: list[dict[str, Any]] = []
  for r in range(rounds):
    for fw in frameworks if r % 2 == 0 else list(frameworks)[::-1]:
      res = run_worker(
        script, ["--worker", fw, *worker_args], timeout=timeout, env=env, malloc=malloc
      )
      if "error" in res:
        errors.append({"framework": fw, "round": r, **res})
        print(
          f"[{label}/{fw} round {r}] ERROR: {res['error']}\n{res.get('stderr_tail', '')}",
          file=sys.stderr,
        )
        continue
      runs[fw].append(res)
      parts = [f"median {median(res['times_s']):.4f}s"]
      if "first_call_s" in res:
        parts.append(f"first {res['first_call_s']:.2f}s")
      if "peak_rss_mib" in res:
        parts.append(f"peak RSS {res['peak_rss_mib']:.0f} MiB")
      if "minor_faults_per_step" in res:
        parts.append(f"minor faults/step {res['minor_faults_per_step']:.0f}")
      print(f"[{label}/{fw} round {r}] " + " ".join(parts), file=sys.stderr)
  return runs, errors


def summarize_step_runs(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
  """One framework's training-step workers (times_s, real_tokens, rss, first_call_s, losses)
  -> the medians and spreads every step benchmark records, plus `worker_info` (the first
  worker's own facts)."""
  times = [t for r in runs for t in r["times_s"]]
  tokens = [n for r in runs for n in r["real_tokens"]]
  med = median(times)
  return {
    "median_step_s": med,
    "tokens_per_s": median(tokens) / med,
    "round_medians_s": [median(r["times_s"]) for r in runs],
    "min_step_s": min(times),
    "max_step_s": max(times),
    "timed_steps": len(times),
    "peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
    "rss_base_mib": max(r["rss_base_mib"] for r in runs),
    "first_call_s": median([r["first_call_s"] for r in runs]),
    "final_loss": runs[-1]["losses"][-1],
    "worker_info": {
      k: v for k, v in runs[0].items() if k not in ("times_s", "warmup_s", "real_tokens", "losses")
    },
  }


def cpu_device_label(what: str, threads: int, pin_cores: int) -> str:
  """The `device` field of a CPU benchmark's results.jsonl row."""
  return f"host CPU, {available_cores()} cores ({what}, {threads} torch threads" + (
    f", every worker pinned to {pin_cores} core(s))" if pin_cores else ")"
  )


def median(xs: Sequence[float]) -> float:
  return float(statistics.median(xs)) if xs else float("nan")


def summarize_times(times: Sequence[float]) -> dict[str, float]:
  a = np.asarray(times, np.float64)
  return {
    "median_s": float(np.median(a)),
    "min_s": float(a.min()),
    "max_s": float(a.max()),
    "n": int(a.size),
  }


# ----------------------------------------------------------------------------------------------
# Model shapes and batches shared by the CPU benchmarks

MASK_ID_SMALL_VOCAB = 999

# name -> EncoderConfig overrides. vocab: tiny keeps tiny_config's 1000 rows; small and base use
# the released dictionary (50265), so embedding gradients and their AdamW update are realistic.
CONFIGS: dict[str, dict[str, Any]] = {
  "tiny": dict(vocab_size=1000, hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128),
  "small": dict(
    vocab_size=50265, hidden_size=256, num_layers=4, num_heads=4, intermediate_size=1024
  ),
  "base": dict(
    vocab_size=50265, hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072
  ),
}


def mask_id_for(vocab_size: int) -> int:
  return vocab_size - 1  # the last row, like the released dictionary's <mask> (50264)


MASK_PROB = 0.3  # fraction of a row's inner tokens replaced by <mask> in the CPU benchmarks


def make_batch(
  rows: int,
  length: int,
  vocab_size: int,
  seed: int = 0,
  *,
  full_rows: bool = False,
  mask_prob: float = MASK_PROB,
  pad_id: int = 1,
) -> dict[str, np.ndarray]:
  """Right-padded rows (<s> ... </s>, pads = pad_id), lengths uniform in [length/2, length] (or
  all full with `full_rows`); in each row `int(mask_prob * n + U(0,1))` (at least 1) of the n - 2
  inner tokens replaced by <mask> (= the loss positions), fairseq's count rule for token
  masking, so `masking.max_selected_per_row(MaskingConfig(mask_prob, 1), length)` bounds it.
  Returns numpy {'source', 'target' int32 [B,T], 'selected' bool [B,T]}."""
  rng = np.random.default_rng(seed)
  mask_id = mask_id_for(vocab_size)
  target = np.full((rows, length), pad_id, np.int32)
  selected = np.zeros((rows, length), bool)
  for r in range(rows):
    n = length if full_rows else int(rng.integers(length // 2, length + 1))
    target[r, :n] = rng.integers(4, mask_id, n)
    target[r, 0], target[r, n - 1] = 0, 2
    count = max(1, int(mask_prob * (n - 2) + rng.random()))
    selected[r, 1 + rng.choice(n - 2, count, replace=False)] = True
  source = np.where(selected, mask_id, target).astype(np.int32)
  return {"source": source, "target": target, "selected": selected}


def real_tokens(batch: dict[str, np.ndarray], pad_id: int = 1) -> int:
  return int(np.sum(batch["target"] != pad_id))


# ----------------------------------------------------------------------------------------------
# Shared pieces of the JAX-vs-PyTorch CPU benchmarks


def add_protocol_flags(parser: Any, *, timeout: float) -> None:
  """The flags every interleaved CPU benchmark takes (rounds, threads, pinning, malloc, record)."""
  import argparse

  parser.add_argument("--rounds", type=int, default=2)
  parser.add_argument(
    "--threads",
    type=int,
    default=None,
    help="torch intra/inter-op threads (default: available cores; XLA:CPU "
    "always sizes its pool to the available cores)",
  )
  parser.add_argument("--timeout", type=float, default=timeout)
  parser.add_argument("--no_record", action="store_true", help="do not append to results.jsonl")
  parser.add_argument("--note", default="")
  parser.add_argument(
    "--pin_cores",
    type=int,
    default=0,
    help="pin every worker to the first N cores (sched_setaffinity, before the framework "
    "starts: XLA:CPU sizes its pool from the affinity mask) and use N torch threads; "
    "makes runs far less sensitive to other load",
  )
  parser.add_argument(
    "--malloc",
    choices=MALLOC_MODES,
    default="tuned",
    help="worker malloc settings, both frameworks alike (data2vec_jax/speed/host_malloc.py)",
  )
  parser.add_argument("--worker", choices=["jax", "torch"], help=argparse.SUPPRESS)
  parser.add_argument("--config", help=argparse.SUPPRESS)


def parse_protocol_args(parser: Any, argv: Sequence[str] | None) -> Any:
  """Parses argv, checks --warmup >= 1 (the first call compiles), defaults --threads to the
  pinned or available cores, and pins a worker process to --pin_cores before its framework
  starts."""
  args = parser.parse_args(argv)
  if args.warmup < 1:
    parser.error("--warmup must be >= 1 (the first call includes compilation)")
  if args.threads is None:
    args.threads = args.pin_cores or available_cores()
  if args.worker and args.pin_cores:
    pin_to_cores(args.pin_cores)
  return args


def trainer_plan(
  objective: Any,
  seq: int,
  *,
  prune_last_block: bool,
  head_overflow: str,
  pack_buckets: int = 0,
) -> Any:
  """The execution plan the trainer's 'auto' makes for this benchmark's masking: the head on
  each row's gathered loss positions, K = the masker's per-row bound (the PyTorch step indexes
  x[masked] likewise); with 'error' no fallback branch is compiled, so the caller checks every
  host batch (`ExecutionPlan.check_host_batch`). pack_buckets 0 runs padded."""
  from data2vec_jax.objective.execution import ExecutionPlan
  from data2vec_jax.objective.masking import MaskingConfig, max_selected_per_row

  k = max_selected_per_row(MaskingConfig(mask_prob=MASK_PROB, mask_multiple_length=1), seq)
  return ExecutionPlan.for_objective(
    objective,
    seq,
    head_positions_per_row=k,
    prune_last_block=prune_last_block,
    head_overflow=head_overflow,
    pack_tokens=pack_buckets > 0,
    pack_buckets=max(pack_buckets, 1),
  )


def jax_train_setup(
  recipe: Any, plan: Any, tx: Any, mesh: Any, host_batches: Sequence[dict]
) -> tuple:
  """(jitted train step, initial state, device batches) on `mesh`: exactly the trainer's step.

  Call inside `with sharding.activate(mesh):`.
  """
  import jax

  from data2vec_jax.runtime import sharding as sharding_lib
  from data2vec_jax.train import step as train_step_lib

  state, step = train_step_lib.new_state_and_step(recipe, plan, tx, mesh, jax.random.PRNGKey(0))
  batches = [
    {k: jax.device_put(v, sharding_lib.batch_sharding(mesh)) for k, v in b.items()}
    for b in host_batches
  ]
  return step, state, batches

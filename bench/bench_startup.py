"""Time to first step, compile pauses and wall time of the offline demo (`configs/demo.py`):

  before  every shape compiled when first met, no persistent cache (the behaviour before
          train.precompile_steps / train.compilation_cache);
  cold    the defaults, with an empty cache: every step shape compiled before step 1 (and
          cold_1_thread: one at a time);
  warm    the same config again in a new workdir with the cold run's cache (a restart).

    python bench/bench_startup.py [--steps 200] [--config configs/demo.py]

Each variant is one `train.py` process; the figures come from its log's timestamps: time to
step 1 (from the first log line, right after start-up imports), the pauses the log announces
("new packed shape ..., compiling": the gap to that step's line), the precompile time, and the
process's wall time. Prints a table and appends one JSON line to bench/results.jsonl.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import append_result  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAMP = re.compile(r"^I\d{4} (\d\d:\d\d:\d\d\.\d+) ")


def _seconds(line: str) -> float | None:
  match = STAMP.match(line)
  if not match:
    return None
  t = datetime.datetime.strptime(match.group(1), "%H:%M:%S.%f")
  return t.hour * 3600 + t.minute * 60 + t.second + t.microsecond / 1e6


def measure(name: str, config: str, steps: int, workdir: str, *flags: str) -> dict:
  command = [
    sys.executable,
    os.path.join(REPO, "train.py"),
    f"--config={config}:steps={steps}",
    f"--workdir={workdir}",
    "--config.train.log_every=1",  # every step's line: a pause is the gap to its step's line
    *flags,
  ]
  t0 = time.time()
  out = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
  wall = time.time() - t0
  if out.returncode:
    raise SystemExit(f"{name}: train.py failed:\n{out.stderr[-3000:]}")
  lines = [(s, line) for line in out.stderr.splitlines() if (s := _seconds(line)) is not None]
  start = lines[0][0]
  first_step = next(s for s, line in lines if " step 1/" in line)
  pauses = []
  for i, (s, line) in enumerate(lines):
    match = re.search(r"step (\d+): new packed shape", line)
    if match:
      done = next(t for t, later in lines[i:] if f" step {match.group(1)}/" in later)
      pauses.append({"step": int(match.group(1)), "seconds": round(done - s, 2)})
  precompile = re.search(r"compiled the step for (\d+) shape\(s\).* in ([\d.]+) s", out.stderr)
  return {
    "variant": name,
    "flags": list(flags),
    "wall_s": round(wall, 1),
    "time_to_step_1_s": round(first_step - start, 1),
    "precompiled_shapes": int(precompile.group(1)) if precompile else 0,
    "precompile_s": float(precompile.group(2)) if precompile else 0.0,
    "pauses_after_step_1": pauses,
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--steps", type=int, default=200)
  parser.add_argument("--config", default="configs/demo.py")
  args = parser.parse_args()
  root = tempfile.mkdtemp(prefix="d2v_startup_")
  cold_cache = os.path.join(root, "cold", "jax_cache")
  variants = [
    (
      "before",
      "--config.train.precompile_steps=0",
      "--config.train.compilation_cache=none",
    ),
    ("cold",),
    ("cold_1_thread", "--config.train.compile_threads=1"),
    ("warm", f"--config.train.compilation_cache={cold_cache}"),
  ]
  results = []
  for name, *flags in variants:
    print(f"running {name} ...", flush=True)
    results.append(measure(name, args.config, args.steps, os.path.join(root, name), *flags))
  print(f"{'variant':<8} {'wall s':>7} {'to step 1 s':>12} {'precompile':>16} pauses after step 1")
  for r in results:
    pauses = ", ".join(f"step {p['step']}: {p['seconds']} s" for p in r["pauses_after_step_1"])
    pre = f"{r['precompiled_shapes']} in {r['precompile_s']} s" if r["precompiled_shapes"] else "-"
    print(
      f"{r['variant']:<8} {r['wall_s']:>7} {r['time_to_step_1_s']:>12} {pre:>16} {pauses or 'none'}"
    )
  append_result(
    "startup",
    "host CPU (jax cpu backend)",
    {"config": args.config, "steps": args.steps, "variants": results},
  )


if __name__ == "__main__":
  main()

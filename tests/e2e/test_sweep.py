"""sweep.py end to end on a tiny sweep (two cells of the offline demo: K in {1, 2}), as users run
it: an uninterrupted sweep, and the same sweep killed twice and re-run, must give the same table
and the same training curves.

Kill 1: SIGKILL to the whole process group (a scheduler's hard kill) while the first cell
pretrains, after its first checkpoint. Kill 2: SIGKILL to the sweep's process alone while the
second cell fine-tunes, after its first run: the stage gets SIGTERM from the kernel, saves and
exits, and the re-run waits for it (the cell's lock) before resuming.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from tests.paths import REPO

TINY_SWEEP = '''
from data2vec_jax.configs.sweeps import demo_top_k


def get_config(arg=None):
  c = demo_top_k.get_config("values=1;2")
  c.pretrain.args = "steps=24"
  c.pretrain.overrides = (
    "model.num_layers=2", "model.hidden_size=32", "model.num_heads=2",
    "model.intermediate_size=64", "data.global_batch_size=8", "data.tokens_per_sample=64",
    "data.sentencepiece_vocab_size=512", "train.log_every=1", "train.checkpoint_every=2",
    "train.plot=False", "train.tensorboard=False", "execution.pack_buckets=2",
    "validation.every=0",
  )
  c.finetune.overrides = c.finetune.overrides + (
    "optimizer.max_epochs=3", "grid.seeds=(1,2)", "train.tensorboard=False",
    "train.log_every=5", "train.export_model=False",
  )
  return c
'''


def env() -> dict[str, str]:
  e = dict(os.environ)
  e["XLA_FLAGS"] = ""  # one CPU device per stage, like a user's laptop
  e["JAX_PLATFORMS"] = "cpu"
  e["PYTHONPATH"] = REPO
  return e


def sweep_cmd(definition: str, workdir: str) -> list[str]:
  return [
    sys.executable,
    os.path.join(REPO, "sweep.py"),
    f"--config={definition}",
    f"--workdir={workdir}",
    "--noecho",
  ]


def run_sweep(definition: str, workdir: str) -> subprocess.CompletedProcess:
  out = subprocess.run(
    sweep_cmd(definition, workdir), env=env(), capture_output=True, text=True, timeout=900
  )
  assert out.returncode == 0, out.stderr[-4000:]
  return out


def start_sweep(definition: str, workdir: str) -> subprocess.Popen:
  """The sweep in a process group of its own (killpg reaches it and its stages only)."""
  return subprocess.Popen(
    sweep_cmd(definition, workdir),
    env=env(),
    start_new_session=True,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
  )


def wait_for(condition, what: str, timeout: float = 300) -> None:
  deadline = time.time() + timeout
  while time.time() < deadline:
    if condition():
      return
    time.sleep(0.05)
  raise AssertionError(f"timed out waiting for {what}")


def checkpoints(workdir: str) -> list[int]:
  path = os.path.join(workdir, "checkpoints")
  return sorted(int(d) for d in os.listdir(path) if d.isdigit()) if os.path.isdir(path) else []


def curves(workdir: str) -> dict[str, dict[int, float]]:
  """Every stage's training loss per step, by run directory (relative to the sweep)."""
  out = {}
  for root, _, files in os.walk(os.path.join(workdir, "cells")):
    if "metrics.jsonl" in files:
      with open(os.path.join(root, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.endswith("\n")]
      losses = {r["step"]: r.get("loss", r.get("train/loss")) for r in rows}
      out[os.path.relpath(root, workdir)] = {s: v for s, v in losses.items() if v is not None}
  return out


def read(workdir: str, name: str) -> str:
  with open(os.path.join(workdir, name)) as f:
    return f.read()


def test_a_killed_sweep_rerun_gives_the_uninterrupted_table(tmp_path):
  definition = str(tmp_path / "tiny_sweep.py")
  with open(definition, "w") as f:
    f.write(TINY_SWEEP)

  reference = str(tmp_path / "reference")
  out = run_sweep(definition, reference)
  assert "| K | status | python_topics |" in out.stdout
  rows = json.loads(read(reference, "results.json"))
  assert [(r["value"], r["status"], r["finetune_runs"], r["seeds"]) for r in rows] == [
    ("1", "done", "2/2", 2),
    ("2", "done", "2/2", 2),
  ]
  assert os.path.getsize(os.path.join(reference, "axis_plot.png")) > 1000

  killed = str(tmp_path / "killed")
  cell1, cell2 = (os.path.join(killed, "cells", f"K={k}") for k in (1, 2))
  # Kill 1: the whole job, while the first cell pretrains (a checkpoint exists, steps remain).
  job = start_sweep(definition, killed)
  pretrain1 = os.path.join(cell1, "pretrain")
  wait_for(lambda: checkpoints(pretrain1), "the first cell's first checkpoint")
  os.killpg(job.pid, signal.SIGKILL)
  job.wait()
  assert not os.path.exists(os.path.join(pretrain1, "summary.json")), "killed too late"
  assert not os.path.exists(os.path.join(killed, "results.csv"))

  # Kill 2: the sweep's process alone, while the second cell fine-tunes its second run.
  job = start_sweep(definition, killed)
  first_run = os.path.join(cell2, "finetune", "python_topics", "lr0.001_seed1", "results.json")
  wait_for(lambda: os.path.exists(first_run), "the second cell's first fine-tuning run")
  os.kill(job.pid, signal.SIGKILL)
  job.wait()
  second_run = os.path.join(cell2, "finetune", "python_topics", "lr0.001_seed2", "results.json")
  assert not os.path.exists(second_run), "killed too late"
  # The table was written after the first cell, marked partial (the sweep never finished).
  partial = read(killed, "results.md")
  assert "**Partial: 1 of 2 cells done**" in partial and "| 1 | done |" in partial

  out = run_sweep(definition, killed)
  # The first cell was finished by the second invocation: kept, not run again.
  assert "K=1: finished before, kept" in out.stderr
  assert read(killed, "results.csv") == read(reference, "results.csv")
  assert read(killed, "results.md") == read(reference, "results.md")
  # Not only the scores: every stage's loss curve is the uninterrupted one, step for step.
  assert curves(killed) == curves(reference)
  assert len(curves(reference)) == 6  # 2 pretraining runs + 2 x 2 fine-tuning runs

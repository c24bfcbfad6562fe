"""Shared by the train.py end-to-end tests: the tiny config's flags and running train.py as a
user does (a subprocess on one CPU device)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.paths import REPO
from tests.xla_env import xla_flags

TINY = [
  "--config.model.num_layers=2",
  "--config.model.hidden_size=32",
  "--config.model.num_heads=2",
  "--config.model.intermediate_size=64",
  "--config.model.dropout=0.1",
  "--config.objective.average_top_k_layers=2",
  "--config.data.global_batch_size=8",
  "--config.data.tokens_per_sample=64",
  "--config.data.sentencepiece_vocab_size=512",
  "--config.data.prefetch=2",
  "--config.train.log_every=1",
  "--config.train.checkpoint_every=2",
  "--config.train.collapse_check_after=1000000",
  "--config.train.async_checkpoint=True",
  "--config.train.plot=False",
  # Four packed capacities per length instead of 16: each new one compiles the step again,
  # and a few are enough to exercise packing end to end.
  "--config.execution.pack_buckets=4",
]


def train_cmd(workdir: str, steps: int, *extra: str) -> list[str]:
  return [
    sys.executable,
    os.path.join(REPO, "train.py"),
    f"--config={os.path.join(REPO, 'configs', 'demo.py')}:steps={steps}",
    f"--workdir={workdir}",
    *TINY,
    *extra,
  ]


def env(*, shared_cache: bool = True) -> dict[str, str]:
  """The environment of a train.py subprocess. shared_cache=False drops the session's persistent
  compilation cache (tests/conftest.py): the run then caches in <workdir>/jax_cache, or where
  its config says, and compiles whatever it has not compiled itself."""
  e = dict(os.environ)
  e["XLA_FLAGS"] = xla_flags()  # one CPU device, like a user's laptop
  e["JAX_PLATFORMS"] = "cpu"
  e["PYTHONPATH"] = REPO
  if not shared_cache:
    e.pop("JAX_COMPILATION_CACHE_DIR", None)
  return e


def metric_rows(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f if line.endswith("\n")]


def losses(workdir: str) -> dict[int, float]:
  """step -> loss (the later line wins, should a step be logged twice)."""
  return {row["step"]: row["loss"] for row in metric_rows(workdir)}


def checkpoint_steps(workdir: str) -> list[int]:
  return sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())


def run_train(workdir: str, steps: int, *extra: str) -> subprocess.CompletedProcess:
  return subprocess.run(
    train_cmd(workdir, steps, *extra), env=env(), capture_output=True, text=True, timeout=600
  )


def last_line(text: str) -> str:
  return text.strip().splitlines()[-1]

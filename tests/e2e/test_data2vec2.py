"""data2vec 2.0 end to end through train.py (subprocesses): the demo recipe trains, exports,
and a run stopped at a checkpoint and resumed reproduces the uninterrupted run's losses."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.paths import REPO
from tests.xla_env import xla_flags

TINY_V2 = [
  "--config.model.num_layers=2",
  "--config.model.hidden_size=32",
  "--config.model.num_heads=2",
  "--config.model.intermediate_size=64",
  "--config.objective.average_top_k_layers=2",
  "--config.objective.clone_batch=2",
  "--config.objective.decoder_dim=32",
  "--config.objective.decoder_layers=2",
  "--config.data.global_batch_size=4",
  "--config.data.tokens_per_sample=64",
  "--config.data.sentencepiece_vocab_size=512",
  "--config.train.log_every=1",
  "--config.train.checkpoint_every=2",
  "--config.train.async_checkpoint=False",
  "--config.train.plot=False",
  "--config.validation.every=0",
]


def run(workdir: str, *extra: str) -> subprocess.CompletedProcess:
  env = dict(os.environ, XLA_FLAGS=xla_flags(), JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
  cmd = [
    sys.executable,
    os.path.join(REPO, "train.py"),
    f"--config={os.path.join(REPO, 'configs', 'demo.py')}:steps=4,recipe=data2vec2",
    f"--workdir={workdir}",
    *TINY_V2,
    *extra,
  ]
  proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc


def losses(workdir: str) -> dict[int, float]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return {row["step"]: row["loss"] for row in map(json.loads, f)}


def test_v2_demo_trains_exports_and_resumes_exactly(tmp_path):
  whole = str(tmp_path / "whole")
  run(whole)
  recipe = json.load(open(os.path.join(whole, "recipe.json")))
  assert recipe["objective"]["kind"] == "data2vec2"
  assert not recipe["execution"]["pack_tokens"] and recipe["execution"]["drop_masked_tokens"]
  summary = json.load(open(os.path.join(whole, "summary.json")))
  assert summary["final_step"] == 4 and os.path.isdir(summary["model_dir"])
  heads = json.load(open(os.path.join(summary["model_dir"], "config.json")))["heads"]
  assert heads == ["decoder"]
  # stopped after the step-2 checkpoint (same 4-step schedule), then resumed to 4
  split = str(tmp_path / "split")
  run(split, "--config.train.num_steps=2")
  second = run(split)
  assert "at step 2" in second.stderr
  want, got = losses(whole), losses(split)
  assert sorted(got) == [1, 2, 3, 4]
  for step in (3, 4):
    assert got[step] == want[step], (step, got[step], want[step])

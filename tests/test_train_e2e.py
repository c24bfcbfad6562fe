"""train.py end to end (subprocesses, as users run it): train, resume, export; and exact resume
after the process is killed mid-run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = [
    "--config.model.num_layers=2", "--config.model.hidden_size=32", "--config.model.num_heads=2",
    "--config.model.intermediate_size=64", "--config.model.dropout=0.1",
    "--config.objective.average_top_k_layers=2", "--config.data.global_batch_size=8",
    "--config.data.tokens_per_sample=64", "--config.data.sentencepiece_vocab_size=512",
    "--config.data.prefetch=2", "--config.train.log_every=1", "--config.train.checkpoint_every=2",
    "--config.train.collapse_check_after=1000000", "--config.train.async_checkpoint=True",
    "--config.train.plot=False",
]


def train_cmd(workdir: str, steps: int, *extra: str) -> list[str]:
  return [sys.executable, os.path.join(REPO, "train.py"),
          f"--config={os.path.join(REPO, 'configs', 'demo.py')}:steps={steps}",
          f"--workdir={workdir}", *TINY, *extra]


def env() -> dict[str, str]:
  e = dict(os.environ)
  e["XLA_FLAGS"] = ""  # one CPU device, like a user's laptop
  e["JAX_PLATFORMS"] = "cpu"
  e["PYTHONPATH"] = REPO
  return e


def losses(workdir: str) -> dict[int, float]:
  """step -> loss; for steps logged twice (re-run after a resume) the later line wins."""
  out = {}
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      row = json.loads(line)
      out[row["step"]] = row["loss"]
  return out


@pytest.mark.slow
def test_train_resume_export(tmp_path):
  workdir = str(tmp_path / "run")
  first = subprocess.run(train_cmd(workdir, 4), env=env(), capture_output=True, text=True,
                         timeout=600)
  assert first.returncode == 0, first.stderr[-3000:]
  assert "step 4/4" in first.stderr
  # train.py put the GPU XLA flags (data2vec_jax/xla_flags.py) into XLA_FLAGS before JAX started.
  assert "XLA_FLAGS: --xla_gpu_enable_latency_hiding_scheduler=true" in first.stderr
  assert sorted(losses(workdir)) == [1, 2, 3, 4]
  # The demo's span masking has an exact per-row bound: the step compiled no fallback branch,
  # and the loop checked every batch against it on the host (objective.check_head_positions).
  objective = json.load(open(os.path.join(workdir, "recipe.json")))["objective"]
  assert objective["head_overflow"] == "error" and objective["head_positions_per_row"] > 0
  # Token packing (train.pack_tokens, on by default): the demo's documents leave pads, and the
  # steps with pads ran packed at a bucketed capacity (< the 8 x 64 positions of the batch).
  packed = json.load(open(os.path.join(workdir, "summary.json")))["packing_steps"]
  assert sum(packed.values()) == 4
  assert any(key != "unpacked" and int(key) < 8 * 64 for key in packed), packed
  # Same command with more steps resumes from the step-4 checkpoint instead of restarting.
  second = subprocess.run(train_cmd(workdir, 6), env=env(), capture_output=True, text=True,
                          timeout=600)
  assert second.returncode == 0, second.stderr[-3000:]
  assert "resumed from" in second.stderr and "at step 4" in second.stderr
  summary = json.load(open(os.path.join(workdir, "summary.json")))
  assert summary["final_step"] == 6 and summary["stop_reason"] == "completed"
  # The exported model directory loads and encodes.
  import data2vec_jax
  config, params = data2vec_jax.load_pretrained(summary["model_dir"])
  assert config.hidden_size == 32 and config.vocab_size == 512
  out = data2vec_jax.encode(config, params, np.array([[0, 10, 11, 12, 2]], np.int32))
  assert out.last_hidden_state.shape == (1, 5, 32)
  assert np.all(np.isfinite(out.last_hidden_state))
  # Any checkpoint can be exported on demand, also the EMA teacher.
  teacher_dir = str(tmp_path / "teacher")
  exp = subprocess.run([sys.executable, "-m", "data2vec_jax.export", "--workdir", workdir,
                        "--output", teacher_dir, "--step", "4", "--ema"],
                       env=env(), capture_output=True, text=True, timeout=300)
  assert exp.returncode == 0, exp.stderr[-3000:]
  assert "exported step 4 (EMA teacher)" in exp.stdout
  meta = json.load(open(os.path.join(teacher_dir, "config.json")))["metadata"]
  assert meta == {"step": 4, "objective": "data2vec", "weights": "ema"}
  _, teacher = data2vec_jax.load_pretrained(teacher_dir)
  diff = np.abs(np.asarray(teacher["layers"]["fc1"]["kernel"]) -
                np.asarray(params["layers"]["fc1"]["kernel"])).max()
  assert diff > 0  # the teacher lags the student
  # ... and converts to a Hugging Face directory that transformers loads.
  hf_dir = str(tmp_path / "hf")
  conv = subprocess.run([sys.executable, os.path.join(REPO, "convert_torch_weights.py"),
                         summary["model_dir"], "--to", "hf", "--output", hf_dir],
                        env=env(), capture_output=True, text=True, timeout=300)
  assert conv.returncode == 0, conv.stderr[-3000:]
  import torch
  import transformers
  model, info = transformers.Data2VecTextModel.from_pretrained(hf_dir, output_loading_info=True)
  assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
  with torch.no_grad():
    ref = model.eval()(torch.tensor([[0, 10, 11, 12, 2]])).last_hidden_state.numpy()
  assert np.abs(ref - np.asarray(out.last_hidden_state)).max() < 1e-5


@pytest.mark.slow
def test_kill_and_resume_reproduces_uninterrupted_losses(tmp_path):
  steps = 8
  reference_dir = str(tmp_path / "reference")
  ref = subprocess.run(train_cmd(reference_dir, steps), env=env(), capture_output=True,
                       text=True, timeout=600)
  assert ref.returncode == 0, ref.stderr[-3000:]
  reference = losses(reference_dir)
  assert sorted(reference) == list(range(1, steps + 1))

  workdir = str(tmp_path / "killed")
  proc = subprocess.Popen(train_cmd(workdir, steps), env=env(), stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  metrics = os.path.join(workdir, "metrics.jsonl")
  deadline = time.time() + 300
  while time.time() < deadline:
    if os.path.exists(metrics) and len(losses(workdir)) >= 5:
      break
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)  # no chance to save: resume must use an earlier checkpoint
  proc.wait()
  killed_at = max(losses(workdir))
  assert killed_at < steps, "the run finished before it could be killed"

  resumed = subprocess.run(train_cmd(workdir, steps), env=env(), capture_output=True, text=True,
                           timeout=600)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "resumed from" in resumed.stderr
  after = losses(workdir)
  assert sorted(after) == list(range(1, steps + 1))
  for step in range(1, steps + 1):
    assert after[step] == reference[step], (step, after[step], reference[step])


@pytest.mark.slow
def test_sigterm_saves_and_exits(tmp_path):
  workdir = str(tmp_path / "preempted")
  proc = subprocess.Popen(train_cmd(workdir, 200, "--config.train.checkpoint_every=1000"),
                          env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  metrics = os.path.join(workdir, "metrics.jsonl")
  deadline = time.time() + 300
  while time.time() < deadline and not (os.path.exists(metrics) and len(losses(workdir)) >= 3):
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  _, stderr = proc.communicate(timeout=300)
  assert proc.returncode == 0, stderr[-3000:]
  assert "preemption notice" in stderr
  summary = json.load(open(os.path.join(workdir, "summary.json")))
  assert summary["stop_reason"] == "preempted"
  saved = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())
  assert saved and saved[-1] == summary["final_step"] < 200


"""train.py end to end (subprocesses, as users run it): train, resume, export; exact resume after
the process is killed mid-run (and its newest checkpoint corrupted); step shapes compiled ahead
and cached; input worker processes. SIGTERM and the failure paths: tests/e2e/test_train_failures.py."""

from __future__ import annotations

import glob
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np

from tests.train_helpers import (
  REPO,
  checkpoint_steps,
  env,
  last_line,
  losses,
  metric_rows,
  train_cmd,
)


def test_train_resume_export(tmp_path):
  workdir = str(tmp_path / "run")
  first = subprocess.run(
    train_cmd(workdir, 4), env=env(), capture_output=True, text=True, timeout=600
  )
  assert first.returncode == 0, first.stderr[-3000:]
  assert "step 4/4" in first.stderr
  # train.py put the GPU XLA flags (data2vec_jax/speed/xla_flags.py) into XLA_FLAGS before JAX started.
  # (After the tests' own fast-compile flags, tests/xla_env.py, which it keeps.)
  assert re.search(r"XLA_FLAGS: .*--xla_gpu_enable_latency_hiding_scheduler=true", first.stderr)
  assert sorted(losses(workdir)) == [1, 2, 3, 4]
  # The compile talks: what it compiles, before step 1 (progress lines follow every 15 s).
  compiling = first.stderr.find("compiling the step for ")
  assert 0 <= compiling < first.stderr.find("step 1/4"), first.stderr[-3000:]
  assert re.search(r"compiled the step for \d+ shape\(s\) in [\d.]+ s", first.stderr)
  # MFU on CPU: logged with the peak's derivation where /proc/cpuinfo states one.
  if "MFU peak on CPU, an estimate: " in first.stderr:
    assert "fp32 FLOP/cycle" in first.stderr
    assert all(row["mfu"] > 0 for row in metric_rows(workdir) if row["step"] > 1)
  else:
    assert "MFU not logged" in first.stderr
  # The demo's span masking has an exact per-row bound: the step compiled no fallback branch,
  # and the loop checked every batch against it on the host (ExecutionPlan.check_host_batch).
  plan = json.load(open(os.path.join(workdir, "recipe.json")))["execution"]
  assert plan["head_overflow"] == "error" and plan["head_positions_per_row"] > 0
  # Token packing (execution.pack_tokens, on by default): the demo's documents leave pads, and the
  # steps with pads ran packed at a bucketed capacity (< the 8 x 64 positions of the batch).
  packed = json.load(open(os.path.join(workdir, "summary.json")))["packing_steps"]
  assert sum(packed.values()) == 4
  assert any(key != "unpacked" and int(key) < 8 * 64 for key in packed), packed
  # Resuming with another model fails in one line naming the mismatched tensors, and leaves the
  # workdir's own config.json / recipe.json (which `export` reads) as they were.
  own_files = {
    name: open(os.path.join(workdir, name)).read() for name in ("config.json", "recipe.json")
  }
  wrong = subprocess.run(
    train_cmd(workdir, 6, "--config.model.hidden_size=64"),
    env=env(),
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert wrong.returncode == 1
  assert last_line(wrong.stderr).startswith("train.py: error: "), wrong.stderr[-3000:]
  assert "shape mismatches [" in last_line(wrong.stderr)
  assert re.search(r"got \([\d, ]*32\), expected \([\d, ]*64\)", wrong.stderr)
  assert "Traceback" not in wrong.stderr
  assert own_files == {name: open(os.path.join(workdir, name)).read() for name in own_files}
  assert checkpoint_steps(workdir)[-1] == 4
  # Same command with more steps resumes from the step-4 checkpoint instead of restarting.
  second = subprocess.run(
    train_cmd(workdir, 6), env=env(), capture_output=True, text=True, timeout=600
  )
  assert second.returncode == 0, second.stderr[-3000:]
  assert "resumed from" in second.stderr and "at step 4" in second.stderr
  summary = json.load(open(os.path.join(workdir, "summary.json")))
  assert summary["final_step"] == 6 and summary["stop_reason"] == "completed"
  # The same command again: one clear line, nothing trained, the run's summary kept.
  third = subprocess.run(
    train_cmd(workdir, 6), env=env(), capture_output=True, text=True, timeout=600
  )
  assert third.returncode == 0, third.stderr[-3000:]
  assert "already complete at step 6, nothing to do; raise --config.train.num_steps" in (
    third.stderr
  )
  assert "compiling" not in third.stderr and "step 6/6" not in third.stderr
  assert json.load(open(os.path.join(workdir, "summary.json"))) == summary
  # The exported model directory loads and encodes.
  import data2vec_jax

  config, params = data2vec_jax.load_pretrained(summary["model_dir"])
  assert config.hidden_size == 32 and config.vocab_size == 512
  out = data2vec_jax.encode(config, params, np.array([[0, 10, 11, 12, 2]], np.int32))
  assert out.last_hidden_state.shape == (1, 5, 32)
  assert np.all(np.isfinite(out.last_hidden_state))
  # Any checkpoint can be exported on demand, also the EMA teacher.
  teacher_dir = str(tmp_path / "teacher")
  exp = subprocess.run(
    [
      sys.executable,
      "-m",
      "data2vec_jax.train.export",
      "--workdir",
      workdir,
      "--output",
      teacher_dir,
      "--step",
      "4",
      "--ema",
    ],
    env=env(),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert exp.returncode == 0, exp.stderr[-3000:]
  assert "exported step 4 (EMA teacher)" in exp.stdout
  meta = json.load(open(os.path.join(teacher_dir, "config.json")))["metadata"]
  assert meta == {"step": 4, "objective": "data2vec", "weights": "ema"}
  _, teacher = data2vec_jax.load_pretrained(teacher_dir)
  diff = np.abs(
    np.asarray(teacher["layers"]["fc1"]["kernel"]) - np.asarray(params["layers"]["fc1"]["kernel"])
  ).max()
  assert diff > 0  # the teacher lags the student
  # Fine-tuning starts from a pretraining workdir: its newest checkpoint's student (the paper),
  # or with init_ema its teacher, and finds the workdir's own tokenizer.
  from data2vec_jax.finetune.starting_point import load_starting_point, resolve_tokenizer
  from data2vec_jax.train.export import export_from_checkpoint

  student = load_starting_point(workdir, str(tmp_path / "ft"))
  assert np.array_equal(
    student.encoder_params["layers"]["fc1"]["kernel"], params["layers"]["fc1"]["kernel"]
  )
  newest_teacher_dir, _ = export_from_checkpoint(workdir, str(tmp_path / "t6"), use_ema=True)
  _, newest_teacher = data2vec_jax.load_pretrained(newest_teacher_dir)
  ema = load_starting_point(workdir, str(tmp_path / "ft_ema"), use_ema=True)
  assert np.array_equal(
    ema.encoder_params["layers"]["fc1"]["kernel"], newest_teacher["layers"]["fc1"]["kernel"]
  )
  assert resolve_tokenizer({"kind": "auto"}, workdir).vocab.vocab_size == config.vocab_size
  # A grid exports the pretraining checkpoint once for all its runs (not once per run), with the
  # workdir's tokenizer, and a re-run keeps that export.
  from data2vec_jax.configs import finetune_demo
  from data2vec_jax.finetune.grid import run_finetuning

  grid_config = finetune_demo.get_config(f"init={workdir}")
  grid_config.grid.seeds, grid_config.grid.from_scratch = (1,), (False,)
  grid_config.optimizer.max_epochs = 1
  grid_config.data.eval_too_long = "truncate"  # the tiny model has 64 positions
  grid_config.train.tensorboard = False
  grid_dir = str(tmp_path / "grid")
  run_finetuning(grid_config, grid_dir)
  exported = os.path.join(grid_dir, "init_model", "params.safetensors")
  first_export = os.path.getmtime(exported)
  assert not glob.glob(os.path.join(grid_dir, "python_topics", "*", "init_model"))
  grid_config.grid.seeds = (1, 2)
  run_finetuning(grid_config, grid_dir)
  assert os.path.getmtime(exported) == first_export
  assert os.path.exists(os.path.join(grid_dir, "python_topics", "lr0.001_seed2", "results.json"))
  # ... and converts to a Hugging Face directory that transformers loads.
  hf_dir = str(tmp_path / "hf")
  conv = subprocess.run(
    [
      sys.executable,
      os.path.join(REPO, "convert_torch_weights.py"),
      summary["model_dir"],
      "--to",
      "hf",
      "--output",
      hf_dir,
    ],
    env=env(),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert conv.returncode == 0, conv.stderr[-3000:]
  import torch
  import transformers

  model, info = transformers.Data2VecTextModel.from_pretrained(hf_dir, output_loading_info=True)
  assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
  with torch.no_grad():
    ref = model.eval()(torch.tensor([[0, 10, 11, 12, 2]])).last_hidden_state.numpy()
  assert np.abs(ref - np.asarray(out.last_hidden_state)).max() < 1e-5


def test_kill_and_resume_reproduces_uninterrupted_losses(tmp_path):
  steps = 8
  reference_dir = str(tmp_path / "reference")
  ref = subprocess.run(
    train_cmd(reference_dir, steps), env=env(), capture_output=True, text=True, timeout=600
  )
  assert ref.returncode == 0, ref.stderr[-3000:]
  reference = losses(reference_dir)
  assert sorted(reference) == list(range(1, steps + 1))

  workdir = str(tmp_path / "killed")
  proc = subprocess.Popen(
    train_cmd(workdir, steps), env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
  )
  metrics = os.path.join(workdir, "metrics.jsonl")
  deadline = time.time() + 300
  while time.time() < deadline:
    if (
      os.path.exists(metrics) and len(losses(workdir)) >= 5 and len(checkpoint_steps(workdir)) >= 2
    ):
      break
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)  # no chance to save: resume must use an earlier checkpoint
  proc.wait()
  killed_at = max(losses(workdir))
  assert killed_at < steps, "the run finished before it could be killed"
  saved = checkpoint_steps(workdir)
  assert len(saved) >= 2, saved
  # The newest checkpoint is also corrupt (an array file cut short, as by a full disk): the run
  # reports it, sets it aside and resumes from the one before.
  arrays = sorted(
    p
    for p in glob.glob(
      os.path.join(workdir, "checkpoints", str(saved[-1]), "state", "**", "d", "*"), recursive=True
    )
    if os.path.isfile(p)
  )
  for path in arrays:
    with open(path, "r+b") as f:
      f.truncate(os.path.getsize(path) // 2)

  resumed = subprocess.run(
    train_cmd(workdir, steps), env=env(), capture_output=True, text=True, timeout=600
  )
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f"checkpoint step {saved[-1]} is corrupt" in resumed.stderr
  assert f"at step {saved[-2]}" in resumed.stderr and "Traceback" not in resumed.stderr
  assert glob.glob(os.path.join(workdir, "set_aside_checkpoints", f"corrupt_step{saved[-1]}_*"))
  after = losses(workdir)
  assert sorted(after) == list(range(1, steps + 1))
  for step in range(1, steps + 1):
    assert after[step] == reference[step], (step, after[step], reference[step])
  # The replayed steps replaced their first rows: the log reads as one uninterrupted run.
  assert [row["step"] for row in metric_rows(workdir)] == list(range(1, steps + 1))


def test_step_shapes_compile_before_step_1_and_a_restart_loads_them_from_the_cache(tmp_path):
  """Every packed shape of the run compiles before step 1 (train.precompile_steps), so no step
  after the first pauses to compile; the losses are those of compiling each shape on first use.
  train.compilation_cache='auto' caches in <workdir>/jax_cache; a second run of the same config
  (here in another workdir pointed at that cache) finds every program there and adds none."""
  steps = 6
  first_dir = str(tmp_path / "first")
  first = subprocess.run(  # its own cache, not the session's: every shape compiles here
    train_cmd(first_dir, steps),
    env=env(shared_cache=False),
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert first.returncode == 0, first.stderr[-3000:]
  precompiled = re.search(r"compiled the step for (\d+) shape", first.stderr)
  assert precompiled and int(precompiled.group(1)) >= 2, first.stderr[-3000:]
  assert "new packed shape" not in first.stderr
  on_first_use = str(tmp_path / "on_first_use")
  lazy = subprocess.run(
    train_cmd(
      on_first_use,
      steps,
      "--config.train.precompile_steps=0",
      "--config.train.compilation_cache=none",
    ),
    env=env(),
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert lazy.returncode == 0, lazy.stderr[-3000:]
  assert "new packed shape" in lazy.stderr  # the shapes the first run compiled ahead
  assert not os.path.exists(os.path.join(on_first_use, "jax_cache"))
  assert losses(on_first_use) == losses(first_dir)
  cache = os.path.join(first_dir, "jax_cache")
  assert f"persistent compilation cache: {cache}" in first.stderr
  entries = sorted(os.listdir(cache))
  assert any(e.startswith("jit_train_step") for e in entries), entries
  second = subprocess.run(
    train_cmd(str(tmp_path / "second"), steps, f"--config.train.compilation_cache={cache}"),
    env=env(),
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert second.returncode == 0, second.stderr[-3000:]
  assert sorted(os.listdir(cache)) == entries
  assert losses(str(tmp_path / "second")) == losses(first_dir)  # the loaded programs are the same


def test_worker_processes_train_the_same_steps(tmp_path):
  """data.workers=2: the batches come from two spawned worker processes; the run trains the same
  losses as with the in-process prefetch thread (data.workers=0)."""
  steps = 4
  by_workers = {}
  for workers in (0, 2):
    workdir = str(tmp_path / f"workers{workers}")
    run = subprocess.run(
      train_cmd(workdir, steps, f"--config.data.workers={workers}"),
      env=env(),
      capture_output=True,
      text=True,
      timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert ("input pipeline: 2 worker processes" in run.stderr) == (workers == 2)
    by_workers[workers] = losses(workdir)
  assert sorted(by_workers[2]) == list(range(1, steps + 1))
  assert by_workers[2] == by_workers[0]

"""train.py end to end (subprocesses, as users run it): train, resume, export; exact resume after
the process is killed mid-run (and its newest checkpoint corrupted); SIGTERM; and the failure
paths a user meets: a resume with another model, a diverging run, a bad config."""

from __future__ import annotations

import glob
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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


def env() -> dict[str, str]:
  e = dict(os.environ)
  e["XLA_FLAGS"] = ""  # one CPU device, like a user's laptop
  e["JAX_PLATFORMS"] = "cpu"
  e["PYTHONPATH"] = REPO
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


@pytest.mark.slow
def test_train_resume_export(tmp_path):
  workdir = str(tmp_path / "run")
  first = subprocess.run(
    train_cmd(workdir, 4), env=env(), capture_output=True, text=True, timeout=600
  )
  assert first.returncode == 0, first.stderr[-3000:]
  assert "step 4/4" in first.stderr
  # train.py put the GPU XLA flags (data2vec_jax/speed/xla_flags.py) into XLA_FLAGS before JAX started.
  assert "XLA_FLAGS: --xla_gpu_enable_latency_hiding_scheduler=true" in first.stderr
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
      "data2vec_jax.weights.export",
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
  from data2vec_jax.weights.export import export_from_checkpoint

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


@pytest.mark.slow
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


@pytest.mark.slow
def test_step_shapes_compile_before_step_1_and_a_restart_loads_them_from_the_cache(tmp_path):
  """Every packed shape of the run compiles before step 1 (train.precompile_steps), so no step
  after the first pauses to compile; the losses are those of compiling each shape on first use.
  train.compilation_cache='auto' caches in <workdir>/jax_cache; a second run of the same config
  (here in another workdir pointed at that cache) finds every program there and adds none."""
  steps = 6
  first_dir = str(tmp_path / "first")
  first = subprocess.run(
    train_cmd(first_dir, steps), env=env(), capture_output=True, text=True, timeout=600
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_sigterm_saves_and_exits(tmp_path):
  # Every step is checkpointed, so the notice always arrives on a step that was just saved:
  # the preemption save must not save it again (orbax's StepAlreadyExistsError).
  workdir = str(tmp_path / "preempted")
  proc = subprocess.Popen(
    train_cmd(workdir, 200, "--config.train.checkpoint_every=1"),
    env=env(),
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
    text=True,
  )
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
  saved = checkpoint_steps(workdir)
  assert saved and saved[-1] == summary["final_step"] < 200
  assert not glob.glob(os.path.join(workdir, "checkpoints", "*tmp*"))
  # Resumed with one step left (preempted at N-1): it trains that step (precompiling the steps
  # ahead once asked the pipeline for zero batches and crashed).
  last = summary["final_step"] + 1
  resumed = run_train(workdir, 200, f"--config.train.num_steps={last}")
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert json.load(open(os.path.join(workdir, "summary.json")))["final_step"] == last
  assert checkpoint_steps(workdir)[-1] == last


@pytest.mark.slow
def test_sigterm_while_compiling_says_so_and_exits_like_a_preemption(tmp_path):
  """A notice during the step's compilation (before step 1) is announced at once, not after the
  compile, and the run exits 0 with nothing saved (it used to die with 143 and no word)."""
  workdir = str(tmp_path / "compiling")
  # Sixteen packed capacities: several shapes to compile, a window of seconds to signal in.
  cmd = train_cmd(workdir, 20, "--config.execution.pack_buckets=16")
  proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  lines = []
  for raw in proc.stderr:
    lines.append(raw.decode(errors="replace"))
    if "compiling the step for" in lines[-1]:
      proc.send_signal(signal.SIGTERM)
      break
  lines += [raw.decode(errors="replace") for raw in proc.stderr]
  proc.wait(timeout=600)
  stderr = "".join(lines)
  assert proc.returncode == 0, stderr[-3000:]
  announced = stderr.index("preemption notice (SIGTERM)")
  compiled = re.search(r"compiled the step for \d+ shape", stderr)
  assert compiled and announced < compiled.start(), stderr[-3000:]  # said before the compile ends
  assert "preemption notice before step 1 (while preparing or compiling)" in stderr
  summary = json.load(open(os.path.join(workdir, "summary.json")))
  assert summary["stop_reason"] == "preempted" and summary["final_step"] == 0
  assert checkpoint_steps(workdir) == []


# train.py with jax.device_get wrapped: SIGTERM arrives while the loop waits for a step's metrics.
SIGNAL_DURING_WAIT = """
import os, runpy, signal, sys
import jax
real_device_get, waits = jax.device_get, []
def device_get(tree):
  out = real_device_get(tree)
  if isinstance(tree, list) and tree:  # the loop fetching the steps' metrics (log_every=1)
    waits.append(len(tree))
    if len(waits) == int(os.environ["SIGNAL_AT"]):
      os.kill(os.getpid(), signal.SIGTERM)
  return out
jax.device_get = device_get
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.slow
def test_a_notice_during_a_steps_wait_saves_that_step(tmp_path):
  """SIGTERM is acted on at the step boundary after it arrives: a notice that comes while the
  loop waits for step 3's results saves step 3 and stops (it was read only right after a step
  was dispatched, so the run trained step 4 first: a step or two late when steps are fast)."""
  workdir = str(tmp_path / "run")
  wrapper = tmp_path / "signal_during_wait.py"
  wrapper.write_text(SIGNAL_DURING_WAIT)
  cmd = [
    sys.executable,
    str(wrapper),
    *train_cmd(workdir, 20, "--config.train.checkpoint_every=100")[1:],
  ]
  # D2V_MALLOC=default: no re-exec of the process (which would drop the wrapper).
  run = subprocess.run(
    cmd,
    env={**env(), "SIGNAL_AT": "3", "D2V_MALLOC": "default"},
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert run.returncode == 0, run.stderr[-3000:]
  summary = json.load(open(os.path.join(workdir, "summary.json")))
  assert summary["stop_reason"] == "preempted" and summary["final_step"] == 3
  assert checkpoint_steps(workdir)[-1] == 3
  assert max(losses(workdir)) <= 3


@pytest.mark.slow
def test_a_run_with_one_step_left_trains_it(tmp_path):
  """num_steps=1, then the finished run's num_steps raised by one: each trains its one step."""
  workdir = str(tmp_path / "one_step")
  for last in (1, 2):
    run = run_train(workdir, 4, f"--config.train.num_steps={last}")
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Traceback" not in run.stderr
    assert json.load(open(os.path.join(workdir, "summary.json")))["final_step"] == last
    assert checkpoint_steps(workdir)[-1] == last
    assert max(losses(workdir)) == last


@pytest.mark.slow
def test_a_diverging_run_stops_before_nan_and_sets_its_checkpoints_aside(tmp_path):
  # lr 1e6: the loss explodes (finite, ~1e20) a step before it turns NaN.
  workdir = str(tmp_path / "diverged")
  run = subprocess.run(
    train_cmd(workdir, 12, "--config.optimizer.lr=1e6", "--config.train.checkpoint_every=1"),
    env=env(),
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert run.returncode == 1
  line = last_line(run.stderr)
  assert line.startswith("train.py: error: loss exploded at step "), run.stderr[-3000:]
  assert "Traceback" not in run.stderr and len(run.stderr.splitlines()) < 30
  anomaly = int(line.split("at step ")[1].split(":")[0])
  # The anomalous step's finite loss is in the log; no NaN loss was reached.
  rows = {row["step"]: row for row in metric_rows(workdir)}
  assert max(rows) == anomaly and isinstance(rows[anomaly]["loss"], float)
  assert all(isinstance(r["loss"], float) for r in rows.values())
  # The checkpoint that produced the anomaly (step anomaly - 1) and later ones are set aside;
  # the message names the newest one left, which a re-run resumes from.
  kept = checkpoint_steps(workdir)
  assert kept and kept[-1] < anomaly - 1
  assert f"newest checkpoint before the anomaly: step {kept[-1]}" in line
  assert glob.glob(os.path.join(workdir, "set_aside_checkpoints", f"diverged_step{anomaly - 1}_*"))
  assert not glob.glob(os.path.join(workdir, "**", "*orbax-checkpoint-tmp*"), recursive=True)


def in_mount_namespace(mounts: list[tuple[str, str]], cmd: list[str]) -> list[str]:
  """`cmd` run with tmpfs file systems mounted ((directory, mount options) each), visible to it
  only (`unshare`: a user and mount namespace, no privileges needed where they are enabled)."""
  mount = " && ".join(f"mount -t tmpfs -o {opts} tmpfs {shlex.quote(d)}" for d, opts in mounts)
  return ["unshare", "-Urm", "sh", "-c", f"{mount} && exec {shlex.join(cmd)}"]


def can_mount_tmpfs(tmp_path) -> bool:
  probe = tmp_path / "mount_probe"
  probe.mkdir()
  if shutil.which("unshare") is None:
    return False
  run = subprocess.run(in_mount_namespace([(str(probe), "size=4k")], ["true"]), capture_output=True)
  return run.returncode == 0


@pytest.mark.slow
def test_a_full_disk_during_training_is_one_line_naming_it(tmp_path):
  """A real ENOSPC: the checkpoints directory is a 64 KiB tmpfs, so orbax's first save fails in
  its background threads (RESOURCE_EXHAUSTED). The last line names the full disk; no traceback
  (orbax logged one per thread, 500+ lines, and TensorBoard's close error hid the cause)."""
  if not can_mount_tmpfs(tmp_path):
    pytest.skip("needs `unshare -Urm` and tmpfs mounts (user namespaces)")
  workdir = tmp_path / "full"
  (workdir / "checkpoints").mkdir(parents=True)
  cmd = in_mount_namespace([(str(workdir / "checkpoints"), "size=64k")], train_cmd(str(workdir), 6))
  run = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=600)
  assert run.returncode == 1, run.stderr[-3000:]
  line = last_line(run.stderr)
  assert line.startswith(f"train.py: error: disk full writing to {workdir} ("), line
  assert "No space left on device" in line and "re-run the same command to resume" in line
  assert "Traceback" not in run.stderr and len(run.stderr.splitlines()) < 60, run.stderr[-3000:]


@pytest.mark.parametrize("case", ["file", "read_only_parent", "read_only_workdir"])
def test_a_workdir_that_cannot_be_written_is_one_line(tmp_path, case):
  workdir = tmp_path / "ro" / "run" if case == "read_only_parent" else tmp_path / "run"
  cmd = train_cmd(str(workdir), 4)
  if case == "file":
    workdir.write_text("not a directory")
  else:
    if not can_mount_tmpfs(tmp_path):
      pytest.skip("needs `unshare -Urm` and tmpfs mounts (user namespaces)")
    mount_point = workdir.parent if case == "read_only_parent" else workdir
    mount_point.mkdir()
    cmd = in_mount_namespace([(str(mount_point), "ro")], cmd)
  run = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=300)
  assert run.returncode == 1
  expected = {
    "file": f"--workdir {workdir} is a file, not a directory",
    "read_only_parent": f"cannot create --workdir {workdir}: Read-only file system",
    "read_only_workdir": f"--workdir {workdir} is not writable: Read-only file system",
  }[case]
  assert last_line(run.stderr).startswith(f"train.py: error: {expected}"), run.stderr[-2000:]
  assert "Traceback" not in run.stderr


@pytest.mark.parametrize(
  "override, message",
  [
    (
      "--config.train.nmu_steps=3",
      "unknown config field 'train.nmu_steps' (did you mean 'train.num_steps'?)",
    ),
    ("--config.data.global_batch_size=-8", "invalid config: global_batch_size must be >= 1"),
    ("--config.data.source=wiki", "invalid config: unknown data.source 'wiki'"),
    # Speed knobs moved to the execution section: the old key names the new one.
    (
      "--config.objective.head_positions_per_row=0",
      "config field "
      "'objective.head_positions_per_row' moved: use --config.execution.head_positions",
    ),
    ("--config.execution.head_positions=some", "invalid config: execution.head_positions must"),
  ],
)
def test_a_bad_config_is_one_line_before_anything_is_built(tmp_path, override, message):
  workdir = str(tmp_path / "run")
  run = subprocess.run(
    train_cmd(workdir, 4, override), env=env(), capture_output=True, text=True, timeout=300
  )
  assert run.returncode in (1, 2)
  assert last_line(run.stderr).startswith(f"train.py: error: {message}"), run.stderr[-2000:]
  assert "Traceback" not in run.stderr
  assert not os.path.exists(workdir)  # no corpus or vocabulary was built first

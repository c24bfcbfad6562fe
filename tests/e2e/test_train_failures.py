"""train.py end to end, what a user meets when things go wrong: SIGTERM (saving, while compiling,
during a step's wait), a run with one step left, a diverging run, a full disk, a workdir that
cannot be written, a bad config. Split from tests/e2e/test_train.py so the two halves run in parallel
(pytest-xdist --dist loadfile keeps a file on one worker)."""

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

import pytest

from tests.train_helpers import (
  checkpoint_steps,
  env,
  last_line,
  losses,
  metric_rows,
  run_train,
  train_cmd,
)


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


def test_sigterm_while_compiling_says_so_and_exits_like_a_preemption(tmp_path):
  """A notice during the step's compilation (before step 1) is announced at once, not after the
  compile, and the run exits 0 with nothing saved (it used to die with 143 and no word)."""
  workdir = str(tmp_path / "compiling")
  # Sixteen packed capacities: several shapes to compile, a window of seconds to signal in.
  cmd = train_cmd(workdir, 20, "--config.execution.pack_buckets=16")
  # Not the session's compilation cache: these shapes must compile, not load.
  no_shared_cache = env(shared_cache=False)
  proc = subprocess.Popen(
    cmd, env=no_shared_cache, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
  )
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

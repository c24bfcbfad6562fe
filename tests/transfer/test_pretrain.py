"""Pretraining for equal wall time: speed read from a calibration run's metrics, the steps that
fill the plan's minutes, calibration kept on re-runs, and the train.py command line."""

from __future__ import annotations

import json
import math
import os

import pytest

from data2vec_jax import cli
from data2vec_jax.atomic_files import read_json, write_json_atomically
from data2vec_jax.transfer import pretrain
from data2vec_jax.transfer.plan import Plan
from data2vec_jax.transfer.pretrain import (
  SETTLE_STEPS,
  PretrainError,
  calibrate,
  finished,
  measure_speed,
  steps_for,
  train_command,
)


def write_metrics(path, times: dict[int, float], first_step_s: float = 12.5) -> str:
  """metrics.jsonl as train.py writes it: one row per logged step (loss, time), the first with
  first_step_s; a validation row (no loss) that must not count."""
  with open(path, "w", encoding="utf-8") as f:
    for k, (step, t) in enumerate(sorted(times.items())):
      row = {"step": step, "time": t, "loss": 1.0}
      if k == 0:
        row["first_step_s"] = first_step_s
      f.write(json.dumps(row) + "\n")
    f.write(json.dumps({"step": max(times), "time": 1e9, "valid_loss": 2.0}) + "\n")
    f.write('{"step": 999, "time": 1e12, "loss"')  # a torn last line (a killed run)
  return str(path)


def test_measure_speed_counts_only_the_steps_after_settling(tmp_path):
  # Slow first steps (compilation), then 4 steps per second from SETTLE_STEPS on.
  times = {s: 100.0 + 30.0 * s for s in range(1, SETTLE_STEPS + 1)}
  times.update({s: times[SETTLE_STEPS] + (s - SETTLE_STEPS) / 4 for s in range(11, 60)})
  times[60] = times[59] + 5.0  # the run's end: validation and a checkpoint, not a step's time
  speed = measure_speed(write_metrics(tmp_path / "metrics.jsonl", times, first_step_s=31.0))
  assert speed["steps_per_s"] == pytest.approx(4.0, rel=1e-12)
  assert speed["first_step_s"] == 31.0


def test_measure_speed_needs_a_step_after_settling(tmp_path):
  times = {s: float(s) for s in range(1, SETTLE_STEPS + 1)}
  with pytest.raises(PretrainError, match=f"no step after {SETTLE_STEPS} to time"):
    measure_speed(write_metrics(tmp_path / "metrics.jsonl", times))


def test_steps_for_fills_the_minutes_in_whole_checkpoints(tmp_path):
  plan = Plan(workdir=str(tmp_path), minutes=10, checkpoints=8)
  speed = {"steps_per_s": 3.3, "first_step_s": 40.0}
  steps = steps_for(plan, speed)
  assert steps % 8 == 0
  assert steps == 8 * math.floor(3.3 * (600 - 40) / 8) == 1848
  # Just enough for one step per checkpoint, then too few minutes.
  assert steps_for(plan, {"steps_per_s": 8 / 560, "first_step_s": 40.0}) == 8
  with pytest.raises(PretrainError, match="fewer than 8 steps.*give more minutes"):
    steps_for(plan, {"steps_per_s": 7 / 560, "first_step_s": 40.0})
  with pytest.raises(PretrainError, match="give more minutes"):
    steps_for(plan, {"steps_per_s": 100.0, "first_step_s": 700.0})  # compiling takes it all


def test_calibrate_keeps_measured_recipes_and_rescales_their_steps(tmp_path, monkeypatch):
  def no_run(*args, **kwargs):
    raise AssertionError("calibrate ran a process for a recipe measured before")

  monkeypatch.setattr(pretrain, "_run", no_run)
  plan = Plan(
    workdir=str(tmp_path), minutes=5, checkpoints=4, evaluated=(4,), recipes=("release", "roberta")
  )
  speeds = {
    "release": {"steps_per_s": 2.0, "first_step_s": 20.0, "steps": 1},
    "roberta": {"steps_per_s": 5.0, "first_step_s": 10.0, "steps": 1},
  }
  write_json_atomically(plan.calibration_path, {"minutes": 1, "checkpoints": 4, "recipes": speeds})
  calibration = calibrate(plan)
  assert calibration["minutes"] == 5 and calibration["checkpoints"] == 4
  recipes = calibration["recipes"]
  assert recipes["release"] == {"steps_per_s": 2.0, "first_step_s": 20.0, "steps": 560}
  assert recipes["roberta"] == {"steps_per_s": 5.0, "first_step_s": 10.0, "steps": 1448}
  assert read_json(plan.calibration_path) == calibration


def test_calibrate_measures_a_new_recipe_from_its_run(tmp_path, monkeypatch):
  plan = Plan(
    workdir=str(tmp_path), minutes=2, checkpoints=2, evaluated=(2,), recipes=("data2vec2",)
  )
  commands = []

  def fake_run(command, log_path, what):  # writes what the calibration run would
    commands.append(command)
    workdir = plan.path("calibration", "data2vec2")
    os.makedirs(workdir)
    write_metrics(os.path.join(workdir, "metrics.jsonl"), {s: s / 2 for s in range(1, 61)}, 20)

  monkeypatch.setattr(pretrain, "_run", fake_run)
  calibration = calibrate(plan)
  assert calibration["recipes"]["data2vec2"] == {
    "steps_per_s": pytest.approx(2.0),
    "first_step_s": 20.0,
    "steps": 200,
  }
  assert len(commands) == 1 and "--config.train.log_every=1" in commands[0]
  assert calibrate(plan) == read_json(plan.calibration_path)  # measured once
  assert len(commands) == 1


def test_finished_reads_the_summary(tmp_path):
  assert not finished(str(tmp_path), 10)  # no summary.json
  for summary, expected in [
    ({"stop_reason": "completed", "final_step": 10}, True),
    ({"stop_reason": "completed", "final_step": 12}, True),
    ({"stop_reason": "completed", "final_step": 8}, False),
    ({"stop_reason": "preempted", "final_step": 10}, False),
    ({"stop_reason": "completed"}, False),
  ]:
    write_json_atomically(str(tmp_path / "summary.json"), summary)
    assert finished(str(tmp_path), 10) is expected, summary


def test_train_command_holds_the_config_spec(tmp_path):
  plan = Plan(workdir=str(tmp_path))
  workdir = plan.pretrain_dir("roberta")
  command = train_command(plan, "roberta", 800, 100, workdir)
  assert command[-2] == (
    f"--config={pretrain.CONFIG}:recipe=roberta,steps=800,checkpoint_every=100,data={plan.data_dir}"
  )
  assert command[-1] == f"--workdir={workdir}"
  assert os.path.basename(command[1]) in ("train.py", "-m")
  # The spec parses as train.py parses it.
  c = cli.load_config(command[-2].split("=", 1)[1])
  assert c.objective.kind == "mlm" and c.train.num_steps == 800
  assert c.data.path == os.path.join(plan.data_dir, "bin", "train")

"""Pretraining the recipes for equal wall time: calibrate each recipe's speed on this machine,
then run train.py (configs/small_experiment.py) for the steps that fill `plan.minutes`.

Calibration runs each recipe for `CALIBRATION_STEPS` steps: its steps per second over the
steps after `SETTLE_STEPS` and before the last (compilation and the first batches left out, and
the validation and checkpoint that end the run)
and its time to the first step (compilation included). A recipe's steps then fill its minutes:
floor(rate x (minutes x 60 - first step's seconds)), rounded down to a multiple of
`plan.checkpoints`. The wall time each run really took is read from its metrics (report.py),
so a machine busier during one run than another shows in the plot instead of hiding.

train.py runs as a user runs it, in its own process (sweep.runner.launcher); a killed run
resumes from its newest checkpoint the next time, and a finished one (summary.json: completed
at its steps) is skipped.
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import time

from data2vec_jax.atomic_files import read_json, write_json_atomically
from data2vec_jax.sweep.definition import REPO
from data2vec_jax.sweep.runner import launcher
from data2vec_jax.transfer.plan import Plan

CONFIG = os.path.join(REPO, "configs", "small_experiment.py")
CALIBRATION_STEPS = 60
SETTLE_STEPS = 10


class PretrainError(Exception):
  """A pretraining or calibration run failed; the message names its log."""


def train_command(plan: Plan, recipe: str, steps: int, every: int, workdir: str) -> list[str]:
  spec = f"recipe={recipe},steps={steps},checkpoint_every={every},data={plan.data_dir}"
  return [*launcher("pretrain"), f"--config={CONFIG}:{spec}", f"--workdir={workdir}"]


def _run(command: list[str], log_path: str, what: str) -> None:
  os.makedirs(os.path.dirname(log_path), exist_ok=True)
  with open(log_path, "a", encoding="utf-8") as log:
    done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=False)
  if done.returncode != 0:
    with open(log_path, encoding="utf-8") as f:
      last = (f.read().strip().splitlines() or ["(empty log)"])[-1]
    raise PretrainError(f"{what} failed (exit {done.returncode}): {last} (log: {log_path})")


def measure_speed(metrics_path: str) -> dict[str, float]:
  """{'steps_per_s', 'first_step_s'} from a calibration run's metrics.jsonl."""
  with open(metrics_path, encoding="utf-8") as f:
    rows = [json.loads(line) for line in f if line.endswith("\n")]
  times = {row["step"]: row["time"] for row in rows if "time" in row and "loss" in row}
  first = next(row["first_step_s"] for row in rows if "first_step_s" in row)
  # The run's last step is left out: the held-out validation and the checkpoint at the end of
  # the run are timed into it (in the first calibrations they halved the measured rate).
  last = max(times) - 1
  if last <= SETTLE_STEPS or last not in times:
    raise PretrainError(f"{metrics_path}: no step after {SETTLE_STEPS} to time")
  rate = (last - SETTLE_STEPS) / (times[last] - times[SETTLE_STEPS])
  return {"steps_per_s": rate, "first_step_s": float(first)}


def steps_for(plan: Plan, speed: dict[str, float]) -> int:
  seconds = plan.minutes * 60 - speed["first_step_s"]
  per_checkpoint = math.floor(speed["steps_per_s"] * seconds / plan.checkpoints)
  if per_checkpoint < 1:
    raise PretrainError(
      f"{plan.minutes} minutes hold fewer than {plan.checkpoints} steps at "
      f"{speed['steps_per_s']:.2f} steps/s after {speed['first_step_s']:.0f} s to the first "
      "step: give more minutes"
    )
  return per_checkpoint * plan.checkpoints


def calibrate(plan: Plan) -> dict:
  """calibration.json: per recipe, speed and steps (measured once; kept on re-runs)."""
  saved = read_json(plan.calibration_path) or {"recipes": {}}
  recipes = dict(saved.get("recipes", {}))
  for recipe in plan.recipes:
    if recipe in recipes:  # measured before: the steps follow this plan's minutes
      recipes[recipe]["steps"] = steps_for(plan, recipes[recipe])
      continue
    workdir = plan.path("calibration", recipe)
    logging.info("calibrate: %s, %d steps", recipe, CALIBRATION_STEPS)
    command = train_command(plan, recipe, CALIBRATION_STEPS, CALIBRATION_STEPS, workdir)
    command += ["--config.train.log_every=1", "--config.train.plot=False"]
    _run(command, workdir + ".log", f"calibration of {recipe}")
    speed = measure_speed(os.path.join(workdir, "metrics.jsonl"))
    recipes[recipe] = {**speed, "steps": steps_for(plan, speed)}
    logging.info("calibrate: %s %s", recipe, recipes[recipe])
  calibration = {"minutes": plan.minutes, "checkpoints": plan.checkpoints, "recipes": recipes}
  write_json_atomically(plan.calibration_path, calibration)
  return calibration


def finished(workdir: str, steps: int) -> bool:
  summary = read_json(os.path.join(workdir, "summary.json"))
  return bool(
    summary
    and summary.get("stop_reason") == "completed"
    and int(summary.get("final_step", -1)) >= steps
  )


def pretrain(plan: Plan, calibration: dict) -> None:
  for recipe in plan.recipes:
    steps = int(calibration["recipes"][recipe]["steps"])
    workdir = plan.pretrain_dir(recipe)
    if finished(workdir, steps):
      logging.info("pretrain: %s finished before (%d steps), kept", recipe, steps)
      continue
    logging.info(
      "pretrain: %s, %d steps (~%g min); log %s.log", recipe, steps, plan.minutes, workdir
    )
    start = time.time()
    command = train_command(plan, recipe, steps, steps // plan.checkpoints, workdir)
    _run(command, workdir + ".log", f"pretraining {recipe}")
    logging.info("pretrain: %s done in %.1f min", recipe, (time.time() - start) / 60)

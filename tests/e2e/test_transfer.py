"""The small experiment's evaluation end to end (issue 29), at toy scale: a 4-step tiny
pretraining run with checkpoints at 2 and 4, held-out task TSVs written by heldout_tasks, then
`evaluate` (export, linear probe and fine-tuning of every checkpoint and of random weights) and
the bag-of-words `baseline`: one results.jsonl row per model, task, budget, seed and method,
and a second call resumes (adds nothing)."""

from __future__ import annotations

import json
import os

import pytest

from data2vec_jax.finetune import heldout_tasks
from data2vec_jax.transfer import evaluate, report
from data2vec_jax.transfer.baseline import baseline
from data2vec_jax.transfer.plan import Plan
from tests.finetune_helpers import area_documents, session_compile_cache
from tests.train_helpers import checkpoint_steps, run_train

BUDGET = 24  # 4 per area: the probe's 3-fold cross-validation needs 3 of a label


@pytest.fixture(autouse=True)
def persistent_compilation_cache():
  """The three models share one architecture: with the session's persistent cache
  (tests/conftest.py) the runs after the first load their programs instead of compiling."""
  with session_compile_cache():
    yield


def rows(plan: Plan) -> list[dict]:
  with open(plan.results_path, encoding="utf-8") as f:
    return [json.loads(line) for line in f]


def test_evaluate_and_baseline_write_every_row_once(tmp_path, monkeypatch):
  # Fine-tuned: the last checkpoint and random weights; the earlier checkpoint is only probed.
  # The pair task only (two text columns: the longer path; one-sentence files are read and
  # probed in tests/transfer/test_probe.py), to keep the suite's time.
  plan = Plan(workdir=str(tmp_path), recipes=("release",), checkpoints=2, evaluated=(1, 2),
              tasks=("same_docstring",), budgets=(BUDGET,), seeds=(0,),
              finetune_budgets=(BUDGET,), finetune_budgets_along=())  # fmt: skip
  run = run_train(plan.pretrain_dir("release"), 4, "--config.train.keep_checkpoints=3")
  assert run.returncode == 0, run.stderr[-3000:]
  assert {2, 4} <= set(checkpoint_steps(plan.pretrain_dir("release")))
  for task in plan.tasks:
    heldout_tasks.write_task(
      os.path.join(plan.data_dir, "tasks"), task, area_documents(), budgets=(BUDGET,)
    )
  # A few updates per fine-tuning run: this checks the pipeline, not what it learns.
  monkeypatch.setattr(evaluate, "MIN_EPOCHS", 1)
  monkeypatch.setattr(evaluate, "MIN_UPDATES", 3)
  calibration = {"recipes": {"release": {"steps": 4}}}

  evaluate.evaluate(plan, calibration)
  baseline(plan)
  got = rows(plan)
  keys = [(r["model"], r["task"], r["budget"], r["seed"], r["method"]) for r in got]
  expected = (
    {
      (model, task, BUDGET, 0, "probe")
      for model in ("scratch", "release-2", "release-4")
      for task in plan.tasks
    }
    | {
      (model, task, BUDGET, 0, "finetune")
      for model in ("scratch", "release-4")
      for task in plan.tasks
    }
    | {("bow", task, BUDGET, 0, "bow") for task in plan.tasks}
  )
  assert len(keys) == len(set(keys)) and set(keys) == expected
  assert all(0.0 <= r["accuracy"] <= 1.0 for r in got)
  steps = {r["model"]: (r["recipe"], r["step"], r["steps"]) for r in got}
  assert steps["release-2"] == ("release", 2, 4) and steps["scratch"] == ("scratch", 0, 0)
  for model in ("release-2", "release-4"):
    assert os.path.isfile(os.path.join(plan.model_dir(model), "config.json"))
  for task in plan.tasks:
    assert os.path.isfile(
      os.path.join(plan.finetune_dir("release-4", task, BUDGET, 0), "results.json")
    )

  # The report: its tables hold every score, the verdicts compare with random weights, and
  # both plots are drawn.
  text = report.write_report(plan, calibration)
  assert f"## At {BUDGET} labels: pretrained vs random weights" in text
  assert text.count("random weights**") == 2 * len(plan.tasks)  # finetune and probe per task
  for name in (report.COMPUTE_PLOT, report.WALL_CLOCK_PLOT):
    assert os.path.getsize(plan.path(name)) > 10_000
  assert open(plan.path(report.REPORT), encoding="utf-8").read() == text

  # Resumed: every row is there, so nothing runs and nothing is added.
  before = open(plan.results_path, encoding="utf-8").read()
  evaluate.evaluate(plan, calibration)
  baseline(plan)
  assert open(plan.results_path, encoding="utf-8").read() == before

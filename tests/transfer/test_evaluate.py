"""The evaluation's fixed fine-tuning recipe (no setting picked on dev) and the order in which
models are evaluated (the main comparison first)."""

from __future__ import annotations

import pytest

from data2vec_jax.finetune.heldout_tasks import TEXT_COLUMNS
from data2vec_jax.transfer.evaluate import (
  BATCH_SIZE,
  LR,
  MIN_EPOCHS,
  MIN_UPDATES,
  finetune_config,
  models,
)
from data2vec_jax.transfer.plan import Plan


@pytest.mark.parametrize(
  "task, budget, seed, updates",
  [
    ("stdlib_area", 50, 0, MIN_UPDATES),  # 8 epochs of 4 updates: 32 < MIN_UPDATES
    ("same_docstring", 200, 2, MIN_UPDATES),  # 8 x 13 = 104
    ("same_docstring", 1000, 1, MIN_EPOCHS * 63),  # 8 x ceil(1000 / 16) = 504
  ],
)
def test_finetune_config(tmp_path, task, budget, seed, updates):
  plan = Plan(workdir=str(tmp_path))
  c = finetune_config(plan, task, budget, seed, "/models/release-800", scratch=False)
  assert (c.init, c.from_scratch) == ("/models/release-800", False)
  assert (c.data.source, c.data.path) == ("generic", plan.task_dir(task, budget, seed))
  assert tuple(c.data.text_columns) == TEXT_COLUMNS[task]
  assert (c.data.train_too_long, c.data.eval_too_long) == ("truncate", "truncate")
  assert c.optimizer.lr == LR and c.train.batch_size == BATCH_SIZE
  assert c.optimizer.max_update == updates and c.optimizer.max_epochs >= updates  # update cap
  assert c.train.eval_every == updates  # one evaluation, at the end ...
  assert c.train.report == "last"  # ... and that is the score
  assert c.train.seed == seed + 1
  assert not c.train.export_model
  assert finetune_config(plan, task, budget, seed, "/m", scratch=True).from_scratch is True


def test_models_order_scratch_then_last_checkpoints_then_earlier(tmp_path):
  plan = Plan(workdir=str(tmp_path), recipes=("release", "roberta"), checkpoints=4,
              evaluated=(1, 2, 4))  # fmt: skip
  calibration = {"recipes": {"release": {"steps": 400}, "roberta": {"steps": 800}}}
  got = models(plan, calibration)
  assert [m["name"] for m in got] == [
    "scratch",
    "release-400",
    "roberta-800",
    "release-200",
    "roberta-400",
    "release-100",
    "roberta-200",
  ]
  assert got[0] == {"name": "scratch", "recipe": "scratch", "step": 0, "steps": 0}
  assert got[2] == {"name": "roberta-800", "recipe": "roberta", "step": 800, "steps": 800}
  assert got[5] == {"name": "release-100", "recipe": "release", "step": 100, "steps": 400}

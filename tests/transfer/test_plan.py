"""The experiment's Plan (settings checked up front, paths in heldout_tasks' layout) and its
pretraining config (configs/small_experiment.py): three recipes on one model and optimiser."""

from __future__ import annotations

import os

import pytest

from data2vec_jax import cli
from data2vec_jax.finetune import heldout_tasks
from data2vec_jax.finetune.heldout_tasks import Example
from data2vec_jax.transfer.plan import RECIPES, Plan, evaluated_steps, model_name
from tests.paths import REPO

CONFIG = os.path.join(REPO, "configs", "small_experiment.py")


@pytest.mark.parametrize(
  "kwargs, message",
  [
    ({"recipes": ("release", "bert")}, r"recipes \['bert'\] unknown"),
    ({"minutes": 0}, "minutes=0 must be positive"),
    ({"minutes": -1.5}, "minutes=-1.5 must be positive"),
    ({"checkpoints": 4, "evaluated": (1, 5)}, r"evaluated checkpoints \[5\] outside 1..4"),
    ({"checkpoints": 4, "evaluated": (0, 2)}, r"evaluated checkpoints \[0\] outside 1..4"),
  ],
)
def test_plan_refuses_bad_settings(tmp_path, kwargs, message):
  with pytest.raises(ValueError, match=message):
    Plan(workdir=str(tmp_path), **kwargs)


def test_evaluated_steps_are_fractions_of_the_run():
  plan = Plan(workdir="w", checkpoints=8, evaluated=(1, 2, 4, 8))
  assert evaluated_steps(plan, 800) == [100, 200, 400, 800]
  assert evaluated_steps(Plan(workdir="w", checkpoints=2, evaluated=(1, 2)), 4) == [2, 4]
  assert model_name("roberta", 400) == "roberta-400"


def test_paths_are_under_the_absolute_workdir(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  plan = Plan(workdir="exp")
  root = str(tmp_path / "exp")
  assert plan.data_dir == os.path.join(root, "data")
  assert plan.results_path == os.path.join(root, "results.jsonl")
  assert plan.calibration_path == os.path.join(root, "calibration.json")
  assert plan.pretrain_dir("release") == os.path.join(root, "pretrain", "release")
  assert plan.model_dir("release-100") == os.path.join(root, "models", "release-100")
  assert plan.finetune_dir("scratch", "stdlib_area", 50, 2) == os.path.join(
    root, "finetune", "scratch", "stdlib_area", "50", "seed2"
  )


def test_task_dir_is_the_folder_heldout_tasks_writes(tmp_path):
  plan = Plan(workdir=str(tmp_path))
  tasks = os.path.join(plan.data_dir, "tasks")
  assert plan.task_dir("stdlib_area", 50, 0) == os.path.join(tasks, "stdlib_area", "50")
  assert plan.task_dir("same_docstring", 200, 2) == os.path.join(
    tasks, "same_docstring", "200-seed2"
  )
  # The same names as heldout_tasks.write_task's, for seed 0 and another seed.
  docs = [
    heldout_tasks.CorpusDocument(f"os.sub:f{i}", "os.sub", (f"The files thing {i} of a long one.",))
    for i in range(40)
  ]
  pool = heldout_tasks.task_splits("stdlib_area", docs)["pool"]
  assert len(pool) >= 4 and all(isinstance(ex, Example) for ex in pool)
  for seed in (0, 3):
    heldout_tasks.write_task(tasks, "stdlib_area", docs, seed=seed, budgets=(4,))
    assert os.path.isfile(os.path.join(plan.task_dir("stdlib_area", 4, seed), "train.tsv"))
    assert os.path.isfile(os.path.join(plan.task_dir("stdlib_area", 4, seed), "validation.tsv"))


def load(recipe: str, steps: int = 800, every: int = 100):
  return cli.load_config(f"{CONFIG}:recipe={recipe},steps={steps},checkpoint_every={every},data=/d")


def test_config_recipes_share_model_and_optimiser():
  configs = {recipe: load(recipe) for recipe in RECIPES}
  kinds = {recipe: c.objective.kind for recipe, c in configs.items()}
  assert kinds == {"release": "data2vec", "roberta": "mlm", "data2vec2": "data2vec2"}
  for c in configs.values():
    assert c.model.to_dict() == configs["release"].model.to_dict()
    assert (c.model.num_layers, c.model.hidden_size) == (4, 128)
    assert c.optimizer.to_dict() == configs["release"].optimizer.to_dict()
    assert (c.optimizer.lr, c.optimizer.schedule) == (1e-3, "cosine")
    assert (c.optimizer.warmup_steps, c.optimizer.max_steps) == (80, 800)
    assert c.train.num_steps == 800 and c.train.checkpoint_every == 100
    assert c.data.path == "/d/bin/train" and c.validation.path == "/d/valid_bin/train"


def test_config_keeps_every_checkpoint():
  c = load("release", steps=800, every=100)
  # Checkpoints at 100, 200, ..., 800 (and the initial one, if saved): none is dropped.
  assert c.train.keep_checkpoints >= 800 // 100
  c = load("roberta", steps=12, every=3)
  assert c.train.keep_checkpoints >= 12 // 3


def test_config_errors():
  import importlib

  get_config = importlib.import_module("configs.small_experiment").get_config
  assert get_config("recipe=roberta,data=/d").objective.kind == "mlm"
  with pytest.raises(ValueError, match="recipe 'bert'"):
    get_config("recipe=bert,data=/d")
  # Without data=: make small-experiment's data folder.
  assert get_config("recipe=release").data.path == "small_experiment/data/bin/train"


def test_command_line_takes_a_recipe_subset_and_refuses_unknown_names(capsys):
  from data2vec_jax.transfer.__main__ import parse_args

  args = parse_args(["--workdir", "w", "--recipes", "roberta", "--minutes", "45"])
  assert args.recipes == ("roberta",) and args.minutes == 45.0
  assert parse_args(["--workdir", "w"]).recipes == RECIPES
  for bad, named in (("roberta,bert", "['bert']"), (",", "nothing")):
    with pytest.raises(SystemExit):
      parse_args(["--workdir", "w", "--recipes", bad])
    assert f"--recipes has {named}; known: release, roberta, data2vec2" in capsys.readouterr().err

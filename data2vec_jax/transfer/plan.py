"""What the small experiment runs and where it keeps it: one frozen `Plan` per invocation.

Workdir layout:
  data/corpus/         stdlib_corpus text (train.txt, valid.txt, stats.json)
  data/tasks/          heldout_tasks TSVs: <task>/<budget>[-seed<S>]/{train,validation}.tsv
  data/bin/, data/valid_bin/   the binarized corpus (8k sentencepiece), for pretraining
  calibration.json     steps/s per recipe and the steps that fill `minutes`
  pretrain/<recipe>/   train.py workdirs (checkpoints every 1/`checkpoints` of the run)
  models/<recipe>-<step>/, models/scratch/   exported model directories
  finetune/<model>/<task>/<budget>/seed<S>/  fine-tuning runs (results.json)
  results.jsonl        one line per evaluation (model, task, budget, seed, method, accuracy)
  report.md, transfer_vs_compute.png, recipes_vs_wall_clock.png
"""

from __future__ import annotations

import dataclasses
import os

from data2vec_jax.data import stdlib_corpus
from data2vec_jax.finetune import heldout_tasks

RECIPES = ("release", "roberta", "data2vec2")
RECIPE_NAMES = {"release": "data2vec v1", "roberta": "MLM (RoBERTa)", "data2vec2": "data2vec 2.0"}
SCRATCH = "scratch"
METHODS = ("finetune", "probe")


@dataclasses.dataclass(frozen=True)
class Plan:
  """The experiment's settings (fixed before any score is seen) and its paths."""

  workdir: str
  minutes: float = 15.0  # pretraining wall time per recipe
  checkpoints: int = 8  # saved per run, evenly spaced; the last is the run's end
  evaluated: tuple[int, ...] = (1, 2, 4, 8)  # which of them are evaluated (in 1/checkpoints)
  recipes: tuple[str, ...] = RECIPES
  tasks: tuple[str, ...] = heldout_tasks.TASKS
  budgets: tuple[int, ...] = heldout_tasks.BUDGETS
  seeds: tuple[int, ...] = (0, 1, 2)  # label subset and fine-tuning seed together
  # Fine-tuning is the cost (~11 s a run at 50-200 labels, ~30 s at 1000, on 2 cores): the
  # last checkpoints and random weights are fine-tuned at these budgets, the earlier
  # checkpoints at the smallest; the linear probe runs at every budget for every model.
  finetune_budgets: tuple[int, ...] = (50, 200)
  finetune_budgets_along: tuple[int, ...] = (50,)
  # The corpus: the stdlib's docstrings plus these installed packages' (stdlib_corpus's `dev`
  # set: 2.7M words, 52x the demo's); stdlib_dir replaces the stdlib (tests: a tiny tree).
  packages: tuple[str, ...] = stdlib_corpus.PACKAGE_SETS["dev"]
  stdlib_dir: str | None = None

  def __post_init__(self):
    unknown = [r for r in self.recipes if r not in RECIPES]
    if unknown:
      raise ValueError(f"recipes {unknown} unknown; expected some of {RECIPES}")
    if not self.minutes > 0:
      raise ValueError(f"minutes={self.minutes} must be positive")
    bad = [e for e in self.evaluated if not 1 <= e <= self.checkpoints]
    if bad:
      raise ValueError(f"evaluated checkpoints {bad} outside 1..{self.checkpoints}")

  def path(self, *parts: str) -> str:
    return os.path.join(os.path.abspath(self.workdir), *parts)

  @property
  def data_dir(self) -> str:
    return self.path("data")

  @property
  def results_path(self) -> str:
    return self.path("results.jsonl")

  @property
  def calibration_path(self) -> str:
    return self.path("calibration.json")

  def pretrain_dir(self, recipe: str) -> str:
    return self.path("pretrain", recipe)

  def model_dir(self, model: str) -> str:
    return self.path("models", model)

  def task_dir(self, task: str, budget: int, seed: int) -> str:
    """The generic fine-tuning source's folder of one label subset (heldout_tasks' naming)."""
    name = str(budget) if seed == 0 else f"{budget}-seed{seed}"
    return os.path.join(self.data_dir, "tasks", task, name)

  def finetune_dir(self, model: str, task: str, budget: int, seed: int) -> str:
    return self.path("finetune", model, task, str(budget), f"seed{seed}")


def model_name(recipe: str, step: int) -> str:
  return f"{recipe}-{step}"


def evaluated_steps(plan: Plan, total_steps: int) -> list[int]:
  """The checkpoint steps evaluated in a run of `total_steps` (checkpoints every
  total_steps / plan.checkpoints steps)."""
  every = total_steps // plan.checkpoints
  return [every * k for k in plan.evaluated]

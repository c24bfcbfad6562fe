"""The settings of one fine-tuning run: the config with the task's recipe filled in, checked.

Fields left None in the config (configs/finetune.py) come from the task's recipe
(`recipes.GLUE_RECIPES`); a task of your own (`data.source='generic'`) gets lr 2e-5, 32 sentences
per batch, `max_epochs` epochs and 6% warmup unless set. Every bad value is one `ValueError`
naming the field and what it accepts, raised before anything is read or built.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import ml_collections

from data2vec_jax.finetune import recipes
from data2vec_jax.finetune.encoding import TOO_LONG
from data2vec_jax.finetune.metrics import METRIC_SETS, TASK_METRICS
from data2vec_jax.finetune.state import HEAD_INITS

SOURCES = ("glue_tsv", "tfds", "fairseq_bin", "generic", "python_topics")
# Sources of tasks of your own (no GLUE recipe): python_topics is the offline demo's task,
# written into the run's workdir as generic TSV files (finetune/demo_task.py).
OWN_TASK_SOURCES = ("generic", "python_topics")
REPORTS = ("best", "last")
SELECT_BY = ("score", "accuracy")
DTYPES = ("float32", "bfloat16")
GENERIC_DEFAULTS = {"lr": 2e-5, "batch_size": 32, "warmup_fraction": 0.06}


@dataclasses.dataclass(frozen=True)
class RunSettings:
  """Resolved values of one run. `max_update`: where the linear decay reaches 0 (fairseq
  `max_update`); `total_updates`: where the run stops, min(max_update, max_epochs epochs), known
  once the train split's size is (`with_data`)."""

  task: str
  source: str
  num_labels: int
  label_names: tuple[str, ...] | None
  metric_names: tuple[str, ...]
  eval_splits: tuple[str, ...]
  lr: float
  batch_size: int
  max_update: int | None
  warmup_updates: int | None
  max_epochs: int
  seed: int
  regression_scale: float
  report: str
  select_by: str
  total_updates: int = 0

  def with_data(self, num_train: int) -> "RunSettings":
    """Fills the update counts from the train split's size."""
    per_epoch = -(-num_train // self.batch_size)
    epochs_cap = self.max_epochs * per_epoch
    max_update = self.max_update if self.max_update is not None else epochs_cap
    warmup = self.warmup_updates
    if warmup is None:
      warmup = int(math.floor(GENERIC_DEFAULTS["warmup_fraction"] * max_update))
    if warmup >= max_update:
      raise ValueError(
        f"optimizer.warmup_updates={warmup} must be < optimizer.max_update={max_update}"
      )
    return dataclasses.replace(
      self,
      max_update=max_update,
      warmup_updates=warmup,
      total_updates=min(max_update, epochs_cap),
    )


def comma_list(value: Any) -> tuple[str, ...]:
  """A config list of names as a tuple, each item split on commas: `--config.data.label_names=
  pos,neg,neu` arrives as ('pos,neg,neu',) (ml_collections does not split it) and means three
  names, as `data.text_columns=a,b` means two columns. Names cannot contain commas."""
  items = [value] if isinstance(value, str) else list(value or ())
  return tuple(c.strip() for item in items for c in str(item).split(",") if c.strip())


def _check_choice(value: Any, choices: tuple[str, ...], field: str) -> str:
  if value not in choices:
    raise ValueError(f"{field}={value!r}; expected one of {list(choices)}")
  return value


def resolve_settings(
  config: ml_collections.ConfigDict,
  task: str | None = None,
  lr: float | None = None,
  seed: int | None = None,
) -> RunSettings:
  """The run's settings for `task` (default config.task), with an optional lr / seed of a grid."""
  task = task or config.task
  data, opt, train = config.data, config.optimizer, config.train
  source = _check_choice(data.source, SOURCES, "data.source")
  is_glue = task in recipes.GLUE_RECIPES
  own = source in OWN_TASK_SOURCES
  if not is_glue and not own:
    raise ValueError(
      f"unknown GLUE task {task!r} (known: {sorted(recipes.GLUE_RECIPES)}); a task of your own "
      "needs data.source='generic'"
    )
  if task == "glue":
    raise ValueError("task=glue runs a grid: use finetune.py (it runs every task)")
  recipe = recipes.GLUE_RECIPES.get(task)
  if is_glue and not own:
    num_labels = recipe.num_labels
    names = recipes.label_names(task)
    metric_names = TASK_METRICS[task]
  else:
    regression = bool(data.regression)
    names = None if regression else (comma_list(data.label_names) or None)
    num_labels = 1 if regression else (len(names) if names else 0)  # 0: from the train split
    metric = data.get("metric", "") or ("pearson_spearman" if regression else "accuracy")
    metric_names = METRIC_SETS[_check_choice(metric, tuple(METRIC_SETS), "data.metric")]
  pick = lambda value, default: default if value is None else value  # noqa: E731
  eval_splits = tuple(
    pick(data.eval_splits, recipe.eval_splits if recipe and not own else ("validation",))
  )
  settings = RunSettings(
    task=task,
    source=source,
    num_labels=num_labels,
    label_names=names,
    metric_names=tuple(metric_names),
    eval_splits=eval_splits,
    lr=float(
      lr if lr is not None else pick(opt.lr, recipe.lr if recipe else GENERIC_DEFAULTS["lr"])
    ),
    batch_size=int(
      pick(train.batch_size, recipe.batch_size if recipe else GENERIC_DEFAULTS["batch_size"])
    ),
    max_update=pick(opt.max_update, recipe.max_update if recipe else None),
    warmup_updates=pick(opt.warmup_updates, recipe.warmup_updates if recipe else None),
    max_epochs=int(opt.max_epochs),
    seed=int(seed if seed is not None else train.seed),
    regression_scale=float(pick(data.regression_scale, recipe.regression_scale if recipe else 1.0)),
    report=_check_choice(train.report, REPORTS, "train.report"),
    select_by=_check_choice(train.select_by, SELECT_BY, "train.select_by"),
  )
  _check_choice(data.train_too_long, TOO_LONG, "data.train_too_long")
  _check_choice(data.eval_too_long, TOO_LONG, "data.eval_too_long")
  _check_choice(config.model.head_init, HEAD_INITS, "model.head_init")
  _check_choice(config.model.dtype, DTYPES, "model.dtype")
  unroll = config.model.scan_unroll
  # A string field: `--config.model.scan_unroll=2` arrives as "2".
  if not (unroll == "all" or (str(unroll).isdigit() and int(unroll) >= 1)):
    raise ValueError(f"model.scan_unroll must be 'all' or an int >= 1, got {unroll!r}")
  for field, value, low in (
    ("optimizer.lr", settings.lr, 0.0),
    ("train.batch_size", settings.batch_size, 0),
    ("optimizer.max_epochs", settings.max_epochs, 0),
    ("train.eval_batch_size", int(train.eval_batch_size), 0),
  ):
    if not value > low:
      raise ValueError(f"{field} must be > {low}, got {value}")
  if settings.max_update is not None and settings.max_update < 1:
    raise ValueError(f"optimizer.max_update must be >= 1, got {settings.max_update}")
  if settings.warmup_updates is not None and settings.warmup_updates < 0:
    raise ValueError(f"optimizer.warmup_updates must be >= 0, got {settings.warmup_updates}")
  if not config.init:
    raise ValueError(
      "config.init is empty: give the pretrained model (model dir, HF dir, fairseq .pt or "
      "pretraining workdir)"
    )
  if source not in ("tfds", "python_topics") and not data.path:
    raise ValueError(f"data.path must be set for data.source={source!r}")
  return settings

"""The settings of one fine-tuning run: the config with the task's recipe filled in, checked,
resolved once (`resolve_settings`) into the typed `RunSettings` the run reads from then on.

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
from data2vec_jax.model.config import EncoderConfig
from data2vec_jax.runtime.optimizer import OptimizerConfig

SOURCES = ("glue_tsv", "tfds", "fairseq_bin", "generic", "python_topics")
# Sources of tasks of your own (no GLUE recipe): python_topics is the offline demo's task,
# written into the run's workdir as generic TSV files (finetune/demo_task.py).
OWN_TASK_SOURCES = ("generic", "python_topics")
REPORTS = ("best", "last")
SELECT_BY = ("score", "accuracy")
DTYPES = ("float32", "bfloat16")
GENERIC_DEFAULTS = {"lr": 2e-5, "batch_size": 32, "warmup_fraction": 0.06}


@dataclasses.dataclass(frozen=True)
class InitSettings:
  """Where the run starts: `config.init` and the flags that say how it is read."""

  path: str  # a model dir, HF dir, fairseq .pt or pretraining workdir
  use_ema: bool  # init_ema: the EMA teacher of a pretraining workdir / fairseq .pt
  from_scratch: bool  # the init's architecture and tokenizer, random weights (a baseline)
  drop_token_type_rows: bool  # an HF init's extra token_type rows are dropped
  classifier: bool  # init_classifier: continue from the checkpoint's own classifier head
  eval_only: bool  # score the init (with its classifier) on the dev splits; no training
  tokenizer: dict[str, str]  # the config's tokenizer section (kind 'auto': found next to path)


@dataclasses.dataclass(frozen=True)
class ModelSettings:
  """The config's model section: the encoder's run-time knobs and the classifier's."""

  dropout: float
  attention_dropout: float
  classifier_dropout: float  # fairseq pooler_dropout
  head_init: str  # one of state.HEAD_INITS
  dtype: str  # the compute dtype (parameters stay float32)
  scan_unroll: str  # blocks per scan iteration: 'all' or a positive int as digits

  def encoder_config(self, pretrained: EncoderConfig) -> EncoderConfig:
    """The pretrained encoder's architecture with this run's dropout, dtype and scan unroll."""
    return dataclasses.replace(
      pretrained,
      dropout=self.dropout,
      attention_dropout=self.attention_dropout,
      dtype=self.dtype,
      scan_unroll=pretrained.num_layers if self.scan_unroll == "all" else int(self.scan_unroll),
    )


@dataclasses.dataclass(frozen=True)
class AdamSettings:
  """fairseq's AdamW of fine-tuning (the lr and its schedule are the run's)."""

  b1: float
  b2: float
  eps: float
  weight_decay: float
  clip_norm: float  # <= 0: no clipping


@dataclasses.dataclass(frozen=True)
class LoopSettings:
  """The config's train section beyond batch, seed and reporting: when the loop evaluates,
  logs and checkpoints, and what it exports."""

  eval_batch_size: int
  eval_every: int  # 0: at the end of every epoch; N: every N updates (and at the last)
  log_every: int  # >= 1 (a config's 0 or less logs every update)
  checkpoint_every: int  # extra checkpoints every N updates (0: at evaluations only)
  keep_checkpoints: int
  tensorboard: bool
  export_model: bool  # <workdir>/model: the reported evaluation's weights
  export_hf: bool  # and <workdir>/hf: the same as an HF sequence-classifier directory


@dataclasses.dataclass(frozen=True)
class RunSettings:
  """Resolved values of one run: everything the run reads from its config but the data section
  (which `data.load_task_data` reads). `max_update`: where the linear decay reaches 0 (fairseq
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
  init: InitSettings
  model: ModelSettings
  adam: AdamSettings
  loop: LoopSettings
  mesh: dict[str, int]  # runtime.sharding.make_mesh's axis sizes
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

  def optimizer_config(self) -> OptimizerConfig:
    """fairseq's fine-tuning optimizer (AdamW, polynomial decay); after `with_data`."""
    return OptimizerConfig(
      lr=self.lr,
      b1=self.adam.b1,
      b2=self.adam.b2,
      eps=self.adam.eps,
      weight_decay=self.adam.weight_decay,
      decay_bias_and_norm=True,  # fairseq decays every parameter
      clip_norm=self.adam.clip_norm,
      schedule="polynomial_decay",
      warmup_steps=self.warmup_updates,
      max_steps=self.max_update,
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
  own = source in OWN_TASK_SOURCES
  _check_task(task, own)
  num_labels, names, metric_names = _labels_and_metrics(data, task, own)
  default = _defaults(task, own)
  pick = lambda value, key: default[key] if value is None else value  # noqa: E731
  settings = RunSettings(
    task=task,
    source=source,
    num_labels=num_labels,
    label_names=names,
    metric_names=tuple(metric_names),
    eval_splits=tuple(pick(data.eval_splits, "eval_splits")),
    lr=float(lr if lr is not None else pick(opt.lr, "lr")),
    batch_size=int(pick(train.batch_size, "batch_size")),
    max_update=pick(opt.max_update, "max_update"),
    warmup_updates=pick(opt.warmup_updates, "warmup_updates"),
    max_epochs=int(opt.max_epochs),
    seed=int(seed if seed is not None else train.seed),
    regression_scale=float(pick(data.regression_scale, "regression_scale")),
    report=_check_choice(train.report, REPORTS, "train.report"),
    select_by=_check_choice(train.select_by, SELECT_BY, "train.select_by"),
    init=_init_settings(config),
    model=_model_settings(config.model),
    adam=AdamSettings(*(float(opt[k]) for k in ("b1", "b2", "eps", "weight_decay", "clip_norm"))),
    loop=_loop_settings(train),
    mesh=dict(config.mesh),
  )
  _check_values(config, settings)
  return settings


def _check_task(task: str, own: bool) -> None:
  """A GLUE task, or a task of your own from an own-task source; never the `glue` grid."""
  if task not in recipes.GLUE_RECIPES and not own:
    raise ValueError(
      f"unknown GLUE task {task!r} (known: {sorted(recipes.GLUE_RECIPES)}); a task of your own "
      "needs data.source='generic'"
    )
  if task == "glue":
    raise ValueError("task=glue runs a grid: use finetune.py (it runs every task)")


def _labels_and_metrics(
  data: ml_collections.ConfigDict, task: str, own: bool
) -> tuple[int, tuple[str, ...] | None, tuple[str, ...]]:
  """(num_labels, label names, metric names): a GLUE task's own, else the data section's
  (num_labels 0: the classes come from the train split; 1: regression, no names)."""
  if task in recipes.GLUE_RECIPES and not own:
    names = recipes.label_names(task)
    return recipes.GLUE_RECIPES[task].num_labels, names, TASK_METRICS[task]
  regression = bool(data.regression)
  names = None if regression else (comma_list(data.label_names) or None)
  num_labels = 1 if regression else (len(names) if names else 0)
  metric = data.metric or ("pearson_spearman" if regression else "accuracy")
  return num_labels, names, METRIC_SETS[_check_choice(metric, tuple(METRIC_SETS), "data.metric")]


def _defaults(task: str, own: bool) -> dict[str, Any]:
  """What the fields the config leaves None take: a GLUE task's recipe (also for a task of your
  own named like one, but for its dev splits), else GENERIC_DEFAULTS (update counts None:
  `with_data` fills them from max_epochs)."""
  recipe = recipes.GLUE_RECIPES.get(task)
  if recipe is None:
    return {
      "lr": GENERIC_DEFAULTS["lr"],
      "batch_size": GENERIC_DEFAULTS["batch_size"],
      "max_update": None,
      "warmup_updates": None,
      "regression_scale": 1.0,
      "eval_splits": ("validation",),
    }
  return {
    "lr": recipe.lr,
    "batch_size": recipe.batch_size,
    "max_update": recipe.max_update,
    "warmup_updates": recipe.warmup_updates,
    "regression_scale": recipe.regression_scale,
    "eval_splits": ("validation",) if own else recipe.eval_splits,
  }


def _init_settings(config: ml_collections.ConfigDict) -> InitSettings:
  return InitSettings(
    path=config.init,
    use_ema=bool(config.init_ema),
    from_scratch=bool(config.from_scratch),
    drop_token_type_rows=bool(config.init_drop_token_type_rows),
    classifier=bool(config.init_classifier),
    eval_only=bool(config.eval_only),
    tokenizer=dict(config.tokenizer),
  )


def _model_settings(model: ml_collections.ConfigDict) -> ModelSettings:
  return ModelSettings(
    dropout=float(model.dropout),
    attention_dropout=float(model.attention_dropout),
    classifier_dropout=float(model.classifier_dropout),
    head_init=str(model.head_init),
    dtype=str(model.dtype),
    # A string field: `--config.model.scan_unroll=2` arrives as "2".
    scan_unroll=str(model.scan_unroll),
  )


def _loop_settings(train: ml_collections.ConfigDict) -> LoopSettings:
  return LoopSettings(
    eval_batch_size=int(train.eval_batch_size),
    eval_every=int(train.eval_every),
    log_every=max(int(train.log_every), 1),
    checkpoint_every=int(train.checkpoint_every),
    keep_checkpoints=int(train.keep_checkpoints),
    tensorboard=bool(train.tensorboard),
    export_model=bool(train.export_model),
    export_hf=bool(train.export_hf),
  )


def _check_values(config: ml_collections.ConfigDict, settings: RunSettings) -> None:
  """Every other field's range, in the config's words (raised before anything is read)."""
  data = config.data
  _check_choice(data.train_too_long, TOO_LONG, "data.train_too_long")
  _check_choice(data.eval_too_long, TOO_LONG, "data.eval_too_long")
  _check_choice(settings.model.head_init, HEAD_INITS, "model.head_init")
  _check_choice(settings.model.dtype, DTYPES, "model.dtype")
  unroll = settings.model.scan_unroll
  if not (unroll == "all" or (unroll.isdigit() and int(unroll) >= 1)):
    raise ValueError(
      f"model.scan_unroll must be 'all' or an int >= 1, got {config.model.scan_unroll!r}"
    )
  for field, value, low in (
    ("optimizer.lr", settings.lr, 0.0),
    ("train.batch_size", settings.batch_size, 0),
    ("optimizer.max_epochs", settings.max_epochs, 0),
    ("train.eval_batch_size", settings.loop.eval_batch_size, 0),
  ):
    if not value > low:
      raise ValueError(f"{field} must be > {low}, got {value}")
  if settings.loop.eval_every < 0:
    raise ValueError(
      f"train.eval_every must be >= 0 (0: every epoch), got {settings.loop.eval_every}"
    )
  if settings.max_update is not None and settings.max_update < 1:
    raise ValueError(f"optimizer.max_update must be >= 1, got {settings.max_update}")
  if settings.warmup_updates is not None and settings.warmup_updates < 0:
    raise ValueError(f"optimizer.warmup_updates must be >= 0, got {settings.warmup_updates}")
  if not settings.init.path:
    raise ValueError(
      "config.init is empty: give the pretrained model (model dir, HF dir, fairseq .pt or "
      "pretraining workdir)"
    )
  if settings.source not in ("tfds", "python_topics") and not data.path:
    raise ValueError(f"data.path must be set for data.source={settings.source!r}")

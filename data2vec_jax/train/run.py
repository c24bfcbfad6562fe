"""A pretraining config resolved once: `resolve(config) -> Run`.

`Run` holds every typed object a run is made of: the `Recipe` (the step's math), the
`ExecutionPlan` (how it runs), the optimizer, the mesh, the `train` section as `TrainSettings`
and the `validation` section. `resolve` validates the whole config while building them, before
any corpus, vocabulary or checkpoint is touched (a bad config is one `ConfigError` line); the
training loop and `step_setup` (shared with `compile_for`) read the `Run`, never the ConfigDict.
`validate_config` is `resolve` with the result discarded.

The real vocabulary is known only once the data is built: until then the recipe carries a
placeholder of the same kind (the config's `model.vocab_size` when set, else 1000) and
`Run.with_vocabulary` fills in the data's.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import ml_collections
import optax
from jax.sharding import Mesh

from data2vec_jax.data import training_input
from data2vec_jax.objective import execution as execution_lib
from data2vec_jax.runtime import sharding as sharding_lib
from data2vec_jax.runtime.optimizer import make_optimizer
from data2vec_jax.train import health as health_lib
from data2vec_jax.train import state as train_state_lib
from data2vec_jax.train.recipe import ConfigError, plan_from_config, recipe_from_config

# Without a vocabulary in the config, the recipe is validated with one of this size.
PLACEHOLDER_VOCAB_SIZE = 1000
_AT_LEAST_ONE = ("num_steps", "log_every", "checkpoint_every", "keep_checkpoints")


@dataclasses.dataclass(frozen=True)
class TrainSettings:
  """The `train` config section, typed (its defaults are the config file's: every key is
  required, unknown keys are refused). See configs/pretrain.py for each field.

  health: the section's health-guard keys (`health.HealthConfig`: nan_guard, explode_factor,
  explode_window, collapse_check_after, min_target_var, min_pred_var, collapse_fraction).
  """

  num_steps: int
  seed: int
  log_every: int
  checkpoint_every: int
  keep_checkpoints: int
  async_checkpoint: bool
  export_model: bool
  plot: bool
  tensorboard: bool
  compilation_cache: str
  precompile_steps: int
  compile_threads: int
  peak_flops_per_device: float  # 0: looked up from the device kind
  health: health_lib.HealthConfig

  @classmethod
  def from_section(cls, train: Mapping[str, Any]) -> "TrainSettings":
    """Builds the settings from the `train` section; raises ValueError (one line) for unknown or
    missing keys and for a step count or interval under 1."""
    values = dict(train)
    health_keys = {f.name for f in dataclasses.fields(health_lib.HealthConfig)}
    own = {f.name for f in dataclasses.fields(cls)} - {"health"}
    unknown = sorted(set(values) - own - health_keys)
    if unknown:
      raise ValueError(f"unknown train keys: {unknown}; known keys: {sorted(own | health_keys)}")
    missing = sorted(own - set(values))
    if missing:
      raise ValueError(f"missing train keys: {missing}")
    health = health_lib.HealthConfig.from_train_config(values)
    for name in _AT_LEAST_ONE:
      if int(values[name]) < 1:
        raise ValueError(f"train.{name} must be >= 1, got {values[name]}")
    settings = {name: values[name] for name in own}
    for name in ("num_steps", "seed", "precompile_steps", "compile_threads", *_AT_LEAST_ONE):
      settings[name] = int(settings[name])
    settings["peak_flops_per_device"] = float(settings["peak_flops_per_device"] or 0)
    return cls(health=health, **settings)


@dataclasses.dataclass(frozen=True)
class Run:
  """Everything a pretraining run is made of, resolved from its config once.

  recipe: the step's math (with a placeholder vocabulary until `with_vocabulary`); plan: how
  the step runs; tx: the optimizer; mesh: the devices' mesh (with its axis rules and slices);
  train: the `train` section; validation: the `validation` section (off when every == 0).
  vocab_from_data / mask_id_from_data: the config leaves `model.vocab_size` /
  `objective.mask_id` to the data's tokenizer (-1 or None).
  """

  recipe: train_state_lib.Recipe
  plan: execution_lib.ExecutionPlan
  tx: optax.GradientTransformation
  mesh: Mesh
  train: TrainSettings
  validation: training_input.ValidationConfig
  vocab_from_data: bool
  mask_id_from_data: bool

  def with_vocabulary(self, vocab_size: int, mask_id: int) -> "Run":
    """This run with the data's vocabulary in its recipe (what `recipe_from_config(config,
    vocab_size, mask_id)` builds; the plan and the optimizer do not depend on it).

    Raises ValueError when the config's `model.vocab_size` is smaller than the data's."""
    model, objective = self.recipe.model, self.recipe.objective
    if self.vocab_from_data:
      model = dataclasses.replace(model, vocab_size=vocab_size)
    elif model.vocab_size < vocab_size:
      raise ValueError(
        f"config.model.vocab_size={model.vocab_size} is smaller than the "
        f"tokenizer's vocabulary ({vocab_size} ids incl. <mask>)"
      )
    if self.mask_id_from_data:
      objective = dataclasses.replace(objective, mask_id=mask_id)
    recipe = dataclasses.replace(self.recipe, model=model, objective=objective)
    return dataclasses.replace(self, recipe=recipe, vocab_from_data=False, mask_id_from_data=False)


def resolve(config: ml_collections.ConfigDict, devices: Sequence[Any] | None = None) -> Run:
  """The `Run` of a pretraining config, every section validated before anything is read.

  devices: the mesh's devices (default: this host's; `compile_for` passes a described topology).

  Raises `ConfigError` (one line) for unknown fields, out-of-range values, an unknown data
  source, or a batch the mesh cannot split.
  """
  try:
    training_input.check_config(config)
    config_vocab = config.model.get("vocab_size", -1)
    placeholder = int(config_vocab or -1)
    placeholder = placeholder if placeholder > 0 else PLACEHOLDER_VOCAB_SIZE
    execution = execution_lib.ExecutionConfig.from_dict(dict(config.execution))
    recipe = recipe_from_config(config, placeholder, placeholder - 1, execution=execution)
    plan = plan_from_config(config, recipe, execution=execution)
    tx = make_optimizer(recipe.optimizer)
    train = TrainSettings.from_section(config.train)
    mesh = sharding_lib.make_mesh(**dict(config.mesh), devices=devices)
    _check_batch_splits(int(config.data.global_batch_size), mesh, plan)
    return Run(
      recipe=recipe,
      plan=plan,
      tx=tx,
      mesh=mesh,
      train=train,
      validation=training_input.validation_config(config),
      vocab_from_data=config_vocab in (-1, None),
      mask_id_from_data=config.objective.get("mask_id", -1) in (-1, None),
    )
  except (ValueError, TypeError, KeyError, AttributeError) as e:
    raise ConfigError(f"invalid config: {e}") from e


def validate_config(
  config: ml_collections.ConfigDict, devices: Sequence[Any] | None = None
) -> None:
  """Checks the whole config before any corpus, vocabulary or checkpoint is touched
  (`resolve`, its result discarded). Raises `ConfigError` (one line)."""
  resolve(config, devices=devices)


def _check_batch_splits(global_batch_size: int, mesh: Mesh, plan) -> None:
  shards = sharding_lib.data_parallel_size(mesh) * plan.micro_batches
  if global_batch_size % shards:
    raise ValueError(
      f"data.global_batch_size={global_batch_size} must be divisible by "
      f"data x fsdp = {sharding_lib.data_parallel_size(mesh)} times "
      f"execution.micro_batches={plan.micro_batches}"
    )

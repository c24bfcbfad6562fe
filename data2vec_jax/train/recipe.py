"""From the config to what a run computes: the `Recipe` (the step's math), the
`ExecutionPlan` (how it runs), and the recipe.json a workdir keeps.

`recipe_from_config` / `plan_from_config` build the hashable objects the jitted step takes;
`recipe_to_dict` / `recipe_from_dict` write and read recipe.json, which `train.export` reads to
export a model directory from any checkpoint. `train.run.resolve` builds them (and the rest
of a run) once per run, validating the whole config.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections

from data2vec_jax.model.config import EncoderConfig
from data2vec_jax.objective import execution as execution_lib
from data2vec_jax.objective.ema import EMAConfig
from data2vec_jax.objective.loss import ObjectiveConfig
from data2vec_jax.objective.masking import MaskingConfig
from data2vec_jax.runtime.optimizer import OptimizerConfig
from data2vec_jax.train import state as train_state_lib

RECIPE_FILE = "recipe.json"  # the resolved step math, for exporting from a checkpoint later
# Speed fields that recipe files written before the `execution` section kept in 'objective'.
_OLD_OBJECTIVE_SPEED_KEYS = ("head_positions_per_row", "prune_last_block", "head_overflow")


def recipe_to_dict(
  recipe: train_state_lib.Recipe, seq_len: int, plan: execution_lib.ExecutionPlan | None = None
) -> dict[str, Any]:
  """recipe.json: the step's math (and, for the record, the execution plan it ran with)."""
  values = {
    "model": recipe.model.to_dict(),
    "objective": dataclasses.asdict(recipe.objective),
    "ema": dataclasses.asdict(recipe.ema),
    "optimizer": dataclasses.asdict(recipe.optimizer),
    "seq_len": seq_len,
  }
  if plan is not None:
    values["execution"] = dataclasses.asdict(plan)
  return values


def recipe_from_dict(values: dict[str, Any]) -> tuple[train_state_lib.Recipe, int]:
  """Reads `recipe_to_dict`'s output (also that of runs from before the execution section)."""
  optimizer = {k: tuple(v) if isinstance(v, list) else v for k, v in values["optimizer"].items()}
  objective = {k: v for k, v in values["objective"].items() if k not in _OLD_OBJECTIVE_SPEED_KEYS}
  recipe = train_state_lib.Recipe(
    model=EncoderConfig.from_dict(values["model"]),
    objective=ObjectiveConfig.from_dict(objective),
    ema=EMAConfig.from_dict(values["ema"]),
    optimizer=OptimizerConfig.from_dict(optimizer),
  )
  return recipe, int(values["seq_len"])


class ConfigError(ValueError):
  """The config is invalid; raised before any data, vocabulary or checkpoint is touched."""


def recipe_from_config(
  config: ml_collections.ConfigDict,
  vocab_size: int,
  mask_id: int,
  execution: execution_lib.ExecutionConfig | None = None,
) -> train_state_lib.Recipe:
  """Turns the config sections into validated, hashable dataclasses (unknown keys rejected).

  The encoder's execution knobs (kernel, remat, unrolling) come from the `execution` section
  (`execution`: that section already parsed; default: parsed here).
  """
  model = dict(config.model)
  if model.get("vocab_size", -1) in (-1, None):
    model["vocab_size"] = vocab_size
  elif model["vocab_size"] < vocab_size:
    raise ValueError(
      f"config.model.vocab_size={model['vocab_size']} is smaller than the "
      f"tokenizer's vocabulary ({vocab_size} ids incl. <mask>)"
    )
  objective = dict(config.objective)
  if objective.get("mask_id", -1) in (-1, None):
    objective["mask_id"] = mask_id
  if execution is None:
    execution = execution_lib.ExecutionConfig.from_dict(dict(config.execution))
  return train_state_lib.Recipe(
    model=execution.encoder_config(EncoderConfig.from_dict(model)),
    objective=ObjectiveConfig.from_dict(objective),
    ema=EMAConfig.from_dict(dict(config.ema)),
    optimizer=OptimizerConfig.from_dict(dict(config.optimizer)),
  )


def plan_from_config(
  config: ml_collections.ConfigDict,
  recipe: train_state_lib.Recipe,
  execution: execution_lib.ExecutionConfig | None = None,
) -> execution_lib.ExecutionPlan:
  """The run's `ExecutionPlan`: the `execution` section (`execution`: already parsed) resolved
  for its objective, masking and sequence length."""
  if execution is None:
    execution = execution_lib.ExecutionConfig.from_dict(dict(config.execution))
  return execution_lib.make_plan(
    execution,
    recipe.objective,
    MaskingConfig.from_dict(dict(config.masking)),
    int(config.data.tokens_per_sample),
  )

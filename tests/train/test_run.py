"""A pretraining config resolved once (`train.run.resolve`): the recipe and plan the step takes,
the `train` section typed (unknown, missing and out-of-range keys refused in one line)."""

from __future__ import annotations

import dataclasses
import glob
import importlib
import os

import pytest

from data2vec_jax.configs import demo
from data2vec_jax.train import step_setup
from data2vec_jax.train.health import HealthConfig
from data2vec_jax.train.recipe import ConfigError, plan_from_config, recipe_from_config
from data2vec_jax.train.run import Run, TrainSettings, resolve, validate_config
from tests.paths import REPO

CONFIG_MODULES = sorted(
  os.path.relpath(p, REPO)[:-3].replace(os.sep, ".")
  for p in glob.glob(os.path.join(REPO, "configs", "**", "*.py"), recursive=True)
  if not p.endswith(("__init__.py", "finetune.py", "finetune_demo.py"))
  and os.sep + "sweeps" + os.sep not in p
)


@pytest.mark.parametrize("recipe", ["release", "data2vec2"])
def test_the_run_holds_what_the_config_builds(recipe):
  config = demo.get_config(f"recipe={recipe}")
  run = resolve(config)
  assert isinstance(run, Run) and run.vocab_from_data and run.mask_id_from_data
  # With the data's vocabulary: the recipe and plan built from the config with it.
  resolved = run.with_vocabulary(2048, 2047)
  expected = recipe_from_config(config, 2048, 2047)
  assert resolved.recipe == expected
  assert resolved.plan == plan_from_config(config, expected)
  assert resolved.validation.every == config.validation.every
  assert resolved.train.num_steps == config.train.num_steps
  assert resolved.train.health == HealthConfig.from_train_config(config.train)
  assert validate_config(config) is None
  # step_setup builds the step of the resolved run (what the loop and compile_for compile).
  setup = step_setup.build(resolved, int(config.data.tokens_per_sample))
  assert (setup.recipe, setup.plan, setup.mesh) == (resolved.recipe, resolved.plan, run.mesh)


def test_a_vocabulary_in_the_config_is_kept_and_checked():
  config = demo.get_config()
  config.model.vocab_size = 3000
  run = resolve(config)
  assert not run.vocab_from_data
  assert run.with_vocabulary(2048, 2047).recipe == recipe_from_config(config, 2048, 2047)
  with pytest.raises(ValueError, match=r"config.model.vocab_size=3000 is smaller than the"):
    run.with_vocabulary(4000, 3999)


@pytest.mark.parametrize("module", CONFIG_MODULES)
def test_every_shipped_config_has_a_complete_train_section(module):
  train = importlib.import_module(module).get_config(None).train
  settings = TrainSettings.from_section(train)
  for field in dataclasses.fields(TrainSettings):
    if field.name != "health":
      assert getattr(settings, field.name) == train[field.name], field.name


@pytest.mark.parametrize(
  "key, value, message",
  [
    ("log_every", 0, "train.log_every must be >= 1, got 0"),
    ("num_steps", -1, "train.num_steps must be >= 1, got -1"),
    ("explode_window", 0, "explode_window"),
  ],
)
def test_a_bad_train_value_is_a_one_line_error(key, value, message):
  config = demo.get_config()
  config.train[key] = value
  with pytest.raises(ConfigError) as e:
    resolve(config)
  assert str(e.value).startswith("invalid config: ") and message in str(e.value), str(e.value)
  assert "\n" not in str(e.value)


def test_unknown_and_missing_train_keys_are_refused():
  train = dict(demo.get_config().train)
  with pytest.raises(ValueError, match=r"unknown train keys: \['nmu_steps'\]"):
    TrainSettings.from_section({**train, "nmu_steps": 3})
  del train["precompile_steps"]
  with pytest.raises(ValueError, match=r"missing train keys: \['precompile_steps'\]"):
    TrainSettings.from_section(train)

"""The fine-tuning update a config runs, built for the fine-tuning loop and for
`compile_for` (which compiles the update for a TPU topology without any weights or data).

config (or its resolved `RunSettings`) + the pretrained encoder's `EncoderConfig` -> classifier,
optimizer, mesh, the state's shapes and shardings, and the jitted update. Nothing is allocated
here.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import jax
import ml_collections
import numpy as np
import optax
from flax import linen as nn
from jax.sharding import Mesh

from data2vec_jax.finetune import state as state_lib
from data2vec_jax.finetune import step as step_lib
from data2vec_jax.finetune.model import SequenceClassifier
from data2vec_jax.finetune.settings import RunSettings, resolve_settings
from data2vec_jax.model.config import EncoderConfig
from data2vec_jax.runtime import sharding as sharding_lib
from data2vec_jax.runtime.optimizer import OptimizerConfig, make_optimizer


@dataclasses.dataclass(frozen=True)
class FinetuneStepSetup:
  """The fine-tuning update's parts (abstract_state: ShapeDtypeStructs with shardings)."""

  settings: RunSettings
  model: nn.Module
  optimizer: OptimizerConfig
  tx: optax.GradientTransformation
  mesh: Mesh
  abstract_state: state_lib.FinetuneState
  shardings: state_lib.FinetuneState

  def make_step(self) -> Callable:
    return step_lib.make_train_step(self.model, self.tx, self.optimizer, self.mesh, self.shardings)

  def batch_structs(self, rows: int, length: int) -> dict[str, jax.ShapeDtypeStruct]:
    """input_ids int32 [B, T], labels [B] (int32; float32 for regression), weights float32 [B]."""
    sharding = sharding_lib.batch_sharding(self.mesh)
    labels = np.float32 if self.settings.num_labels == 1 else np.int32
    return {
      "input_ids": jax.ShapeDtypeStruct((rows, length), np.int32, sharding=sharding),
      "labels": jax.ShapeDtypeStruct((rows,), labels, sharding=sharding),
      "weights": jax.ShapeDtypeStruct((rows,), np.float32, sharding=sharding),
    }


def build(
  config: ml_collections.ConfigDict,
  model_config: EncoderConfig,
  devices: Sequence[jax.Device] | None = None,
  train_examples: int = 100_000,
) -> FinetuneStepSetup:
  """The update of `config`'s task for an encoder of `model_config` (no weights read).

  train_examples: the train split's size where the task's recipe leaves the update counts to
  it (they set the schedule only, not the compiled program's shapes).
  """
  settings = resolve_settings(config).with_data(train_examples)
  return from_settings(settings, model_config, devices)


def from_settings(
  settings: RunSettings,
  model_config: EncoderConfig,
  devices: Sequence[jax.Device] | None = None,
) -> FinetuneStepSetup:
  """The update of resolved `settings` (after `with_data`: the schedule needs the update
  counts) for an encoder of `model_config`: classifier, optimizer, mesh, state shardings."""
  model = SequenceClassifier(model_config, settings.num_labels, settings.model.classifier_dropout)
  optimizer = settings.optimizer_config()
  tx = make_optimizer(optimizer)
  mesh = sharding_lib.make_mesh(**settings.mesh, devices=devices)
  abstract, shardings = state_lib.state_shardings(model, tx, mesh)
  return FinetuneStepSetup(settings, model, optimizer, tx, mesh, abstract, shardings)

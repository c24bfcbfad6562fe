"""The pretraining step a config runs, built in one place for the training loop and for
`compile_for` (which compiles it for a TPU topology without running it).

A resolved run (`run.Run`: recipe, plan, optimizer, mesh) -> the state's shapes and shardings,
and the jitted step. Nothing is allocated here.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import numpy as np
import optax
from jax.sharding import Mesh

from data2vec_jax.objective import execution as execution_lib
from data2vec_jax.runtime import sharding as sharding_lib
from data2vec_jax.train import state as train_state_lib
from data2vec_jax.train import step as train_step_lib
from data2vec_jax.train.run import Run

# What the input pipeline puts on the devices each step (int32 ids, bool loss positions).
BATCH_DTYPES = {"source": np.int32, "target": np.int32, "selected": np.bool_}


@dataclasses.dataclass(frozen=True)
class StepSetup:
  """Everything the jitted step of a run is made of.

  abstract_state: the TrainState as ShapeDtypeStructs with their NamedShardings; shardings: the
  same tree of NamedShardings.
  """

  recipe: train_state_lib.Recipe
  plan: execution_lib.ExecutionPlan
  tx: optax.GradientTransformation
  mesh: Mesh
  abstract_state: train_state_lib.TrainState
  shardings: train_state_lib.TrainState

  def make_step(self) -> Callable:
    """The jitted, state-donating `step(state, batch, packing=None)` (`step.make_train_step`)."""
    return train_step_lib.make_train_step(
      self.recipe, self.plan, self.tx, self.mesh, self.shardings
    )

  def batch_structs(self, global_rows: int, length: int) -> dict[str, jax.ShapeDtypeStruct]:
    """The global batch a step takes, as ShapeDtypeStructs sharded like the loop's batches:
    source / target int32 [B, T], selected bool [B, T]."""
    sharding = sharding_lib.batch_sharding(self.mesh)
    return {
      key: jax.ShapeDtypeStruct((global_rows, length), dtype, sharding=sharding)
      for key, dtype in BATCH_DTYPES.items()
    }


def build(run: Run, seq_len: int) -> StepSetup:
  """The step of a resolved run (`run.resolve`; its mesh may be of abstract TPU devices)."""
  abstract_state, shardings = train_state_lib.state_shardings(run.recipe, run.tx, run.mesh, seq_len)
  return StepSetup(run.recipe, run.plan, run.tx, run.mesh, abstract_state, shardings)


def abstract_like(tree: Any) -> Any:
  """ShapeDtypeStructs (with shardings) of a tree of arrays or structs."""
  return jax.tree_util.tree_map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree
  )

"""The train state pytree, created directly in its sharded layout.

`TrainState` is a plain pytree: parameters (`{'encoder', 'head'}`), the EMA teacher (float32
encoder tree; None for the MLM baseline), optimizer state, the step and a base RNG key. It is built
as `eval_shape` -> shardings -> jitted init with `out_shardings`, so no device ever holds the
whole model unless the mesh says so.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from data2vec_jax.model.config import EncoderConfig
from data2vec_jax.objective import ema as ema_lib
from data2vec_jax.objective.ema import EMAConfig
from data2vec_jax.objective.loss import ObjectiveConfig, PretrainingModel
from data2vec_jax.runtime import sharding as sharding_lib
from data2vec_jax.runtime.optimizer import OptimizerConfig


@dataclasses.dataclass(frozen=True)
class Recipe:
  """Everything that defines the math of one training step (hashable: a static jit argument).

  How the step is executed (gathered heads, packing, micro-batches) is the separate
  `execution.ExecutionPlan`; `model` carries the encoder's own execution knobs (kernel, remat,
  unrolling), which change no value.
  """

  model: EncoderConfig
  objective: ObjectiveConfig
  ema: EMAConfig
  optimizer: OptimizerConfig

  @property
  def uses_teacher(self) -> bool:
    return self.objective.kind in ("data2vec", "data2vec2")


@flax.struct.dataclass
class TrainState:
  """step: int32 [] completed optimizer updates. rng: uint32 [2] base key (dropout of step s is
  `fold_in(rng, s)`, so resuming needs no RNG bookkeeping). params / ema_params: float32 (or
  `param_dtype`) pytrees; ema_params is `ema.init_ema`'s float32 tree (the blocks only, under
  `ema_transformer_layers_only`; the teacher then takes the student's embeddings)."""

  step: jax.Array
  params: Any
  ema_params: Any
  opt_state: Any
  rng: jax.Array


def _init_state_boxed(
  recipe: Recipe, tx: optax.GradientTransformation, rng: jax.Array, seq_len: int
) -> TrainState:
  """Builds the state with params still boxed in `nn.Partitioned` (for logical axis names)."""
  init_rng, state_rng = jax.random.split(rng)
  model = PretrainingModel(recipe.model, recipe.objective)
  dummy = jnp.full((1, seq_len), recipe.model.pad_id + 1, jnp.int32)
  boxed = model.init(init_rng, dummy)["params"]
  ema = None
  if recipe.uses_teacher:
    # The teacher starts equal to the student (fairseq creates it by deep copy at update 0).
    ema = ema_lib.init_ema(boxed["encoder"], recipe.ema)
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    params=boxed,
    ema_params=ema,
    # On the boxed parameters, so the Adam moments carry their parameter's logical axes and
    # shard like it; the counters are unboxed and stay replicated.
    opt_state=tx.init(boxed),
    rng=state_rng,
  )


def state_shardings(
  recipe: Recipe, tx: optax.GradientTransformation, mesh: Mesh, seq_len: int = 8
) -> tuple[TrainState, TrainState]:
  """(abstract unboxed state, NamedSharding tree) without allocating any parameter."""
  # The key is made inside the trace: a concrete key would be placed on a device of the
  # current mesh, which for a described TPU topology (compile_for) has no memory.
  boxed = jax.eval_shape(lambda: _init_state_boxed(recipe, tx, jax.random.PRNGKey(0), seq_len))
  param_shardings = sharding_lib.logical_to_shardings(boxed.params, mesh)
  ema_shardings = (
    sharding_lib.logical_to_shardings(boxed.ema_params, mesh)
    if boxed.ema_params is not None
    else None
  )
  replicated = NamedSharding(mesh, P())
  shardings = TrainState(
    step=replicated,
    params=param_shardings,
    ema_params=ema_shardings,
    opt_state=sharding_lib.logical_to_shardings(boxed.opt_state, mesh),
    rng=replicated,
  )
  return sharding_lib.placed_shapes(boxed, shardings), shardings


def create_train_state(
  recipe: Recipe,
  tx: optax.GradientTransformation,
  rng: jax.Array,
  mesh: Mesh,
  seq_len: int = 8,
  shardings: TrainState | None = None,
) -> TrainState:
  """Randomly initialised state, each leaf created directly with its sharding (`shardings`, from
  `state_shardings`, when the caller has them already)."""
  if shardings is None:
    _, shardings = state_shardings(recipe, tx, mesh, seq_len)
  init = jax.jit(
    lambda r: nn.meta.unbox(_init_state_boxed(recipe, tx, r, seq_len)), out_shardings=shardings
  )
  with sharding_lib.activate(mesh):
    return init(rng)

"""One optimizer update of data2vec (or the MLM baseline), jitted over a device mesh.

Order of operations, matching fairseq's (docs/reference/data2vec_text_reference.md §1.6 and §2.4):
  1. teacher = EMA blocks (+ the current student's embeddings when `ema_transformer_layers_only`);
  2. for each micro-batch: student forward/backward, summing the *un-normalised* loss and grads;
  3. divide grads by the number of loss positions in the whole global batch (all micro-batches,
     all devices) -> identical to one step on the large batch;
  4. clip (after normalisation) and AdamW, `optim.apply_gradients`: the 1/count and the clip
     factor are one scalar multiplied in AdamW's elementwise pass;
  5. EMA update with tau(k) using the new student θ_k, k = the updated step count. The teacher of
     step k is thereby the one fairseq builds at the start of update k.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from data2vec_jax.objective import ema as ema_lib
from data2vec_jax.objective.execution import ExecutionPlan
from data2vec_jax.objective.training_loss import training_loss
from data2vec_jax.runtime import sharding as sharding_lib
from data2vec_jax.runtime.optimizer import apply_gradients, learning_rate_schedule
from data2vec_jax.speed.packing import PackingSpec
from data2vec_jax.train import state as state_lib
from data2vec_jax.train.state import Recipe, TrainState

# aux entries that are additive over micro-batches; every other aux entry is averaged.
_SUMMED_AUX = ("num_masked", "loss_sum")


def _split_micro_batches(batch: dict[str, jax.Array], k: int) -> dict[str, jax.Array]:
  """[B, ...] -> [k, B/k, ...] where micro-batch j takes rows j, k+j, 2k+j, ...

  Interleaving (rather than contiguous chunks) keeps every micro-batch spread evenly over the
  batch-sharded devices, so no rows move between devices.
  """

  def split(x):
    if x.shape[0] % k:
      raise ValueError(f"batch of {x.shape[0]} rows is not divisible into {k} micro-batches")
    x = x.reshape((x.shape[0] // k, k) + x.shape[1:])
    return jnp.swapaxes(x, 0, 1)

  return jax.tree_util.tree_map(split, batch)


def _grads_and_aux(
  recipe: Recipe,
  plan: ExecutionPlan,
  params: Any,
  teacher: Any,
  batch: dict[str, jax.Array],
  dropout_rng: jax.Array,
  packing: PackingSpec | None,
) -> tuple[Any, dict[str, jax.Array]]:
  """Summed (un-normalised) gradients and aux over `plan.micro_batches` micro-batches."""

  def one(params, micro_batch, rng):
    return training_loss(
      params,
      teacher,
      micro_batch,
      rng,
      config=recipe.model,
      objective=recipe.objective,
      plan=plan,
      packing=packing,
    )

  grad_fn = jax.grad(one, has_aux=True)
  k = plan.micro_batches
  if k == 1:
    return grad_fn(params, batch, dropout_rng)

  micro = _split_micro_batches(batch, k)

  def body(carry, xs):
    index, micro_batch = xs
    grads, aux = grad_fn(params, micro_batch, jax.random.fold_in(dropout_rng, index))
    return jax.tree_util.tree_map(jnp.add, carry, (grads, aux)), None

  first = jax.tree_util.tree_map(lambda x: x[0], micro)
  zeros = jax.tree_util.tree_map(
    lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(grad_fn, params, first, dropout_rng)
  )
  (grads, aux), _ = jax.lax.scan(body, zeros, (jnp.arange(k), micro))
  aux = {key: value if key in _SUMMED_AUX else value / k for key, value in aux.items()}
  return grads, aux


def train_step(
  state: TrainState,
  batch: dict[str, jax.Array],
  packing: PackingSpec | None = None,
  *,
  recipe: Recipe,
  plan: ExecutionPlan,
  tx: optax.GradientTransformation,
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One update. batch: {'source','target': int32 [B,T], 'selected': bool [B,T]} (global B).

  plan: how the loss runs (`execution.ExecutionPlan`: gathered heads, pruning, micro-batches).
  packing: run each micro-batch packed (`data2vec_jax/speed/packing.py`; `ExecutionPlan.packing_for_batch` picks the
  capacity from the host batch, one group per data shard). Static: each value compiles once.

  Returns the new state and float32 scalar metrics (loss is the mean over loss positions, as
  fairseq logs it; grad_norm is before clipping).
  """
  dropout_rng = jax.random.fold_in(state.rng, state.step)
  teacher = None
  if recipe.uses_teacher:
    teacher = ema_lib.teacher_params(state.ema_params, state.params["encoder"], recipe.ema)
  grads, aux = _grads_and_aux(recipe, plan, state.params, teacher, batch, dropout_rng, packing)

  # fairseq: optimizer.multiply_grads(world_size / sample_size) with sample_size summed over
  # all micro-batches and workers -> the gradient of sum(loss) / (#loss positions, global).
  count = aux["num_masked"]
  denom = jnp.maximum(count, 1.0)
  params, opt_state, grad_norm = apply_gradients(
    tx, recipe.optimizer, state.params, state.opt_state, grads, denom, recipe.model.pad_id
  )
  step = state.step + 1

  metrics = {key: value.astype(jnp.float32) for key, value in aux.items()}
  metrics.update(
    loss=aux["loss_sum"] / denom,
    grad_norm=grad_norm,
    lr=learning_rate_schedule(recipe.optimizer)(state.step),
    num_tokens=jnp.sum(batch["target"] != recipe.model.pad_id).astype(jnp.float32),
  )
  metrics["masked_fraction"] = count / jnp.maximum(metrics["num_tokens"], 1.0)

  ema_params = state.ema_params
  if recipe.uses_teacher:
    decay = ema_lib.ema_decay(step, recipe.ema)
    ema_params = ema_lib.ema_update(state.ema_params, params["encoder"], decay, recipe.ema)
    metrics["ema_decay"] = decay
  new_state = state.replace(step=step, params=params, ema_params=ema_params, opt_state=opt_state)
  return new_state, metrics


def make_train_step(
  recipe: Recipe,
  plan: ExecutionPlan,
  tx: optax.GradientTransformation,
  mesh: Mesh,
  state_shardings: TrainState,
) -> Callable:
  """The jitted, state-donating step `step(state, batch, packing=None)` with explicit in/out
  shardings on `mesh`; `packing` (a `PackingSpec` or None) is static.

  Call it inside `with sharding.activate(mesh):` so the
  model's activation constraints resolve.
  """
  batch_sharding = sharding_lib.batch_sharding(mesh)
  step_fn = functools.partial(train_step, recipe=recipe, plan=plan, tx=tx)
  return jax.jit(
    step_fn,
    in_shardings=(state_shardings, batch_sharding),
    out_shardings=(state_shardings, NamedSharding(mesh, P())),
    static_argnames=("packing",),
    donate_argnums=(0,),
  )


def new_state_and_step(
  recipe: Recipe,
  plan: ExecutionPlan,
  tx: optax.GradientTransformation,
  mesh: Mesh,
  rng: jax.Array,
) -> tuple[TrainState, Callable]:
  """A randomly initialised sharded state and the jitted step for it (`make_train_step`).

  For a run from scratch (tests, benchmarks); the training loop restores a checkpoint into the
  same shardings instead. Call inside `with sharding.activate(mesh):`.
  """
  _, shardings = state_lib.state_shardings(recipe, tx, mesh, plan.seq_len)
  state = state_lib.create_train_state(recipe, tx, rng, mesh, plan.seq_len, shardings)
  return state, make_train_step(recipe, plan, tx, mesh, shardings)

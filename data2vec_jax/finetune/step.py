"""The jitted fine-tuning update and the evaluation forward pass.

Loss normalisation is fairseq's `sentence_prediction` criterion (docs/reference/finetuning_
reference.md §1.3): the per-sentence losses (cross-entropy, or squared error for one output) are
summed and the gradient is divided by the number of sentences, i.e. the batch mean, as
`Data2VecTextForSequenceClassification` computes it. Padding rows of an epoch's last batch have
weight 0 and count neither in the sum nor in the divisor. No gradient clipping (clip_norm 0 in
the recipe) unless configured.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from data2vec_jax.finetune.state import FinetuneState
from data2vec_jax.runtime import sharding as sharding_lib
from data2vec_jax.runtime.optimizer import OptimizerConfig, apply_gradients, learning_rate_schedule


def per_example_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """logits [B, C] float32, labels [B] (int ids; float targets when C == 1) -> float32 [B]."""
  if logits.shape[-1] == 1:
    error = logits[:, 0] - labels.astype(jnp.float32)
    return error * error
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -jnp.take_along_axis(logp, labels.astype(jnp.int32)[:, None], axis=-1)[:, 0]


def make_train_step(
  model: nn.Module,
  tx: optax.GradientTransformation,
  optimizer: OptimizerConfig,
  mesh: Mesh,
  shardings: FinetuneState,
) -> Callable[[FinetuneState, dict[str, jax.Array]], tuple[FinetuneState, dict[str, jax.Array]]]:
  """step(state, batch) -> (state, metrics). batch: input_ids int32 [B, T], labels [B],
  weights float32 [B] (0 = padding row). Metrics (float32 scalars): loss (mean over the real
  sentences), accuracy (classification), grad_norm, lr, sentences."""
  schedule_fn = learning_rate_schedule(optimizer)

  def step(state: FinetuneState, batch: dict[str, jax.Array]):
    dropout_rng = jax.random.fold_in(state.rng, state.step)
    weights = batch["weights"]

    def loss_fn(params):
      logits = model.apply(
        {"params": params},
        batch["input_ids"],
        deterministic=False,
        rngs={"dropout": dropout_rng},
      )
      return jnp.sum(weights * per_example_loss(logits, batch["labels"])), logits

    (loss_sum, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    sentences = jnp.sum(weights)
    params, opt_state, grad_norm = apply_gradients(
      tx,
      optimizer,
      state.params,
      state.opt_state,
      grads,
      jnp.maximum(sentences, 1.0),
      pad_id=model.config.pad_id,  # the embedding tables' pad rows never move (model/pad_rows.py)
    )
    metrics = {
      "loss": loss_sum / jnp.maximum(sentences, 1.0),
      "grad_norm": grad_norm,
      "lr": schedule_fn(state.step),
      "sentences": sentences,
    }
    if logits.shape[-1] > 1:
      correct = (jnp.argmax(logits, -1) == batch["labels"]).astype(jnp.float32)
      metrics["accuracy"] = jnp.sum(weights * correct) / jnp.maximum(sentences, 1.0)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
    return new_state, metrics

  batch_sharding = sharding_lib.batch_sharding(mesh)
  return jax.jit(
    step,
    in_shardings=(shardings, batch_sharding),
    out_shardings=(shardings, None),
    donate_argnums=(0,),
  )


def make_eval_step(
  model: nn.Module, mesh: Mesh, param_shardings: Any
) -> Callable[[Any, jax.Array], jax.Array]:
  """logits(params, input_ids int32 [B, T]) -> float32 [B, C], dropout off."""

  def logits(params, input_ids):
    return model.apply({"params": params}, input_ids, deterministic=True).astype(jnp.float32)

  return jax.jit(
    logits, in_shardings=(param_shardings, sharding_lib.batch_sharding(mesh)), out_shardings=None
  )

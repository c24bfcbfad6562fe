"""The training step's loss: `objective.loss_fn`'s value, computed as an `ExecutionPlan` says.

Same loss and gradients as the reference path (float rounding aside; tests/objective/test_execution.py),
for less work (`data2vec_jax/objective/execution.py` lists the techniques):

* gathered head positions (plan K > 0): per row, the loss positions are gathered into K slots
  (in order, then filler slots with weight 0) and the head and the loss run there only. A row
  with more than K loss positions is never silently truncated: with head_overflow 'fallback' a
  `lax.cond` runs the every-position path for that batch (metric 'head_gathered' 0), with
  'error' no fallback is compiled and the loss and gradients turn NaN (the trainer checks every
  host batch first, `ExecutionPlan.check_host_batch`);
* pruned last blocks: the student's last block (`model.apply_last_block`) computes keys and
  values everywhere but queries, attention output, LayerNorms and FFN at the K slots only; the
  teacher's likewise for per-position targets (`targets.teacher_targets_fn`). The student's
  dropout streams differ from the unpruned path (the trunk and the last block take split keys),
  not their distribution;
* token packing (`packing=PackingSpec`): the student, and the teacher for per-position targets,
  run on the real tokens only; a group of more real tokens than the capacity makes the loss
  and the gradients NaN.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp

from data2vec_jax.model.config import EncoderConfig
from data2vec_jax.model.encoder import apply_last_block, gather_positions, take_positions
from data2vec_jax.objective import data2vec2
from data2vec_jax.objective import loss as objective_lib
from data2vec_jax.objective.execution import ExecutionPlan
from data2vec_jax.objective.loss import ObjectiveConfig, PretrainingModel
from data2vec_jax.objective.targets import teacher_targets_fn
from data2vec_jax.speed import packing as packing_lib


def loss_fn(
  params: Any,
  teacher_encoder_params: Any,
  batch: Mapping[str, jax.Array],
  dropout_rng: jax.Array | None,
  *,
  config: EncoderConfig,
  objective: ObjectiveConfig,
  plan: ExecutionPlan,
  packing: packing_lib.PackingSpec | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """`objective.loss_fn` (same arguments and outputs) run as `plan` says, packed by `packing`.

  aux adds 'head_gathered': 1 if the head ran on gathered positions, 0 if on every position.
  data2vec 2.0 (`objective/data2vec2.py`) runs its own loss, on the kept tokens when
  `plan.drop_masked_tokens`.
  """
  if objective.kind == "data2vec2":
    if packing is not None:
      raise ValueError("data2vec2 runs unpacked (its student input is already dense)")
    loss_sum, aux = data2vec2.loss_fn(
      params,
      teacher_encoder_params,
      batch,
      dropout_rng,
      config=config,
      objective=objective,
      drop_masked=plan.drop_masked_tokens,
    )
    return loss_sum, {**aux, "head_gathered": jnp.float32(0)}
  if not plan.gathers_head_positions and packing is None:
    # Nothing to speed up: the reference path itself.
    loss_sum, aux = objective_lib.loss_fn(
      params, teacher_encoder_params, batch, dropout_rng, config=config, objective=objective
    )
    return loss_sum, {**aux, "head_gathered": jnp.float32(0)}
  deterministic = dropout_rng is None
  model = PretrainingModel(config, objective)
  variables = {"params": params}
  k = plan.head_positions_per_row
  rngs = lambda key: {} if deterministic else {"dropout": key}
  attend = batch["source"] != config.pad_id
  layout = None if packing is None else packing_lib.make_layout(attend, packing)
  overflows = [] if layout is None else [layout.overflow]

  if plan.prune_student_last_block:
    trunk_rng, last_rng = (None, None) if deterministic else jax.random.split(dropout_rng)
    trunk = model.apply(
      variables,
      batch["source"],
      deterministic=deterministic,
      skip_last_block=True,
      rngs=rngs(trunk_rng),
      layout=layout,
      method=PretrainingModel.encode,
    ).last_hidden_state  # [B, T, D] | [G, C, D]

    def student_features(index):
      """[B, K, D] last-block output at index [B, K], or [B, T, D] for index None."""
      out = apply_last_block(
        config,
        params["encoder"],
        trunk,
        attend,
        index,
        deterministic=deterministic,
        dropout_rng=last_rng,
        layout=layout,
      )[0]
      return packing_lib.rows(out, layout) if index is None else out
  else:
    features = model.apply(
      variables,
      batch["source"],
      deterministic=deterministic,
      rngs=rngs(dropout_rng),
      layout=layout,
      method=PretrainingModel.encode,
    ).last_hidden_state  # [B, T, D] | [G, C, D]

    def student_features(index):
      if index is None:
        return packing_lib.rows(features, layout)
      return gather_positions(features, index, layout)

  positions = objective_lib.loss_positions(batch, config=config, objective=objective)
  num_masked = jnp.sum(positions.astype(jnp.float32))

  targets_at = lambda index: None  # the MLM head's targets are the tokens
  if objective.kind == "data2vec":
    if teacher_encoder_params is None:
      raise ValueError("the data2vec objective needs teacher_encoder_params")
    t_tokens = objective_lib.teacher_tokens(batch, config=config, objective=objective)
    teacher_layout = None
    if layout is not None and plan.pack_teacher:
      # Its own layout (same capacity): its input's real tokens are the student's, or fewer.
      teacher_layout = packing_lib.make_layout(t_tokens != config.pad_id, packing)
      overflows.append(teacher_layout.overflow)
    targets_at = teacher_targets_fn(
      teacher_encoder_params,
      t_tokens,
      config=config,
      objective=objective,
      prune_last_block=plan.prune_teacher_last_block,
      layout=teacher_layout,
    )

  def head_and_loss(features, y, targets, positions):
    """The head and the loss on [B, N] positions (N = T, or K gathered slots)."""
    head_out = model.apply(variables, features, method=PretrainingModel.predict)
    return objective_lib.scored(head_out, y, targets, positions, objective)

  def every_position(targets, positions):
    return head_and_loss(student_features(None), targets_at(None), targets, positions)

  operands = (batch["target"], positions)
  if not plan.gathers_head_positions:
    loss_sum, aux = every_position(*operands)
    gathered = jnp.float32(0)
  else:
    fits = jnp.max(jnp.sum(positions, axis=1)) <= k
    index = first_positions(positions, k)  # [B, K]

    def gathered_branch(targets, positions):
      return head_and_loss(
        student_features(index),
        targets_at(index),
        take_positions(targets, index),
        take_positions(positions, index),
      )

    if plan.head_overflow == "fallback":
      loss_sum, aux = jax.lax.cond(fits, gathered_branch, every_position, *operands)
    else:
      # No fallback compiled: a row beyond K makes the loss and every gradient NaN (the factor
      # multiplies, so the NaN reaches the gradients too) rather than scoring only K positions.
      loss_sum, aux = gathered_branch(*operands)
      loss_sum = loss_sum * jnp.where(fits, jnp.float32(1), jnp.float32(jnp.nan))
    gathered = fits.astype(jnp.float32)
  if overflows:
    # Tokens beyond a group's capacity were not packed: loud, like a row beyond K above.
    overflow = jnp.any(jnp.stack(overflows))
    loss_sum = loss_sum * jnp.where(overflow, jnp.float32(jnp.nan), jnp.float32(1))
  aux = {"num_masked": num_masked, "loss_sum": loss_sum, **aux, "head_gathered": gathered}
  return loss_sum, aux


def first_positions(positions: jax.Array, k: int) -> jax.Array:
  """[B, T] bool -> [B, K] int32: each row's True positions in order, then its False ones."""
  length = positions.shape[1]
  t = jnp.arange(length, dtype=jnp.int32)
  # top_k takes the largest scores: True positions score above every False one, and within
  # each group an earlier position scores higher.
  score = jnp.where(positions, 2 * length - t, length - t)
  return jax.lax.top_k(score, k)[1].astype(jnp.int32)

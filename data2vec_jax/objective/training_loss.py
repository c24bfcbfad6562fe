"""The trainer's loss for every objective (`training_loss`): `objective.loss_fn`'s value (or
data2vec 2.0's, `objective/data2vec2.py`) computed as an `ExecutionPlan` says. The validation
step computes the same. It reads top-down: `student_features` (the student's encoder),
`teacher_targets_at` (the teacher's targets), `score` (the head and the loss, on every position
or on gathered slots); `LossParts` carries the first two and the head to the scoring.

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

import functools
from typing import Any, Callable, Mapping, NamedTuple

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


class LossParts(NamedTuple):
  """What the head and the loss read at a set of positions (index [B, K] int32, or None: all).

  student: index -> the student's last-block output [B, K, D] at index, or [B, T, D].
  targets_at: index -> the teacher's float32 targets there, or None (the MLM head's targets
    are the tokens).
  head: features [B, N, D] -> head output [B, N, D] (data2vec) or float32 logits [B, N, V].
  """

  student: Callable[[jax.Array | None], jax.Array]
  targets_at: Callable[[jax.Array | None], jax.Array | None]
  head: Callable[[jax.Array], jax.Array]


def training_loss(
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
  student, layout = student_features(
    params, batch, dropout_rng, config=config, objective=objective, plan=plan, packing=packing
  )
  overflows = [] if layout is None else [layout.overflow]
  positions = objective_lib.loss_positions(batch, config=config, objective=objective)
  num_masked = jnp.sum(positions.astype(jnp.float32))
  targets_at, teacher_overflow = teacher_targets_at(
    teacher_encoder_params, batch, config=config, objective=objective, plan=plan, packing=packing
  )
  overflows += [] if teacher_overflow is None else [teacher_overflow]
  model = PretrainingModel(config, objective)
  head = functools.partial(model.apply, {"params": params}, method=PretrainingModel.predict)
  parts = LossParts(student=student, targets_at=targets_at, head=head)
  loss_sum, aux, gathered = score(parts, batch["target"], positions, objective=objective, plan=plan)
  if overflows:
    # Tokens beyond a group's capacity were not packed: loud, like a row beyond K in `score`.
    overflow = jnp.any(jnp.stack(overflows))
    loss_sum = loss_sum * jnp.where(overflow, jnp.float32(jnp.nan), jnp.float32(1))
  aux = {"num_masked": num_masked, "loss_sum": loss_sum, **aux, "head_gathered": gathered}
  return loss_sum, aux


def student_features(
  params: Any,
  batch: Mapping[str, jax.Array],
  dropout_rng: jax.Array | None,
  *,
  config: EncoderConfig,
  objective: ObjectiveConfig,
  plan: ExecutionPlan,
  packing: packing_lib.PackingSpec | None,
) -> tuple[Callable[[jax.Array | None], jax.Array], packing_lib.TokenLayout | None]:
  """Runs the student's encoder (all but its last block when the plan prunes it) on
  batch['source'] [B, T], packed by `packing`; returns `LossParts.student` and the packing
  layout of the real tokens (None unpacked)."""
  attend = batch["source"] != config.pad_id
  layout = None if packing is None else packing_lib.make_layout(attend, packing)
  deterministic = dropout_rng is None
  model = PretrainingModel(config, objective)
  variables = {"params": params}
  if not plan.prune_student_last_block:
    features = model.apply(
      variables,
      batch["source"],
      deterministic=deterministic,
      rngs=_dropout_rngs(dropout_rng),
      layout=layout,
      method=PretrainingModel.encode,
    ).last_hidden_state  # [B, T, D] | [G, C, D]
    return functools.partial(_encoder_output_at, features=features, layout=layout), layout
  trunk_rng, last_rng = (None, None) if deterministic else jax.random.split(dropout_rng)
  trunk = model.apply(
    variables,
    batch["source"],
    deterministic=deterministic,
    skip_last_block=True,
    rngs=_dropout_rngs(trunk_rng),
    layout=layout,
    method=PretrainingModel.encode,
  ).last_hidden_state  # [B, T, D] | [G, C, D]
  return functools.partial(
    _last_block_at,
    trunk=trunk,
    encoder_params=params["encoder"],
    attend=attend,
    config=config,
    dropout_rng=last_rng,
    layout=layout,
  ), layout


def _dropout_rngs(key: jax.Array | None) -> dict[str, jax.Array]:
  return {} if key is None else {"dropout": key}


def _encoder_output_at(
  index: jax.Array | None, *, features: jax.Array, layout: packing_lib.TokenLayout | None
) -> jax.Array:
  """The encoder's output [B, T, D] | [G, C, D] at index [B, K] -> [B, K, D], or as rows
  [B, T, D] for index None."""
  if index is None:
    return packing_lib.rows(features, layout)
  return gather_positions(features, index, layout)


def _last_block_at(
  index: jax.Array | None,
  *,
  trunk: jax.Array,
  encoder_params: Any,
  attend: jax.Array,
  config: EncoderConfig,
  dropout_rng: jax.Array | None,
  layout: packing_lib.TokenLayout | None,
) -> jax.Array:
  """[B, K, D] last-block output at index [B, K], or [B, T, D] for index None."""
  out = apply_last_block(
    config,
    encoder_params,
    trunk,
    attend,
    index,
    deterministic=dropout_rng is None,
    dropout_rng=dropout_rng,
    layout=layout,
  )[0]
  return packing_lib.rows(out, layout) if index is None else out


def teacher_targets_at(
  teacher_encoder_params: Any,
  batch: Mapping[str, jax.Array],
  *,
  config: EncoderConfig,
  objective: ObjectiveConfig,
  plan: ExecutionPlan,
  packing: packing_lib.PackingSpec | None,
) -> tuple[Callable[[jax.Array | None], jax.Array | None], jax.Array | None]:
  """`LossParts.targets_at` and, when the teacher runs packed, its layout's overflow (bool)."""
  if objective.kind != "data2vec":
    return _no_targets, None
  if teacher_encoder_params is None:
    raise ValueError("the data2vec objective needs teacher_encoder_params")
  t_tokens = objective_lib.teacher_tokens(batch, config=config, objective=objective)
  teacher_layout = None
  if packing is not None and plan.pack_teacher:
    # Its own layout (same capacity): its input's real tokens are the student's, or fewer.
    teacher_layout = packing_lib.make_layout(t_tokens != config.pad_id, packing)
  targets_at = teacher_targets_fn(
    teacher_encoder_params,
    t_tokens,
    config=config,
    objective=objective,
    prune_last_block=plan.prune_teacher_last_block,
    layout=teacher_layout,
  )
  return targets_at, None if teacher_layout is None else teacher_layout.overflow


def _no_targets(index: jax.Array | None) -> None:
  """The MLM head's targets are the tokens."""
  return None


def score(
  parts: LossParts,
  targets: jax.Array,
  positions: jax.Array,
  *,
  objective: ObjectiveConfig,
  plan: ExecutionPlan,
) -> tuple[jax.Array, dict[str, jax.Array], jax.Array]:
  """The head and the loss on every position or on K gathered slots per row, as `plan` says.

  targets: [B, T] int tokens; positions: [B, T] bool loss positions. Returns (loss_sum, aux,
  head_gathered: float32 1 if the head ran on the gathered slots, else 0).
  """
  every_position = functools.partial(_score_at, None, parts=parts, objective=objective)
  if not plan.gathers_head_positions:
    loss_sum, aux = every_position(targets, positions)
    return loss_sum, aux, jnp.float32(0)
  k = plan.head_positions_per_row
  fits = jnp.max(jnp.sum(positions, axis=1)) <= k
  index = first_positions(positions, k)  # [B, K]
  gathered = functools.partial(_score_at, index, parts=parts, objective=objective)
  if plan.head_overflow == "fallback":
    loss_sum, aux = jax.lax.cond(fits, gathered, every_position, targets, positions)
  else:
    # No fallback compiled: a row beyond K makes the loss and every gradient NaN (the factor
    # multiplies, so the NaN reaches the gradients too) rather than scoring only K positions.
    loss_sum, aux = gathered(targets, positions)
    loss_sum = loss_sum * jnp.where(fits, jnp.float32(1), jnp.float32(jnp.nan))
  return loss_sum, aux, fits.astype(jnp.float32)


def _score_at(
  index: jax.Array | None,
  targets: jax.Array,
  positions: jax.Array,
  *,
  parts: LossParts,
  objective: ObjectiveConfig,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The head and the loss at index [B, K] (N = K gathered slots) or every position (N = T)."""
  features = parts.student(index)
  y = parts.targets_at(index)
  if index is not None:
    targets, positions = take_positions(targets, index), take_positions(positions, index)
  head_out = parts.head(features)
  return objective_lib.scored(head_out, y, targets, positions, objective)


def first_positions(positions: jax.Array, k: int) -> jax.Array:
  """[B, T] bool -> [B, K] int32: each row's True positions in order, then its False ones."""
  length = positions.shape[1]
  t = jnp.arange(length, dtype=jnp.int32)
  # top_k takes the largest scores: True positions score above every False one, and within
  # each group an earlier position scores higher.
  score = jnp.where(positions, 2 * length - t, length - t)
  return jax.lax.top_k(score, k)[1].astype(jnp.int32)

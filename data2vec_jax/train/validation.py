"""The held-out loss during pretraining (fairseq's `valid_subset`): `make_eval_step`, `evaluate`.

What is computed: exactly the training step's loss (`training_loss.training_loss`, which is
`objective.loss_fn` run as the run's `ExecutionPlan` says) without gradient or update, on the
fixed held-out batches of `data.training_input.ValidationData`:

* the student runs deterministically (dropout off);
* the targets come from the CURRENT teacher, `ema.teacher_params(state.ema_params, student
  embeddings)`: the teacher the next training step would use;
* the masks were drawn once on the host from `validation.seed` (`training_input
  .validation_batches`), so every evaluation, and every run with the same masking config and
  held-out data, scores the same positions: values are comparable across steps and runs;
* the batches run unpacked (one compiled shape per padded length; packing would change only
  the speed) and, with `execution.micro_batches` k > 1, in k slices like the training step's
  micro-batches, so no more rows are on the devices at once than in training.

Normalisation: the objective returns per-batch SUMS (`loss_sum` over loss positions and
feature dims, `num_masked` loss positions), like fairseq's criterion. The held-out loss is
`sum(loss_sum) / sum(num_masked)` over all batches: the mean over every masked position of the
split, as fairseq's validation aggregates its logging outputs, not a mean of per-batch means
(which would weigh a short last batch like a full one). target_var / pred_var (a std over one
(micro-)batch's loss positions) and MLM accuracy are averaged over (micro-)batches weighted by
their loss positions (for accuracy that is exactly the split's accuracy). masked_fraction =
loss positions / real tokens of the split.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from data2vec_jax.objective import ema as ema_lib
from data2vec_jax.objective.execution import ExecutionPlan
from data2vec_jax.objective.training_loss import training_loss
from data2vec_jax.runtime import sharding as sharding_lib
from data2vec_jax.train import step as train_step_lib
from data2vec_jax.train.state import Recipe, TrainState

PREFIX = "valid/"  # metric names in metrics.jsonl / TensorBoard: valid/loss, valid/target_var, ...
# Averaged over (micro-)batches weighted by their loss positions; the rest of aux is summed.
_WEIGHTED = ("target_var", "pred_var", "accuracy")


def eval_step(
  state: TrainState, batch: Mapping[str, jax.Array], *, recipe: Recipe, plan: ExecutionPlan
) -> dict[str, jax.Array]:
  """The training loss of one held-out global batch, without gradients: per-slice sums.

  batch: {'source','target': int32 [B, T], 'selected': bool [B, T]} (global B).
  Returns float32 [k] arrays (k = plan.micro_batches slices of the batch): 'loss_sum',
  'num_masked', 'num_tokens' (real tokens), and 'target_var' / 'pred_var' (data2vec) or
  'accuracy' (mlm) of each slice. `summarize` normalises on the host.
  """
  teacher = None
  if recipe.uses_teacher:
    teacher = ema_lib.teacher_params(state.ema_params, state.params["encoder"], recipe.ema)

  def one(micro_batch):
    _, aux = training_loss(
      state.params,
      teacher,
      micro_batch,
      None,  # no dropout key: the student runs deterministically
      config=recipe.model,
      objective=recipe.objective,
      plan=plan,
      packing=None,
    )
    out = {k: v.astype(jnp.float32) for k, v in aux.items() if k != "head_gathered"}
    out["num_tokens"] = jnp.sum(micro_batch["target"] != recipe.model.pad_id).astype(jnp.float32)
    return out

  k = plan.micro_batches
  if k == 1:
    return jax.tree_util.tree_map(lambda x: x[None], one(batch))
  # The training step's split (rows j, k+j, ...: no rows move between devices), one slice at a
  # time, so the held-out batch needs no more activation memory than a training micro-batch.
  return jax.lax.map(one, train_step_lib._split_micro_batches(batch, k))


def make_eval_step(
  recipe: Recipe, plan: ExecutionPlan, mesh: Mesh, state_shardings: TrainState
) -> Callable[[TrainState, Mapping[str, jax.Array]], dict[str, jax.Array]]:
  """`eval_step` jitted on `mesh`: the state as the training step holds it (not donated: the
  step that follows takes it), batches sharded like the training batches, metrics replicated
  (every process can read them). Call inside `with sharding.activate(mesh):`."""
  return jax.jit(
    functools.partial(eval_step, recipe=recipe, plan=plan),
    in_shardings=(state_shardings, sharding_lib.batch_sharding(mesh)),
    out_shardings=NamedSharding(mesh, P()),
  )


def summarize(per_batch: Sequence[Mapping[str, Any]]) -> dict[str, float]:
  """Host-side normalisation of `eval_step` outputs (numpy or floats, each [k] or scalar).

  Returns {'loss', 'target_var', 'pred_var' | 'accuracy', 'masked_fraction', 'num_masked',
  'num_tokens'} as Python floats (see the module docstring for each normalisation).
  """
  if not per_batch:
    raise ValueError("no held-out batches to summarize")
  # float64 on the host: the sums over many batches add no rounding of their own.
  column = lambda key: np.concatenate(  # noqa: E731
    [np.asarray(b[key], np.float64).reshape(-1) for b in per_batch]
  )
  counts = column("num_masked")
  count = float(counts.sum())
  tokens = float(column("num_tokens").sum())
  out = {"loss": float(column("loss_sum").sum()) / max(count, 1.0)}
  for key in _WEIGHTED:
    if key in per_batch[0]:
      out[key] = float(np.sum(column(key) * counts)) / max(count, 1.0)
  out.update(masked_fraction=count / max(tokens, 1.0), num_masked=count, num_tokens=tokens)
  return out


def evaluate(
  eval_fn: Callable[[TrainState, Mapping[str, jax.Array]], dict[str, jax.Array]],
  state: TrainState,
  batches: Sequence[Mapping[str, jax.Array]],
) -> dict[str, float]:
  """The held-out metrics of `state` on `batches` (device batches, sharded as `eval_fn` takes
  them), `summarize`d. One transfer to the host at the end: the batches run back to back."""
  outputs = [eval_fn(state, batch) for batch in batches]
  return summarize(jax.device_get(outputs))


def format_validation(metrics: Mapping[str, float]) -> str:
  """The progress line's part: 'valid loss 1.2345 | valid target_var 0.123 | ...'."""
  parts = []
  for key, fmt in (
    ("loss", ".4f"),
    ("target_var", ".3f"),
    ("pred_var", ".3f"),
    ("accuracy", ".3f"),
  ):
    if key in metrics:
      parts.append(f"valid {key} {metrics[key]:{fmt}}")
  return " | ".join(parts)

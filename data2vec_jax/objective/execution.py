"""How a training step runs, apart from what it computes: the `execution` config section and
the `ExecutionPlan` resolved from it.

The paper's loss (`objective.loss_fn`) scores every position of unpacked rows with every block
run everywhere. Each technique here gives the same loss and gradients (float rounding aside;
tests/objective/test_execution.py proves each against that reference) for less work:

* gathered head positions: the head and the loss run on each row's loss positions only,
  gathered into K static slots (fairseq's `x[masked_indices]` in static shapes);
* pruned last blocks: with gathered heads, the student's last block (and the teacher's, when
  the targets are per position) runs only at those slots;
* token packing (`data2vec_jax/speed/packing.py`): the encoders run on the real tokens only, in one of a few
  static capacities per sequence length;
* micro-batches, rematerialisation, scan unrolling and the attention kernel;
* data2vec 2.0 (`objective/data2vec2.py`): the student's blocks on each row's kept tokens only
  (`drop_masked_tokens`, a gather into the static K = int(T * (1 - mask_prob)) slots). Its
  student input is then dense, so gathered heads and packing do not apply to it.

`ExecutionPlan` owns every such decision for one run (made once, from the execution config,
the objective, the masking and the sequence length): the trainer asks it which host checks to
run, which packed shape a batch gets and how many FLOPs a token really costs.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np

from data2vec_jax import strict_config
from data2vec_jax.model import flops as flops_lib
from data2vec_jax.model.config import EncoderConfig
from data2vec_jax.objective.data2vec2_config import make_decoder
from data2vec_jax.objective.loss import ObjectiveConfig, loss_positions
from data2vec_jax.objective.masking import (
  MaskingConfig,
  max_selected_per_row,
  selection_bound_is_exact,
)
from data2vec_jax.objective.targets import targets_are_per_position
from data2vec_jax.speed import packing as packing_lib

HEAD_OVERFLOWS = ("auto", "fallback", "error")


@dataclasses.dataclass(frozen=True)
class ExecutionConfig(strict_config.StrictConfig):
  """The `execution` config section: speed only, never the value of the loss.

  Attributes:
    head_positions: slots K per row for the head and the loss: 'auto' (the masker's per-row
      bound, `masking.max_selected_per_row`), 'all' (every position, no gathering) or an int.
    prune_last_block: with gathered heads, run the student's last block (and the teacher's,
      for per-position targets) at the gathered slots only.
    head_overflow: a row with more than K loss positions either runs the every-position path
      behind a `lax.cond` ('fallback', exact) or is refused ('error': no fallback compiled, each
      host batch checked before dispatch; NaN loss should one still arrive). 'auto': 'error'
      exactly when K is the masker's guaranteed bound, else 'fallback'.
    pack_tokens: run the encoders on the real tokens only (`data2vec_jax/speed/packing.py`).
    pack_buckets: static packed capacities per sequence length (each compiles once).
    micro_batches: gradient accumulation steps per update (same update as one large batch).
    scan_unroll: blocks per iteration of the scan over the blocks: 'all' (fully unrolled:
      fastest step, longest compile) or an int (1 = one scanned block, fastest compile).
    remat_policy: rematerialisation of each block in the backward pass (`EncoderConfig`).
    attention_impl: 'auto', 'xla', 'cudnn' or 'reference' (`EncoderConfig`).
    drop_masked_tokens: data2vec 2.0 only: the student's blocks run on the kept tokens only
      (fairseq's); False runs every position with the masked keys hidden (the plain form).
  """

  head_positions: Any = "auto"
  prune_last_block: bool = True
  head_overflow: str = "auto"
  pack_tokens: bool = True
  pack_buckets: int = 16
  micro_batches: int = 1
  scan_unroll: Any = "all"
  remat_policy: str = "none"
  attention_impl: str = "auto"
  drop_masked_tokens: bool = True

  def __post_init__(self) -> None:
    if not (
      self.head_positions in ("auto", "all")
      or _is_int(self.head_positions)
      and self.head_positions >= 1
    ):
      raise ValueError(
        f"execution.head_positions must be 'auto', 'all' or an int >= 1, got "
        f"{self.head_positions!r}"
      )
    if self.head_overflow not in HEAD_OVERFLOWS:
      raise ValueError(
        f"execution.head_overflow={self.head_overflow!r}; expected one of {HEAD_OVERFLOWS}"
      )
    if not (self.scan_unroll == "all" or _is_int(self.scan_unroll) and self.scan_unroll >= 1):
      raise ValueError(
        f"execution.scan_unroll must be 'all' or an int >= 1, got {self.scan_unroll!r}"
      )
    for name in ("pack_buckets", "micro_batches"):
      if getattr(self, name) < 1:
        raise ValueError(f"execution.{name} must be >= 1, got {getattr(self, name)}")

  @classmethod
  def from_dict(cls, values: Mapping[str, Any]) -> "ExecutionConfig":
    """From the config section; a command-line override of a str field arrives as a str, so
    '64' means the int 64 for the fields that take 'auto' | 'all' | an int."""
    values = dict(values)
    for name in ("head_positions", "scan_unroll"):
      if isinstance(values.get(name), str) and values[name].isdigit():
        values[name] = int(values[name])
    return super().from_dict(values)

  def encoder_config(self, model: EncoderConfig) -> EncoderConfig:
    """`model` with this section's encoder knobs (kernel, remat, unrolling) applied."""
    unroll = model.num_layers if self.scan_unroll == "all" else int(self.scan_unroll)
    return dataclasses.replace(
      model, attention_impl=self.attention_impl, remat_policy=self.remat_policy, scan_unroll=unroll
    )


def _is_int(value: Any) -> bool:
  return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class ExecutionPlan:
  """Every speed decision of one run, resolved (hashable: a static argument of the step).

  Attributes:
    seq_len: T, positions per row.
    head_positions_per_row: K gathered slots per row; 0 = the head runs on every position.
    head_overflow: 'fallback' or 'error' (see `ExecutionConfig`).
    prune_student_last_block / prune_teacher_last_block: the last block runs at the K slots.
    pack_tokens / pack_buckets: token packing and its capacities per sequence length.
    pack_teacher: a packed step packs the teacher too (per-position targets only: instance and
      batch norm average over the pads).
    micro_batches: gradient accumulation steps per update.
    drop_masked_tokens: data2vec 2.0's student runs on the kept tokens only.
  """

  seq_len: int
  head_positions_per_row: int = 0
  head_overflow: str = "fallback"
  prune_student_last_block: bool = False
  prune_teacher_last_block: bool = False
  pack_tokens: bool = False
  pack_buckets: int = 16
  pack_teacher: bool = False
  micro_batches: int = 1
  drop_masked_tokens: bool = True

  @classmethod
  def for_objective(
    cls,
    objective: ObjectiveConfig,
    seq_len: int,
    *,
    head_positions_per_row: int = 0,
    prune_last_block: bool = True,
    head_overflow: str = "fallback",
    pack_tokens: bool = False,
    pack_buckets: int = 16,
    micro_batches: int = 1,
    drop_masked_tokens: bool = True,
  ) -> "ExecutionPlan":
    """A plan with K resolved by the caller; pruning and teacher packing follow from the
    objective (the teacher's last block and packing need per-position targets)."""
    if head_overflow not in ("fallback", "error"):
      raise ValueError(f"head_overflow={head_overflow!r}; expected 'fallback' or 'error'")
    if head_positions_per_row < 0:
      raise ValueError(
        f"head_positions_per_row must be >= 0 (0 = every position), got {head_positions_per_row}"
      )
    if objective.kind == "data2vec2":
      # Every row keeps the same K tokens: the student input is dense already, and the
      # instance-normalised targets and the decoder need every position.
      return cls(
        seq_len=seq_len, micro_batches=micro_batches, drop_masked_tokens=drop_masked_tokens
      )
    per_position = objective.kind == "data2vec" and targets_are_per_position(objective)
    prune = prune_last_block and 0 < head_positions_per_row < seq_len
    return cls(
      seq_len=seq_len,
      head_positions_per_row=head_positions_per_row,
      head_overflow=head_overflow,
      prune_student_last_block=prune,
      prune_teacher_last_block=prune and per_position,
      pack_tokens=pack_tokens,
      pack_buckets=pack_buckets,
      pack_teacher=per_position,
      micro_batches=micro_batches,
    )

  @property
  def gathers_head_positions(self) -> bool:
    """Whether the head runs on K < T gathered slots per row."""
    return 0 < self.head_positions_per_row < self.seq_len

  def check_host_batch(
    self, batch: Mapping[str, np.ndarray], *, config: EncoderConfig, objective: ObjectiveConfig
  ) -> None:
    """Raises ValueError if a row of this host batch has more loss positions than K, where the
    step compiles no fallback for that (`head_overflow='error'`). batch: numpy 'source' /
    'target' [B, T] int, 'selected' [B, T] bool."""
    if self.head_overflow != "error" or not self.gathers_head_positions:
      return
    k = self.head_positions_per_row
    counts = np.sum(np.asarray(loss_positions(batch, config=config, objective=objective)), axis=1)
    over = np.flatnonzero(counts > k)
    if over.size:
      row = int(over[0])
      raise ValueError(
        f"batch row {row} has {int(counts[row])} loss positions ({over.size} rows over the "
        f"limit), more than the {k} head slots per row, and head_overflow='error' compiles "
        f"no fallback for that. Raise execution.head_positions to the masker's bound "
        f"(masking.max_selected_per_row), or set execution.head_overflow='fallback'."
      )

  def packing_for_batch(
    self,
    host_batch: Mapping[str, np.ndarray],
    global_row_tokens: np.ndarray,
    *,
    pad_id: int,
    groups: int,
    process_index: int = 0,
  ) -> packing_lib.PackingSpec | None:
    """The packed capacity of a step (None: unpacked), chosen from the global batch's tokens.

    Every process passes the pipeline's same `global_row_tokens` [GB], so all choose the same
    static shape without communicating (a per-step collective would stall the host until the
    previous step finished). This process's rows are checked against their slice of it: a
    capacity below a group's real tokens would turn the loss NaN.
    """
    if not self.pack_tokens:
      return None
    local = real_tokens(host_batch, pad_id).sum(axis=1)
    lo = process_index * len(local)
    if not np.array_equal(local, global_row_tokens[lo : lo + len(local)]):
      raise ValueError(
        f"the real tokens per row of this process's batch ({local.tolist()}) disagree with "
        f"the input pipeline's global row tokens for rows {lo}..{lo + len(local) - 1} "
        f"({global_row_tokens[lo : lo + len(local)].tolist()})"
      )
    return packing_lib.spec_for_batch(
      global_row_tokens,
      seq_len=host_batch["source"].shape[1],
      groups=groups,
      micro_batches=self.micro_batches,
      buckets=self.pack_buckets,
    )

  def flops_per_token(
    self, model: EncoderConfig, objective: ObjectiveConfig, *, masked_fraction: float
  ) -> float:
    """Model FLOPs per real token of the step this plan executes (pruned blocks not credited)."""
    if objective.kind == "data2vec2":
      return flops_lib.data2vec2_train_flops_per_token(
        model,
        self.seq_len,
        clone_batch=objective.data2vec2.clone_batch,
        mask_prob=objective.data2vec2.mask_prob,
        decoder=make_decoder(model, objective.data2vec2),
        dropped_masked=self.drop_masked_tokens,
      )
    return flops_lib.train_flops_per_token(
      model,
      self.seq_len,
      kind=objective.kind,
      head_layers=objective.head_layers,
      masked_fraction=masked_fraction,
      pruned_last_block=self.prune_student_last_block,
      pruned_teacher_last_block=self.prune_teacher_last_block,
    )


def real_tokens(host_batch: Mapping[str, np.ndarray], pad_id: int) -> np.ndarray:
  """[B, T] bool positions a packed step must keep: real tokens of the student's or the
  teacher's input."""
  return (host_batch["source"] != pad_id) | (host_batch["target"] != pad_id)


def make_plan(
  execution: ExecutionConfig, objective: ObjectiveConfig, masking: MaskingConfig, seq_len: int
) -> ExecutionPlan:
  """Resolves the execution config for this objective, masking and sequence length.

  Raises ValueError when head_overflow='error' is asked for a K the masker may exceed.
  """
  if objective.kind == "data2vec2":
    return ExecutionPlan.for_objective(
      objective,
      seq_len,
      micro_batches=execution.micro_batches,
      drop_masked_tokens=execution.drop_masked_tokens,
    )
  bound = max_selected_per_row(masking, seq_len)
  if execution.head_positions == "auto":
    k = bound
  elif execution.head_positions == "all":
    k = 0
  else:
    k = int(execution.head_positions)
  gather = 0 < k < seq_len
  # No fallback is compiled only where the masker can never exceed K; each host batch is still
  # checked before dispatch (`check_host_batch`).
  guaranteed = selection_bound_is_exact(masking) and k >= bound
  overflow = execution.head_overflow
  if overflow == "auto":
    overflow = "error" if guaranteed else "fallback"
  elif overflow == "error" and gather and not guaranteed:
    raise ValueError(
      f"execution.head_overflow='error' needs head_positions >= the masker's exact bound "
      f"({bound} for {seq_len}-token rows, and mask_stdev == 0); got head_positions={k}, "
      f"mask_stdev={masking.mask_stdev}. Use head_overflow='fallback' (or 'auto')."
    )
  return ExecutionPlan.for_objective(
    objective,
    seq_len,
    head_positions_per_row=k,
    prune_last_block=execution.prune_last_block,
    head_overflow=overflow,
    pack_tokens=execution.pack_tokens,
    pack_buckets=execution.pack_buckets,
    micro_batches=execution.micro_batches,
  )

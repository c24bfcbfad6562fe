"""Token packing: the encoder's per-token work on the real tokens only, in static shapes.

A padded batch [B, T] spends the projections, FFNs, LayerNorms and dropout of every block on its
pads too, although no loss ever reads a pad's output and no real token reads a pad (pads are
masked out as keys). Packing moves each group of rows' real tokens, in order, into C static
slots: the per-token work runs on [G, C, ...] instead of [B, T, ...], and only attention, which
needs the rows, unpacks its q/k/v to [B, T, ...] and packs its output again (two gathers per
block, forward and backward: ~1% of a block's FLOPs in memory traffic).

Groups: G groups of B/G consecutive rows each. Use one group per data-parallel shard (the batch
is split over devices in that order), so packing never moves a token between devices.

Capacity: C is static (one compile per value), and chosen on the host from the batch
(`spec_for_batch`, rounded up to a multiple so that only a few values occur). A group with more
real tokens than C cannot be packed: `make_layout` flags it (`TokenLayout.overflow`) and the loss
then turns NaN (`objective.loss_fn`): never a loss over a subset of the tokens.

Numerics: a real token's values are exactly the padded encoder's (same operations on the same
numbers; only matmul blocking may differ in the last bit), gradients likewise. Pads' outputs are
not computed: outputs unpacked to [B, T] hold zeros there. So packing applies only where nothing
reads a pad's output: the student always (the loss reads real positions), the teacher only for
per-position targets (instance and batch norm average over pads, docs/reference/data2vec_text_reference.md §1.5). Dropout draws
its bits in the packed shape, so the streams differ from the padded path's, not their law.

`pack` and `unpack` are each other's transposes and both are gathers (custom VJPs), so neither
direction needs a scatter.
"""

from __future__ import annotations

import dataclasses
import math

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class PackingSpec:
  """Static packing shape (hashable: part of a jitted step's static arguments).

  Attributes:
    groups: G, row groups (one per data-parallel shard); must divide the (micro-)batch rows.
    capacity: C, slots per group: at least the most real tokens any group holds.
  """

  groups: int
  capacity: int

  def __post_init__(self):
    if self.groups < 1 or self.capacity < 1:
      raise ValueError(f"PackingSpec needs groups >= 1 and capacity >= 1, got {self}")


@flax.struct.dataclass
class TokenLayout:
  """Where each real token of a [B, T] batch sits in the packed [G, C] slots.

  With N = (B / G) * T positions per group, position (r, t) of the group's r-th row is r*T + t.

  Attributes:
    slot_position: [G, C] int32 position each slot holds, in order; N (out of range: packs to
      zeros) for the slots left over after the group's last real token.
    position_slot: [G, N] int32 slot of each position; C (out of range: unpacks to zeros) at pads.
    overflow: [] bool, True when a group had more than C real tokens (some were not packed).
    length: T (static).
  """

  slot_position: jax.Array
  position_slot: jax.Array
  overflow: jax.Array
  length: int = flax.struct.field(pytree_node=False)

  @property
  def groups(self) -> int:
    return self.slot_position.shape[0]

  @property
  def capacity(self) -> int:
    return self.slot_position.shape[1]

  @property
  def rows(self) -> int:
    """B, the rows of the unpacked batch."""
    return self.groups * self.position_slot.shape[1] // self.length


def make_layout(keep: jax.Array, spec: PackingSpec) -> TokenLayout:
  """The layout that packs the True positions of `keep` (the real tokens).

  Args:
    keep: [B, T] bool, True at real tokens (`input_ids != pad_id`).
    spec: groups G (dividing B) and capacity C.
  """
  rows, length = keep.shape
  if rows % spec.groups:
    raise ValueError(
      f"cannot split {rows} rows into {spec.groups} packing groups "
      f"(PackingSpec.groups must divide the batch rows)"
    )
  per_group = (rows // spec.groups) * length
  keep = keep.reshape(spec.groups, per_group)
  rank = jnp.cumsum(keep, axis=1, dtype=jnp.int32) - 1  # slot of each real token
  position_slot = jnp.where(keep & (rank < spec.capacity), rank, spec.capacity)
  group = jnp.arange(spec.groups, dtype=jnp.int32)[:, None]
  positions = jnp.broadcast_to(jnp.arange(per_group, dtype=jnp.int32), keep.shape)
  # Each real token writes its own position into its slot (pads and overflow index C: dropped).
  slot_position = (
    jnp.full((spec.groups, spec.capacity), per_group, jnp.int32)
    .at[group, position_slot]
    .set(positions, mode="drop")
  )
  overflow = jnp.any(jnp.sum(keep, axis=1, dtype=jnp.int32) > spec.capacity)
  return TokenLayout(
    slot_position=slot_position, position_slot=position_slot, overflow=overflow, length=length
  )


def _gather(x: jax.Array, index: jax.Array, fill_value=0) -> jax.Array:
  """x: [G, M, ...], index: [G, S] -> [G, S, ...]; out-of-range indices give `fill_value`."""
  index = index.reshape(index.shape + (1,) * (x.ndim - 2))
  return jnp.take_along_axis(x, index, axis=1, mode="fill", fill_value=fill_value)


@jax.custom_vjp
def _gather_transposed_by(x: jax.Array, index: jax.Array, inverse: jax.Array) -> jax.Array:
  """`_gather(x, index)` whose VJP is `_gather(g, inverse)`.

  Exact for the two packing maps: `index` and `inverse` are then partial inverses (every real
  position is read by exactly one slot and vice versa; pads and left-over slots by none, and
  they get the fill's zero cotangent), so the transpose of one gather is the other -- no scatter.
  """
  return _gather(x, index)


def _gather_fwd(x, index, inverse):
  return _gather(x, index), inverse


def _gather_bwd(inverse, g):
  return _gather(g, inverse), None, None


_gather_transposed_by.defvjp(_gather_fwd, _gather_bwd)


def pack(x: jax.Array, layout: TokenLayout) -> jax.Array:
  """x: [B, T, ...] float -> [G, C, ...]: the real tokens in order, zeros in left-over slots."""
  _check_unpacked(x, layout)
  grouped = x.reshape((layout.groups, -1) + x.shape[2:])
  return _gather_transposed_by(grouped, layout.slot_position, layout.position_slot)


def unpack(y: jax.Array, layout: TokenLayout) -> jax.Array:
  """y: [G, C, ...] float -> [B, T, ...], zeros at pads."""
  _check_packed(y, layout)
  x = _gather_transposed_by(y, layout.position_slot, layout.slot_position)
  return x.reshape((layout.rows, layout.length) + y.shape[2:])


def rows(y: jax.Array, layout: TokenLayout | None) -> jax.Array:
  """[B, T, ...] view of an encoder array: `unpack(y)` when packed, y itself when `layout` is None."""
  return y if layout is None else unpack(y, layout)


def pack_ids(ids: jax.Array, layout: TokenLayout, fill_value: int) -> jax.Array:
  """ids: [B, T] int -> [G, C] int, `fill_value` (the pad id) in left-over slots. No gradient."""
  _check_unpacked(ids, layout)
  return _gather(ids.reshape(layout.groups, -1), layout.slot_position, fill_value)


def take(y: jax.Array, index: jax.Array, layout: TokenLayout) -> jax.Array:
  """The packed twin of `model.take_positions`: y [G, C, ...], index [B, K] int positions ->
  [B, K, ...], row b holding the token at (b, index[b]) (zeros where that is a pad)."""
  _check_packed(y, layout)
  rows, k = index.shape
  if rows != layout.rows:
    raise ValueError(f"index has {rows} rows, the packed batch {layout.rows}")
  per_group = rows // layout.groups
  row_start = (jnp.arange(per_group, dtype=jnp.int32) * layout.length)[None, :, None]
  flat = (index.reshape(layout.groups, per_group, k) + row_start).reshape(layout.groups, -1)
  slots = jnp.take_along_axis(layout.position_slot, flat, axis=1)
  return _gather(y, slots).reshape((rows, k) + y.shape[2:])


def _check_unpacked(x: jax.Array, layout: TokenLayout) -> None:
  if x.shape[:2] != (layout.rows, layout.length):
    raise ValueError(
      f"expected an unpacked array [B={layout.rows}, T={layout.length}, ...], got shape {x.shape}"
    )


def _check_packed(y: jax.Array, layout: TokenLayout) -> None:
  if y.shape[:2] != (layout.groups, layout.capacity):
    raise ValueError(
      f"expected a packed array [G={layout.groups}, C={layout.capacity}, ...], got shape {y.shape}"
    )


# ----------------------------------------------------------------------------------------------
# Host side: choosing the capacity of a batch


def group_token_counts(row_tokens: np.ndarray, groups: int, micro_batches: int = 1) -> np.ndarray:
  """Real tokens per packing group of each micro-batch, as the train step splits the batch.

  row_tokens: [B] int real tokens of each row of the global batch. Micro-batch j holds rows j,
  k+j, 2k+j, ... (the train step's interleaved split); each is cut into `groups` runs of
  consecutive rows. Returns int [micro_batches, groups].
  """
  row_tokens = np.asarray(row_tokens)
  if row_tokens.ndim != 1:
    raise ValueError(f"row_tokens must be [B] (real tokens per row), got shape {row_tokens.shape}")
  return _group_token_counts(row_tokens[None], groups, micro_batches)[0]


def _group_token_counts(row_tokens: np.ndarray, groups: int, micro_batches: int) -> np.ndarray:
  """`group_token_counts` of N batches: [N, B] -> [N, micro_batches, groups]."""
  n, rows = row_tokens.shape
  if rows % (micro_batches * groups):
    raise ValueError(
      f"{rows} rows do not split into {micro_batches} micro-batches of {groups} packing groups"
    )
  # Row r = i * k + j is row i of micro-batch j.
  micro = np.swapaxes(row_tokens.reshape(n, -1, micro_batches), 1, 2)  # [N, k, B/k]
  return micro.reshape(n, micro_batches, groups, -1).sum(axis=-1)


def spec_for_batch(
  row_tokens: np.ndarray, *, seq_len: int, groups: int, micro_batches: int, buckets: int
) -> PackingSpec | None:
  """The static packing of a global batch, or None when it would save nothing.

  row_tokens: [B] int real tokens of every row of the *global* batch (every process passes the
  same vector, so all choose the same capacity without talking to each other; the input
  pipeline computes it from its sizes array). seq_len: T, positions per row. groups: packing
  groups of each micro-batch (one per data shard). The capacity is the fullest group (over the
  micro-batches, split as the train step splits them) rounded up to a multiple of N / `buckets`
  (N = positions per group), so at most `buckets` values (and compiles) occur per sequence
  length. A batch whose fullest group needs every position runs unpacked (None).
  """
  row_tokens = np.asarray(row_tokens)
  if row_tokens.ndim != 1:
    raise ValueError(f"row_tokens must be [B] (real tokens per row), got shape {row_tokens.shape}")
  (spec,) = specs_for_batches(
    row_tokens[None],
    seq_len=seq_len,
    groups=groups,
    micro_batches=micro_batches,
    buckets=buckets,
  )
  return spec


def specs_for_batches(
  row_tokens: np.ndarray, *, seq_len: int, groups: int, micro_batches: int, buckets: int
) -> list[PackingSpec | None]:
  """`spec_for_batch` of N batches at once: row_tokens int [N, B] (every batch of length
  seq_len). Vectorised, so a run can list the shapes of its coming steps before it starts."""
  if buckets < 1:
    raise ValueError(f"buckets must be >= 1, got {buckets}")
  row_tokens = np.asarray(row_tokens)
  if row_tokens.ndim != 2:
    raise ValueError(f"row_tokens must be [N, B] (N batches), got shape {row_tokens.shape}")
  counts = _group_token_counts(row_tokens, groups, micro_batches)  # [N, k, groups]
  per_group = row_tokens.shape[-1] // (micro_batches * groups) * seq_len
  most = counts.reshape(len(row_tokens), -1).max(axis=1, initial=0)  # [N]
  if most.size and most.max() > per_group:
    raise ValueError(
      f"a packing group holds {int(most.max())} real tokens but has only {per_group} "
      f"positions: row_tokens do not describe [B, {seq_len}] rows"
    )
  step = max(1, math.ceil(per_group / buckets))
  capacities = np.maximum(step, -(-most // step) * step)
  return [None if c >= per_group else PackingSpec(groups, int(c)) for c in capacities]

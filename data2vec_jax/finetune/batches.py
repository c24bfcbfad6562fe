"""Fixed-size, padded batches of an `EncodedSplit`, in a resumable order.

Training order follows fairseq's `sentence_prediction` task (docs/reference/finetuning_reference
.md §1.3): one random permutation of the examples, drawn from the seed when the data loads, is cut
into batches of `batch_size` sentences; every epoch visits those batches in a fresh random order.
The order is a pure function of (seed, epoch), so a run resumed at update `s` needs nothing but
`s` to continue with the batch it would have seen.

Departures from fairseq, both documented in the README: batches are `batch_size` sentences (the
paper's recipe also caps a batch at 4400 tokens, which splits a batch holding very long examples),
and the last batch of an epoch is padded with weight-0 rows to the fixed size so one compiled step
serves every batch.

Shapes: a batch is padded to the smallest length bucket (16 * 2^k, capped at the model's maximum)
that holds its longest sequence, so a task compiles at most ~6 step shapes, not one per length.
"""

from __future__ import annotations

import numpy as np

from data2vec_jax.finetune.encoding import EncodedSplit

SMALLEST_BUCKET = 16


def length_bucket(length: int, max_length: int) -> int:
  """Smallest 16 * 2^k >= length, capped at max_length."""
  bucket = SMALLEST_BUCKET
  while bucket < length:
    bucket *= 2
  return min(bucket, max_length)


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
  return -(-num_examples // batch_size)


def _batch_members(num_examples: int, batch_size: int, seed: int) -> list[np.ndarray]:
  """The batches' example indices: the load-time permutation cut into batch_size chunks."""
  order = np.random.default_rng([seed, 0x5EED]).permutation(num_examples)
  return [order[i : i + batch_size] for i in range(0, num_examples, batch_size)]


def epoch_batch_order(num_batches: int, seed: int, epoch: int) -> np.ndarray:
  """Which batch comes when in `epoch` (0-based): a fresh permutation per epoch."""
  return np.random.default_rng([seed, epoch]).permutation(num_batches)


def pad_batch(
  split: EncodedSplit, members: np.ndarray, batch_size: int, *, pad_id: int, max_length: int
) -> dict[str, np.ndarray]:
  """{'input_ids': int32 [B, T], 'labels': [B] int32 | float32, 'weights': float32 [B],
  'rows': int64 [B] (-1 for padding rows)}; T = length bucket of the longest member."""
  length = length_bucket(max(len(split.tokens[i]) for i in members), max_length)
  ids = np.full((batch_size, length), pad_id, np.int32)
  labels = np.zeros((batch_size,), split.labels.dtype)
  weights = np.zeros((batch_size,), np.float32)
  rows = np.full((batch_size,), -1, np.int64)
  for slot, i in enumerate(members):
    ids[slot, : len(split.tokens[i])] = split.tokens[i]
    labels[slot] = split.labels[i]
    weights[slot] = 1.0
    rows[slot] = i
  return {"input_ids": ids, "labels": labels, "weights": weights, "rows": rows}


class TrainBatches:
  """The training batch of every update. `batch(step)` is update `step + 1`'s batch (0-based)."""

  def __init__(
    self, split: EncodedSplit, batch_size: int, seed: int, *, pad_id: int, max_length: int
  ):
    if batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    self.split, self.batch_size, self.seed = split, batch_size, seed
    self.pad_id, self.max_length = pad_id, max_length
    self.members = _batch_members(len(split), batch_size, seed)
    self.steps_per_epoch = len(self.members)
    self._order_epoch, self._order = -1, None

  def epoch_of(self, step: int) -> int:
    return step // self.steps_per_epoch

  def batch(self, step: int) -> dict[str, np.ndarray]:
    epoch, position = divmod(step, self.steps_per_epoch)
    if epoch != self._order_epoch:
      self._order_epoch = epoch
      self._order = epoch_batch_order(self.steps_per_epoch, self.seed, epoch)
    members = self.members[self._order[position]]
    return pad_batch(
      self.split, members, self.batch_size, pad_id=self.pad_id, max_length=self.max_length
    )


def eval_batches(
  split: EncodedSplit, batch_size: int, *, pad_id: int, max_length: int
) -> list[dict[str, np.ndarray]]:
  """Every example once, sorted by length (less padding; the scores do not depend on order)."""
  order = np.argsort([len(t) for t in split.tokens], kind="stable")
  return [
    pad_batch(split, order[i : i + batch_size], batch_size, pad_id=pad_id, max_length=max_length)
    for i in range(0, len(order), batch_size)
  ]

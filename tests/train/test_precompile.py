"""The step shapes a run compiles ahead (data2vec_jax/train/precompile.py): each distinct
(padded length, packing) once, in the order the steps first need them. That compiling them ahead
changes no loss and leaves no compile pause is tested end to end in tests/e2e/test_train.py."""

from __future__ import annotations

import dataclasses

import numpy as np

from data2vec_jax.speed import packing
from data2vec_jax.train import precompile


@dataclasses.dataclass
class Plan:
  pack_tokens: bool = True
  micro_batches: int = 1
  pack_buckets: int = 4


def test_distinct_shapes_in_order_of_first_use():
  # 4 rows of 8 positions = 32 per group; buckets of 8 tokens.
  rows = np.array([[8, 8, 8, 8], [1, 1, 1, 1], [8, 8, 8, 0], [2, 2, 2, 2], [8, 1, 0, 0]])
  lengths = np.array([8, 8, 8, 8, 8])
  shapes = precompile.step_shapes(Plan(), lengths, rows, groups=1)
  spec = lambda capacity: packing.PackingSpec(1, capacity)
  assert shapes == [(8, None), (8, spec(8)), (8, spec(24)), (8, spec(16))]
  # Unpacked, each padded length is one shape.
  lengths = np.array([16, 8, 16, 24, 8])
  shapes = precompile.step_shapes(Plan(pack_tokens=False), lengths, rows, groups=1)
  assert shapes == [(16, None), (8, None), (24, None)]

"""Compile every step shape a run will meet before its first step, instead of pausing to compile
whenever a new one turns up (token packing: one program per packed capacity).

The shapes are known in advance: a step's packed capacity is a function of its global batch's
real tokens per row, which the input pipeline computes from its sizes array for any future batch
(`BatchIterator.row_tokens_ahead`) without building it. `step_shapes` lists the distinct
(padded length, packing) pairs of the coming steps in order of first use; `compile_steps`
compiles them (several at once on hosts with many cores; progress lines while it does), and the
loop then calls the compiled executables directly (`CompiledSteps.step`). A shape beyond the
horizon scanned (`train.precompile_steps`) still compiles on first use, as before.

With the persistent compilation cache (compile_cache.py) a restart loads all of them instead.
"""

from __future__ import annotations

import concurrent.futures
import os
from typing import Any, Callable, Hashable

import jax
import numpy as np

from data2vec_jax.objective.execution import ExecutionPlan
from data2vec_jax.runtime import sharding as sharding_lib
from data2vec_jax.speed import packing as packing_lib
from data2vec_jax.speed.compile_progress import CompileProgress

Shape = tuple[int, Hashable]  # (padded length T, PackingSpec | None)


def step_shapes(
  plan: ExecutionPlan,
  lengths: np.ndarray,
  row_tokens: np.ndarray,
  *,
  groups: int,
) -> list[Shape]:
  """The distinct (T, packing) of the coming steps, in order of first use.

  lengths: int [N] each step's padded length; row_tokens: int [N, GB] each step's real tokens
  per row of the global batch (`BatchIterator.row_tokens_ahead`); groups: packing groups (data
  shards) per micro-batch, as the loop passes to `plan.packing_for_batch`.
  """
  shapes: list[Shape] = []
  for length in dict.fromkeys(int(t) for t in lengths):  # each padded length, in order
    at = np.flatnonzero(lengths == length)
    if plan.pack_tokens:
      specs = packing_lib.specs_for_batches(
        row_tokens[at],
        seq_len=length,
        groups=groups,
        micro_batches=plan.micro_batches,
        buckets=plan.pack_buckets,
      )
    else:
      specs = [None] * len(at)
    first_use = {}
    for position, spec in zip(at, specs):
      first_use.setdefault(spec, int(position))
    shapes += [((length, spec), position) for spec, position in first_use.items()]
  return [shape for shape, _ in sorted(shapes, key=lambda item: item[1])]


class CompiledSteps:
  """The step's executables by shape; `step(state, batch, packing)` calls the compiled one when
  there is one and falls back to the jitted step (which compiles on first use) otherwise."""

  def __init__(self, step_fn: Callable, compiled: dict[Shape, Any]):
    self.step_fn = step_fn
    self.compiled = compiled

  def has(self, length: int, packing) -> bool:
    return (length, packing) in self.compiled

  def step(self, state, batch: dict[str, jax.Array], packing):
    executable = self.compiled.get((batch["source"].shape[1], packing))
    if executable is None:
      return self.step_fn(state, batch, packing)
    return executable(state, batch)


def compile_steps(
  step_fn: Callable,
  state: Any,
  batch_structs: Callable[[int], dict[str, jax.ShapeDtypeStruct]],
  shapes: list[Shape],
  *,
  mesh,
  threads: int = 0,
) -> CompiledSteps:
  """Compiles `step_fn` (the jitted step) for every shape, `threads` at a time (0: one per 4
  CPU cores, at least 1, at most 8). `state`: the train state (only its shapes and shardings are used);
  `batch_structs(T)`: the global batch's ShapeDtypeStructs (with shardings) at padded length T.
  """
  abstract_state = jax.tree_util.tree_map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state
  )
  # XLA's compiler is itself multi-threaded: on 2 cores two compiles at once were slower than
  # one after the other (bench/README.md, "Time to first step"); one per 4 cores, at most 8.
  threads = threads or max(1, min(8, (os.cpu_count() or 1) // 4))

  names = [describe(s) for s in shapes]

  def compile_one(item: tuple[Shape, str]):
    (length, packing), name = item
    progress.start(name)
    # The mesh context is per thread: the model's sharding constraints resolve in it.
    with sharding_lib.activate(mesh):
      executable = step_fn.lower(abstract_state, batch_structs(length), packing).compile()
    progress.finish(name)
    return executable

  # Progress lines while it compiles (minutes for a big model): which shapes, how many done.
  with CompileProgress("the step", names) as progress:
    with concurrent.futures.ThreadPoolExecutor(max_workers=threads) as pool:
      compiled = dict(zip(shapes, pool.map(compile_one, zip(shapes, names))))
  return CompiledSteps(step_fn, compiled)


def describe(shape: Shape) -> str:
  length, packing = shape
  return f"T={length} " + ("unpacked" if packing is None else f"capacity {packing.capacity}")

"""Batches built by worker processes, in order: the input pipeline scaled over a host's cores.

A batch is a pure function of its position (`BatchIterator.make_batch(epoch, batch)`: the order,
the shard and the masks depend only on (seed, epoch, index)), so N processes can build the next
N x `buffer_per_worker` batches at once and the consumer takes them in order. Everything the
single-threaded pipeline guarantees holds unchanged: the batches are bit-identical whatever the
worker count, each process of a multi-host run builds only its own rows, `get_state()` is the
position after the last batch *returned* (a checkpoint resumes exactly, as with
`PrefetchIterator`), and `global_row_tokens` comes with every batch.

The workers are started with `spawn` (the trainer's process runs JAX's threads, which `fork`
does not copy safely) and receive the iterator once, pickled: a memory-mapped corpus travels as
its file name (`sources.TokenSource` pickles its memmap by reference), an in-memory one as a copy
per worker. Why not grain: its iterator state would be a second record of the data position
beside the one our checkpoints already hold and check (the pipeline's fingerprint), and what it
would add here, worker processes, is this module.
"""

from __future__ import annotations

import collections
import concurrent.futures
import multiprocessing
from typing import Any, Mapping

from data2vec_jax.data.pipeline import Batch, BatchIterator

_WORKER_ITERATOR: BatchIterator | None = None  # in each worker process: its copy


def _start_worker(iterator: BatchIterator) -> None:
  global _WORKER_ITERATOR
  _WORKER_ITERATOR = iterator


def _build(epoch: int, batch: int) -> Batch:
  assert _WORKER_ITERATOR is not None, "worker not initialised"
  return _WORKER_ITERATOR.make_batch(epoch, batch)


class WorkerPoolIterator:
  """`iterator`'s batches, built `workers` at a time in worker processes, returned in order.

  The same interface as `PrefetchIterator`: `next()`, `get_state()`, `set_state()`, `close()`;
  `.iterator` is the BatchIterator (positions and the shapes of coming batches). Exceptions in a
  worker are raised by the `next()` that reaches their batch.
  """

  def __init__(self, iterator: BatchIterator, workers: int, buffer_per_worker: int = 2) -> None:
    if workers < 1:
      raise ValueError(f"workers must be >= 1, got {workers}")
    if buffer_per_worker < 1:
      raise ValueError(f"buffer_per_worker must be >= 1, got {buffer_per_worker}")
    self.iterator = iterator
    self.workers = workers
    self.ahead = workers * buffer_per_worker
    self._pool = concurrent.futures.ProcessPoolExecutor(
      max_workers=workers,
      mp_context=multiprocessing.get_context("spawn"),
      initializer=_start_worker,
      initargs=(iterator,),
    )
    self._position = (iterator.epoch, iterator.get_state()["batch"])  # the next batch returned
    self._queue: collections.deque = collections.deque()  # futures of the coming batches
    self._submitted = self._position  # the next position to submit

  def _next_position(self, epoch: int, batch: int) -> tuple[int, int]:
    batch += 1
    return (epoch + 1, 0) if batch >= self.iterator.batches_per_epoch else (epoch, batch)

  def _fill(self) -> None:
    while len(self._queue) < self.ahead:
      self._queue.append(self._pool.submit(_build, *self._submitted))
      self._submitted = self._next_position(*self._submitted)

  def __iter__(self) -> "WorkerPoolIterator":
    return self

  def __next__(self) -> Batch:
    if self._pool is None:
      raise RuntimeError("WorkerPoolIterator is closed")
    self._fill()
    batch = self._queue.popleft().result()
    self._position = self._next_position(*self._position)
    self._fill()
    return batch

  def get_state(self) -> dict[str, Any]:
    state = self.iterator.get_state()
    return {**state, "epoch": self._position[0], "batch": self._position[1]}

  def set_state(self, state: Mapping[str, Any]) -> None:
    """Reposition (the state is checked by the BatchIterator); batches built ahead are dropped."""
    self.iterator.set_state(state)
    for future in self._queue:
      future.cancel()
    self._queue.clear()
    self._position = self._submitted = (self.iterator.epoch, self.iterator.get_state()["batch"])

  def close(self) -> None:
    if self._pool is not None:
      self._pool.shutdown(wait=True, cancel_futures=True)
      self._pool = None

  def __enter__(self) -> "WorkerPoolIterator":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

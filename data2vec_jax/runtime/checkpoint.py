"""Training checkpoints with orbax: the only module that touches the Orbax API.

A checkpoint step directory holds two items:
  state: the whole `TrainState` pytree (params, EMA teacher, optimizer state, step, RNG), saved
         from and restored straight into its sharded layout (no gathering on one host);
  data:  the input iterator position (small JSON), so a resumed run sees the same batches.

Saves are asynchronous (training continues while the previous step is written); a checkpoint
becomes visible only once complete (orbax writes to a temporary directory and renames), so a
process killed mid-save resumes from the previous one.

Resuming tells two failures apart:
  * a checkpoint of another model or optimizer (the stored tree or shapes differ from the
    state this config builds): `CheckpointMismatchError`, with the per-key differences; nothing
    is moved, the user fixes the config or the workdir;
  * a corrupt checkpoint (metadata, array files or iterator state unreadable): reported with
    the reason, set aside under `<workdir>/set_aside_checkpoints/` (never deleted) and the next
    older step is tried (`restore_newest_intact`).
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp

from data2vec_jax import tree_diff

SET_ASIDE_DIR = "set_aside_checkpoints"  # sibling of the checkpoint directory


class TrainingCheckpointError(RuntimeError):
  """A training checkpoint cannot be used: none exists, none is intact, or it does not fit.

  (Weights files given to the converters raise `convert.torch_io.CheckpointError` instead.)
  """


class CheckpointMismatchError(TrainingCheckpointError):
  """A checkpoint is intact but holds another model/optimizer state than the config builds."""


class CorruptCheckpointError(TrainingCheckpointError):
  """A checkpoint's files cannot be read (truncated, garbage, missing metadata)."""


def _path_key(path: tuple[Any, ...]) -> str:
  """'params/encoder/layers/0/fc1/kernel' for a key path, whatever the container types.

  A freshly read orbax metadata tree holds dicts and lists where the live state holds
  dataclasses and named tuples, so paths are compared by their entry names only.
  """
  parts = []
  for entry in path:
    for attr in ("key", "name", "idx"):
      if hasattr(entry, attr):
        parts.append(str(getattr(entry, attr)))
        break
    else:
      parts.append(str(entry))
  return "/".join(parts)


def _leaf_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
  leaves = jax.tree_util.tree_flatten_with_path(
    tree, is_leaf=lambda x: hasattr(x, "shape") and hasattr(x, "dtype")
  )[0]
  return {_path_key(p): tuple(x.shape) for p, x in leaves if getattr(x, "shape", None) is not None}


def structure_differences(stored: Any, expected: Any) -> list[str]:
  """How a stored tree's leaf shapes differ from the expected ones ('got' = stored; empty:
  they agree)."""
  return tree_diff.shape_problems(_leaf_shapes(stored), _leaf_shapes(expected), limit=5)


def _all_processes_agree(ok: bool) -> bool:
  """True when `ok` holds on every process (a collective with several processes)."""
  if jax.process_count() == 1:
    return ok
  from jax.experimental import multihost_utils

  return bool(np.all(multihost_utils.process_allgather(np.array([ok], np.int32))))


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)


class _FailedReadReports:
  """Drops the reports of reads orphaned by a failed restore of a corrupt step.

  When one array of a corrupt step fails, orbax closes its event loop while TensorStore still
  completes the step's other reads. Each then reports, with a traceback, either an unraisable
  `RuntimeError('Event loop is closed')` or, when its task is collected (possibly long after
  the step was set aside, even at exit), asyncio's "exception was never retrieved": hundreds of
  tracebacks that bury the one-line diagnosis. Dropped: exactly that RuntimeError, and errors
  whose text names a step this process declared corrupt. Everything else is reported as usual.
  Installed once per process (the reports can outlive the `Checkpointer`), at the first restore.
  """

  def __init__(self) -> None:
    self.step_dirs: set[str] = set()
    self._installed = False

  def _expected(self, error: BaseException | None) -> bool:
    if error is None:
      return False
    if isinstance(error, RuntimeError) and str(error) == "Event loop is closed":
      return True
    return any(d in str(error) for d in self.step_dirs)

  def install(self) -> None:
    if self._installed:
      return
    self._installed = True
    previous = sys.unraisablehook

    def unraisable(report) -> None:
      if not self._expected(report.exc_value):
        previous(report)

    sys.unraisablehook = unraisable
    reports = self

    class AsyncioFilter(logging.Filter):
      def filter(self, record: logging.LogRecord) -> bool:
        return not reports._expected(record.exc_info[1] if record.exc_info else None)

    logging.getLogger("asyncio").addFilter(AsyncioFilter())


_FAILED_READS = _FailedReadReports()


def ignore_failed_reads_of(step_dir: str) -> None:
  """Drops the orphaned-read reports of a step a caller found corrupt without setting it aside
  (`_FailedReadReports`), e.g. a fine-tuning init that falls back to an older step."""
  _FAILED_READS.step_dirs.add(os.path.join(os.path.abspath(step_dir), ""))


class Checkpointer:
  """Keep-last-K async checkpoints of (train state, data position) under `directory`."""

  def __init__(
    self,
    directory: str,
    *,
    max_to_keep: int = 3,
    save_interval_steps: int = 1,
    async_save: bool = True,
  ):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep,
      save_interval_steps=save_interval_steps,
      enable_async_checkpointing=async_save,
      create=True,
    )
    # Handlers registered up front: without them a fresh process cannot read a step's metadata
    # before the first restore, and the readable structure check below would never run.
    handlers = {"state": ocp.StandardCheckpointHandler(), "data": ocp.JsonCheckpointHandler()}
    self._manager = ocp.CheckpointManager(
      self.directory, options=options, item_names=("state", "data"), item_handlers=handlers
    )
    self._closed = False

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def should_save(self, step: int) -> bool:
    """True when `save(step, ...)` would write (interval reached, or a preemption sync point)."""
    return self._manager.should_save(step)  # False for a step already saved

  def reached_preemption(self, step: int) -> bool:
    """True on every host once any host has received a preemption notice (multi-host safe)."""
    return self._manager.reached_preemption(step)

  def save(self, step: int, state: Any, data_state: dict, *, force: bool = False) -> bool:
    """Starts an async save of `state` (a pytree of jax.Arrays) and `data_state` (JSON).

    Returns whether a save started. A step that is already saved (or being saved) is not
    saved again, also with `force`: a preemption notice right after a scheduled save keeps it.
    """
    if step in self._manager.all_steps():
      return False
    return self._manager.save(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)
      ),
      force=force,
    )

  def restore(self, step: int | None, abstract_state: Any) -> tuple[Any, dict]:
    """Restores one step into the shapes, dtypes and shardings of `abstract_state`.

    Raises `CheckpointMismatchError` (with the per-key differences) when the stored tree does
    not fit, `CorruptCheckpointError` when its files cannot be read.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise TrainingCheckpointError(f"no checkpoint in {self.directory}")
    where = os.path.join(self.directory, str(step))
    _FAILED_READS.install()  # before reading: the reports start during a failed read
    try:
      metadata = self._manager.item_metadata(step)
      stored = metadata["state"]
    except Exception as e:  # noqa: BLE001 - any unreadable metadata is corruption
      raise CorruptCheckpointError(f"{where}: metadata unreadable ({_reason(e)})") from e
    if stored is None:
      raise CorruptCheckpointError(f"{where}: the state's metadata is missing")
    differences = structure_differences(getattr(stored, "tree", stored), abstract_state)
    if differences:
      raise CheckpointMismatchError(
        f"{where} holds another model/optimizer state than this config builds ("
        f"{'; '.join(differences)}; got = the checkpoint, expected = this config): resume with the config it was trained with, or train "
        f"in a new --workdir"
      )
    try:
      restored = self._manager.restore(
        step,
        args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()
        ),
      )
    except Exception as e:  # noqa: BLE001 - the tree matched, so a failed read is corruption
      raise CorruptCheckpointError(f"{where}: {_reason(e)}") from e
    data_state = restored["data"]
    if not isinstance(data_state, dict):
      raise CorruptCheckpointError(
        f"{where}: the data iterator state is {type(data_state).__name__}, not a JSON object"
      )
    return restored["state"], data_state

  def restore_newest_intact(
    self, abstract_state: Any, *, validate: Callable[[Any, dict], None] | None = None
  ) -> tuple[int, Any, dict] | None:
    """(step, state, data_state) of the newest intact checkpoint; None when there is none.

    A corrupt step is logged with its reason, set aside (`set_aside`) and the next older one is
    tried. `validate(state, data_state)` may raise `CorruptCheckpointError` for checks only the
    caller can make (e.g. an iterator state the pipeline cannot read). A mismatch with the
    config (`CheckpointMismatchError`) is raised at once: falling back would not help. With
    several processes every one must call this; they agree on each step before moving on.
    Raises `TrainingCheckpointError` when checkpoints existed but none was intact.
    """
    set_aside: list[str] = []
    for step in reversed(self.all_steps()):
      error = None
      try:
        state, data_state = self.restore(step, abstract_state)
        if validate is not None:
          validate(state, data_state)
      except CorruptCheckpointError as e:
        error = e
      if _all_processes_agree(error is None):
        return step, state, data_state
      reason = str(error) if error is not None else "unreadable on another process"
      logging.error("checkpoint step %d is corrupt: %s", step, reason)
      _FAILED_READS.step_dirs.add(os.path.join(self.directory, str(step)) + os.sep)
      set_aside.append(self.set_aside(step, "corrupt"))
    if set_aside:
      raise TrainingCheckpointError(
        f"no intact checkpoint in {self.directory}: the corrupt ones were moved to "
        f"{', '.join(set_aside)}; run again to start from step 0, or move an older copy back"
      )
    return None

  def set_aside(self, step: int, why: str) -> str:
    """Moves step `step` out of the checkpoint directory (kept, not deleted); returns where.

    Orbax then no longer lists it, so the run resumes from an older step. Process 0 moves;
    every process must call this (several processes synchronise around the move).
    """
    self._manager.wait_until_finished()
    destination = os.path.join(
      os.path.dirname(self.directory),
      SET_ASIDE_DIR,
      f"{why}_step{step}_{time.strftime('%Y%m%d-%H%M%S')}",
    )
    _sync(f"data2vec_jax: set aside {step}")
    if jax.process_index() == 0:
      os.makedirs(os.path.dirname(destination), exist_ok=True)
      shutil.move(os.path.join(self.directory, str(step)), destination)
    _sync(f"data2vec_jax: set aside {step} done")
    self._manager.reload()
    return destination

  def wait_until_finished(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for the in-flight save (so no `*.orbax-checkpoint-tmp` is left) and closes."""
    if self._closed:
      return
    self._closed = True
    try:
      self._manager.wait_until_finished()
    finally:
      self._manager.close()
    logging.info("checkpointer closed (%s)", self.directory)


def _reason(error: BaseException) -> str:
  """The first line of an orbax/TensorStore error, short enough for a one-line report."""
  text = str(error).strip().splitlines()
  first = text[0] if text else ""
  first = first if len(first) <= 300 else first[:300] + "..."
  return f"{type(error).__name__}: {first}"

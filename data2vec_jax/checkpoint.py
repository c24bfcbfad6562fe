"""Training checkpoints with orbax: the only module that touches the Orbax API.

A checkpoint step directory holds two items:
  state: the whole `TrainState` pytree (params, EMA teacher, optimizer state, step, RNG), saved
         from and restored straight into its sharded layout (no gathering on one host);
  data:  the input iterator position (small JSON), so a resumed run sees the same batches.

Saves are asynchronous (training continues while the previous step is written); a checkpoint
becomes visible only once complete (orbax writes to a temporary directory and renames), so a
process killed mid-save resumes from the previous one.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
  """A checkpoint exists but cannot be restored into the requested state (wrong model/config)."""


class Checkpointer:
  """Keep-last-K async checkpoints of (train state, data position) under `directory`."""

  def __init__(self, directory: str, *, max_to_keep: int = 3, save_interval_steps: int = 1,
               async_save: bool = True):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, save_interval_steps=save_interval_steps,
        enable_async_checkpointing=async_save, create=True)
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_names=("state", "data"))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def should_save(self, step: int) -> bool:
    return self._manager.should_save(step)

  def reached_preemption(self, step: int) -> bool:
    """True on every host once any host has received a preemption notice (multi-host safe)."""
    return self._manager.reached_preemption(step)

  def save(self, step: int, state: Any, data_state: dict, *, force: bool = False) -> bool:
    """Starts an async save of `state` (a pytree of jax.Arrays) and `data_state` (JSON)."""
    return self._manager.save(
        step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                      data=ocp.args.JsonSave(data_state)), force=force)

  def restore(self, step: int | None, abstract_state: Any) -> tuple[Any, dict]:
    """Restores into the shapes, dtypes and shardings of `abstract_state` (ShapeDtypeStructs).

    Raises `CheckpointError` naming the mismatch when the stored tree does not fit (for example a
    checkpoint of a different model size in the same workdir).
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f"no checkpoint in {self.directory}")
    self._check_structure(step, abstract_state)
    try:
      restored = self._manager.restore(
          step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                        data=ocp.args.JsonRestore()))
    except (ValueError, KeyError, TypeError) as e:
      raise CheckpointError(
          f"checkpoint {self.directory}/{step} does not match the current model/optimizer "
          f"state: {e}") from e
    return restored["state"], dict(restored["data"] or {})

  def _check_structure(self, step: int, abstract_state: Any) -> None:
    """Compares stored shapes with the expected ones before restoring, for a readable error."""
    try:
      stored = self._manager.item_metadata(step)["state"]
    except Exception:  # noqa: BLE001 - metadata is an optimisation for the error message only
      return
    if stored is None:
      return
    expected = {jax.tree_util.keystr(p): tuple(x.shape)
                for p, x in jax.tree_util.tree_flatten_with_path(abstract_state)[0]}
    found = {}
    for p, x in jax.tree_util.tree_flatten_with_path(stored)[0]:
      shape = getattr(x, "shape", None)
      if shape is not None:
        found[jax.tree_util.keystr(p)] = tuple(shape)
    if not found:
      return
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    mismatched = [f"{k}: checkpoint {found[k]} vs model {expected[k]}"
                  for k in sorted(set(expected) & set(found)) if found[k] != expected[k]]
    if missing or unexpected or mismatched:
      raise CheckpointError(
          f"checkpoint {self.directory}/{step} does not match the current state:\n"
          f"  missing from checkpoint: {missing[:10]}{' ...' if len(missing) > 10 else ''}\n"
          f"  unexpected in checkpoint: {unexpected[:10]}{' ...' if len(unexpected) > 10 else ''}\n"
          f"  shape mismatches: {mismatched[:10]}")

  def wait_until_finished(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
    logging.info("checkpointer closed (%s)", self.directory)

"""Training checkpoints (data2vec_jax/runtime/checkpoint.py): resave, mismatch and corruption paths.

Every restore uses a new `Checkpointer`, as a resumed run does in a new process: orbax reads a
step's metadata only through handlers registered before the first restore.
"""

from __future__ import annotations

import glob
import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from data2vec_jax.runtime.checkpoint import (
  SET_ASIDE_DIR,
  Checkpointer,
  CheckpointMismatchError,
  CorruptCheckpointError,
  TrainingCheckpointError,
)

STATE = {
  "params": {"w": jnp.arange(32.0).reshape(4, 8), "b": jnp.zeros((8,))},
  "step": jnp.array(0, jnp.int32),
}


def state_at(step: int) -> dict:
  return jax.tree_util.tree_map(lambda x: x + step, STATE)


@pytest.fixture
def two_steps(tmp_path) -> str:
  directory = str(tmp_path / "checkpoints")
  ckpt = Checkpointer(directory, async_save=True)
  for step in (1, 2):
    assert ckpt.save(step, state_at(step), {"epoch": 0, "batch": step}, force=True)
  ckpt.close()
  return directory


def abstract() -> dict:
  return jax.eval_shape(lambda: STATE)


def test_a_step_already_saved_is_not_saved_again(tmp_path):
  # A preemption notice right after a scheduled save saves the same step with force=True.
  ckpt = Checkpointer(str(tmp_path / "c"), save_interval_steps=5, async_save=True)
  assert ckpt.save(5, state_at(5), {"batch": 5})
  assert not ckpt.save(5, state_at(5), {"batch": 5}, force=True)
  assert not ckpt.should_save(5) and not ckpt.should_save(6) and ckpt.should_save(10)
  assert ckpt.save(7, state_at(7), {"batch": 7}, force=True)  # off the interval: forced
  ckpt.close()
  assert Checkpointer(str(tmp_path / "c")).all_steps() == [5, 7]
  assert not glob.glob(str(tmp_path / "c" / "*tmp*"))


def test_restore_newest_intact_reads_the_newest_step(two_steps):
  step, state, data_state = Checkpointer(two_steps).restore_newest_intact(abstract())
  assert step == 2 and data_state == {"epoch": 0, "batch": 2}
  np.testing.assert_array_equal(state["params"]["w"], state_at(2)["params"]["w"])


def test_another_model_is_a_mismatch_with_the_keys_named(two_steps):
  other = {
    "params": {
      "w": jax.ShapeDtypeStruct((4, 16), jnp.float32),
      "extra": jax.ShapeDtypeStruct((3,), jnp.float32),
    },
    "step": jax.ShapeDtypeStruct((), jnp.int32),
  }
  ckpt = Checkpointer(two_steps)
  with pytest.raises(CheckpointMismatchError) as info:
    ckpt.restore_newest_intact(other)
  message = str(info.value)
  assert "\n" not in message
  assert "shape mismatches ['params/w: got (4, 8), expected (4, 16)']" in message
  assert "missing keys ['params/extra']" in message
  assert "unexpected keys ['params/b']" in message
  assert "got = the checkpoint, expected = this config" in message
  assert ckpt.all_steps() == [1, 2]  # a mismatch moves nothing: the config is at fault
  assert not os.path.exists(os.path.join(os.path.dirname(two_steps), SET_ASIDE_DIR))


def _array_files(step_dir: str) -> list[str]:
  return sorted(
    p
    for p in glob.glob(os.path.join(step_dir, "state", "**", "d", "*"), recursive=True)
    if os.path.isfile(p)
  )


def _truncate_arrays(step_dir):
  for path in _array_files(step_dir):
    with open(path, "r+b") as f:
      f.truncate(os.path.getsize(path) // 2)


def _garbage_arrays(step_dir):
  rng = np.random.default_rng(0)
  for path in _array_files(step_dir):
    size = os.path.getsize(path)
    with open(path, "wb") as f:
      f.write(rng.integers(0, 256, size, dtype=np.uint8).tobytes())


def _remove_metadata(step_dir):
  os.remove(os.path.join(step_dir, "state", "_METADATA"))


def _garbage_iterator_state(step_dir):
  with open(os.path.join(step_dir, "data", "metadata"), "wb") as f:
    f.write(b"\x00\x13garbage{")


def _iterator_state_not_an_object(step_dir):
  with open(os.path.join(step_dir, "data", "metadata"), "w") as f:
    json.dump([1, 2, 3], f)


@pytest.mark.parametrize(
  "corrupt",
  [
    _truncate_arrays,
    _garbage_arrays,
    _remove_metadata,
    _garbage_iterator_state,
    _iterator_state_not_an_object,
  ],
)
def test_a_corrupt_newest_step_is_set_aside_and_the_previous_one_restored(
  two_steps, corrupt, caplog
):
  corrupt(os.path.join(two_steps, "2"))
  ckpt = Checkpointer(two_steps)
  with caplog.at_level(logging.ERROR):
    step, state, data_state = ckpt.restore_newest_intact(abstract())
  assert step == 1 and data_state == {"epoch": 0, "batch": 1}
  np.testing.assert_array_equal(state["params"]["w"], state_at(1)["params"]["w"])
  assert "checkpoint step 2 is corrupt" in caplog.text and "/2:" in caplog.text
  assert ckpt.all_steps() == [1]
  ckpt.close()
  # Set aside, not deleted; and a new run sees only the intact step.
  moved = glob.glob(os.path.join(os.path.dirname(two_steps), SET_ASIDE_DIR, "corrupt_step2_*"))
  assert len(moved) == 1 and os.path.isdir(os.path.join(moved[0], "state"))
  assert Checkpointer(two_steps).all_steps() == [1]


def test_a_caller_check_can_declare_a_step_corrupt(two_steps):
  def validate(state, data_state):
    if data_state["batch"] == 2:
      raise CorruptCheckpointError("the pipeline cannot use this position")

  step, _, _ = Checkpointer(two_steps).restore_newest_intact(abstract(), validate=validate)
  assert step == 1


def test_no_intact_checkpoint_is_an_error_that_says_where_they_went(two_steps):
  for step in ("1", "2"):
    _truncate_arrays(os.path.join(two_steps, step))
  with pytest.raises(
    TrainingCheckpointError,
    match="no intact checkpoint .* moved to .*corrupt_step2_.*corrupt_step1_",
  ):
    Checkpointer(two_steps).restore_newest_intact(abstract())
  assert Checkpointer(two_steps).restore_newest_intact(abstract()) is None  # now: from step 0


def test_restore_from_an_empty_directory(tmp_path):
  ckpt = Checkpointer(str(tmp_path / "empty"), async_save=False)
  assert ckpt.restore_newest_intact({}) is None
  with pytest.raises(TrainingCheckpointError, match="no checkpoint"):
    ckpt.restore(None, {})
  ckpt.close()

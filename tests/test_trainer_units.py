"""Training-loop guards and checkpoint errors (fast, in-process)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from data2vec_jax.checkpoint import CheckpointError, Checkpointer
from data2vec_jax.model_config import EncoderConfig
from data2vec_jax.trainer import TrainingError, _check_health


def guard_cfg(**kw):
  values = dict(nan_guard=True, collapse_check_after=10, min_target_var=0.1, min_pred_var=0.01)
  values.update(kw)
  return ml_collections.ConfigDict(values)


def test_nan_guard_stops_with_message():
  with pytest.raises(TrainingError, match="loss became nan at step 3"):
    _check_health(3, {"loss": math.nan}, guard_cfg())
  with pytest.raises(TrainingError, match="inf"):
    _check_health(3, {"loss": math.inf}, guard_cfg())
  _check_health(3, {"loss": math.nan}, guard_cfg(nan_guard=False))  # can be switched off


def test_collapse_guard_only_after_warmup():
  collapsed = {"loss": 0.01, "target_var": 0.01, "pred_var": 0.5}
  _check_health(5, collapsed, guard_cfg())  # before collapse_check_after: tolerated
  with pytest.raises(TrainingError, match="target_var"):
    _check_health(10, collapsed, guard_cfg())
  with pytest.raises(TrainingError, match="pred_var"):
    _check_health(20, {"loss": 1.0, "target_var": 0.5, "pred_var": 0.001}, guard_cfg())
  _check_health(20, {"loss": 1.0, "target_var": 0.5, "pred_var": 0.5}, guard_cfg())


def test_restoring_a_checkpoint_of_another_model_names_the_mismatch(tmp_path):
  ckpt = Checkpointer(str(tmp_path / "ckpt"), async_save=False)
  state = {"w": jnp.ones((4, 8)), "b": jnp.zeros((8,))}
  ckpt.save(1, state, {"epoch": 0, "batch": 1}, force=True)
  ckpt.wait_until_finished()
  restored, data_state = ckpt.restore(None, jax.eval_shape(lambda: state))
  assert np.array_equal(restored["w"], state["w"]) and data_state == {"epoch": 0, "batch": 1}
  other = {"w": jax.ShapeDtypeStruct((4, 16), jnp.float32),
           "b": jax.ShapeDtypeStruct((8,), jnp.float32)}
  with pytest.raises(CheckpointError, match=r"\(4, 8\).*\(4, 16\)"):
    ckpt.restore(1, other)
  ckpt.close()


def test_restore_from_empty_directory_is_an_error(tmp_path):
  ckpt = Checkpointer(str(tmp_path / "empty"), async_save=False)
  with pytest.raises(CheckpointError, match="no checkpoint"):
    ckpt.restore(None, {})
  ckpt.close()

"""The training-health guards (data2vec_jax/train/health.py): divergence and collapse, in-process."""

from __future__ import annotations

import math

import pytest

from data2vec_jax.train.health import HealthConfig, HealthMonitor, TrainingError


def monitor(history=(), **overrides) -> HealthMonitor:
  values = dict(collapse_check_after=10, min_target_var=0.1, min_pred_var=0.01)
  values.update(overrides)
  return HealthMonitor(HealthConfig(**values), history=history)


def test_non_finite_loss_or_grad_norm_stops_with_the_step():
  with pytest.raises(TrainingError, match="loss became nan at step 3") as info:
    monitor().check_step(3, {"loss": math.nan, "grad_norm": 1.0})
  assert info.value.anomaly_step == 3 and info.value.diverged
  with pytest.raises(TrainingError, match="grad_norm became inf at step 4"):
    monitor().check_step(4, {"loss": 1.0, "grad_norm": math.inf})
  monitor(nan_guard=False).check_step(3, {"loss": math.nan})  # can be switched off


def test_an_exploding_but_finite_loss_stops_before_it_turns_nan():
  # The lr=1e6 run: loss ~1.7, then 2.3e19 (finite) one step before NaN.
  guard = monitor()
  guard.check_step(1, {"loss": 1.68, "grad_norm": 0.19})
  guard.check_step(2, {"loss": 1.66, "grad_norm": 0.18})
  with pytest.raises(
    TrainingError,
    match=r"loss exploded at step 3: 2.3e\+19 is over "
    r"train.explode_factor=100 times its median 1.67",
  ):
    guard.check_step(3, {"loss": 2.3e19, "grad_norm": 0.2})
  guard = monitor()
  guard.check_step(1, {"loss": 1.0, "grad_norm": 0.2})
  with pytest.raises(TrainingError, match="grad_norm exploded at step 2"):
    guard.check_step(2, {"loss": 1.0, "grad_norm": 50.0})


def test_ordinary_fluctuations_and_a_falling_loss_pass():
  guard = monitor()
  loss, grad = 10.0, 1.0
  for step in range(1, 300):
    # A loss falling 100x over the run, grad-norm spikes of 20x: a healthy run's range.
    loss *= 0.985
    spike = 20.0 if step % 37 == 0 else 1.0
    guard.check_step(step, {"loss": loss, "grad_norm": grad * spike})
  monitor(explode_factor=0).check_step(2, {"loss": 1e30})  # 0: NaN/Inf only
  fresh = monitor()
  fresh.check_step(1, {"loss": 1e30})  # no reference yet: only finiteness is checked


def test_the_running_median_is_seeded_from_the_resumed_runs_history():
  guard = monitor(
    history=[
      {"step": 10, "loss": 2.0, "grad_norm": 0.5},
      {"step": 20, "loss": "nan", "grad_norm": 0.5},
    ]
  )
  with pytest.raises(TrainingError, match="median 2"):
    guard.check_step(21, {"loss": 500.0, "grad_norm": 0.5})


def test_collapse_guard_quiet_while_the_prediction_variance_grows_from_its_start():
  # The demo's 2-layer x 32 model: pred_var 0.006 at initialisation, below the 0.01 floor,
  # growing to 0.029 by step 30. The absolute floor alone stopped it at step 6.
  guard = monitor(collapse_check_after=6)
  for step, pred_var in [(1, 0.006), (3, 0.006), (6, 0.007), (9, 0.009), (20, 0.02), (30, 0.029)]:
    guard.check_window(step, {"target_var": 0.63, "pred_var": pred_var})


def test_collapse_guard_catches_a_real_collapse():
  guard = monitor()
  guard.check_window(5, {"target_var": 0.6, "pred_var": 0.5})
  guard.check_window(8, {"target_var": 0.01, "pred_var": 0.5})  # before collapse_check_after
  with pytest.raises(TrainingError, match="representation collapse at step 10: target_var") as e:
    guard.check_window(10, {"target_var": 0.01, "pred_var": 0.5})
  assert not e.value.diverged
  guard = monitor()
  guard.check_window(10, {"target_var": 0.6, "pred_var": 0.4})
  with pytest.raises(TrainingError, match="pred_var=0.001 is below train.min_pred_var=0.01"):
    guard.check_window(20, {"target_var": 0.6, "pred_var": 0.001})
  # The peak survives a resume: a run that collapsed before it was interrupted is still caught.
  resumed = monitor(history=[{"step": 10, "target_var": 0.6, "pred_var": 0.4}])
  with pytest.raises(TrainingError, match="pred_var"):
    resumed.check_window(20, {"target_var": 0.6, "pred_var": 0.001})
  monitor(min_pred_var=0.0).check_window(20, {"pred_var": 0.0})  # 0 = off


def test_bad_guard_settings_are_refused():
  with pytest.raises(ValueError, match="explode_factor"):
    HealthConfig(explode_factor=0.5)
  with pytest.raises(ValueError, match="collapse_fraction"):
    HealthConfig(collapse_fraction=0.0)
  with pytest.raises(ValueError, match="explode_window"):
    HealthConfig.from_train_config({"explode_window": 0, "num_steps": 10})

"""Training-health guards: stop a run that diverges or collapses, before it writes bad checkpoints.

Two guards, both on the host, over metrics the step already returns:

* Divergence (`train.nan_guard`): a step whose loss or grad norm is NaN/Inf, or larger than
  `train.explode_factor` times the median of that metric over the last `train.explode_window`
  healthy steps. Exploding runs pass through huge finite losses before NaN (a 1e6 learning
  rate: loss 2e19 at step 3, NaN at step 4), so the relative bound stops them while the last
  checkpoints are still good. The loop checks every step's metrics before each save.
* Representation collapse (data2vec 2.0's `min_target_var` / `min_pred_var`): from step
  `train.collapse_check_after` on, a log window's variance below its absolute floor *and*
  below `train.collapse_fraction` of the highest value this run has reached. The relative
  condition keeps the guard quiet while a small model's prediction variance still grows from
  its initial value (a 2-layer x 32 model starts at pred_var 0.006 and grows), and a real
  collapse falls far below the peak the run had reached.

`HealthMonitor` is seeded from the run's earlier `metrics.jsonl` rows on resume, so a resumed
run keeps its reference values.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from typing import Any, Iterable, Mapping

from data2vec_jax import strict_config

_DIVERGENCE_KEYS = ("loss", "grad_norm")
_COLLAPSE_KEYS = (("target_var", "min_target_var"), ("pred_var", "min_pred_var"))


class TrainingError(RuntimeError):
  """Training stopped because the run became unhealthy (divergence, representation collapse).

  `anomaly_step`: the first step whose metrics were unhealthy. `diverged`: loss or grad norm
  diverged; those metrics were computed on the parameters after step `anomaly_step - 1`, so
  checkpoints from that step on hold diverged weights.
  """

  def __init__(self, message: str, anomaly_step: int, *, diverged: bool):
    super().__init__(message)
    self.anomaly_step = anomaly_step
    self.diverged = diverged


@dataclasses.dataclass(frozen=True)
class HealthConfig(strict_config.StrictConfig):
  """The guards' settings (fields of the `train` config section)."""

  nan_guard: bool = True
  explode_factor: float = 100.0  # 0 = only NaN/Inf
  explode_window: int = 100  # healthy steps in the running median
  collapse_check_after: int = 5_000
  min_target_var: float = 0.1  # 0 = off
  min_pred_var: float = 0.01  # 0 = off
  collapse_fraction: float = 0.1  # of the run's peak variance

  def __post_init__(self) -> None:
    if self.explode_factor < 0 or 0 < self.explode_factor <= 1:
      raise ValueError(f"train.explode_factor must be 0 (off) or > 1, got {self.explode_factor}")
    if self.explode_window < 1:
      raise ValueError(f"train.explode_window must be >= 1, got {self.explode_window}")
    if not 0 < self.collapse_fraction <= 1:
      raise ValueError(f"train.collapse_fraction must be in (0, 1], got {self.collapse_fraction}")

  @classmethod
  def from_train_config(cls, train: Mapping[str, Any]) -> "HealthConfig":
    names = {f.name for f in dataclasses.fields(cls)}
    return cls.from_dict({k: v for k, v in dict(train).items() if k in names})


class HealthMonitor:
  """Checks each step's metrics (`check_step`) and each log window's (`check_window`)."""

  def __init__(self, config: HealthConfig, history: Iterable[Mapping[str, Any]] = ()):
    self.config = config
    self._recent = {k: collections.deque(maxlen=config.explode_window) for k in _DIVERGENCE_KEYS}
    self._peak: dict[str, float] = {}
    for row in history:  # earlier metrics.jsonl rows of this run (window values)
      self._remember(row)
      self._raise_peaks(row)

  def _remember(self, metrics: Mapping[str, Any]) -> None:
    for key in _DIVERGENCE_KEYS:
      value = _as_float(metrics.get(key))
      if value is not None and math.isfinite(value):
        self._recent[key].append(value)

  def _raise_peaks(self, metrics: Mapping[str, Any]) -> None:
    for key, _ in _COLLAPSE_KEYS:
      value = _as_float(metrics.get(key))
      if value is not None and math.isfinite(value):
        self._peak[key] = max(self._peak.get(key, value), value)

  def check_step(self, step: int, metrics: Mapping[str, Any]) -> None:
    """Raises `TrainingError` when step `step`'s loss or grad norm diverged."""
    if not self.config.nan_guard:
      return
    for key in _DIVERGENCE_KEYS:
      value = _as_float(metrics.get(key))
      if value is None:
        continue
      if not math.isfinite(value):
        raise TrainingError(f"{key} became {value} at step {step}", step, diverged=True)
      recent = self._recent[key]
      if self.config.explode_factor and recent:
        reference = _median(recent)
        if reference > 0 and value > self.config.explode_factor * reference:
          raise TrainingError(
            f"{key} exploded at step {step}: {value:.4g} is over train.explode_factor="
            f"{self.config.explode_factor:g} times its median {reference:.4g} over the last "
            f"{len(recent)} steps",
            step,
            diverged=True,
          )
    self._remember(metrics)

  def check_window(self, step: int, metrics: Mapping[str, Any]) -> None:
    """Raises `TrainingError` when a log window's target or prediction variance collapsed."""
    if step >= self.config.collapse_check_after:
      for key, floor_name in _COLLAPSE_KEYS:
        value, floor = _as_float(metrics.get(key)), getattr(self.config, floor_name)
        if value is None or floor <= 0:
          continue
        peak = self._peak.get(key, value)
        if value < floor and value < self.config.collapse_fraction * peak:
          raise TrainingError(
            f"representation collapse at step {step}: {key}={value:.4g} is below "
            f"train.{floor_name}={floor:g} and below {self.config.collapse_fraction:g} of this "
            f"run's peak {peak:.4g}. Lower the learning rate, lengthen the warmup or raise "
            f"the EMA decay (paper §6)",
            step,
            diverged=False,
          )
    self._raise_peaks(metrics)


def _median(values: Iterable[float]) -> float:
  ordered = sorted(values)
  mid = len(ordered) // 2
  return ordered[mid] if len(ordered) % 2 else 0.5 * (ordered[mid - 1] + ordered[mid])


def _as_float(value: Any) -> float | None:
  if value is None:
    return None
  try:
    return float(value)
  except (TypeError, ValueError):
    return None

"""The bookkeeping every training loop repeats: what is due at a step, throughput, ETA.

Two pieces, ours, in the spirit of big_vision's `u.chrono` / `u.itstime`:

- `is_due(step, every, last_step)`: "is it time for X at this step" (log, evaluate, save):
  every `every` steps and at the last one; `every <= 0` turns X off. `preemption_due`: whether
  a preemption notice stops the run at this step (multi-host safe).
- `Progress`: the loop's clock. The loop closes a *window* (the steps since the last log row)
  with `end_window`, which says how long it took and whether it counts for throughput and ETA
  (the window holding the run's first step does not: it includes compilation, reported as
  `first_step_s`); `per_second` turns a window's tokens / examples / steps into a rate; `eta_s`
  and `steps_per_s` extrapolate from every counted window so far; `restart_window` starts the
  next window (after writing the row, or after an evaluation, whose time is in no window).

Usage (a loop that logs every `log_every` steps)::

  progress = Progress(first_step=step, total_steps=total)
  while step < total:
    ... run step ...; step += 1
    if is_due(step, log_every, total) or progress.is_first_step(step):
      window = progress.end_window(step, steps=steps_in_window)
      if window.timed:
        row["tokens_per_s"] = progress.per_second(tokens, window.elapsed_s)
      else:
        row["first_step_s"] = window.elapsed_s
      line = format_progress(step, total, row, progress.eta_s(step))
      ...write the row...
      progress.restart_window()

Why not CLU's `periodic_actions` / metric writers: CLU pulls in TensorFlow (and
tensorflow-datasets' utilities) for what is here ~40 lines of arithmetic; this package's
metrics.jsonl / TensorBoard writer (`runtime.metrics.MetricWriter`) already covers its writers.
No callbacks: the loop asks, then acts, in the order it reads.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import jax


def preemption_due(step: int, notice: bool, checkpointer: Any) -> bool:
  """Whether a preemption notice stops the run after `step` (save it, then exit).

  notice: this process saw the notice (`runtime.preemption.PreemptionFlag`); checkpointer: a
  `runtime.checkpoint.Checkpointer`, whose `reached_preemption(step)` is orbax's multi-host sync
  point. One process stops on its own notice; several stop only at the sync point, which every
  one reaches at the same step (a process stopping alone would leave the others waiting in the
  next collective).
  """
  return (jax.process_count() == 1 and notice) or checkpointer.reached_preemption(step)


def is_due(step: int, every: int, last_step: int) -> bool:
  """True at every `every`-th step and at `last_step`; never when `every <= 0` (off).

  step: the number of steps done (1 after the first step); last_step: the run's final step.
  """
  return every > 0 and (step % every == 0 or step == last_step)


@dataclasses.dataclass(frozen=True)
class Window:
  """A closed window of steps: `elapsed_s` wall seconds since the window started; `timed`
  False for the window holding the run's first step (compilation included)."""

  elapsed_s: float
  timed: bool


class Progress:
  """Wall-clock bookkeeping of one run (invocation) of a loop: windows, rate, ETA.

  first_step: the step the run (re)started from (0, or the resumed checkpoint's step);
  total_steps: the step it trains to; clock: seconds (`time.time`; a fake in tests).
  """

  def __init__(
    self, first_step: int, total_steps: int, clock: Callable[[], float] = time.time
  ) -> None:
    self.first_step = first_step
    self.total_steps = total_steps
    self.timed_steps = 0  # steps of the counted windows
    self.timed_s = 0.0  # their wall seconds
    self._clock = clock
    self._window_start = clock()

  def is_first_step(self, step: int) -> bool:
    """Whether `step` is this run's first (always logged: it shows the compilation time)."""
    return step == self.first_step + 1

  def restart_window(self) -> None:
    """Starts the next window now (time spent before, e.g. writing or evaluating, is in none)."""
    self._window_start = self._clock()

  def end_window(self, step: int, steps: int) -> Window:
    """Closes the window of `steps` steps that ends at `step` (does not restart it).

    A window ending after the first step is counted in `eta_s` / `steps_per_s`."""
    elapsed = self._clock() - self._window_start
    timed = step > self.first_step + 1  # the first step's window includes compilation
    if timed:
      self.timed_steps += steps
      self.timed_s += elapsed
    return Window(elapsed, timed)

  @staticmethod
  def per_second(amount: float, elapsed_s: float) -> float:
    """`amount` (tokens, examples, steps) per second of a window (never divides by 0)."""
    return amount / max(elapsed_s, 1e-9)

  def eta_s(self, step: int) -> float | None:
    """Seconds left to `total_steps` at the counted windows' mean step time; None before any
    window was counted."""
    if not self.timed_steps:
      return None
    return (self.total_steps - step) * self.timed_s / self.timed_steps

  def steps_per_s(self) -> float | None:
    """Mean steps per second over the counted windows; None before any."""
    return self.timed_steps / self.timed_s if self.timed_s else None

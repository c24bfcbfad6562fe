"""The loops' bookkeeping: what is due at a step, windows, throughput and ETA."""

from __future__ import annotations

from data2vec_jax.runtime.progress import Progress, is_due, preemption_due


class FakeClock:
  def __init__(self) -> None:
    self.now = 100.0

  def __call__(self) -> float:
    return self.now


def test_is_due_every_n_and_at_the_last_step():
  assert [s for s in range(1, 11) if is_due(s, 4, 10)] == [4, 8, 10]
  assert [s for s in range(1, 4) if is_due(s, 1, 3)] == [1, 2, 3]


def test_is_due_never_when_off():
  assert not any(is_due(s, 0, 5) for s in range(1, 6))
  assert not any(is_due(s, -1, 5) for s in range(1, 6))


def test_the_first_window_is_not_timed_and_later_ones_are():
  clock = FakeClock()
  progress = Progress(first_step=10, total_steps=20, clock=clock)
  assert progress.is_first_step(11) and not progress.is_first_step(12)
  clock.now += 30.0  # step 11 with its compilation
  first = progress.end_window(11, steps=1)
  assert (first.elapsed_s, first.timed) == (30.0, False)
  assert progress.eta_s(11) is None and progress.steps_per_s() is None
  progress.restart_window()
  clock.now += 4.0  # steps 12..15
  window = progress.end_window(15, steps=4)
  assert (window.elapsed_s, window.timed) == (4.0, True)
  assert progress.eta_s(15) == 5 * 4.0 / 4
  assert progress.steps_per_s() == 1.0
  assert progress.per_second(800.0, window.elapsed_s) == 200.0


def test_time_between_windows_is_in_none():
  clock = FakeClock()
  progress = Progress(first_step=0, total_steps=10, clock=clock)
  clock.now += 1.0
  progress.end_window(1, steps=1)
  clock.now += 50.0  # an evaluation
  progress.restart_window()
  clock.now += 2.0
  assert progress.end_window(3, steps=2).elapsed_s == 2.0
  assert progress.eta_s(3) == 7 * 2.0 / 2


def test_per_second_never_divides_by_zero():
  assert Progress.per_second(5.0, 0.0) == 5.0 / 1e-9


class FakeCheckpointer:
  def __init__(self, sync_step: int | None) -> None:
    self.sync_step = sync_step

  def reached_preemption(self, step: int) -> bool:
    return step == self.sync_step


def test_preemption_is_due_on_the_notice_or_at_the_sync_point():
  # One process (the tests' CPU devices are one process): its own notice stops it.
  assert preemption_due(3, notice=True, checkpointer=FakeCheckpointer(None))
  assert not preemption_due(3, notice=False, checkpointer=FakeCheckpointer(None))
  # orbax's sync point (every process reaches it at the same step) stops it without a notice.
  assert preemption_due(5, notice=False, checkpointer=FakeCheckpointer(5))
  assert not preemption_due(4, notice=False, checkpointer=FakeCheckpointer(5))

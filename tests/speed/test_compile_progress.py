"""Progress lines while compiling (data2vec_jax/speed/compile_progress.py): what compiles when it
starts, shapes done and elapsed seconds while it runs, the total at the end. That train.py and
the fine-tuning loop print them is checked in tests/e2e/test_train.py and tests/e2e/test_finetune.py."""

from __future__ import annotations

import threading
import time

from data2vec_jax.speed.compile_progress import CompileProgress


class Log:
  def __init__(self):
    self.lines: list[str] = []
    self.beat = threading.Event()

  def __call__(self, fmt, *args):
    self.lines.append(fmt % args)
    if "elapsed" in self.lines[-1]:
      self.beat.set()


def test_start_progress_and_end_lines():
  log, now = Log(), [100.0]
  with CompileProgress(
    "the step", ["T=64 unpacked", "T=64 capacity 256"], every_s=0.01, log=log, clock=lambda: now[0]
  ) as progress:
    assert log.lines == [
      "compiling the step for 2 shape(s): T=64 unpacked, T=64 capacity 256 (a cached program "
      "loads in seconds)"
    ]
    progress.start("T=64 unpacked")
    now[0] = 130.0
    progress.finish("T=64 unpacked")
    progress.start("T=64 capacity 256")
    assert progress.line() == (
      "compiling the step: 1/2 shape(s) done, 30 s elapsed (now T=64 capacity 256)"
    )
    log.beat.clear()
    assert log.beat.wait(5), "no progress line from the heartbeat thread"
    progress.finish("T=64 capacity 256")
    now[0] = 145.5
  assert log.lines[-1] == "compiled the step for 2 shape(s) in 45.5 s"
  beats = log.lines[1:-1]
  assert beats and all(line.startswith("compiling the step: ") for line in beats)


def test_no_end_line_when_compiling_fails_and_the_thread_stops():
  log = Log()
  try:
    with CompileProgress("the step", ["T=8 unpacked"], every_s=0.01, log=log):
      raise RuntimeError("XLA failed")
  except RuntimeError:
    pass
  assert not any(line.startswith("compiled") for line in log.lines)
  assert not [t for t in threading.enumerate() if t.name == "compile-progress"]


def test_quiet_compiles_say_nothing_and_long_ones_announce_themselves():
  log = Log()
  with CompileProgress("the update", ["32 x 64"], every_s=0, quiet_s=5, log=log):
    pass  # a cache load: under quiet_s
  assert log.lines == []
  with CompileProgress("the update", ["32 x 64"], every_s=0, quiet_s=0.01, log=log) as progress:
    deadline = time.monotonic() + 5
    while not progress.announced and time.monotonic() < deadline:
      time.sleep(0.01)
  assert log.lines[0].startswith("compiling the update for 1 shape(s): 32 x 64")
  assert log.lines[-1].startswith("compiled the update for 1 shape(s) in ")

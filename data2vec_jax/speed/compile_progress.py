"""Progress lines while XLA compiles, so a launcher never sits silent for minutes.

A Base step compiles for ~40 s per shape on CPU, and the tiny demo's took 233 s on a loaded
machine: without a word in between, a user cannot tell a compile from a hang. `CompileProgress`
says what compiles (which shapes) when it starts, then every `every_s` seconds how many shapes
are done and how long it has been, and how long it took at the end. A program found in the
persistent compilation cache (compile_cache.py) loads in well under the first interval, so a
warm restart prints the start and end lines only (with `quiet_s`, where many small programs
compile, not even those).

  with CompileProgress("the train step", ["T=128 unpacked", "T=128 capacity 2048"]) as progress:
    for shape in shapes:
      progress.start(shape_name); compile(shape); progress.finish(shape_name)
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Sequence

EVERY_S = 15.0  # between two progress lines: often enough to show life, rarely enough to read
# Where many small programs compile (fine-tuning: one per length bucket, the evaluation too),
# the lines wait this long: a compile or cache load shorter than that says nothing.
QUIET_S = 2.0


class CompileProgress:
  """A context manager that logs a compilation's start, progress and end.

  `what`: the program ("the train step"); `shapes`: a name per shape it compiles, in the order
  given to `start`/`finish` (any order works); `log`: a printf-style logger (logging.info);
  `quiet_s` > 0: the first line waits that long (from the progress thread) and a compilation
  finished sooner logs nothing.
  """

  def __init__(
    self,
    what: str,
    shapes: Sequence[str],
    *,
    every_s: float = EVERY_S,
    log: Callable[..., None] = logging.info,
    clock: Callable[[], float] = time.monotonic,
    quiet_s: float = 0.0,
  ):
    self.what, self.shapes = what, list(shapes)
    self.every_s, self.log, self.clock = float(every_s), log, clock
    self.quiet_s = float(quiet_s)
    self.announced = False
    self.done: list[str] = []
    self.running: list[str] = []
    self._lock = threading.Lock()
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None
    self.t0 = 0.0

  def start(self, shape: str) -> None:
    """`shape` is being compiled now (called from any thread)."""
    with self._lock:
      self.running.append(shape)

  def finish(self, shape: str) -> None:
    """`shape` is compiled (called from any thread)."""
    with self._lock:
      if shape in self.running:
        self.running.remove(shape)
      self.done.append(shape)

  def line(self) -> str:
    """The progress line now: shapes done of all, elapsed seconds, what is compiling."""
    with self._lock:
      done, running = len(self.done), list(self.running)
    text = (
      f"compiling {self.what}: {done}/{len(self.shapes)} shape(s) done, "
      f"{self.clock() - self.t0:.0f} s elapsed"
    )
    return text + (f" (now {', '.join(running)})" if running else "")

  def _announce(self) -> None:
    self.announced = True
    self.log(
      "compiling %s for %d shape(s): %s (a cached program loads in seconds)",
      self.what,
      len(self.shapes),
      ", ".join(self.shapes),
    )

  def __enter__(self) -> CompileProgress:
    self.t0 = self.clock()
    if self.quiet_s <= 0:
      self._announce()
    if self.every_s > 0 or self.quiet_s > 0:
      self._thread = threading.Thread(target=self._beat, name="compile-progress", daemon=True)
      self._thread.start()
    return self

  def _beat(self) -> None:
    if self.quiet_s > 0:
      if self._stop.wait(self.quiet_s):
        return
      self._announce()
    while self.every_s > 0 and not self._stop.wait(self.every_s):
      self.log("%s", self.line())

  def __exit__(self, exc_type, *_) -> None:
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
    if exc_type is None and self.announced:
      self.log(
        "compiled %s for %d shape(s) in %.1f s", self.what, len(self.shapes), self.clock() - self.t0
      )

"""SIGTERM as a preemption notice: a flag the training loops poll after each update, so they can
save a checkpoint and exit cleanly (clusters send SIGTERM some seconds before they kill)."""

from __future__ import annotations

import signal
import threading


class PreemptionFlag:
  """`with PreemptionFlag() as flag:` ... `flag.event.is_set()`; the previous handler is restored
  on exit. Only the main thread can install signal handlers; elsewhere the flag never sets."""

  def __init__(self):
    self.event = threading.Event()
    self._previous = None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, lambda *_: self.event.set())
    return self

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)

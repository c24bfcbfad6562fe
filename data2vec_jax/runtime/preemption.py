"""SIGTERM as a preemption notice: a flag the training loops poll after each update, so they can
save a checkpoint and exit cleanly (clusters send SIGTERM some seconds before they kill), and the
sweep polls between stages (passing the notice on to the stage it runs).

Several processes must stop at the same step (the save is a collective): `any_process` ORs the
processes' flags, a collective itself, so it is only called where every process calls it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading

import jax
import numpy as np


class PreemptionFlag:
  """`with PreemptionFlag() as flag:` ... `flag.event.is_set()`; the previous handler is restored
  on exit. Only the main thread can install signal handlers; elsewhere the flag never sets.

  announce: a line written to stderr when the first notice arrives, so a notice that comes while
  the run cannot stop yet (compiling, say) is seen at once, not only when it is acted on.
  child: a running process (the sweep's current stage) the notice is passed on to, so that it
  saves and exits while the flag tells its parent not to start the next one.
  """

  def __init__(self, announce: str | None = None):
    self.event = threading.Event()
    self.announce = announce
    self.child: subprocess.Popen | None = None
    self._previous = None

  def is_set(self) -> bool:
    return self.event.is_set()

  def _on_signal(self, *_) -> None:
    first = not self.event.is_set()
    self.event.set()
    child = self.child
    if child is not None and child.poll() is None:
      child.send_signal(signal.SIGTERM)
    if first and self.announce:
      # os.write: the handler may interrupt the main thread inside a logging or print call.
      os.write(2, (self.announce + "\n").encode())

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._on_signal)
    return self

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def any_process(flag: bool) -> bool:
  """True when `flag` holds on some process (one process: `flag`; several: a collective)."""
  if jax.process_count() == 1:
    return flag
  from jax.experimental import multihost_utils

  return bool(np.any(multihost_utils.process_allgather(np.array([flag], np.int32))))

"""A workdir that cannot be written, said in one line: a file in its place, a read-only workdir
or parent, a full disk.

A full disk surfaces in many shapes: `OSError(ENOSPC)` from Python's own writes, TensorStore's
`RESOURCE_EXHAUSTED: ... No space left on device` from an orbax checkpoint (raised later, by the
next save or the final wait), and then secondary errors while closing (TensorBoard's `OSError:
handle is closed`). `workdir_error` looks through an exception's causes for the real one, so the
line the user sees names the full disk, not whatever failed after it.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import sys
import tempfile
import warnings

_DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_DISK_FULL_TEXT = ("RESOURCE_EXHAUSTED", "No space left on device", "Disk quota exceeded")
_NOT_WRITABLE_ERRNOS = (errno.EROFS, errno.EACCES, errno.EPERM)


class WorkdirError(RuntimeError):
  """The workdir cannot be used or written (the message says why and what to do)."""


def check_workdir(workdir: str) -> None:
  """Creates `workdir` (and its parents) if needed and checks that files can be written there.

  Raises WorkdirError naming the problem: a file at the path, a parent that cannot be created,
  a read-only workdir or file system.
  """
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise WorkdirError(
      f"--workdir {workdir} is a file, not a directory: give a new directory or a run's workdir"
    )
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise WorkdirError(
      f"cannot create --workdir {workdir}: {_describe(e, path=False)}; choose a directory you can write to"
    ) from e
  try:
    handle, probe = tempfile.mkstemp(prefix=".write-probe-", dir=workdir)
    os.close(handle)
    os.remove(probe)
  except OSError as e:
    if _is_disk_full(e):
      raise WorkdirError(_disk_full_message(workdir, e)) from e
    raise WorkdirError(
      f"--workdir {workdir} is not writable: {_describe(e, path=False)}; choose a directory you can write "
      f"to (a run's workdir holds its checkpoints and logs)"
    ) from e


def workdir_error(error: BaseException, workdir: str) -> WorkdirError | None:
  """The one-line WorkdirError for `error` when it (or an exception it came from) is a full disk
  or a write refused by a read-only file system or missing permission; None otherwise."""
  for cause in _chain(error):
    if _is_disk_full(cause):
      return WorkdirError(_disk_full_message(workdir, cause))
  for cause in _chain(error):
    if isinstance(cause, OSError) and cause.errno in _NOT_WRITABLE_ERRNOS:
      return WorkdirError(
        f"cannot write {cause.filename or workdir}: {_describe(cause, path=False)}; make it writable or "
        f"choose another --workdir, then re-run the same command to resume"
      )
  return None


def quiet_orphaned_write_reports() -> None:
  """Drops the reports of a failed save's other writes (call once per process, in a command).

  When one array of an orbax save fails on a full disk, the step's other writes fail after it
  and report, each with a traceback: asyncio's "Task exception was never retrieved" (when the
  task is collected, even at exit, after the run's last line) or an unraisable `RuntimeError(
  'Event loop is closed')`. The run already ends in one line naming the full disk. Dropped:
  exactly those two kinds, when the error is a full disk or the closed loop.
  """
  previous = sys.unraisablehook

  def unraisable(report) -> None:
    if not _orphaned_write(report.exc_value):
      previous(report)

  sys.unraisablehook = unraisable
  logging.getLogger("asyncio").addFilter(
    lambda record: not _orphaned_write(record.exc_info[1] if record.exc_info else None)
  )


def quiet_abandoned_writes() -> None:
  """After a workdir error (a full disk): the save's write coroutines that never ran are
  collected at exit with `RuntimeWarning: coroutine ... was never awaited`, printed after the
  run's one line (seen on some runs, depending on when the collector runs). The run has already
  named the cause; only those warnings are dropped, and only once such an error was raised."""
  warnings.filterwarnings(
    "ignore", message=r"coroutine .* was never awaited", category=RuntimeWarning
  )


def _orphaned_write(error: BaseException | None) -> bool:
  if error is None:
    return False
  if isinstance(error, RuntimeError) and str(error) == "Event loop is closed":
    return True
  return _is_disk_full(error)


def _chain(error: BaseException) -> list[BaseException]:
  """`error`, then the exceptions it was raised from or while handling (each once)."""
  seen: list[BaseException] = []
  while error is not None and all(error is not s for s in seen):
    seen.append(error)
    error = error.__cause__ or error.__context__
  return seen


def _is_disk_full(error: BaseException) -> bool:
  if isinstance(error, OSError) and error.errno in _DISK_FULL_ERRNOS:
    return True
  return any(text in str(error) for text in _DISK_FULL_TEXT)


def _disk_full_message(workdir: str, error: BaseException) -> str:
  return (
    f"disk full writing to {workdir} ({_disk_full_reason(error)}): free some space (or move the "
    f"run to a larger disk), then re-run the same command to resume from the newest checkpoint"
  )


def _disk_full_reason(error: BaseException) -> str:
  """'No space left on device: <file>', or TensorStore's status with the file it was writing
  ('RESOURCE_EXHAUSTED: No space left on device writing <file>'); its text runs to 500
  characters with the nested paths and spec."""
  if isinstance(error, OSError) and error.strerror:
    return _describe(error)
  text = str(error)
  parts = [marker for marker in _DISK_FULL_TEXT if marker in text]
  path = re.search(r'"([^"]+)"', text)
  return ": ".join(parts) + (f" writing {path.group(1)}" if path else "")


def _describe(error: BaseException, path: bool = True) -> str:
  """The error's first line, at most 300 characters (TensorStore appends long specs); an
  OSError's file name with `path`."""
  if isinstance(error, OSError) and error.strerror:
    text = error.strerror + (f": {error.filename}" if error.filename and path else "")
  else:
    text = (str(error).strip().splitlines() or [type(error).__name__])[0]
  return text if len(text) <= 300 else text[:297] + "..."

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
import os
import tempfile

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
    f"disk full writing to {workdir} ({_describe(error)}): free some space (or move the run to a "
    f"larger disk), then re-run the same command to resume from the newest checkpoint"
  )


def _describe(error: BaseException, path: bool = True) -> str:
  """The error's first line, at most 300 characters (TensorStore appends long specs); an
  OSError's file name with `path`."""
  if isinstance(error, OSError) and error.strerror:
    text = error.strerror + (f": {error.filename}" if error.filename and path else "")
  else:
    text = (str(error).strip().splitlines() or [type(error).__name__])[0]
  return text if len(text) <= 300 else text[:297] + "..."

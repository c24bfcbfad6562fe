"""Model files readable by whoever the user's umask lets read them (a shared model directory).

safetensors' `save_file` writes through a private temporary file and keeps its mode 0600, so a
model directory written by one user could not be read by a colleague. `make_readable` gives a
file the mode `open()` would have given it: 0666 less the process's umask (0644 for umask 022).
"""

from __future__ import annotations

import os


def current_umask() -> int:
  """The process's umask, read without changing it where Linux allows (/proc/self/status): the
  portable os.umask(x) round trip changes it for every thread for a moment."""
  try:
    with open("/proc/self/status", encoding="ascii") as f:
      for line in f:
        if line.startswith("Umask:"):
          return int(line.split()[1], 8)
  except OSError:
    pass
  mask = os.umask(0o022)
  os.umask(mask)
  return mask


def make_readable(path: str | os.PathLike) -> None:
  """chmod `path` to 0666 & ~umask: the mode of a file created with open()."""
  os.chmod(path, 0o666 & ~current_umask())

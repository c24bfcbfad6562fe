"""Files that a reader sees whole: the old content or the new, never half of either (and
`read_json`, which reads one back as absent when it is not there or not whole).

A run's results.json and config.json, a pretraining workdir's recipe.json, the trimmed
metrics.jsonl of a resumed run, a sweep cell's status.json and the sweep's tables are read while
they may be rewritten (the sweep aggregates beside running cells; a restart reads what a
preempted run left). Each is written to `<path>.tmp.<pid>` and renamed over `path`: os.replace
is atomic within a filesystem, and the pid keeps two processes' temporaries apart.

The temporary file is created by open(), so the file gets the mode open() gives, 0666 less the
umask (0644 for umask 022; file_modes.py's rule), not tempfile.mkstemp's private 0600.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any


def read_json(path: str | os.PathLike) -> Any | None:
  """The JSON `path` holds, or None when it is missing, unreadable or not (yet) whole JSON: a
  run's or cell's record that was never written reads as absent, not as an error."""
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def write_text_atomically(path: str | os.PathLike, text: str) -> None:
  """Replaces `path` by `text` (UTF-8) in one rename; on any failure `path` is left as it was
  and the temporary file is removed."""
  temporary = f"{os.fspath(path)}.tmp.{os.getpid()}"
  try:
    with open(temporary, "w", encoding="utf-8") as f:
      f.write(text)
    os.replace(temporary, path)
  except BaseException:
    with contextlib.suppress(OSError):
      os.remove(temporary)
    raise


def write_json_atomically(path: str | os.PathLike, value: Any) -> None:
  """`value` as indented JSON (indent 2, one trailing newline), written atomically. Serialised
  before anything is opened: a value JSON cannot encode raises TypeError / ValueError and leaves
  `path` untouched."""
  write_text_atomically(path, json.dumps(value, indent=2) + "\n")

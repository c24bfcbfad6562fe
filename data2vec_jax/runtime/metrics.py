"""Where training metrics go: console, a JSONL file and TensorBoard event files.

Only process 0 writes; other processes get a writer that does nothing, so the loop needs no
`if process_index == 0` branches.

A resumed run replays the steps after its checkpoint. So that the logs read as one uninterrupted
run, the writer drops the JSONL rows after the resumed step (the file is rewritten atomically)
and asks TensorBoard to purge those steps' events (`purge_step`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from typing import Mapping

from data2vec_jax.atomic_files import write_text_atomically


class MetricWriter:
  """Appends `{'step': n, **metrics}` lines to `<workdir>/metrics.jsonl` and TensorBoard scalars."""

  def __init__(
    self, workdir: str, *, enabled: bool = True, tensorboard: bool = True, resume_step: int = 0
  ):
    """`resume_step`: the step the run starts from (its checkpoint); rows after it are dropped.

    `history` holds the earlier rows that were kept (for seeding the health guards).
    """
    self.enabled = enabled
    self.history: list[dict] = []
    self.last_step = resume_step  # the newest step with a row
    self._jsonl = None
    self._tb = None
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "metrics.jsonl")
    self.history = _keep_rows_up_to(path, resume_step)
    self._jsonl = open(path, "a", buffering=1)
    if tensorboard:
      try:
        from tensorboardX import SummaryWriter

        self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"), purge_step=resume_step + 1)
      except ImportError:  # optional dependency: JSONL is always written
        logging.warning("tensorboardX not installed; writing metrics.jsonl only")

  def write(self, step: int, metrics: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    clean = {
      k: (float(v) if math.isfinite(float(v)) else str(float(v))) for k, v in metrics.items()
    }
    self._jsonl.write(json.dumps({"step": step, "time": time.time(), **clean}) + "\n")
    self.last_step = max(self.last_step, step)
    if self._tb is not None:
      for key, value in metrics.items():
        self._tb.add_scalar(key, float(value), step)

  def close(self, quiet: bool = False) -> None:
    """Closes both logs. `quiet`: a failing close is logged, not raised (after another error,
    which it must not replace)."""
    for log in (self._jsonl, self._tb):
      if log is None:
        continue
      try:
        log.close()
      except Exception as e:  # noqa: BLE001 - re-raised unless quiet
        if not quiet:
          raise
        logging.warning("closing the metric logs failed too: %s: %s", type(e).__name__, e)


def _keep_rows_up_to(path: str, step: int) -> list[dict]:
  """Rewrites `path` keeping the rows of steps <= `step` (and dropping unreadable lines, e.g. a
  line cut short by a kill); returns the kept rows."""
  if not os.path.exists(path):
    return []
  kept, lines, dropped = [], [], 0
  with open(path) as f:
    for line in f:
      try:
        row = json.loads(line)
        keep = isinstance(row, dict) and int(row["step"]) <= step
      except (ValueError, KeyError, TypeError):
        keep = False
      if keep:
        kept.append(row)
        lines.append(line if line.endswith("\n") else line + "\n")
      else:
        dropped += 1
  if dropped:
    write_text_atomically(path, "".join(lines))
    logging.info(
      "metrics.jsonl: dropped %d rows after step %d (replayed by this run)", dropped, step
    )
  return kept


def format_progress(
  step: int, total: int, metrics: Mapping[str, float], eta_s: float | None
) -> str:
  """One console line: step, loss, lr, EMA decay, collapse monitors, throughput, MFU, ETA."""
  parts = [f"step {step}/{total}"]
  for key, fmt in (
    ("loss", ".4f"),
    ("lr", ".3e"),
    ("ema_decay", ".6f"),
    ("target_var", ".3f"),
    ("pred_var", ".3f"),
    ("masked_fraction", ".3f"),
    ("grad_norm", ".3f"),
    ("accuracy", ".3f"),
    ("tokens_per_s", ",.0f"),
  ):
    if key in metrics:
      parts.append(f"{key} {metrics[key]:{fmt}}")
  if "mfu" in metrics:
    parts.append(f"mfu {100 * metrics['mfu']:.1f}%")
  if eta_s is not None:
    parts.append(f"eta {_format_seconds(eta_s)}")
  return " | ".join(parts)


def _format_seconds(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"
